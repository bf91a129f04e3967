"""The shapes world on the rectified-flow path: an exact flow-matching prior (the counterpart of SD3 / Flux).

Data x0 ~ the shapes mixture, x_s = (1 − s) x0 + s ε with s the flow time (SD3's shifted sigma of each training
timestep index, `predictions.flow_sigmas`), and the model predicts the velocity

    u(x_s) = E[ε − x0 | x_s] = ε̂ − x̂0,      ε̂ = E[ε | x_s],  x̂0 = (x_s − s ε̂) / (1 − s),

closed form because x_s / r (r = sqrt((1 − s)² + s²)) is the VP path at ᾱ = (1 − s)² / r² with the same ε, where the
mixture's posterior is exact (mixture.py): the one mixture evaluator serves both paths. tests/test_flow_prior.py
checks u against the continuity equation ∂p_s/∂s + ∇·(p_s u) = 0 of the marginals by finite differences.

The losses see this prior as any other guidance model: `predict_noise` takes their VP x_t, feeds the velocity model
r_t x_t, and converts u back to ε̂ through predictions.py — the same code path as a flow-matching network (SD3, Flux),
so every loss is checked against exact scores on it. A timestep index t means a different noise level here than on
the ε prior (its ᾱ comes from the shifted flow grid), as it does for SD3 against SD 2.1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scoredist.guidance.exact.mixture import GaussianMixture
from scoredist.guidance.exact.shapes import ShapesPrior
from scoredist.guidance.predictions import NoisePath, flow_sigmas, from_eps_x0, to_x0


def velocity_from_eps(eps: torch.Tensor, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """u = ε̂ − x̂0 from the exact ε̂ at x on the path x = α x0 + σ ε (α = 1 − s, σ = s on the flow path)."""
    return from_eps_x0(eps, to_x0(eps, x, alpha, sigma, "epsilon"), alpha, sigma, "flow")


@torch.no_grad()
def mixture_velocity(mixture: GaussianMixture, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Exact velocity E[ε − x0 | x_s] of a Gaussian mixture's flow path: x (N, D) at flow times s (N,), float64."""
    x, s = x.double(), s.double()
    alpha, sigma = (1 - s)[:, None], s[:, None]
    r = (alpha**2 + sigma**2).sqrt()
    eps = mixture.predict_noise(x / r, (alpha**2 / r**2).squeeze(1))
    return velocity_from_eps(eps, x, alpha, sigma)


def mixture_flow_log_density(mixture: GaussianMixture, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """log p_s(x) of the flow path's marginal, x (N, D), s (N,) → (N,) float64: the VP density of x/r, less D log r."""
    x, s = x.double(), s.double()
    r = ((1 - s) ** 2 + s**2).sqrt()
    abar = (1 - s) ** 2 / r**2
    logp = torch.logsumexp(mixture.log_posterior(x / r[:, None], abar, mixture.log_weights.expand(x.shape[0], -1)), 1)
    return logp - x.shape[1] * r.log()


class ShapesFlowPrior(ShapesPrior):
    """The exact shapes prior as a rectified-flow velocity model (`prediction = "flow"`), on SD3's shifted grid.

    Args: shift — the resolution shift of the flow time (SD3: 3.0; 1.0 the unshifted grid); the rest as ShapesPrior.
    """

    prediction = "flow"

    def __init__(self, shift: float = 3.0, **kwargs):
        super().__init__(**kwargs)
        self.shift = float(shift)
        self.noise_path = NoisePath.rectified_flow(flow_sigmas(self.num_train_timesteps, self.shift))
        self._abar64 = self.noise_path.alphas_cumprod  # the mixture's exact ᾱ at each index's signal-to-noise ratio
        self.alphas_cumprod.copy_(self._abar64.float())

    @torch.no_grad()
    def predict_velocity(self, x: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """u = E[ε − x0 | x_s, y]: x (N, 3, R, R) on the flow path at index t (N,) → (N, 3, R, R) float64."""
        x = x.double()
        alpha, sigma = self.noise_path.coefficients(t, x)
        eps = self.exact_eps(x / self.noise_path.scale(t, x), t, prompts)
        return velocity_from_eps(eps, x, alpha, sigma)

    @torch.no_grad()
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """ε̂ for the losses' VP x_t (N, 3, R, R): the velocity model at r_t x_t, converted (predictions.py)."""
        x_model = self.noise_path.scale(t, x_t.double()) * x_t.double()
        u = self.predict_velocity(x_model, t, prompts)
        return self.noise_path.eps_from_output(u, x_model, t, self.prediction).float()
