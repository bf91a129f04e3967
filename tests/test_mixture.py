"""GaussianMixture: the closed-form ε̂ against the textbook formula, numerical integration and DDIM sampling."""

import math

import pytest
import torch

from scoredist.guidance.base import Guidance, ddim_sample, scaled_linear_alphas_cumprod
from scoredist.guidance.exact.mixture import GaussianMixture

ABAR = scaled_linear_alphas_cumprod()


def _quadrature_eps(grid_x0: torch.Tensor, prior_density: torch.Tensor, x_t: torch.Tensor, abar: float, cell: float):
    """E[ε | x_t] by summing over a grid of x0 (G, D): posterior ∝ p(x0) N(x_t; a x0, b² I), ε = (x_t − a x0) / b."""
    a, b = math.sqrt(abar), math.sqrt(1 - abar)
    log_lik = -0.5 * ((x_t[None] - a * grid_x0) ** 2).sum(1) / b**2
    w = prior_density * torch.exp(log_lik - log_lik.max()) * cell
    mean_x0 = (w[:, None] * grid_x0).sum(0) / w.sum()
    return (x_t - a * mean_x0) / b


def _mixture_density(grid: torch.Tensor, means, weights, variances) -> torch.Tensor:
    """Σ π_k N(x; μ_k, σ_k² I) on a grid (G, D) → (G,)."""
    d = grid.shape[1]
    out = torch.zeros(grid.shape[0], dtype=torch.float64)
    for mu, pi, var in zip(means, weights, variances):
        sq = ((grid - mu) ** 2).sum(1)
        out += pi * torch.exp(-0.5 * sq / var) / (2 * math.pi * var) ** (d / 2)
    return out


def test_single_gaussian_hand_computed_value():
    # N(1, 1) data, ᾱ = 0.5, x_t = 1: a = b = √½, ε̂ = b (x_t − a μ) / (a² σ² + b²) = √½ (1 − √½) / 1 = 0.2071068.
    mix = GaussianMixture(torch.tensor([[1.0]]), variances=1.0)
    eps = mix.predict_noise(torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64))
    assert abs(eps.item() - 0.20710678) < 1e-7


def test_single_gaussian_textbook_formula():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(1, 5, generator=gen, dtype=torch.float64)
    var = 0.3
    mix = GaussianMixture(mu, variances=var)
    t = torch.tensor([0, 10, 200, 500, 999])
    abar = ABAR[t]
    x_t = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a, b = abar.sqrt()[:, None], (1 - abar).sqrt()[:, None]
    expected = b * (x_t - a * mu) / (a**2 * var + b**2)
    torch.testing.assert_close(mix.predict_noise(x_t, abar), expected, rtol=0, atol=1e-12)


