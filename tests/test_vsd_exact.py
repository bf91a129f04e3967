"""VSD on the exact priors: the particle score as a source, the fit ratio, and the shapes world's learned source."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from scoredist.guidance.base import add_noise, cfg
from scoredist.guidance.exact.particles import ParticleScore
from scoredist.guidance.exact.shapes import ShapesPrior, ShapesSourceModel
from scoredist.guidance.exact.vocabulary import COLOURS, SHAPES
from scoredist.losses.vsd import VSD
from scoredist.prompts import Prompt
from scoredist.train import train
from tests.stubs import StubGuidance
from tests.test_train import config

ABAR = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)  # a three-step schedule: t indexes it


@pytest.fixture(scope="module")
def prior():
    return ShapesPrior()


def hand_eps(x_t, abar, particles, var):
    """E[ε | x_t] under (1/n) Σ_i N(x_i, var I), written out with plain floats:
    v = a² var + b², r_i ∝ exp(−‖x_t − a x_i‖² / 2v), E[x|x_t] = Σ r_i (x_i + a var (x_t − a x_i) / v),
    ε = (x_t − a E[x|x_t]) / b."""
    a, b = math.sqrt(abar), math.sqrt(1 - abar)
    v = a * a * var + b * b
    logs = [-sum((xt - a * xi) ** 2 for xt, xi in zip(x_t, p)) / (2 * v) for p in particles]
    top = max(logs)
    w = [math.exp(lg - top) for lg in logs]
    r = [wi / sum(w) for wi in w]
    mean = [
        sum(ri * (p[j] + a * var * (x_t[j] - a * p[j]) / v) for ri, p in zip(r, particles)) for j in range(len(x_t))
    ]
    return [(x_t[j] - a * mean[j]) / b for j in range(len(x_t))]


def test_particle_score_of_two_particles_is_the_hand_computed_mixture_denoiser():
    particles = [[1.0, 0.0, -0.5, 0.2], [-0.6, 0.4, 0.3, 0.0]]
    var = 0.3  # wide enough that both particles have a real share of the posterior
    score = ParticleScore(ABAR, variance=var)
    score.update(torch.tensor(particles), ["cat", "cat"])
    x_t = torch.tensor([[0.2, 0.1, -0.1, 0.3], [0.9, -0.2, 0.0, 0.1], [-0.4, 0.5, 0.2, -0.3]])
    t = torch.tensor([0, 1, 2])
    got = score.predict_noise(x_t, t, ["cat"] * 3)
    for row in range(3):
        want = hand_eps(x_t[row].tolist(), float(ABAR[row]), particles, var)
        torch.testing.assert_close(got[row], torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=1e-6)
    # the case is not degenerate: the responsibilities are mixed at t=1, so neither particle alone gives that ε
    alone = [hand_eps(x_t[1].tolist(), float(ABAR[1]), [p], var) for p in particles]
    assert all((got[1] - torch.tensor(a)).abs().max() > 0.05 for a in alone)
    assert list(score.parameters()) == []


def test_particle_score_groups_rows_by_prompt_and_the_empty_prompt_sees_all():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 4, generator=gen)
    prompts = [Prompt("a"), "b", "a", Prompt("b"), "a"]  # Prompt rows and strings group by their text
    score = ParticleScore(ABAR)
    score.update(x, prompts)
    only_a, only_b = ParticleScore(ABAR), ParticleScore(ABAR)
    only_a.update(x[[0, 2, 4]], ["a"] * 3)
    only_b.update(x[[1, 3]], ["b"] * 2)
    everything = ParticleScore(ABAR)
    everything.update(x, ["z"] * 5)
    x_t = torch.randn(3, 3, 4, 4, generator=gen)
    t = torch.tensor([1, 1, 1])
    got = score.predict_noise(x_t, t, ["a", Prompt("b"), ""])
    torch.testing.assert_close(got[0], only_a.predict_noise(x_t[:1], t[:1], ["a"])[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], only_b.predict_noise(x_t[1:2], t[:1], ["b"])[0], rtol=0, atol=0)
    torch.testing.assert_close(got[2], everything.predict_noise(x_t[2:], t[:1], ["z"])[0], rtol=0, atol=0)
    assert not torch.allclose(got[0], only_b.predict_noise(x_t[:1], t[:1], ["b"])[0])  # B's particles do matter
    with pytest.raises(ValueError, match="no particles of prompt 'c'"):
        score.predict_noise(x_t[:1], t[:1], ["c"])


def test_particle_score_state_dict_round_trips_through_a_weights_only_checkpoint():
    gen = torch.Generator().manual_seed(1)
    score = ParticleScore(ABAR, variance=0.05)
    score.update(torch.randn(4, 2, generator=gen), ["a", "b", "a", "b"])
    buffer = io.BytesIO()
    torch.save(score.state_dict(), buffer)
    buffer.seek(0)
    restored = ParticleScore(ABAR)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x_t, t = torch.randn(3, 2, generator=gen), torch.tensor([0, 1, 2])
    prompts = ["a", "b", ""]
    torch.testing.assert_close(restored.predict_noise(x_t, t, prompts), score.predict_noise(x_t, t, prompts))
    assert restored.variance == 0.05


def test_vsd_with_the_particle_source_subtracts_the_particle_score():
    guidance = StubGuidance({"cat": (0.8, 0.1), "": (0.3, -0.2)}, t_coefficient=0.5)
    gen = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)
    loss = VSD(guidance_scale=3.0, source="particles", particle_variance=0.02)
    loss.attach(guidance, x0)
    assert loss.optimizer is None and list(loss.source.parameters()) == []
    logs = loss.after_step(guidance, x0, ["cat", "cat"])  # the particles are the renders, no gradient step
    assert logs == {}
    t, noise = torch.tensor([100, 800]), torch.randn(2, 3, 8, 8, generator=gen)
    g, _ = loss.direction(guidance, x1, t, noise, ["cat", "cat"], 0)
    x_t = add_noise(x1, noise, t, guidance.alphas_cumprod)
    reference = ParticleScore(guidance.alphas_cumprod, variance=0.02)
    reference.update(x0, ["cat", "cat"])
    eps_cfg = cfg(guidance.predict_noise(x_t, t, ["", ""]), guidance.predict_noise(x_t, t, ["cat", "cat"]), 3.0)
    torch.testing.assert_close(g, eps_cfg - reference.predict_noise(x_t, t, ["cat", "cat"]), rtol=1e-5, atol=1e-5)
    # a resumed loss holds the same particles
    state = loss.state_dict()
    resumed = VSD(guidance_scale=3.0, source="particles", particle_variance=0.02)
    resumed.attach(guidance, x0)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.direction(guidance, x1, t, noise, ["cat", "cat"], 0)[0], g)
    # a new chunk starts without particles: its first direction takes its own renders
    loss.attach(guidance, x1)
    assert loss.source.particles == {}


def test_vsd_refuses_an_unknown_source():
    with pytest.raises(ValueError, match="learned"):
        VSD(source="lora")


def test_fit_ratio_is_zero_for_the_particle_score_and_one_for_the_prior_itself(prior):
    gen = torch.Generator().manual_seed(3)
    x = prior.reference_image("a red cube")[None].repeat(2, 1, 1, 1) + 0.2 * torch.randn(2, 3, 32, 32, generator=gen)
    prompts = ["a red cube", "a red cube"]
    loss = VSD()
    loss.attach(prior, x)
    at_prior = loss.fit_ratios(prior, x, prompts, step=1)  # ε_ψ = ε_φ, as attached
    assert sorted(at_prior) == [f"vsd/fit_ratio_t{lo}-{lo + 250}" for lo in (0, 250, 500, 750)]
    assert all(isinstance(v, float) and v == pytest.approx(1.0, abs=1e-5) for v in at_prior.values())
    loss.source = ParticleScore(prior.alphas_cumprod)
    loss.source.update(x, prompts)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in loss.fit_ratios(prior, x, prompts, step=1).values())


def test_fit_ratio_is_only_measured_on_exact_priors_for_a_learned_source(prior):
    x = torch.randn(2, 3, 8, 8)
    stub = VSD()
    stub.attach(StubGuidance(), x)
    assert stub.measure(StubGuidance(), x, ["cat", "cat"], step=10) == {}
    particles = VSD(source="particles")
    particles.attach(prior, torch.zeros(2, 3, 32, 32))
    assert particles._fit_reference is None


def test_a_short_vsd_run_on_the_shapes_prior_logs_finite_fit_ratios(tmp_path):
    world = ("guidance=shapes", "guidance.num_azimuths=2", "guidance.elevations=[15.0]")  # a small world: fast ∅
    overrides = (*world, "prompt=a red cube", "loss=vsd", "trainer.log_every=2")
    run = train(config(*overrides, "trainer.max_steps=2", run_dir=tmp_path / "run")).run_dir
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ratios = {k: v for k, v in record.items() if k.startswith("vsd/fit_ratio")}
    assert sorted(ratios) == ["vsd/fit_ratio_t0-250", "vsd/fit_ratio_t250-500", "vsd/fit_ratio_t500-750",
                              "vsd/fit_ratio_t750-1000"]  # fmt: skip
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in ratios.values())


def world_captions() -> list[str]:
    return [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c in COLOURS for s in SHAPES]


def test_shapes_source_model_gives_every_caption_its_own_slot_and_starts_at_the_prior(prior):
    captions = world_captions()
    assert len(captions) == 30 and {"a yellow cylinder", "an orange cube"} <= set(captions)
    source = prior.make_source_model()
    slots = source.prompt_slot(["", *captions]).tolist()
    assert len(set(slots)) == 31 and slots[0] == 0
    # the slots survive a state dict, in the order they were first seen
    restored = prior.make_source_model()
    restored.load_state_dict(source.state_dict())
    assert restored.prompt_slot(["an orange cube", "a yellow cylinder", ""]).tolist() == [
        slots[1 + captions.index("an orange cube")],
        slots[1 + captions.index("a yellow cylinder")],
        0,
    ]
    gen = torch.Generator().manual_seed(4)
    x_t = torch.randn(2, 3, 32, 32, generator=gen)
    t = torch.tensor([10, 990])
    prompts = ["a yellow cylinder", "an orange cube"]  # the two the former CRC-32 slots confused
    torch.testing.assert_close(source.predict_noise(x_t, t, prompts), prior.predict_noise(x_t, t, prompts), rtol=0,
                               atol=0)  # fmt: skip


def test_shapes_source_model_refuses_more_prompts_than_slots(prior):
    source = ShapesSourceModel(prior, prompt_slots=3)
    source.prompt_slot(["a red cube", "a blue cone"])  # "" holds slot 0
    with pytest.raises(ValueError, match="at most 3 distinct prompts"):
        source.prompt_slot(["a green sphere"])


def test_shapes_source_model_sees_the_whole_image(prior):
    """A change in one corner of x_t moves the residual in the opposite corner (the old net's reach was 7×7)."""
    source = prior.make_source_model()
    torch.nn.init.normal_(source.conv_out.weight, std=0.1)  # a trained-looking last layer, instead of zeros
    gen = torch.Generator().manual_seed(5)
    x_t = torch.randn(1, 3, 32, 32, generator=gen)
    t = torch.tensor([400])
    eps = prior.predict_noise(x_t, t, ["a red cube"])
    before = source.residual(x_t, t, ["a red cube"], eps_prior=eps)
    moved = x_t.clone()
    moved[..., :4, :4] += 1.0
    after = source.residual(moved, t, ["a red cube"], eps_prior=eps)
    assert (after - before)[..., -4:, -4:].abs().max() > 1e-6
