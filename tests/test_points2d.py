"""The 2D points world: the exact prior's ε̂, its prompts, particle flows under SDS and "ours", the points renderer."""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from scoredist.guidance.base import add_noise, scaled_linear_alphas_cumprod
from scoredist.guidance.exact.points2d import Points2DPrior, PointsSourceModel
from scoredist.prompts import NFSD_NEGATIVE, SRC_SUFFIX, TGT_SUFFIX
from scoredist.renderers.points import PointsRenderer

CONF = Path(__file__).resolve().parents[1] / "conf"
RING_TGT = "a ring" + TGT_SUFFIX
RING_SRC = "a ring" + SRC_SUFFIX


@pytest.fixture(scope="module")
def prior() -> Points2DPrior:
    return Points2DPrior()


def _dot_prior(**kwargs) -> Points2DPrior:
    """A world with one shape, "dot": a single Gaussian at (1, −0.5) in each variant."""
    return Points2DPrior(shapes={"dot": [[1.0, -0.5]]}, **kwargs)


# ---------------------------------------------------------------------------------------------- exact ε̂
def test_single_gaussian_eps_is_the_textbook_formula():
    # x ~ N(μ, σ² I), x_t = a x + b ε  ⇒  E[ε | x_t] = b (x_t − a μ) / (a² σ² + b²)
    prior = _dot_prior(sharp_std=0.3, degraded_std=1.0)
    mu, abar = torch.tensor([1.0, -0.5], dtype=torch.float64), scaled_linear_alphas_cumprod()
    t = torch.tensor([0, 10, 250, 500, 750, 999])
    x_t = torch.tensor([[0.0, 0.0], [1.0, -0.5], [2.0, 1.0], [-1.0, 3.0], [0.5, 0.5], [-2.0, -2.0]])
    a, b = abar[t].sqrt()[:, None], (1 - abar[t]).sqrt()[:, None]

    eps = prior.predict_noise(x_t, t, ["a dot, sharp"] * 6)
    assert eps.dtype == torch.float32 and eps.shape == (6, 2)
    expected = b * (x_t.double() - a * mu) / (a**2 * 0.09 + b**2)
    torch.testing.assert_close(eps.double(), expected, atol=1e-5, rtol=1e-5)

    # the degraded variant has σ = 1, where a² + b² = 1 makes it ε̂ = b (x_t − a μ); at x_t = 0: −a b μ
    eps = prior.predict_noise(x_t, t, ["the dot, blurry"] * 6)
    torch.testing.assert_close(eps.double(), b * (x_t.double() - a * mu), atol=1e-5, rtol=1e-5)
    assert eps[0, 0].item() == pytest.approx(-math.sqrt(abar[0] * (1 - abar[0])) * 1.0, abs=1e-6)


def test_no_descriptor_is_the_weighted_mixture_of_both_variants():
    prior = _dot_prior(sharp_std=0.2, degraded_std=0.8, sharp_weight=0.7)
    t = torch.tensor([300, 300])
    x_t = torch.tensor([[0.9, -0.4], [3.0, 2.0]], dtype=torch.float64)
    a2 = scaled_linear_alphas_cumprod()[300]
    a, b2 = a2.sqrt(), 1 - a2
    mu = torch.tensor([1.0, -0.5], dtype=torch.float64)
    # responsibilities and posterior means written out per component, independently of mixture.py
    terms = []
    for weight, var in ((0.7, 0.04), (0.3, 0.64)):
        s2 = a2 * var + b2
        log_r = math.log(weight) - ((x_t - a * mu) ** 2).sum(1) / (2 * s2) - torch.log(2 * math.pi * s2)
        terms.append((log_r, mu + a * var * (x_t - a * mu) / s2))
    r = torch.softmax(torch.stack([lr for lr, _ in terms], 1), 1)
    mean_x0 = r[:, :1] * terms[0][1] + r[:, 1:] * terms[1][1]
    expected = (x_t - a * mean_x0) / b2.sqrt()
    eps = prior.predict_noise(x_t.float(), t, ["a dot", "a dot"])
    torch.testing.assert_close(eps.double(), expected, atol=1e-5, rtol=1e-5)
    # the far point is explained by the wide (degraded) component, the near one mostly by the sharp one
    assert r[0, 0] > 0.5 > r[1, 0]


