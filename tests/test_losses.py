"""Every direction against a hand computation on a stub guidance, and the identities between the losses.

The stub's answer depends on the prompt (a_y x_t + b_y) and on the timestep (+ C ᾱ_t), so the hand computations also
pin which timestep each row is evaluated at.
"""

import copy

import pytest
import torch

from scoredist.guidance.base import add_noise, scaled_linear_alphas_cumprod
from scoredist.losses.base import ScoreLoss, predict_conditions, surrogate_loss, weight
from scoredist.losses.bridge import Bridge, ddim_path
from scoredist.losses.csd import CSD
from scoredist.losses.dds import DDS
from scoredist.losses.nfsd import NFSD
from scoredist.losses.ours import Ours
from scoredist.losses.sds import SDS
from scoredist.losses.vsd import VSD
from scoredist.prompts import SRC_SUFFIX, TGT_SUFFIX, Prompt
from scoredist.schedules import Ramp
from tests.stubs import FixedSource, StubGuidance

ABAR = scaled_linear_alphas_cumprod().float()
TABLE = {
    "": (0.5, 0.0),
    "cat": (0.2, 1.0),
    "neg": (0.3, -2.0),
    "cat" + SRC_SUFFIX: (0.1, 0.5),
    "cat" + TGT_SUFFIX: (0.4, -0.5),
    "dog": (0.7, 0.25),
}
C = 3.0  # the stub's timestep term: ε = a_y x_t + b_y + C ᾱ_t


