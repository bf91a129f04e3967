"""The methods since the paper — ISM, SDI, ESD, ASD — against hand computations on the stub guidance (ε = a_y x_t + b_y
+ C ᾱ_t, so every timestep a row is asked at shows in the number), the identities of their authors' formulations, and
the DDIM inversion they share."""

from __future__ import annotations

import math

import pytest
import torch

from scoredist.guidance.base import Guidance, add_noise, ddim_move, scaled_linear_alphas_cumprod
from scoredist.guidance.exact.mixture import GaussianMixture
from scoredist.losses.asd import ASD
from scoredist.losses.esd import ESD
from scoredist.losses.inversion import grid_path, invert, strided_path
from scoredist.losses.ism import ISM
from scoredist.losses.sdi import SDI
from scoredist.losses.sds import SDS
from scoredist.losses.vsd import VSD
from scoredist.prompts import Prompt
from scoredist.schedules import DecaySchedule
from tests.stubs import LinearSource, StubGuidance

ABAR = scaled_linear_alphas_cumprod().float()
TABLE = {"": (0.5, 0.0), "cat": (0.2, 1.0), "neg": (0.3, -2.0), "dog": (0.7, 0.25)}
C = 3.0


def eps(prompt, x_t, t):
    """The stub's ε̂ by hand; t an int (every row) or a (B,) tensor."""
    a, b = TABLE.get(prompt, (0.5, 0.0))
    abar = ABAR[t].view(-1, 1, 1, 1) if torch.is_tensor(t) else ABAR[t].item()
    return a * x_t + b + C * abar


def ab(t: int) -> float:
    return ABAR[t].item()


def move(z, e, t_from: int, t_to: int):
    """One deterministic DDIM move by hand: x̂0 from (z, ε̂) at t_from, re-noised with ε̂ at t_to."""
    x0 = (z - math.sqrt(1 - ab(t_from)) * e) / math.sqrt(ab(t_from))
    return math.sqrt(ab(t_to)) * x0 + math.sqrt(1 - ab(t_to)) * e


@pytest.fixture
def rows():
    torch.manual_seed(0)
    return StubGuidance(TABLE, t_coefficient=C), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)


# ---------------------------------------------------------------------------------------------------------------------
# ISM
# ---------------------------------------------------------------------------------------------------------------------


def test_ism_direction_matches_the_hand_computed_inversion_of_each_row(rows):
    guidance, x, noise = rows
    t = torch.tensor([450, 90])  # δ_T = 100 at step 0: s = 350 (inverted 1 → 201 → 350) and s = 1 (one empty step)
    loss = ISM(guidance_scale=7.5, negative_prompt="neg", max_steps=1000)
    g, logs = loss.direction(guidance, x, t, noise, ["cat", "dog"], step=0)
    expected = []
    for i, (t_i, s_i, path) in enumerate([(450, 350, [1, 201, 350]), (90, 1, [1, 1])]):
        z = math.sqrt(ab(1)) * x[i : i + 1] + math.sqrt(1 - ab(1)) * noise[i : i + 1]  # x_1: the step's noise
        for t_from, t_to in zip(path[:-1], path[1:]):
            z = move(z, eps("", z, t_from), t_from, t_to)  # ε(∅) at the start of each inversion step
        eps_s = eps("", z, s_i)  # the target, and the last step s → t
        x_t = move(z, eps_s, s_i, t_i)
        prompt = ["cat", "dog"][i]
        eps_cfg = eps("neg", x_t, t_i) + 7.5 * (eps(prompt, x_t, t_i) - eps("neg", x_t, t_i))
        expected.append(0.1 * (eps_cfg - eps_s))
    torch.testing.assert_close(g, torch.cat(expected), rtol=1e-4, atol=1e-4)
    # calls: inversion step 1 (both rows), step 2 (the first row only), the target, the guided call
    assert (guidance.calls, guidance.rows) == (4, 2 + 1 + 2 + 4)
    assert float(logs["ism/inversion_rows_per_sample"]) == 1.5 and logs["ism/interval"] == 100