def test_batched_mixed_prompts_equal_row_by_row(prior):
    g = torch.Generator().manual_seed(0)
    prompts = [
        "a ring",
        RING_TGT,
        RING_SRC,
        "",
        "a grid, blurry",
        "a spiral, sharp",
        "a moons",
        ", noisy",
        NFSD_NEGATIVE,
    ]
    n = len(prompts)
    x_t = 2 * torch.randn(n, 2, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    batched = prior.predict_noise(x_t, t, prompts)
    rows = torch.cat([prior.predict_noise(x_t[i : i + 1], t[i : i + 1], [prompts[i]]) for i in range(n)])
    torch.testing.assert_close(batched, rows, atol=1e-6, rtol=1e-6)
    # and the conditions really differ: at a low noise level ε̂ depends on the prompt
    same = prior.predict_noise(x_t[:1].expand(n, 2), torch.full((n,), 100), prompts)
    assert (same - same[3]).abs().amax(1).max() > 0.05


# ---------------------------------------------------------------------------------------------- prompts
def _support(prior: Points2DPrior, prompt: str) -> set[tuple[str, str]]:
    """Which (shape, variant) blocks a prompt gives weight to."""
    w = prior.log_weights(prompt)
    return {key for key, block in prior._blocks.items() if torch.isfinite(w[block]).all()}


def test_prompt_parsing(prior):
    assert prior.parse("a ring") == (("ring",), None)
    assert prior.parse(RING_TGT) == (("ring",), "sharp")
    assert prior.parse(RING_SRC) == (("ring",), "degraded")
    assert prior.parse("  The RING ,  High-Quality") == (("ring",), "sharp")
    assert prior.parse("a ring, a grid") == (("ring", "grid"), None)
    assert prior.parse("") == (("ring", "grid", "spiral", "moons"), None)
    assert prior.parse(NFSD_NEGATIVE)[1] == "degraded"

    assert _support(prior, RING_TGT) == {("ring", "sharp")}
    assert _support(prior, ", blurry") == {(s, "degraded") for s in prior.shape_names}
    assert len(_support(prior, "")) == 8 and torch.isfinite(prior.log_weights("")).all()
    # weights: "a ring" puts sharp_weight (0.5) on its 8 sharp modes, "" splits that over 4 shapes
    w = prior.log_weights("a ring").exp()
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert w[prior._blocks[("ring", "sharp")]].tolist() == pytest.approx([0.5 / 8] * 8)
    assert prior.log_weights("").exp()[prior._blocks[("grid", "degraded")]].sum().item() == pytest.approx(0.125)


def test_unknown_word_raises_with_the_vocabulary(prior):
    with pytest.raises(ValueError, match="vocabulary") as err:
        prior.check_prompt("a photo of a hamburger")
    message = str(err.value)
    for word in ("hamburger", "ring", "grid", "spiral", "moons", "sharp", "oversaturated", "bad structure"):
        assert word in message
    with pytest.raises(ValueError, match="mixes sharp and degraded"):
        prior.check_prompt("a ring, blurry, sharp")
    with pytest.raises(ValueError):
        prior.predict_noise(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), ["a sharp ring"])


