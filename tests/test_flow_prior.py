"""The exact flow-matching prior (scoredist/guidance/exact/flow.py): its velocity is the one that transports its
marginals, and through the prediction-type layer it is the ε prior at the same signal-to-noise ratio."""

from __future__ import annotations

import pytest
import torch

from scoredist.guidance.exact.flow import ShapesFlowPrior, mixture_flow_log_density, mixture_velocity
from scoredist.guidance.exact.mixture import GaussianMixture
from scoredist.guidance.exact.shapes import ShapesPrior


def two_dimensional_mixture() -> GaussianMixture:
    means = torch.tensor([[-1.0, 0.5], [1.2, -0.3], [0.1, 1.4]], dtype=torch.float64)
    return GaussianMixture(means, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log(), [0.05, 0.1, 0.02])


@pytest.mark.parametrize("s", [0.1, 0.4, 0.7, 0.95])
def test_the_velocity_satisfies_the_continuity_equation_of_the_marginals(s):
    """∂_s log p + ∇·u + u·∇ log p = 0 (∂_s p + ∇·(p u) = 0 divided by p), every derivative a central difference."""
    mixture = two_dimensional_mixture()
    x = torch.tensor([[-0.8, 0.4], [0.9, 0.0], [0.2, 1.0], [0.0, 0.0], [1.5, -1.0]], dtype=torch.float64)
    n, h = x.shape[0], 1e-4
    ss = torch.full((n,), s, dtype=torch.float64)
    dlogp_ds = (mixture_flow_log_density(mixture, x, ss + h) - mixture_flow_log_density(mixture, x, ss - h)) / (2 * h)
    u = mixture_velocity(mixture, x, ss)
    divergence = torch.zeros(n, dtype=torch.float64)
    grad_logp = torch.zeros(n, 2, dtype=torch.float64)
    for j in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[j] = h
        u_plus, u_minus = mixture_velocity(mixture, x + e, ss), mixture_velocity(mixture, x - e, ss)
        divergence += (u_plus[:, j] - u_minus[:, j]) / (2 * h)
        logp = mixture_flow_log_density
        grad_logp[:, j] = (logp(mixture, x + e, ss) - logp(mixture, x - e, ss)) / (2 * h)
    residual = dlogp_ds + divergence + (u * grad_logp).sum(1)
    scale = dlogp_ds.abs() + divergence.abs() + (u * grad_logp).sum(1).abs()
    assert scale.min() > 0.1  # the terms are not all trivially zero
    assert residual.abs().max() < 1e-5 * scale.max()


def test_the_velocity_is_the_derivative_of_the_path_in_expectation_for_a_single_gaussian():
    """For N(m, v) data the velocity is linear and known by hand: u(x) = E[ε − x0 | x_s]."""
    m, v = 0.7, 0.3
    mixture = GaussianMixture(torch.tensor([[m]], dtype=torch.float64), None, v)
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    for s in (0.2, 0.5, 0.9):
        a, b = 1 - s, s
        x0 = m + a * v * (x - a * m) / (a**2 * v + b**2)
        eps = (x - a * x0) / b
        u = mixture_velocity(mixture, x, torch.full((9,), s, dtype=torch.float64))
        torch.testing.assert_close(u, eps - x0, rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def priors():
    return ShapesFlowPrior(resolution=16), ShapesPrior(resolution=16)


def test_the_flow_prior_velocity_is_the_exact_mixture_velocity_of_the_prompt(priors):
    flow, _ = priors
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([50, 300, 600, 800])
    s = flow.noise_path.sigma[t]
    x0 = flow.reference_image("a red cube")[None].double()
    x = (1 - s)[:, None, None, None] * x0 + s[:, None, None, None] * torch.randn(4, 3, 16, 16, generator=g).double()
    u = flow.predict_velocity(x, t, ["a red cube"] * 4)
    exact = mixture_velocity(flow.mixture_for("a red cube"), x.reshape(4, -1), s).reshape(x.shape)
    torch.testing.assert_close(u, exact, rtol=0, atol=1e-5)


def test_through_the_prediction_layer_the_flow_prior_is_the_eps_prior_at_the_same_signal_to_noise(priors):
    flow = priors[0]
    eps_prior = ShapesPrior(resolution=16)
    eps_prior._abar64 = flow.noise_path.alphas_cumprod  # the ε prior re-timed to the flow grid's ᾱ
    x_t = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([20, 500, 980])
    prompts = ["a red cube", "a blue sphere, front view", ""]
    torch.testing.assert_close(flow.predict_noise(x_t, t, prompts), eps_prior.predict_noise(x_t, t, prompts))


def test_the_flow_prior_reports_its_path_and_prediction(priors):
    flow, _ = priors
    assert flow.prediction == "flow" and flow.shift == 3.0
    torch.testing.assert_close(flow.noise_path.alpha + flow.noise_path.sigma, torch.ones(1000, dtype=torch.float64))
    assert flow.noise_path.sigma[499].item() == pytest.approx(0.75)  # s = 0.5 shifted by 3
    torch.testing.assert_close(flow.alphas_cumprod, flow.noise_path.alphas_cumprod.float())


def test_sds_on_the_flow_prior_follows_sds_on_the_eps_prior_at_the_same_noise_levels_to_the_same_component(priors):
    """The whole loop through the prediction-type layer: SDS with the same t and ε draws on the flow prior and on the
    ε prior re-timed to the flow grid's ᾱ moves the image the same way and ends on the same component."""
    from scoredist.losses.sds import SDS
    from scoredist.prompts import Prompt

    flow = priors[0]
    eps_prior = ShapesPrior(resolution=16)
    eps_prior._abar64 = flow.noise_path.alphas_cumprod
    eps_prior.alphas_cumprod.copy_(flow.alphas_cumprod)
    loss, prompts = SDS(guidance_scale=40.0), [Prompt("a red cube")]
    start = 0.1 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ends = []
    for prior in (flow, eps_prior):
        x = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.02)
        g = torch.Generator().manual_seed(1)
        for step in range(150):
            t = torch.randint(20, 981, (1,), generator=g)
            noise = torch.randn(1, 3, 16, 16, generator=g)
            direction, _ = loss(prior, x.detach(), t, noise, prompts, step)
            opt.zero_grad()
            x.grad = direction
            opt.step()
        ends.append(x.detach())
    assert (ends[0] - ends[1]).abs().max() < 1e-3
    labels = [flow.nearest_component(end)[0] for end in ends]
    assert labels[0] == labels[1] and labels[0].caption == "red cube", labels