def test_ism_interval_falls_over_the_warm_up_and_its_weighting_is_sqrt_of_1_minus_abar_over_abar(rows):
    loss = ISM(interval=80, interval_start=100, warmup_fraction=0.3, max_steps=5000)  # their 1500 of 5000
    assert [loss.interval_at(s) for s in (0, 750, 1500, 4000)] == [100, 90, 80, 80]
    guidance, x, noise = rows
    t = torch.tensor([300, 800])
    g, _ = loss.direction(StubGuidance(TABLE, t_coefficient=C), x, t, noise, ["cat", "cat"], 0)
    weighted, _ = loss(guidance, x, t, noise, ["cat", "cat"], 0)
    w = ((1 - ABAR[t]) / ABAR[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(weighted, w * g)


def test_strided_path_is_lucid_dreamers_loop():
    path, active = strided_path(torch.tensor([350, 1, 201, 999]), start=1, stride=200, max_steps=5)
    columns = [path[: int(active[:, b].sum()) + 1, b].tolist() for b in range(4)]
    assert columns == [[1, 201, 350], [1, 1], [1, 201], [1, 201, 401, 601, 801, 999]]
    with pytest.raises(ValueError, match="cannot reach t = 899 from 1 in 5 strides of 100"):
        strided_path(torch.tensor([899]), start=1, stride=100, max_steps=5)  # would end at 501, labelled 899


# ---------------------------------------------------------------------------------------------------------------------
# SDI
# ---------------------------------------------------------------------------------------------------------------------


def test_sdi_without_inversion_is_sds_under_sdis_weighting_and_mean_reduction(rows):
    guidance, x, noise = rows
    t = torch.tensor([100, 700])
    sdi, _ = SDI(guidance_scale=7.5, inversion=False)(guidance, x, t, noise, ["cat", "dog"], 0)
    sds, _ = SDS(guidance_scale=7.5, weighting="sqrt((1-abar)/abar)")(guidance, x, t, noise, ["cat", "dog"], 0)
    torch.testing.assert_close(sdi, sds / x[0].numel(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form", ["standard", "text"])
def test_sdi_inverts_on_the_leading_grid_and_subtracts_the_implied_noise(rows, form):
    guidance, x, noise = rows
    t = torch.tensor([250, 1])  # paths 0 → 1 → 101 → 201 → 250 and 0 → 1 (overshoot 1: exactly to t)
    loss = SDI(guidance_scale=7.5, inversion_eta=0.0, overshoot=1, cfg_form=form)
    g, _ = loss.direction(guidance, x, t, noise, ["cat", "dog"], 0)

    def guided(prompt, z, t_, scale):
        anchor = eps("", z, t_) if form == "standard" else eps(prompt, z, t_)
        return anchor + scale * (eps(prompt, z, t_) - eps("", z, t_))

    expected = []
    for i, (t_i, path) in enumerate([(250, [0, 1, 101, 201, 250]), (1, [0, 1])]):
        prompt, z = ["cat", "dog"][i], x[i : i + 1]
        for t_from, t_to in zip(path[:-1], path[1:]):
            z = move(z, guided(prompt, z, t_from, -7.5), t_from, t_to)
        kappa = (z - math.sqrt(ab(t_i)) * x[i : i + 1]) / math.sqrt(1 - ab(t_i))
        expected.append(guided(prompt, z, t_i, 7.5) - kappa)
    torch.testing.assert_close(g, torch.cat(expected), rtol=1e-4, atol=1e-4)
    assert guidance.calls == 4 + 1 and guidance.rows == 2 * (2 + 1 + 1 + 1) + 4  # inversion calls, then the final


def test_sdi_grid_path_is_threestudios_inversion_timesteps():
    # t = 250 inverted to t + δ = 297: grid points 1, 101, 201 below t; their leading "−99" start is 0 here
    path, active = grid_path(torch.tensor([297, 980, 5]), torch.tensor([250, 980, 5]), 10, 1000)
    columns = [path[: int(active[:, b].sum()) + 1, b].tolist() for b in range(3)]
    assert columns == [[0, 1, 101, 201, 297], [0, *range(1, 1000, 100), 980], [0, 1, 5]]


def test_inversion_noise_has_ddims_variance():
    """eta adds η z σ on top of the deterministic move, σ² = (1 − ᾱ_k)/(1 − ᾱ_{k+1}) (1 − ᾱ_{k+1}/ᾱ_k)."""
    guidance = StubGuidance({"": (0.0, 0.0)})  # ε̂ = 0: the move is a pure rescaling of z
    z = torch.zeros(4000, 1, 1, 1)
    path, active = torch.tensor([[300] * 4000, [600] * 4000]), torch.ones(1, 4000, dtype=torch.bool)
    out = invert(guidance, z, path, active, lambda z_, t_, r: guidance.predict_noise(z_, t_, [""] * len(r)), eta=0.5)
    variance = (1 - ab(300)) / (1 - ab(600)) * (1 - ab(600) / ab(300))
    assert float(out.std()) == pytest.approx(0.5 * math.sqrt(variance), rel=0.05)


def test_ddim_inversion_of_an_exact_prior_returns_to_its_start():
    """Inverting a point of a one-Gaussian exact prior from t = 0 to t = 600 in 300 steps, then walking the same
    probability-flow ODE back down in 300 steps, lands where it started (the ODE is exact; only the discretisation
    errs, and it shrinks with the step)."""

    class OneGaussian(Guidance):
        def __init__(self):
            super().__init__(scaled_linear_alphas_cumprod())
            self.mixture = GaussianMixture(torch.full((1, 4), 0.3, dtype=torch.float64), variances=0.2)

        def predict_noise(self, x_t, t, prompts):
            abar = self.alphas_cumprod.to(torch.float64)[t]
            return self.mixture.predict_noise(x_t.reshape(x_t.shape[0], -1).double(), abar).reshape(x_t.shape).float()

    prior = OneGaussian()
    start = torch.tensor([[0.9, -0.4, 0.1, 0.5]])

    def there_and_back(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        up = torch.linspace(0, 600, n + 1).round().long()[:, None]
        active = torch.ones(n, 1, dtype=torch.bool)
        predict = lambda z_, t_, r: prior.predict_noise(z_, t_, [""])  # noqa: E731
        z = invert(prior, start, up, active, predict)
        return z, invert(prior, z, up.flip(0), active, predict)

    z, back = there_and_back(300)
    assert (z - start).abs().max() > 0.3  # it really went somewhere
    err_300 = float((back - start).abs().max())
    err_30 = float((there_and_back(30)[1] - start).abs().max())
    assert err_300 < 0.015 and err_300 < err_30 / 5, (err_300, err_30)  # measured 0.0085 and 0.075: first order


# ---------------------------------------------------------------------------------------------------------------------
# ASD
# ---------------------------------------------------------------------------------------------------------------------


def test_asd_subtracts_the_same_model_at_the_later_timestep_with_the_same_noise(rows):
    guidance, x, noise = rows
    t = torch.tensor([100, 700])  # Δt = ⌊0.1 (t − 20)⌋ = 8, 68 (plus_random off)
    loss = ASD(guidance_scale=7.5, negative_prompt="neg", plus_ratio=0.1, plus_random=False)
    g, logs = loss.direction(guidance, x, t, noise, ["cat", "dog"], 0)
    t_plus = torch.tensor([108, 768])
    x_t, x_plus = add_noise(x, noise, t, ABAR), add_noise(x, noise, t_plus, ABAR)
    cond = torch.cat([eps("cat", x_t[:1], 100), eps("dog", x_t[1:], 700)])
    neg = eps("neg", x_t, t)
    shifted = torch.cat([eps("cat", x_plus[:1], 108), eps("dog", x_plus[1:], 768)])
    torch.testing.assert_close(g, neg + 7.5 * (cond - neg) - shifted, rtol=1e-5, atol=1e-5)
    assert (guidance.calls, guidance.rows) == (1, 6) and float(logs["asd/delta_t"]) == 38.0


def test_asd_with_no_shift_leaves_only_the_classifier_score_term(rows):
    guidance, x, noise = rows
    t = torch.tensor([100, 700])
    g, _ = ASD(guidance_scale=7.5, negative_prompt="neg", plus_ratio=0.0).direction(
        guidance, x, t, noise, ["cat"] * 2, 0
    )
    x_t = add_noise(x, noise, t, ABAR)
    torch.testing.assert_close(g, 6.5 * (eps("cat", x_t, t) - eps("neg", x_t, t)), rtol=1e-5, atol=1e-5)


def test_asd_reads_t_min_from_the_runs_schedule_at_the_step():
    schedule = DecaySchedule(t_min=0.5, t_max=0.98, t_min_end=0.02, t_max_end=0.5, max_steps=100)
    loss = ASD(schedule=schedule, plus_ratio=0.1, plus_random=False)
    t = torch.tensor([600, 995])
    assert loss.shifted(t, 0, 1000).tolist() == [610, 999]  # t_min 500 at step 0; the clamp to T − 1
    assert loss.shifted(t, 100, 1000).tolist() == [658, 999]  # t_min 20 at the end
    with pytest.raises(ValueError, match="plus_ratio must be >= 0"):
        ASD(plus_ratio=-0.1)


# ---------------------------------------------------------------------------------------------------------------------
# ESD
# ---------------------------------------------------------------------------------------------------------------------


class CameraSource(LinearSource):
    """ε_ψ = w x_t + v + 1 for a row asked with a camera: the camera-free rows show in the number."""

    def predict_noise(self, x_t, t, prompts, cameras=None):
        self.cameras_seen = [*getattr(self, "cameras_seen", []), None if cameras is None else list(cameras)]
        out = super().predict_noise(x_t, t, prompts)
        has = torch.tensor([c is not None for c in (cameras or [None] * len(prompts))], dtype=x_t.dtype)
        return out + has.view(-1, *([1] * (x_t.dim() - 1)))


@pytest.mark.parametrize("esd", [dict(entropy_weight=0.0, camera_dropout=0.0), dict()], ids=["no entropy", "2D"])
def test_esd_is_vsd_draw_for_draw_with_no_entropy_or_without_cameras(rows, esd):
    """λ = 0 is VSD; so is the default ESD on 2D rows (nothing to drop): the same directions, fits and parameters over
    several steps, so no extra draw from the random stream either."""
    guidance, x, noise = rows
    t = torch.tensor([100, 700])
    results = []
    for loss in (VSD(), ESD(**esd)):
        torch.manual_seed(1)
        loss.attach(guidance, x)
        for step in range(3):
            g, _ = loss.direction(guidance, x, t, noise, ["cat", "dog"], step)
            fit = loss.after_step(guidance, x, ["cat", "dog"])["vsd/source_loss"]
        results.append((g, fit, [p.detach().clone() for p in loss.source.parameters()]))
    (g0, fit0, p0), (g1, fit1, p1) = results
    assert torch.equal(g0, g1) and torch.equal(fit0, fit1) and all(torch.equal(a, b) for a, b in zip(p0, p1))


def test_esd_mixes_the_camera_free_source_in_one_call_and_drops_cameras_when_fitting(rows):
    guidance, x, noise = rows
    guidance.make_source_model = CameraSource
    front, back = (0.0, 15.0, 3.0, 40.0), (180.0, 15.0, 3.0, 40.0)
    prompts = [Prompt("cat", ", front view", front), Prompt("dog", ", back view", back)]
    loss = ESD(entropy_weight=0.25, camera_dropout=1.0)
    loss.attach(guidance, x)
    t = torch.tensor([100, 700])
    g, _ = loss.direction(guidance, x, t, noise, prompts, 0)
    x_t = add_noise(x, noise, t, ABAR)
    free = 0.3 * x_t - 0.2  # LinearSource's w = 0.3, v = −0.2, no camera
    source = free + 0.75 * ((free + 1) - free)  # ε(∅_c) + (1 − λ)(ε(c) − ε(∅_c))
    cond = torch.cat([eps("cat, front view", x_t[:1], 100), eps("dog, back view", x_t[1:], 700)])
    uncond = eps("", x_t, t)
    torch.testing.assert_close(g, uncond + 7.5 * (cond - uncond) - source, rtol=1e-5, atol=1e-5)
    (_, _, asked) = loss.source.calls[0]
    assert len(loss.source.calls) == 1 and asked == ["cat, front view", "dog, back view", "cat", "dog"]
    loss.condition_dropout = 0.0
    loss.after_step(guidance, x, prompts)  # camera_dropout 1: fitted on the captions alone, as "no camera" rows
    assert loss.source.calls[-1][2] == ["cat", "dog"] and loss.source.cameras_seen[-1] == [None, None]
    loss.camera_dropout = 0.0
    loss.after_step(guidance, x, prompts)
    assert loss.source.calls[-1][2] == ["cat, front view", "dog, back view"]
    assert loss.source.cameras_seen[-1] == [front, back]
    with pytest.raises(ValueError, match="entropy_weight"):
        ESD(entropy_weight=1.5)
    with pytest.raises(ValueError, match="loss.source=learned"):
        ESD(source="particles").check_rows(prompts)


def test_ddim_move_inverts_itself():
    z, e = torch.randn(3, 4), torch.randn(3, 4)
    a, b = torch.tensor(0.9), torch.tensor(0.3)
    torch.testing.assert_close(ddim_move(ddim_move(z, e, a, b), e, b, a), z)


# ---------------------------------------------------------------------------------------------------------------------
# The overlays' constants and composed strings, literally as their authors have them
# ---------------------------------------------------------------------------------------------------------------------


def composed(experiment: str):
    from hydra.utils import instantiate

    from scoredist.scripting import compose_train

    cfg = compose_train([f"+experiment={experiment}", "prompt=a hamburger"])
    return cfg, instantiate(cfg.loss), instantiate(cfg.schedule)


LUCID_NEGATIVE = (
    "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, oversaturation."
)


def test_ism_overlays_are_lucid_dreamers_settings():
    cfg, loss, schedule = composed("t23d_ism")
    assert loss.negative_prompt == LUCID_NEGATIVE and loss.inverse_prompt == ""
    assert (loss.guidance_scale, loss.interval, loss.interval_start, loss.grad_scale) == (7.5, 80, 100, 0.1)
    assert (loss.inversion_stride, loss.inversion_steps, loss.inversion_guidance_scale) == (200, 5, 1.0)
    assert loss.warmup_steps == 1500 and loss.weighting == "sqrt((1-abar)/abar)" and loss.reduction == "sum"
    assert cfg.trainer.max_steps == 5000 and cfg.renderer.batch_size == 4  # C_batch_size
    assert (cfg.renderer.height, cfg.renderer.width, list(cfg.renderer.stages)) == (512, 512, [])
    # t ∈ [0.02, 0.98] at the start, t_max down to 0.5 by the end of the 1500-step warm-up
    bounds = [schedule.index_range(s, 1000)[:2] for s in (0, 750, 1500, 4000)]
    assert bounds == [(20, 980), (20, 740), (20, 500), (20, 500)]
    row = Prompt("a hamburger", ", front view")
    assert loss.conditioning_texts([row]) == [
        ("the prompt", "a hamburger, front view"),
        ("the empty prompt", ""),
        ("loss.negative_prompt", LUCID_NEGATIVE),
        ("loss.inverse_prompt", ""),
    ]
    _, loss_2d, schedule_2d = composed("t2i_ism")
    assert loss_2d.negative_prompt == "" and loss_2d.warmup_steps == 300  # 30 % of 1000 steps
    assert schedule_2d.index_range(300, 1000)[:2] == (20, 500)


def test_sdi_overlays_are_the_authors_threestudio_settings():
    cfg, loss, schedule = composed("t23d_sdi")
    assert (loss.guidance_scale, loss.inversion_guidance_scale, loss.inversion_steps) == (7.5, -7.5, 10)
    assert (loss.inversion_eta, loss.overshoot, loss.cfg_form, loss.inversion) == (0.3, 100, "standard", True)
    assert (loss.weighting, loss.reduction) == ("sqrt((1-abar)/abar)", "mean")
    assert cfg.trainer.max_steps == 10000 and (cfg.renderer.height, cfg.renderer.width) == (512, 512)
    assert (cfg.renderer.front_threshold, cfg.renderer.back_threshold) == (45.0, 45.0)  # threestudio's default
    assert cfg.renderer.bound == 2.0 and list(cfg.renderer.distance_range) == [1.5, 2.0]  # radius 2, distance 1.5–2
    assert cfg.optimizer.weight_decay == 0.0 and list(cfg.optimizer.betas) == [0.9, 0.99]  # Adam
    # t = int(1000 · (0.98 − 0.73 · step / 10000)): one t per step, 980 → 250
    assert [schedule.index_range(s, 1000)[:2] for s in (0, 5000, 10000)] == [(980, 980), (615, 615), (250, 250)]
    cfg_2d, loss_2d, schedule_2d = composed("t2i_sdi")
    assert loss_2d.cfg_form == "text" and cfg_2d.optimizer.lr == 0.1 and cfg_2d.optimizer.weight_decay == 0.0
    assert [schedule_2d.index_range(s, 1000)[:2] for s in (0, 1000)] == [(980, 980), (20, 20)]


def test_esd_overlay_is_prolificdreamer_with_guidance_scale_lora_one_half():
    cfg, loss, schedule = composed("t23d_esd")
    assert (loss.entropy_weight, loss.camera_dropout, loss.condition_dropout) == (0.5, 0.1, 0.0)
    assert (loss.guidance_scale, loss.lora_lr, loss.weighting) == (7.5, 1e-4, "1-abar")
    assert cfg.trainer.max_steps == 25000 and schedule.index_range(5001, 1000)[:2] == (20, 500)
    assert composed("t2i_esd")[1].entropy_weight == 0.5


def test_asd_overlays_are_scaledreamers_settings():
    cfg, loss, schedule = composed("t23d_asd")
    assert (loss.guidance_scale, loss.plus_ratio, loss.plus_random, loss.negative_prompt) == (7.5, 0.1, True, "")
    assert loss.weighting == "1-abar" and cfg.seed == 10 and list(cfg.optimizer.betas) == [0.0, 0.99]
    assert cfg.renderer.sparsity_weight == 30.0 and cfg.renderer.stages[0].height == 256
    # [0, 0.5, 0.02, 25000] and [0, 0.98, 0.5, 25000]: both bounds linear over the run; the loss reads the same one
    assert [schedule.index_range(s, 1000)[:2] for s in (0, 12500, 25000)] == [(500, 980), (260, 740), (20, 500)]
    assert loss.schedule.index_range(12500, 1000) == schedule.index_range(12500, 1000)


def test_sdi_inverts_to_t_plus_delta_and_labels_the_latent_t(rows, monkeypatch):
    """δ pinned to 47: the path ends at 297 (not 250), and the prediction and κ are then taken at t = 250."""
    guidance, x, noise = rows
    monkeypatch.setattr(torch, "randint", lambda low, high, shape: torch.full(shape, 47))
    loss = SDI(inversion_eta=0.0, cfg_form="standard")
    g, _ = loss.direction(guidance, x[:1], torch.tensor([250]), noise[:1], ["cat"], 0)
    z = x[:1]
    for t_from, t_to in zip([0, 1, 101, 201], [1, 101, 201, 297]):
        e = eps("", z, t_from) - 7.5 * (eps("cat", z, t_from) - eps("", z, t_from))
        z = move(z, e, t_from, t_to)
    kappa = (z - math.sqrt(ab(250)) * x[:1]) / math.sqrt(1 - ab(250))
    eps_hat = eps("", z, 250) + 7.5 * (eps("cat", z, 250) - eps("", z, 250))
    torch.testing.assert_close(g, eps_hat - kappa, rtol=1e-4, atol=1e-4)
