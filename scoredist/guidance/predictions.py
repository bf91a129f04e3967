"""The one conversion between what a diffusion model predicts and the ε̂ / x̂0 every loss uses.

Every model here is trained on a Gaussian noise path x_t = α_t x0 + σ_t ε (per training timestep index t):

    variance preserving (DDPM, SD 1.x/2.x, SDXL):  α_t = sqrt(ᾱ_t),  σ_t = sqrt(1 − ᾱ_t)
    rectified flow (SD3, Flux, RFDS):              α_t = 1 − s_t,     σ_t = s_t        (s_t: the model's sigma)

and predicts one of (with ε the noise and x0 the clean sample of that path):

    "epsilon"       ε
    "sample"        x0
    "v_prediction"  v = α ε − σ x0                      (diffusers' v; on a VP path α² + σ² = 1)
    "flow"          u = ε − x0 = dx_t/ds                (the rectified-flow velocity, on α + σ = 1)

From x_t and the prediction, both unknowns follow (x_t = α x0 + σ ε is the second equation):

    epsilon:  ε̂ = out                            x̂0 = (x_t − σ ε̂) / α
    sample:   x̂0 = out                           ε̂ = (x_t − α x̂0) / σ
    v:        ε̂ = (α v + σ x_t) / (α² + σ²)      x̂0 = (α x_t − σ v) / (α² + σ²)
    flow:     ε̂ = (x_t + α u) / (α + σ)          x̂0 = (x_t − σ u) / (α + σ)

Losses work on the variance-preserving path of the project (guidance/base.py: x_t = sqrt(ᾱ) x + sqrt(1 − ᾱ) ε, t an
index into `alphas_cumprod`). Any path is a rescaled VP path with the same ε and x0:

    x_t^model = r_t · x_t^VP,   r_t = sqrt(α_t² + σ_t²),   ᾱ_t = α_t² / (α_t² + σ_t²)

so a model on any path is a VP model with that ᾱ, fed r_t x_t^VP. `NoisePath` holds (α_t, σ_t) per index; a guidance
model exposes `NoisePath.alphas_cumprod` as its `alphas_cumprod`, scales the loss's x_t by `scale(t)` before its
network, and converts the output with `to_eps`. Every loss then runs unchanged on every backbone: a loss's timestep t
is the model's own training timestep t (for SD3 the t-th sigma of its shifted grid, `flow_sigmas`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow")


def _column(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] per row, shaped to broadcast over `like` (N, ...), in like's dtype and device."""
    return values.to(like.device)[t.to(like.device).long()].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")
    return prediction


def to_eps(out: torch.Tensor, x_t: torch.Tensor, alpha, sigma, prediction: str) -> torch.Tensor:
    """ε̂ from a model's output `out` at x_t (both on the model's own path x_t = α x0 + σ ε); alpha/sigma broadcast."""
    if prediction == "epsilon":
        return out
    if prediction == "sample":
        return (x_t - alpha * out) / sigma
    if prediction == "v_prediction":
        return (alpha * out + sigma * x_t) / (alpha**2 + sigma**2)
    if prediction == "flow":
        return (x_t + alpha * out) / (alpha + sigma)
    raise ValueError(check_prediction(prediction))


def to_x0(out: torch.Tensor, x_t: torch.Tensor, alpha, sigma, prediction: str) -> torch.Tensor:
    """x̂0 from a model's output `out` at x_t, on the model's own path."""
    if prediction == "epsilon":
        return (x_t - sigma * out) / alpha
    if prediction == "sample":
        return out
    if prediction == "v_prediction":
        return (alpha * x_t - sigma * out) / (alpha**2 + sigma**2)
    if prediction == "flow":
        return (x_t - sigma * out) / (alpha + sigma)
    raise ValueError(check_prediction(prediction))


def from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, alpha, sigma, prediction: str) -> torch.Tensor:
    """The output a model of type `prediction` gives when its estimates are (ε̂, x̂0): the inverse of to_eps/to_x0."""
    if prediction == "epsilon":
        return eps
    if prediction == "sample":
        return x0
    if prediction == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction == "flow":
        return eps - x0
    raise ValueError(check_prediction(prediction))


@dataclass(frozen=True)
class NoisePath:
    """(α_t, σ_t) of a model's training path per timestep index t = 0 … T−1, float64 (T,) each."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    radius: torch.Tensor = field(init=False, repr=False)  # r_t = sqrt(α_t² + σ_t²), computed once

    def __post_init__(self):
        object.__setattr__(self, "radius", (self.alpha**2 + self.sigma**2).sqrt())

    def to(self, device) -> NoisePath:
        """The same path with its tables on `device` (a guidance model keeps them where its rows are, so that
        indexing them in a step copies nothing)."""
        return NoisePath(self.alpha.to(device), self.sigma.to(device))

    @classmethod
    def variance_preserving(cls, alphas_cumprod: torch.Tensor) -> NoisePath:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        return cls(abar.sqrt(), (1 - abar).sqrt())

    @classmethod
    def rectified_flow(cls, sigmas: torch.Tensor) -> NoisePath:
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        return cls(1 - sigmas, sigmas)

    @property
    def num_train_timesteps(self) -> int:
        return self.alpha.shape[0]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t = α² / (α² + σ²): the VP path with the same signal-to-noise ratio, the one losses noise on."""
        return self.alpha**2 / (self.alpha**2 + self.sigma**2)

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_t, σ_t) per row of t, broadcast over `like`."""
        return _column(self.alpha, t, like), _column(self.sigma, t, like)

    def scale(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """r_t = sqrt(α_t² + σ_t²) per row: the model's x_t is r_t times the losses' (VP) x_t."""
        return _column(self.radius, t, like)

    def eps_from_output(self, out: torch.Tensor, x_model: torch.Tensor, t: torch.Tensor, prediction: str):
        """ε̂ from the network's output at its own input x_model = r_t x_t^VP (same ε on both paths)."""
        alpha, sigma = self.coefficients(t, x_model)
        return to_eps(out, x_model, alpha, sigma, prediction)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift of the flow time: s ↦ shift·s / (1 + (shift − 1)·s) (shift 1: unchanged; > 1: noisier).
    Flux's exponential form with μ is the same map with shift = e^μ."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(num_train_timesteps: int = 1000, shift: float = 1.0) -> torch.Tensor:
    """The sigma of each training timestep index, (T,) float64: index t ↦ s = (t + 1)/T, shifted — the grid of
    diffusers' FlowMatchEulerDiscreteScheduler (its timesteps are 1000·s).

    The last index would be s = 1 (pure noise, α = 0), where x̂0 = (x_t − σ ε̂)/α is undefined and DDIM moves divide
    by zero; it is taken half a grid step lower, s = 1 − 1/(2T) (σ = 0.99983 at shift 3), so every index has α > 0.
    """
    s = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    s[-1] = 1 - 0.5 / num_train_timesteps
    return shift_sigmas(s, shift)