def test_log_prob_is_a_normalised_density(prior):
    # a midpoint sum over [−5, 5]² with spacing h = σ/2 integrates a Gaussian to ~exp(−2π²σ²/h²) ≈ 1e-34 accuracy
    c = torch.arange(-5, 5, 0.05, dtype=torch.float64) + 0.025
    grid = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1)
    for prompt in ("a ring", RING_TGT, "a moons, blurry"):
        mass = prior.density(prompt, grid).sum().item() * 0.05**2
        assert mass == pytest.approx(1.0, abs=1e-4), prompt
    # at a sharp ring mode: log(1/8 · 1/(2π σ²)) with σ = 0.1
    assert prior.log_prob(torch.tensor([[2.0, 0.0]]), RING_TGT).item() == pytest.approx(
        math.log(1 / 8 / (2 * math.pi * 0.01)), abs=1e-6
    )


def test_sample_prior_matches_the_named_variant(prior):
    g = torch.Generator().manual_seed(0)
    sharp = prior.sample_prior(RING_TGT, 4000, g)
    radius = sharp.norm(dim=1)
    assert radius.mean().item() == pytest.approx(2.0, abs=0.02)  # 8 modes on the radius-2 circle, σ = 0.1
    assert radius.std().item() == pytest.approx(0.1, abs=0.01)
    assert prior.sample_prior(RING_SRC, 4000, g).norm(dim=1).std().item() > 0.3  # σ = 0.4


# ---------------------------------------------------------------------------------------------- particle flows
def _flow(prior, x0, direction, steps, t_range, lr=0.02, seed=0):
    """Plain particle loop: every particle is a batch row; ∇x = w(t)·g with w = 1 − ᾱ_t; Adam on all at once."""
    g = torch.Generator().manual_seed(seed)
    abar = prior.alphas_cumprod
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        t = torch.randint(*t_range, (x.shape[0],), generator=g)
        noise = torch.randn(x.shape, generator=g)
        x_t = add_noise(x.detach(), noise, t, abar)
        x.grad = (1 - abar[t])[:, None] * direction(x_t, t, noise)
        opt.step()
    return x.detach()


def _mode_distance(prior, x: torch.Tensor) -> float:
    """Median distance of particles (N, 2) to the nearest sharp ring mode."""
    modes = prior.mixture_for(RING_TGT).means.float()
    return torch.cdist(x, modes).min(1).values.median().item()


def test_sds_flow_raises_target_log_density(prior):
    n = 256
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))

    def sds(x_t, t, noise):  # g = ε̂(x_t; y) − ε
        return prior.predict_noise(x_t, t, [RING_TGT] * n) - noise

    x = _flow(prior, x0, sds, steps=300, t_range=(20, 500))
    before, after = prior.log_prob(x0, RING_TGT).mean().item(), prior.log_prob(x, RING_TGT).mean().item()
    # measured over seeds 0–3: −55…−59 → −30…−31 (a standard normal cloud sits ~1 away from the σ = 0.1 modes)
    assert after > before + 15, (before, after)
    # the median distance to the nearest mode drops (measured 0.93…1.00 → 0.76…0.78)
    assert _mode_distance(prior, x) < _mode_distance(prior, x0) - 0.1


def test_ours_direction_moves_source_particles_to_the_target(prior):
    n = 256
    x0 = prior.sample_prior(RING_SRC, n, torch.Generator().manual_seed(2))

    def ours(x_t, t, noise):  # g = ε̂(x_t; y_tgt) − ε̂(x_t; y_src), both conditions in one batched call
        eps = prior.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), [RING_TGT] * n + [RING_SRC] * n)
        return eps[:n] - eps[n:]

    x = _flow(prior, x0, ours, steps=200, t_range=(20, 980))
    before, after = prior.log_prob(x0, RING_TGT).mean().item(), prior.log_prob(x, RING_TGT).mean().item()
    # measured over seeds 0–3: −13…−15 → −3.7…−4.2; the sharp modes' peak is +0.69
    assert after > before + 6, (before, after)
    # the median distance to the nearest sharp mode nearly halves (measured 0.43…0.52 → 0.25…0.26)
    assert _mode_distance(prior, x) < 0.65 * _mode_distance(prior, x0)