@pytest.fixture
def setup():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    noise = torch.randn(2, 3, 8, 8)
    t = torch.tensor([100, 700])
    a = ABAR[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x + (1 - a).sqrt() * noise
    return StubGuidance(TABLE, t_coefficient=C), x, t, noise, x_t


def eps(prompt, x_t, t):
    """The stub's ε̂ by hand; t a (B,) tensor (one timestep per row) or an int (one image)."""
    a, b = TABLE.get(prompt, (0.5, 0.0))  # the stub's default for prompts not in the table
    abar = ABAR[t].view(-1, 1, 1, 1) if torch.is_tensor(t) else ABAR[t].item()
    return a * x_t + b + C * abar


def test_sds_direction_matches_hand_computation(setup):
    guidance, x, t, noise, x_t = setup
    g, logs = SDS(guidance_scale=7.5).direction(guidance, x, t, noise, ["cat", "cat"], 0)
    # ε_∅ + s(ε_y − ε_∅) − ε, written out with the stub's coefficients: (0.5 + 7.5·(0.2 − 0.5)) x_t + 7.5·1 + Cᾱ_t − ε
    expected = (0.5 + 7.5 * (0.2 - 0.5)) * x_t + 7.5 * 1.0 + C * ABAR[t].view(-1, 1, 1, 1) - noise
    torch.testing.assert_close(g, expected, atol=1e-5, rtol=1e-5)
    assert guidance.calls == 1 and guidance.rows == 4
    assert float(logs["norm/noise"]) == pytest.approx(noise.flatten(1).norm(dim=1).mean().item())


def test_weighting_multiplies_direction(setup):
    guidance, x, t, noise, x_t = setup
    loss = SDS(guidance_scale=7.5, weighting="1-abar")
    wg, _ = loss(guidance, x, t, noise, ["cat", "cat"], 0)
    g, _ = loss.direction(guidance, x, t, noise, ["cat", "cat"], 0)
    torch.testing.assert_close(wg, (1 - ABAR[t]).view(-1, 1, 1, 1) * g)
    torch.testing.assert_close(weight("sqrt(abar)(1-abar)", ABAR, t), ABAR[t].sqrt() * (1 - ABAR[t]))
    torch.testing.assert_close(weight("uniform", ABAR, t), torch.ones(2))
    torch.testing.assert_close(weight("sqrt((1-abar)/abar)", ABAR, t), ((1 - ABAR[t]) / ABAR[t]).sqrt())
    known = r"\['1-abar', 'sqrt\(\(1-abar\)/abar\)', 'sqrt\(abar\)\(1-abar\)', 'uniform'\]"
    with pytest.raises(ValueError, match=r"unknown weighting 'snr'; choose one of " + known):
        SDS(weighting="snr")
    with pytest.raises(ValueError, match=r"unknown reduction 'max'; choose one of \('sum', 'mean'\)"):
        ScoreLoss(reduction="max")
    with pytest.raises(ValueError, match=r"unknown weighting 'snr'; choose one of \['1-abar', "):
        weight("snr", ABAR, t)


@pytest.mark.parametrize("batch", [1, 3])
def test_surrogate_gradient_is_exactly_weighted_direction(batch):
    x = torch.randn(batch, 4, 8, 8, requires_grad=True)
    wg = torch.randn(batch, 4, 8, 8)
    surrogate_loss(x, wg).backward()
    # the gradient of 0.5‖x − sg(x − wg)‖²/B is wg/B, up to the float rounding of x − (x − wg)
    torch.testing.assert_close(x.grad, wg / batch, rtol=0, atol=1e-6)


def test_surrogate_gradient_of_each_row_is_its_row_weight_times_its_direction():
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    wg = torch.randn(3, 4, 8, 8)
    row_weights = torch.tensor([1.0, 0.5, 0.5])  # a sample of one row, and one of two (a NeRF's two cameras)
    surrogate_loss(x, wg, row_weights).backward()
    torch.testing.assert_close(x.grad, row_weights.view(-1, 1, 1, 1) * wg, rtol=0, atol=1e-6)


def test_nfsd_switches_its_denoising_term_at_t_200(setup):
    guidance, x, t, noise, x_t = setup  # t = 100 (below) and 700 (above)
    g, _ = NFSD(guidance_scale=40, negative_prompt="neg").direction(guidance, x, t, noise, ["cat", "cat"], 0)
    classifier = 40 * (eps("cat", x_t, t) - eps("", x_t, t))
    torch.testing.assert_close(g[0], (classifier + eps("", x_t, t))[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(g[1], (classifier + eps("", x_t, t) - eps("neg", x_t, t))[1], atol=1e-4, rtol=1e-5)
    assert guidance.calls == 1 and guidance.rows == 6


def test_csd_direction_and_reduction_to_the_sds_guidance_term(setup):
    guidance, x, t, noise, x_t = setup
    g, logs = CSD(w1=10, w2=3, negative_prompt="neg").direction(guidance, x, t, noise, ["cat", "cat"], 0)
    expected = 10 * (eps("cat", x_t, t) - eps("", x_t, t)) + 3 * (eps("", x_t, t) - eps("neg", x_t, t))
    torch.testing.assert_close(g, expected, atol=1e-4, rtol=1e-5)
    negative = 3 * (eps("", x_t, t) - eps("neg", x_t, t))
    assert float(logs["norm/negative"]) == pytest.approx(negative.flatten(1).norm(dim=1).mean().item(), rel=1e-4)
    # (w1, w2) = (s, 0): exactly SDS's guidance term ε_cfg − ε_∅ = s(ε_y − ε_∅)
    s = 7.5
    g_csd, _ = CSD(w1=s, w2=0).direction(guidance, x, t, noise, ["cat", "cat"], 0)
    g_sds, _ = SDS(guidance_scale=s).direction(guidance, x, t, noise, ["cat", "cat"], 0)
    torch.testing.assert_close(g_csd, g_sds + noise - eps("", x_t, t), atol=1e-5, rtol=1e-5)


def test_csd_w2_annealing_is_linear_over_the_run():
    loss = CSD(w1=40, w2=40, w2_end=20, max_steps=100)
    assert [loss.w2_at(s) for s in (0, 50, 100, 200)] == [40, 30, 20, 20]


def test_ours_direction_and_zero_when_source_equals_target(setup):
    guidance, x, t, noise, x_t = setup
    loss = Ours(guidance_scale=40, stage_one=None)
    g, logs = loss.direction(guidance, x, t, noise, ["cat", "cat"], 0)
    expected = 40 * (eps("cat" + TGT_SUFFIX, x_t, t) - eps("cat" + SRC_SUFFIX, x_t, t))
    torch.testing.assert_close(g, expected, atol=1e-4, rtol=1e-5)
    assert logs["ours/stage"] == 2 and guidance.calls == 1
    same, _ = Ours(src_suffix=", x", tgt_suffix=", x", stage_one=None).direction(guidance, x, t, noise, ["cat"] * 2, 0)
    assert same.abs().max() == 0


def test_ours_switches_stages_at_the_right_step_and_after_resume(setup):
    guidance, x, t, noise, x_t = setup
    loss = Ours(
        guidance_scale=40,
        stage_one=SDS(guidance_scale=40, weighting="uniform"),
        switch_fraction=0.5,
        max_steps=100,
        weighting="1-abar",
    )
    stages = {s: loss.direction(guidance, x, t, noise, ["cat", "cat"], s)[1]["ours/stage"] for s in (0, 49, 50, 51, 99)}
    assert stages == {0: 1, 49: 1, 50: 2, 51: 2, 99: 2}
    assert loss.weighting_at(10) == "uniform" and loss.weighting_at(60) == "1-abar"
    # A fresh loss object (what a resumed run builds) at a step past the switch is in stage two at once.
    resumed = Ours(stage_one=SDS(), switch_fraction=0.5, max_steps=100)
    assert resumed.in_stage_two(73)
    assert Ours(stage_one=SDS(), switch_step=7, switch_fraction=0.5, max_steps=100).switch == 7
    stage_one_g, _ = loss.direction(guidance, x, t, noise, ["cat", "cat"], 10)
    sds_g, _ = SDS(guidance_scale=40).direction(guidance, x, t, noise, ["cat", "cat"], 10)
    torch.testing.assert_close(stage_one_g, sds_g)


def test_dds_direction_and_zero_on_its_own_reference(setup):
    guidance, x, t, noise, x_t = setup
    x_ref = torch.randn_like(x)
    loss = DDS(source_prompt="dog")
    loss.attach(guidance, x_ref)
    g, _ = loss.direction(guidance, x, t, noise, ["cat", "cat"], 0)
    a = ABAR[t].view(-1, 1, 1, 1)
    x_ref_t = a.sqrt() * x_ref + (1 - a).sqrt() * noise  # same t, same ε
    torch.testing.assert_close(g, eps("cat", x_t, t) - eps("dog", x_ref_t, t), atol=1e-5, rtol=1e-5)
    assert guidance.calls == 1
    same = DDS(source_prompt="cat")
    same.attach(guidance, x)
    assert same.direction(guidance, x, t, noise, ["cat", "cat"], 0)[0].abs().max() == 0


def test_dds_with_cfg_uses_one_call_of_four_conditions(setup):
    guidance, x, t, noise, x_t = setup
    loss = DDS(source_prompt="dog", guidance_scale=2.0)
    loss.attach(guidance, x[:1])  # a single reference broadcast over the batch
    g, _ = loss.direction(guidance, x, t, noise, ["cat", "cat"], 0)
    a = ABAR[t].view(-1, 1, 1, 1)
    x_ref_t = a.sqrt() * x[:1] + (1 - a).sqrt() * noise
    cfg = lambda p, z: eps("", z, t) + 2.0 * (eps(p, z, t) - eps("", z, t))
    torch.testing.assert_close(g, cfg("cat", x_t) - cfg("dog", x_ref_t), atol=1e-4, rtol=1e-5)
    assert guidance.calls == 1 and guidance.rows == 8


def test_vsd_with_a_source_that_predicts_the_noise_equals_sds(setup):
    guidance, x, t, noise, x_t = setup
    loss = VSD(guidance_scale=7.5)
    loss.source = FixedSource(noise)
    g_vsd, _ = loss.direction(guidance, x, t, noise, ["cat", "cat"], 0)
    g_sds, _ = SDS(guidance_scale=7.5).direction(guidance, x, t, noise, ["cat", "cat"], 0)
    torch.testing.assert_close(g_vsd, g_sds)


def test_bridge_with_one_step_equals_ours(setup):
    guidance, x, t, noise, x_t = setup
    ours, _ = Ours(guidance_scale=40, stage_one=None).direction(guidance, x, t, noise, ["cat", "cat"], 0)
    bridge, _ = Bridge(num_steps=1, guidance_scale=40, stage_one=None).direction(guidance, x, t, noise, ["cat"] * 2, 0)
    torch.testing.assert_close(bridge, ours, atol=1e-3, rtol=1e-4)


def test_bridge_k_steps_evaluates_both_branches_per_step_in_one_call(setup):
    guidance, x, t, noise, x_t = setup
    g, _ = Bridge(num_steps=3, guidance_scale=2.0, stage_one=None).direction(guidance, x, t, noise, ["cat", "cat"], 0)
    assert guidance.calls == 3 and guidance.rows == 12
    # the same ODE solve written out per image with scalar DDIM steps on the linear stub
    for i, ti in enumerate(t.tolist()):
        times = [round(ti * (1 - k / 3)) for k in range(3)] + [-1]
        abar = lambda s: 1.0 if s < 0 else ABAR[s].item()
        psi = {}
        for prompt in ("cat" + SRC_SUFFIX, "cat" + TGT_SUFFIX):
            z = x_t[i]
            for s_cur, s_next in zip(times[:-1], times[1:]):
                e = eps(prompt, z, s_cur)
                x0 = (z - (1 - abar(s_cur)) ** 0.5 * e) / abar(s_cur) ** 0.5
                z = abar(s_next) ** 0.5 * x0 + (1 - abar(s_next)) ** 0.5 * e
            psi[prompt] = z
        a = abar(ti)
        expected = 2.0 * (a / (1 - a)) ** 0.5 * (psi["cat" + SRC_SUFFIX] - psi["cat" + TGT_SUFFIX])
        torch.testing.assert_close(g[i], expected, atol=1e-3, rtol=1e-4)
    path = ddim_path(torch.tensor([999, 30]), 3)
    assert path[:, 0].tolist() == [999, 666, 333, -1] and path[:, 1].tolist() == [30, 20, 10, -1]


def test_predict_conditions_splits_in_condition_order_and_keeps_each_rows_timestep():
    guidance = StubGuidance(TABLE, t_coefficient=C)
    x_t = torch.ones(2, 3, 8, 8)
    t = torch.tensor([5, 900])
    a, b = predict_conditions(guidance, x_t, t, [["cat", "cat"], ["neg", "neg"]])
    abar = ABAR[t].tolist()
    assert a[:, 0, 0, 0].tolist() == pytest.approx([1.2 + C * abar[0], 1.2 + C * abar[1]], rel=1e-6)
    assert b[:, 0, 0, 0].tolist() == pytest.approx([-1.7 + C * abar[0], -1.7 + C * abar[1]], rel=1e-6)
    # one tensor per condition: DDS noises two images
    first, second = predict_conditions(guidance, [x_t, 2 * x_t], t, [["cat", "cat"], ["cat", "cat"]])
    torch.testing.assert_close(second - first, 0.2 * x_t)


def test_guidance_scale_and_weights_can_be_schedules_of_the_step(setup):
    from scoredist.schedules import Ramp

    guidance, x, t, noise, x_t = setup
    ramp = Ramp(start=100.0, end=10.0, start_step=0, end_step=90)
    assert [ramp(s) for s in (0, 45, 90, 500)] == [100.0, 55.0, 10.0, 10.0]
    cosine = Ramp(start=1.0, end=0.0, end_step=100, mode="cosine")
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    scheduled, logs = SDS(guidance_scale=ramp).direction(guidance, x, t, noise, ["cat", "cat"], 45)
    constant, _ = SDS(guidance_scale=55.0).direction(guidance, x, t, noise, ["cat", "cat"], 45)
    torch.testing.assert_close(scheduled, constant)
    assert logs["guidance_scale"] == 55.0
    csd = CSD(w1=ramp, w2=Ramp(start=0.0, end=9.0, end_step=90), negative_prompt="neg")
    g, _ = csd.direction(guidance, x, t, noise, ["cat", "cat"], 90)
    expected = 10 * (eps("cat", x_t, t) - eps("", x_t, t)) + 9 * (eps("", x_t, t) - eps("neg", x_t, t))
    torch.testing.assert_close(g, expected, atol=1e-4, rtol=1e-5)


def test_bridge_from_ddim_inversion_matches_the_hand_computation(setup):
    guidance, x, t, noise, x_t = setup
    g, _ = Bridge(num_steps=1, start="invert", guidance_scale=2.0, stage_one=None).direction(
        guidance, x, t, noise, ["cat", "cat"], 0
    )
    a = ABAR[t].view(-1, 1, 1, 1)
    # one inversion step from the clean x: z_t = sqrt(ᾱ) x + sqrt(1 − ᾱ) ε̂_src(x, t); then ours at z_t
    z_t = a.sqrt() * x + (1 - a).sqrt() * eps("cat" + SRC_SUFFIX, x, t)  # ε̂ at the destination t, not at 0
    expected = 2.0 * (eps("cat" + TGT_SUFFIX, z_t, t) - eps("cat" + SRC_SUFFIX, z_t, t))
    torch.testing.assert_close(g, expected, atol=1e-3, rtol=1e-4)
    assert guidance.calls == 2  # one inversion call, one call for both branches
    with pytest.raises(ValueError, match="start"):
        Bridge(start="sideways")


def test_nfsd_threshold_is_strict_at_t_200():
    guidance = StubGuidance(TABLE, t_coefficient=C)
    torch.manual_seed(3)
    x, noise, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.tensor([199, 200])
    g, _ = NFSD(guidance_scale=10, negative_prompt="neg").direction(guidance, x, t, noise, ["cat", "cat"], 0)
    x_t = add_noise(x, noise, t, ABAR)
    classifier = 10 * (eps("cat", x_t, t) - eps("", x_t, t))
    torch.testing.assert_close(g[0], (classifier + eps("", x_t, t))[0], atol=1e-4, rtol=1e-5)  # 199 < 200
    torch.testing.assert_close(g[1], (classifier + eps("", x_t, t) - eps("neg", x_t, t))[1], atol=1e-4, rtol=1e-5)


def test_vsd_subtracts_its_source_models_prediction_not_the_noise(setup):
    guidance, x, t, noise, x_t = setup
    source_output = torch.randn_like(x)
    loss = VSD(guidance_scale=7.5)
    loss.source = FixedSource(source_output)
    g, logs = loss.direction(guidance, x, t, noise, ["cat", "cat"], 0)
    eps_cfg = eps("", x_t, t) + 7.5 * (eps("cat", x_t, t) - eps("", x_t, t))
    torch.testing.assert_close(g, eps_cfg - source_output, atol=1e-4, rtol=1e-5)
    assert float(logs["norm/source"]) == pytest.approx(source_output.flatten(1).norm(dim=1).mean().item(), rel=1e-5)
    assert guidance.calls == 1 and guidance.rows == 4  # ε_ψ is a separate model, not a third guidance condition


def test_vsd_source_is_asked_at_the_rows_own_noised_input(setup):
    guidance, x, t, noise, x_t = setup
    loss = VSD(guidance_scale=1.0)
    loss.attach(guidance, x)
    g, _ = loss.direction(guidance, x, t, noise, [Prompt("cat", ", front view"), Prompt("cat")], 0)
    seen_x_t, seen_t, seen_prompts = loss.source.calls[-1]
    torch.testing.assert_close(seen_x_t, x_t)
    assert seen_t.tolist() == t.tolist() and seen_prompts == ["cat, front view", "cat"]
    expected = eps("cat, front view", x_t, t) - (0.3 * x_t - 0.2)
    torch.testing.assert_close(g[0], expected[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 0.5, 1.0])
def test_vsd_fits_its_source_to_fresh_noise_with_condition_dropout(dropout):
    guidance = StubGuidance(TABLE, t_coefficient=C)
    x = torch.randn(4, 3, 8, 8)
    loss = VSD(condition_dropout=dropout, lora_lr=0.1)
    loss.attach(guidance, x)
    source = loss.source
    w, v = source.w.item(), source.v.item()
    torch.manual_seed(11)
    logs = loss.after_step(guidance, x, ["cat"] * 4)
    # the same draws by hand, in the order the fit makes them: t ~ U{0..T-1}, ε ~ N(0, I), one dropout coin per row
    torch.manual_seed(11)
    t = torch.randint(0, 1000, (4,))
    noise = torch.randn_like(x)
    kept = [coin >= dropout for coin in torch.rand(4).tolist()]
    seen_x_t, seen_t, seen_prompts = source.calls[-1]
    assert seen_t.tolist() == t.tolist()
    torch.testing.assert_close(seen_x_t, add_noise(x, noise, t, ABAR))
    assert seen_prompts == ["cat" if k else "" for k in kept]
    assert seen_prompts.count("") == {0.0: 0, 1.0: 4}.get(dropout, 4 - sum(kept))
    # the fitting target is the noise itself: the logged loss is the MSE of the prediction against ε
    expected = ((w * seen_x_t + v - noise) ** 2).mean()
    assert float(logs["vsd/source_loss"]) == pytest.approx(expected.item(), rel=1e-5)
    assert source.w.item() != w and source.v.item() != v  # and the source model took a step


@pytest.mark.parametrize(
    "loss",
    [
        SDS(),
        NFSD(negative_prompt="neg"),
        CSD(negative_prompt="neg"),
        CSD(w2=0),
        VSD(),
        DDS(source_prompt="dog"),
        DDS(source_prompt="dog", guidance_scale=3.0),
        Ours(stage_one=SDS(), switch_step=1),
        Bridge(num_steps=2, start="invert", stage_one=SDS(), switch_step=1),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_conditioning_texts_list_every_string_the_model_sees(loss):
    """What the trainer checks for length before training is exactly what reaches the model over both stages."""
    guidance = StubGuidance(TABLE, t_coefficient=C)
    x = torch.randn(2, 3, 8, 8)
    prompts = [Prompt("cat", ", front view"), Prompt("cat", ", back view")]
    loss.attach(guidance, x)
    for step in (0, 1):
        loss(guidance, x, torch.tensor([100, 300]), torch.randn_like(x), prompts, step)
    listed = {text for _, text in loss.conditioning_texts(prompts)}
    assert guidance.prompts_seen <= listed, guidance.prompts_seen - listed
    if not isinstance(loss, (VSD,)):
        assert listed == guidance.prompts_seen, listed - guidance.prompts_seen
    assert all(what for what, _ in loss.conditioning_texts(prompts))  # each one says what it is, for the error


def test_defaults_are_the_papers_settings():
    assert SDS().guidance_scale == 40.0 and NFSD().guidance_scale == 40.0 and NFSD().t_threshold == 200
    assert (CSD().w1, CSD().w2, CSD().w2_end, CSD().max_steps) == (40.0, 40.0, None, 1000)
    vsd = VSD()
    assert (vsd.guidance_scale, vsd.lora_lr, vsd.lora_weight_decay, vsd.condition_dropout) == (7.5, 3e-4, 0.0, 0.1)
    assert Bridge().num_steps == 4 and Bridge().start == "noise" and Ours().guidance_scale == 40.0
    assert Ours(stage_one=SDS()).switch == 500 and Ours(stage_one=None).switch == 0  # SDS for the first half
    from scoredist.losses.base import ScoreLoss

    assert ScoreLoss().weighting == "1-abar" and SDS().weighting == "1-abar"  # w(t) = 1 − ᾱ_t unless told otherwise
    assert (DDS().source_prompt, DDS().reference, DDS().guidance_scale) == ("", None, None)
    with pytest.raises(ValueError, match="the k-step bridge needs num_steps >= 1, got 0"):
        Bridge(num_steps=0)


def test_conditioning_texts_say_what_each_string_is():
    rows = [Prompt("cat", ", side view")]
    assert DDS(source_prompt="dog", guidance_scale=2.0).conditioning_texts(rows) == [
        ("the prompt", "cat, side view"),
        ("loss.source_prompt", "dog"),
        ("the empty prompt", ""),
    ]
    assert DDS().conditioning_texts(rows) == [("the prompt", "cat, side view"), ("loss.source_prompt", "")]
    negative = [("the prompt", "cat, side view"), ("the empty prompt", ""), ("loss.negative_prompt", "neg")]
    assert NFSD(negative_prompt="neg").conditioning_texts(rows) == negative
    assert CSD(negative_prompt="neg").conditioning_texts(rows) == negative
    assert CSD(w2=0.0, w2_end=5.0, negative_prompt="neg").conditioning_texts(rows) == negative  # annealed up from 0
    assert CSD(w2=0.0, negative_prompt="neg").conditioning_texts(rows) == negative[:2]
    assert Ours(stage_one=None, src_suffix=", s", tgt_suffix=", t").conditioning_texts(rows) == [
        ("the target prompt (prompt + loss.tgt_suffix)", "cat, t, side view"),
        ("the source prompt (prompt + loss.src_suffix)", "cat, s, side view"),
    ]


@pytest.mark.parametrize(
    "loss, keys",
    [
        (SDS(guidance_scale=Ramp(1.0, 9.0, end_step=8)), {"norm/cfg", "norm/noise", "guidance_scale"}),
        (NFSD(guidance_scale=Ramp(1.0, 9.0, end_step=8), negative_prompt="neg"), {"norm/classifier", "norm/delta_d"}),
        (CSD(w1=Ramp(1.0, 9.0, end_step=8), negative_prompt="neg"), {"norm/classifier", "norm/negative", "csd/w2"}),
        (DDS(source_prompt="dog", guidance_scale=Ramp(1.0, 9.0, end_step=8)), {"norm/delta"}),
        (Ours(guidance_scale=Ramp(1.0, 9.0, end_step=8), stage_one=None), {"norm/bridge", "ours/stage"}),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, set) else "",
)
def test_scheduled_scales_are_read_at_the_step_and_logs_have_their_names(loss, keys, setup):
    """A Ramp scale at step 4 is 5; the same loss with the constant 5 gives the same direction."""
    guidance, x, t, noise, x_t = setup
    loss.attach(guidance, x.flip(0))
    g, logs = loss.direction(guidance, x, t, noise, ["cat", "cat"], 4)
    constant = copy.copy(loss)
    for name in ("guidance_scale", "w1"):
        if isinstance(getattr(loss, name, None), Ramp):
            setattr(constant, name, 5.0)
    torch.testing.assert_close(g, constant.direction(guidance, x, t, noise, ["cat", "cat"], 4)[0])
    assert set(logs) == keys


def test_csd_keeps_its_annealing_length_unless_the_checkpoint_has_one():
    loss = CSD(w2_end=0.0, max_steps=7)
    loss.load_state_dict({})  # an old checkpoint without the key
    assert loss.max_steps == 7
    loss.load_state_dict({"max_steps": 3})
    assert loss.max_steps == 3 and loss.state_dict() == {"max_steps": 3}


class Downscaled(StubGuidance):
    """A stub 'latent' model: 2× downscale, encode = 2·rgb − 1 averaged over 2×2 blocks."""

    downscale = 2

    def encode(self, rgb):
        return torch.nn.functional.avg_pool2d(rgb * 2 - 1, 2)


def test_dds_encodes_its_reference_file_at_the_models_input_size(tmp_path):
    import imageio.v3 as iio

    from scoredist.images import read_image

    path = tmp_path / "ref.png"
    iio.imwrite(path, (torch.rand(20, 30, 3) * 255).byte().numpy())
    guidance = Downscaled(TABLE)
    loss = DDS(source_prompt="dog", reference=str(path))
    loss.attach(guidance, torch.zeros(1, 3, 4, 6))  # latents of 3×4×6 ↔ images of 8×12
    torch.testing.assert_close(loss.x_ref, guidance.encode(read_image(path, 8, 12)))
    loss.attach(guidance, torch.zeros(1, 3, 4, 6, device="meta"))  # the reference lives where the run computes
    assert loss.x_ref.device.type == "meta"


def test_ddim_path_and_alpha_bar_stay_on_the_timesteps_device_and_index_t_exactly():
    from scoredist.guidance.base import alpha_bar

    assert ddim_path(torch.tensor([10, 20], device="meta"), 2).shape == (3, 2)
    abar = alpha_bar(ABAR, torch.tensor([0, 1, -1, 999]), 2).flatten()
    assert abar.tolist() == pytest.approx([ABAR[0].item(), ABAR[1].item(), 1.0, ABAR[999].item()])
    assert alpha_bar(ABAR, torch.tensor([0, -1], device="meta"), 4).shape == (2, 1, 1, 1)


def test_check_resolution_names_a_size_that_works():
    guidance = Downscaled(TABLE)
    guidance.check_resolution(8, 12)
    for size in ((7, 12), (8, 13)):
        with pytest.raises(
            ValueError, match=rf"{size[0]}x{size[1]} is not divisible by 2.*choose e.g. {size[0] // 2 * 2}\."
        ):
            guidance.check_resolution(*size)
    with pytest.raises(ValueError, match=r"choose e.g. 2\."):
        guidance.check_resolution(1, 1)


def test_dds_refuses_rows_with_cameras_without_a_reference_image(setup, tmp_path):
    """A NeRF's rows carry cameras: its first render is one random view of an untrained field, no image to edit, so
    DDS without loss.reference stops with one line naming the key; with a reference, or on 2D rows, it runs."""
    import imageio.v3 as iio

    guidance, x, t, noise, x_t = setup
    views = [Prompt("cat", ", front view", (0.0,) * 16), Prompt("cat", ", side view", (1.0,) * 16)]
    loss = DDS(source_prompt="dog")
    loss.attach(guidance, x)
    with pytest.raises(ValueError) as refused:
        loss(guidance, x, t, noise, views, 0)
    assert str(refused.value) == (
        "loss=dds on a renderer with cameras (renderer=nerf) needs a reference image: pass loss.reference=IMAGE "
        '(and loss.source_prompt="what it shows"); without one DDS would edit one random view of the untrained field'
    )
    assert guidance.calls == 0  # refused before any model call
    loss.check_rows([Prompt("cat"), Prompt("cat")])  # 2D rows (an image, an illusion's views): the initial state
    path = tmp_path / "ref.png"
    iio.imwrite(path, (torch.rand(8, 8, 3) * 255).byte().numpy())
    with_reference = DDS(source_prompt="dog", reference=str(path))
    with_reference.attach(guidance, x)
    g, _ = with_reference(guidance, x, t, noise, views, 0)
    assert g.shape == x.shape and guidance.calls == 1


def test_dds_checkpoints_its_reference():
    loss = DDS(source_prompt="dog")
    loss.attach(StubGuidance(TABLE), torch.full((1, 3, 8, 8), 0.25))
    state = loss.state_dict()
    resumed = DDS(source_prompt="dog")
    resumed.attach(StubGuidance(TABLE), torch.zeros(1, 3, 8, 8))  # a resumed run starts from another initial image
    resumed.load_state_dict(state)
    assert torch.equal(resumed.x_ref, torch.full((1, 3, 8, 8), 0.25)) and set(state) == {"x_ref"}
    on_device = DDS(source_prompt="dog")
    on_device.attach(StubGuidance(TABLE), torch.zeros(1, 3, 8, 8, device="meta"))
    on_device.load_state_dict(state)  # checkpoints load on the CPU; the reference goes where the run computes
    assert on_device.x_ref.device.type == "meta"


def test_guidance_sampling_is_the_ddim_solve_from_seeded_noise():
    from scoredist.guidance.base import Guidance, ddim_sample

    guidance = StubGuidance(TABLE, t_coefficient=C)
    samples = guidance.sample("cat", 2, num_steps=3, generator=torch.Generator().manual_seed(5))
    noise = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(samples, ddim_sample(guidance, noise, ["cat", "cat"], 3))
    assert guidance.calls == 6 and guidance.prompts_seen == {"cat"}  # 3 steps, for both runs
    guidance.sample("cat", 1)
    assert guidance.calls == 6 + 50  # the DDIM lower bound's default: 50 steps
    with pytest.raises(NotImplementedError, match="Guidance has no trainable source model, so loss=vsd cannot use it"):
        Guidance(ABAR).make_source_model()


def test_ours_with_a_source_prompt_conditions_the_source_branch_on_it_before_the_view_phrase():
    guidance = StubGuidance(
        {"an oil painting of a cube, front view": (0.2, 0.3), "a cube, sharp, front view": (0.9, 0.0)}
    )
    loss = Ours(
        guidance_scale=2.0,
        src_suffix=", ignored",
        tgt_suffix=", sharp",
        source_prompt="an oil painting of a cube",
        stage_one=None,
    )
    x = torch.randn(1, 3, 8, 8)
    t, noise = torch.tensor([300]), torch.randn(1, 3, 8, 8)
    g, _ = loss.direction(guidance, x, t, noise, [Prompt("a cube", ", front view")], step=0)
    x_t = add_noise(x, noise, t, guidance.alphas_cumprod)
    torch.testing.assert_close(g, 2.0 * ((0.9 * x_t) - (0.2 * x_t + 0.3)), rtol=1e-5, atol=1e-6)
    texts = [text for _, text in loss.conditioning_texts([Prompt("a cube", ", front view")])]
    assert texts == ["a cube, sharp, front view", "an oil painting of a cube, front view"]


def test_vsd_source_optimizer_uses_the_lora_learning_rate_and_weight_decay():
    loss = VSD(lora_lr=0.123, lora_weight_decay=0.0)
    loss.attach(StubGuidance(TABLE), torch.zeros(1, 3, 8, 8))
    (group,) = loss.optimizer.param_groups
    assert isinstance(loss.optimizer, torch.optim.AdamW) and (group["lr"], group["weight_decay"]) == (0.123, 0.0)


def test_vsd_attached_again_starts_from_the_initial_source_model():
    guidance, x = StubGuidance(TABLE), torch.randn(2, 3, 8, 8)
    loss = VSD(lora_lr=0.1)
    loss.attach(guidance, x)
    loss.after_step(guidance, x, ["cat", "cat"])
    assert loss.source.w.item() != pytest.approx(0.3)
    loss.attach(guidance, x)  # the next chunk of samples
    assert (loss.source.w.item(), loss.source.v.item()) == (pytest.approx(0.3), pytest.approx(-0.2))


def test_vsd_logs_the_mean_source_loss_over_its_fitting_steps():
    guidance, x = StubGuidance(TABLE), torch.randn(2, 3, 8, 8)
    loss = VSD(lora_lr=0.0, source_steps=3)  # lr 0: every step sees ε_ψ = 0.3 x_t − 0.2
    loss.attach(guidance, x)
    torch.manual_seed(3)
    logs = loss.after_step(guidance, x, ["cat", "cat"])
    torch.manual_seed(3)
    losses = []
    for _ in range(3):  # the fit's draws, in its order: t, ε, the dropout coins
        t, noise, _ = torch.randint(0, 1000, (2,)), torch.randn_like(x), torch.rand(2)
        losses.append(((0.3 * add_noise(x, noise, t, ABAR) - 0.2 - noise) ** 2).mean().item())
    assert float(logs["vsd/source_loss"]) == pytest.approx(sum(losses) / 3, rel=1e-5)


def test_vsd_reads_a_scheduled_guidance_scale_at_the_step_and_logs_both_norms(setup):
    guidance, x, t, noise, x_t = setup
    scheduled, constant = VSD(guidance_scale=Ramp(1.0, 9.0, end_step=8)), VSD(guidance_scale=5.0)
    for loss in (scheduled, constant):
        loss.attach(guidance, x)
    g, logs = scheduled.direction(guidance, x, t, noise, ["cat", "cat"], 4)
    torch.testing.assert_close(g, constant.direction(guidance, x, t, noise, ["cat", "cat"], 4)[0])
    assert set(logs) == {"norm/cfg", "norm/source"}


def test_ours_stage_one_reads_its_own_schedules_at_the_step(setup):
    guidance, x, t, noise, x_t = setup
    ours = Ours(stage_one=SDS(guidance_scale=Ramp(1.0, 9.0, end_step=8)), switch_step=10)
    g, logs = ours.direction(guidance, x, t, noise, ["cat", "cat"], 4)
    torch.testing.assert_close(g, SDS(guidance_scale=5.0).direction(guidance, x, t, noise, ["cat", "cat"], 4)[0])
    assert logs["ours/stage"] == 1
    nested = Ours(stage_one=Ours(stage_one=SDS(weighting="uniform"), switch_step=2), switch_step=5)
    assert [nested.weighting_at(step) for step in (1, 3, 5)] == ["uniform", "1-abar", "1-abar"]


def test_ours_checkpoints_its_switch_and_its_stage_one_state():
    ours = Ours(stage_one=CSD(w2_end=0.0, max_steps=100), switch_fraction=0.5, max_steps=100)
    state = ours.state_dict()
    assert state == {"switch": 50, "stage_one": {"max_steps": 100}}
    resumed = Ours(stage_one=CSD(w2_end=0.0, max_steps=400), switch_fraction=0.5, max_steps=400)
    resumed.load_state_dict(state)
    assert (resumed.switch, resumed.stage_one.max_steps) == (50, 100)
    old = Ours(stage_one=CSD(w2_end=0.0, max_steps=400), switch_fraction=0.5, max_steps=400)
    old.load_state_dict({})  # a checkpoint from before either was saved: keep what the run was built with
    assert (old.switch, old.stage_one.max_steps) == (200, 400)
    assert Ours(stage_one=None).state_dict() == {"switch": 0, "stage_one": {}}
    Ours(stage_one=None).load_state_dict(state)


def test_guidance_sampling_passes_its_guidance_scale_to_the_ddim_solve():
    from scoredist.guidance.base import ddim_sample

    guidance = StubGuidance(TABLE, t_coefficient=C)
    samples = guidance.sample("cat", 2, num_steps=3, generator=torch.Generator().manual_seed(5), guidance_scale=3.0)
    noise = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(samples, ddim_sample(guidance, noise, ["cat", "cat"], 3, guidance_scale=3.0))
    assert not torch.allclose(samples, ddim_sample(guidance, noise, ["cat", "cat"], 3))


def test_the_pixel_space_decode_maps_minus_one_to_one_onto_zero_to_one_and_clips():
    decoded = StubGuidance(TABLE).decode(torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0]))
    assert decoded.tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def test_the_noise_schedule_is_stable_diffusions_scaled_linear_in_float64():
    import math

    root_start, root_end = math.sqrt(0.00085), math.sqrt(0.012)
    betas = [(root_start + (root_end - root_start) * i / 999) ** 2 for i in range(1000)]
    abar = scaled_linear_alphas_cumprod()
    assert abar.dtype == torch.float64
    for t in (0, 199, 999):
        assert abar[t].item() == pytest.approx(math.prod(1 - b for b in betas[: t + 1]), rel=1e-12)


def test_noising_keeps_the_renders_dtype():
    x, noise = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    x_t = add_noise(x, noise, torch.tensor([0, 999]), scaled_linear_alphas_cumprod())  # a float64 schedule
    assert x_t.dtype == torch.float32
    torch.testing.assert_close(x_t[:, 0, 0, 0], ABAR[[0, 999]].sqrt())


def test_the_noise_schedule_is_a_buffer_that_moves_with_the_model_but_is_not_saved():
    guidance = StubGuidance(TABLE)
    assert "alphas_cumprod" in dict(guidance.named_buffers()) and "alphas_cumprod" not in guidance.state_dict()
    assert guidance.to(torch.float64).alphas_cumprod.dtype == torch.float64