def test_1d_mixture_matches_numerical_integration():
    means = torch.tensor([[-2.0], [0.5], [3.0]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    variances = torch.tensor([0.05, 0.2, 0.1], dtype=torch.float64)
    mix = GaussianMixture(means, weights.log(), variances)
    grid = torch.linspace(-8, 8, 80001, dtype=torch.float64)[:, None]
    density = _mixture_density(grid, means, weights, variances)
    for t, x in [(30, -1.9), (150, 0.3), (400, 1.2), (700, -0.4), (990, 2.5)]:
        x_t = torch.tensor([x], dtype=torch.float64)
        expected = _quadrature_eps(grid, density, x_t, ABAR[t].item(), 16 / 80000)
        got = mix.predict_noise(x_t[None], ABAR[t : t + 1])[0]
        assert abs(got.item() - expected.item()) < 1e-6, (t, x, got, expected)


def test_2d_mixture_matches_numerical_integration():
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=torch.float64)
    weights = torch.tensor([0.4, 0.35, 0.25], dtype=torch.float64)
    var = 0.15
    mix = GaussianMixture(means, weights.log(), var)
    axis = torch.linspace(-5, 5, 801, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    density = _mixture_density(grid, means, weights, [var] * 3)
    cell = (10 / 800) ** 2
    for t, x in [(100, (-1.0, 0.2)), (300, (0.7, 0.6)), (600, (0.0, -1.0)), (900, (1.5, -0.5))]:
        x_t = torch.tensor(x, dtype=torch.float64)
        expected = _quadrature_eps(grid, density, x_t, ABAR[t].item(), cell)
        got = mix.predict_noise(x_t[None], ABAR[t : t + 1])[0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_minus_inf_log_weight_excludes_a_component():
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    full = GaussianMixture(means, torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)), 0.1)
    pair = GaussianMixture(means[:2], torch.log(torch.tensor([0.4, 0.6], dtype=torch.float64)), 0.1)
    x_t = torch.tensor([[0.3, 0.4], [-0.2, 1.0]], dtype=torch.float64)
    abar = ABAR[[250, 600]]
    row = torch.log(torch.tensor([0.2, 0.3, 0.0], dtype=torch.float64))  # log 0 = −inf
    got = full.predict_noise(x_t, abar, row.expand(2, -1))
    torch.testing.assert_close(got, pair.predict_noise(x_t, abar), rtol=0, atol=1e-12)
    assert not torch.allclose(got, full.predict_noise(x_t, abar), atol=1e-3)


class _MixtureGuidance(Guidance):
    """The 2-D mixture as a Guidance model, so that base.ddim_sample can integrate its probability-flow ODE."""

    def __init__(self, mixture: GaussianMixture):
        super().__init__(scaled_linear_alphas_cumprod())
        self.mixture = mixture

    def predict_noise(self, x_t, t, prompts):
        return self.mixture.predict_noise(x_t.double(), ABAR[t]).float()


def test_ddim_sampling_reproduces_mixture_moments():
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    var = 0.1
    mix = GaussianMixture(means, weights.log(), var)
    gen = torch.Generator().manual_seed(1)
    n = 20000
    # Start from the exact marginal at t = T−1 (ᾱ_999 ≈ 0.005 is not 0, so N(0, I) would be slightly off).
    abar_T = ABAR[-1]
    x_T = abar_T.sqrt() * mix.sample(n, gen) + (1 - abar_T).sqrt() * torch.randn(
        n, 2, generator=gen, dtype=torch.float64
    )
    x0 = ddim_sample(_MixtureGuidance(mix), x_T.float(), [""] * n, num_steps=200).double()

    mean = weights @ means
    second = (weights[:, None, None] * (means[:, :, None] * means[:, None, :])).sum(0) + var * torch.eye(2)
    cov = second - mean[:, None] * mean[None, :]
    # Standard error of the mean ≈ sqrt(1.2 / 20000) ≈ 0.008: a tolerance of 0.03 is ~4 standard errors.
    torch.testing.assert_close(x0.mean(0), mean, rtol=0, atol=0.03)
    # 200 DDIM steps shrink the within-mode variance by ~3 % (discretisation), hence 0.04 on entries of size ~1.
    torch.testing.assert_close(torch.cov(x0.T), cov, rtol=0, atol=0.04)
    # Mode proportions: the fraction of samples nearest to each mean is the mixture weight (± 0.015).
    nearest = torch.cdist(x0, means).argmin(1)
    frac = torch.bincount(nearest, minlength=3).double() / n
    torch.testing.assert_close(frac, weights, rtol=0, atol=0.015)
    # And the within-mode spread is σ² (deterministic sampling must not collapse modes onto their means).
    within = ((x0 - means[nearest]) ** 2).mean().item()
    assert abs(within - var) < 0.01, within


def _ddim_by_hand(guidance, z, ts, eps_of):
    """The DDIM moves written out: x0 = (z − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t), z' = sqrt(ᾱ_next) x0 + sqrt(1 − ᾱ_next) ε̂,
    ᾱ = 1 at the clean end (−1)."""
    abar = guidance.alphas_cumprod.double()
    z = z.double()
    for t, t_next in zip(ts[:-1], ts[1:]):
        a, a_next = abar[t], (abar[t_next] if t_next >= 0 else torch.tensor(1.0, dtype=torch.float64))
        eps = eps_of(z, a)
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
        z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return z.float()


def test_ddim_sample_with_cfg_and_a_start_timestep_by_hand():
    """ε(x_t; y) = a_y x_t + b_y + c ᾱ_t (tests/stubs.py): from t_start = 500 in 2 steps the grid is 500, 0, then the
    clean end; CFG ε(∅) + s (ε(y) − ε(∅)) evaluates both conditions in ONE call per step."""
    from tests.stubs import StubGuidance

    guidance = StubGuidance({"y": (0.3, 0.1), "": (0.5, -0.2)}, t_coefficient=0.7)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    eps_y = lambda z, a: 0.3 * z + 0.1 + 0.7 * a  # noqa: E731
    eps_0 = lambda z, a: 0.5 * z - 0.2 + 0.7 * a  # noqa: E731
    cfg = lambda z, a: eps_0(z, a) + 3.0 * (eps_y(z, a) - eps_0(z, a))  # noqa: E731

    got = ddim_sample(guidance, x, ["y", "y"], 2, guidance_scale=3.0, t_start=500)
    torch.testing.assert_close(got, _ddim_by_hand(guidance, x, [500, 0, -1], cfg), rtol=1e-4, atol=1e-4)
    assert (guidance.calls, guidance.rows) == (2, 8) and guidance.prompts_seen == {"y", ""}

    guidance.calls, guidance.rows = 0, 0
    plain = ddim_sample(guidance, x, ["y", "y"], 2, t_start=500)
    torch.testing.assert_close(plain, _ddim_by_hand(guidance, x, [500, 0, -1], eps_y), rtol=1e-4, atol=1e-4)
    assert (guidance.calls, guidance.rows) == (2, 4)  # no CFG: the prompt's rows only
    torch.testing.assert_close(ddim_sample(guidance, x, ["y", "y"], 2, guidance_scale=1.0, t_start=500), plain)
    # the default start is pure noise, t = T − 1, on the grid 999, 500, 0
    full = _ddim_by_hand(guidance, x, [999, 500, 0, -1], eps_y)
    torch.testing.assert_close(ddim_sample(guidance, x, ["y", "y"], 3), full, rtol=1e-4, atol=1e-4)


def test_ddim_sample_refuses_a_start_outside_the_schedule():
    from tests.stubs import StubGuidance

    x = torch.zeros(1, 3, 8, 8)
    for t_start in (-1, 1000):
        with pytest.raises(ValueError, match=r"t_start must be in \[0, 999\]"):
            ddim_sample(StubGuidance(), x, ["y"], 2, t_start=t_start)
    with pytest.raises(ValueError, match="at least one step"):
        ddim_sample(StubGuidance(), x, ["y"], 0)


# ---------------------------------------------------------------------------------------------------------------------
# Pruned evaluation: the float32 screen with its proven bound, float64 on what is kept
# ---------------------------------------------------------------------------------------------------------------------

FORCE_SCREEN = {"screen": True, "min_components": 0, "screen_below": 1.01}  # screen every row, every t


def _clustered_mixture(gen, clusters=12, per=40, dim=96):
    """Clusters of nearby means (a world in miniature: neighbours ~1 apart, clusters ~10 apart), uneven weights."""
    centres = 3 * torch.randn(clusters, 1, dim, generator=gen, dtype=torch.float64)
    means = (centres + 0.15 * torch.randn(clusters, per, dim, generator=gen, dtype=torch.float64)).reshape(-1, dim)
    logw = torch.log_softmax(torch.randn(clusters * per, generator=gen, dtype=torch.float64), 0)
    return GaussianMixture(means, logw, 0.01)


def test_pruned_matches_reference_and_its_bound_holds():
    gen = torch.Generator().manual_seed(0)
    mix = _clustered_mixture(gen)
    k, d = mix.means.shape
    t = torch.tensor([1, 10, 50, 200, 500, 800, 999])
    for kind in ("component", "midpoint", "uniform", "grey"):
        idx = torch.randint(0, k, (len(t),), generator=gen)
        if kind == "component":
            x0 = mix.means[idx]
        elif kind == "midpoint":  # halfway to the nearest other mean: where two components share the posterior
            dist = torch.cdist(mix.means[idx], mix.means)
            dist[torch.arange(len(t)), idx] = math.inf
            x0 = 0.5 * (mix.means[idx] + mix.means[dist.argmin(1)])
        elif kind == "uniform":
            x0 = 2 * torch.rand(len(t), d, generator=gen, dtype=torch.float64) - 1
        else:
            x0 = torch.full((len(t), d), 0.3, dtype=torch.float64)
        abar = ABAR[t].double()
        noise = torch.randn(len(t), d, generator=gen, dtype=torch.float64)
        x_t = abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * noise
        if kind in ("uniform", "grey"):
            x_t = x0  # off-world images used directly as x_t
        # a row-specific selection too: every other row excludes the first half of the components
        log_w = mix.log_weights.expand(len(t), -1).clone()
        log_w[1::2, : k // 2] = -math.inf
        ref = mix.predict_noise(x_t, abar, log_w)
        got, info = mix.predict_noise_pruned(x_t, abar, log_w, tol=1e-7, **FORCE_SCREEN)
        assert (got - ref).abs().max() < 1e-7, kind
        # the posterior mass really skipped (from the reference's posterior) stays under the bound the code claims
        post = torch.softmax(mix.log_posterior(x_t, abar, log_w), dim=1)
        skipped = torch.where(info["kept_mask"], 0.0, post).sum(1)
        assert (skipped <= info["skipped_mass_bound"] * (1 + 1e-9) + 1e-300).all(), kind
        assert (info["error_bound"] <= 1e-7).all(), kind
        # (+ float64 round-off: at t = 1 a distance's last bits move ε by ~1e-11, in the reference as much)
        assert ((got - ref).abs().amax(1) <= info["error_bound"] + 1e-9).all(), kind
        if kind == "component":  # at low noise the screen keeps a small part (rows of a chunk share what they keep)
            assert info["kept"][0] < 0.25 * info["allowed"][0], info["kept"]


def test_pruned_defaults_and_refusals():
    gen = torch.Generator().manual_seed(1)
    mix = _clustered_mixture(gen, clusters=4, per=10, dim=8)
    x_t = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    abar = ABAR[torch.tensor([5, 100, 400, 700, 950])].double()
    got, info = mix.predict_noise_pruned(x_t, abar)  # a small table: no screen, every component in float64
    torch.testing.assert_close(got, mix.predict_noise(x_t, abar), rtol=0, atol=1e-12)
    assert (info["kept"] == 40).all() and (info["skipped_mass_bound"] == 0).all()
    torch.set_float32_matmul_precision("high")  # float32 matmuls may be reduced precision: the bound would not hold
    try:
        _, info = mix.predict_noise_pruned(x_t, abar, **FORCE_SCREEN)
        assert (info["kept"] == 40).all()
    finally:
        torch.set_float32_matmul_precision("highest")
    unequal = GaussianMixture(mix.means, mix.log_weights, torch.linspace(0.01, 0.02, 40))
    got, info = unequal.predict_noise_pruned(x_t, abar, **FORCE_SCREEN)
    torch.testing.assert_close(got, unequal.predict_noise(x_t, abar), rtol=0, atol=0)