# ---------------------------------------------------------------------------------------------- decode, renderer
def test_decode_draws_particles_at_their_pixels():
    prior = Points2DPrior(preview_size=64, extent=3.0)
    img = prior.decode(torch.tensor([[0.0, 0.0], [2.9, 2.9], [10.0, 0.0]]))
    assert img.shape == (1, 3, 64, 64) and 0 <= img.min() and img.max() <= 1
    red = lambda r, c: img[0, 0, r, c] > 0.8 and img[0, 1, r, c] < 0.2
    assert red(32, 32)  # (0, 0) → column ⌊3/6·64⌋ = 32, row 32
    assert red(1, 62)  # (2.9, 2.9) → top-right corner (y points up)
    assert img[0, :, 63, 0].min() > 0.95  # bottom-left corner: no particle, no density → white
    # the background shows the density: a sharp ring mode (2, 0) is tinted, i.e. not white
    assert img[0, 0, 32, 53] < 0.5
    # after the trainer checks the run's prompt, the background is that shape's target only
    at = lambda r, c: prior.decode(torch.empty(0, 2))[0, 0, r, c].item()
    assert at(32, 32) < 0.5  # the grid's central mode (0, 0)
    prior.check_prompt("a ring")
    assert at(32, 32) > 0.95 and at(32, 53) < 0.5  # (0, 0) is empty for the ring; its mode (2, 0) is tinted


def points_renderer(seed: int, **kwargs) -> PointsRenderer:
    """A points renderer bound to one sample with this seed, as the trainer binds it."""
    renderer = PointsRenderer(**kwargs)
    renderer.bind(None, [seed])
    return renderer


def test_renderer_particles_are_the_batch_and_seeded():
    a, b = points_renderer(3, num_points=32), points_renderer(3, num_points=32)
    assert torch.equal(a.points, b.points)
    assert not torch.equal(a.points, points_renderer(4, num_points=32).points)
    out = a()
    assert out.x is a.points and out.x.shape == (32, 2) and out.samples == [0] * 32
    assert a.outputs_rgb is False
    shifted = points_renderer(0, num_points=2000, init_mean=(1.0, -2.0), init_std=0.5).points
    assert shifted.mean(0).tolist() == pytest.approx([1.0, -2.0], abs=0.05)
    assert shifted.std(0).tolist() == pytest.approx([0.5, 0.5], abs=0.03)


def test_renderer_recording_is_capped():
    r = points_renderer(0, num_points=4, record_every=1, max_records=4)
    for _ in range(10):
        r()
    # records at 0…4 overflow → keep 0, 2, 4 (every 2); 6 and 8 overflow again → keep 0, 4, 8 (every 4)
    assert r.snapshot_steps == [0, 4, 8] and r.record_every == 4
    assert r.trajectory().shape == (4, 4, 2)
    with torch.no_grad():  # previews and final images are not optimisation steps
        r()
    assert r.num_forwards == 10


def test_renderer_writes_a_readable_png(tmp_path, prior):
    r = points_renderer(0, num_points=64, record_every=5)
    opt = torch.optim.SGD(r.parameters(), lr=0.2)
    for _ in range(40):  # pull every particle toward (1.5, 1.5): x ← 1.5 + 0.6 (x − 1.5)
        opt.zero_grad()
        ((r().x - 1.5) ** 2).sum().backward()
        opt.step()
    paths = r.write_artifacts(tmp_path, prior.decode)
    assert [p.name for p in paths] == ["particles.png", "particles.npz"] and all(p.exists() for p in paths)

    img = iio.imread(paths[0])
    assert img.shape == (552, 1024, 3) and img.dtype == np.uint8  # two 512² panels under 40-pixel titles
    assert img.std() > 20  # not blank
    left = img[40:, :512].astype(int)
    blue = (left[..., 2] > 180) & (left[..., 0] < 100)
    red = (left[..., 0] > 180) & (left[..., 1] < 80) & (left[..., 2] < 80)
    assert blue.sum() > 200 and red.sum() > 10  # initial cloud and the final clump are both drawn

    saved = np.load(paths[1])
    assert saved["trajectory"].shape == (9, 64, 2)  # 8 snapshots (steps 0, 5, …, 35) and the final positions
    np.testing.assert_allclose(saved["final"], r.points.detach().numpy())
    np.testing.assert_allclose(saved["final"].mean(0), [1.5, 1.5], atol=1e-3)


# ---------------------------------------------------------------------------------------------- VSD source model
def test_source_model_learns_to_denoise_the_prior(prior):
    torch.manual_seed(0)
    model = prior.make_source_model(residual=False)
    assert isinstance(model, PointsSourceModel)
    abar, g = prior.alphas_cumprod, torch.Generator().manual_seed(0)

    def batch(n):
        x, t, noise = prior.sample_prior("a ring", n, g), torch.randint(0, 1000, (n,), generator=g), torch.randn(n, 2)
        return add_noise(x, noise, t, abar), t, noise

    x_eval, t_eval, eps_eval = batch(4096)

    def eval_loss():
        with torch.no_grad():
            return ((model.predict_noise(x_eval, t_eval, ["a ring"] * 4096) - eps_eval) ** 2).mean().item()

    exact = ((prior.predict_noise(x_eval, t_eval, ["a ring"] * 4096) - eps_eval) ** 2).mean().item()
    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(200):
        x_t, t, noise = batch(256)
        loss = ((model.predict_noise(x_t, t, ["a ring"] * 256) - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    # measured: ≈ 1.0 → 0.46 with the exact MMSE at ≈ 0.37
    assert before > 0.9 and after < 0.6 and after > exact - 0.02, (before, after, exact)


def test_residual_source_model_starts_at_the_prior(prior):
    model = prior.make_source_model()
    names = {name for name, _ in model.named_parameters()}
    assert names and all(n.startswith(("mlp.", "embedding.")) for n in names)  # only ψ is trainable
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(8, 2, generator=g), torch.randint(0, 1000, (8,), generator=g)
    prompts = ["a ring", "", RING_SRC, RING_TGT] * 2
    torch.testing.assert_close(model.predict_noise(x_t, t, prompts), prior.predict_noise(x_t, t, prompts))
    model.predict_noise(x_t, t, prompts).sum().backward()
    assert model.mlp[-1].weight.grad.abs().sum() > 0
    assert model.prompt_index == {"": 0, "a ring": 1, RING_SRC: 2, RING_TGT: 3}


# ---------------------------------------------------------------------------------------------- configs
def test_configs_instantiate():
    guidance = instantiate(OmegaConf.load(CONF / "guidance" / "points2d.yaml"), device="cpu", precision="fp32")
    assert isinstance(guidance, Points2DPrior) and guidance.sample_shape() == (2,)
    assert guidance.num_train_timesteps == 1000
    guidance.check_resolution(7, 13)  # points accept any size
    renderer = instantiate(OmegaConf.load(CONF / "renderer" / "points.yaml"))
    renderer.bind(None, [0])
    assert isinstance(renderer, PointsRenderer) and renderer.points.shape == (512, 2)
    x = renderer().x
    assert guidance.predict_noise(x.detach(), torch.full((512,), 500), ["a ring"] * 512).shape == (512, 2)


def test_trajectory_survives_a_checkpoint_round_trip(tmp_path):
    from scoredist.checkpoint import load_checkpoint, save_checkpoint

    renderer = points_renderer(0, num_points=16, record_every=2)
    for _ in range(5):
        renderer().x.sum().backward()
        with torch.no_grad():
            renderer.points += 0.1
    path = save_checkpoint({"renderer": renderer.state_dict()}, tmp_path / "last.pt")
    restored = points_renderer(1, num_points=16, record_every=2)
    restored.load_state_dict(load_checkpoint(path)["renderer"])
    assert restored.num_forwards == 5 and restored.snapshot_steps == [0, 2, 4]
    torch.testing.assert_close(restored.trajectory(), renderer.trajectory())
