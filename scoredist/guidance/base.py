"""What every guidance model answers: ε̂(x_t; y, t) for a batch, in one call.

A guidance model is frozen. Losses only ever call `predict_noise`, `alphas_cumprod` and (for VSD) `make_source_model`;
the trainer uses `encode` / `decode` to move between RGB renders and the model's own space.

Conventions used everywhere in scoredist:
- `t` is an integer index into `alphas_cumprod` (0 … T−1, T = 1000 for every model here).
- `x_t = sqrt(ᾱ_t) x + sqrt(1 − ᾱ_t) ε`.
- RGB images are (B, 3, H, W) in [0, 1]; the model space may be SD latents (B, 4, H/8, W/8), pixels in [−1, 1],
  or 2D points.
- `predict_noise` always returns ε (v-, x0- and flow-prediction models are converted, predictions.py) in float32,
  whatever the model's own dtype.
- A model trained on another noise path (rectified flow: x_s = (1 − s) x + s ε) keeps its own timestep indices; its
  `alphas_cumprod` is the VP ᾱ with the same signal-to-noise ratio (`NoisePath.alphas_cumprod`) and its `noise_path`
  says how the losses' x_t is rescaled for its network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scoredist.guidance.predictions import NoisePath


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """ᾱ_t of Stable Diffusion's "scaled_linear" schedule, (T,) float64.

    The exact priors use the same schedule so that timestep thresholds (NFSD's t < 200) mean the same thing on both.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) x + sqrt(1 − ᾱ_t) ε, with t of shape (B,) broadcast over the trailing dimensions of x."""
    abar = alphas_cumprod.to(x.device)[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return abar.sqrt() * x + (1 - abar).sqrt() * noise


class SourceModel(nn.Module):
    """A trainable ε_ψ(x_t; y, t): VSD's estimate of the distribution of the current renders.

    For Stable Diffusion it is a LoRA copy of the UNet; for the exact priors a small network. `parameters()` yields only
    what VSD should train.
    """

    def predict_noise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        prompts: Sequence[str],
        cameras: Sequence[Sequence[float] | None] | None = None,
    ) -> torch.Tensor:
        """ε_ψ per row, differentiable in ψ. cameras: for a camera-conditioned source model (ProlificDreamer's), a list
        of N per-row cameras, each an (azimuth, elevation, distance, fovy) tuple (`Prompt.camera`) or None for a row
        without one; VSD passes them only when some row has a camera (a NeRF render), else leaves cameras=None.
        Models that do not use cameras ignore them."""
        raise NotImplementedError


class Guidance(nn.Module):
    """Frozen noise predictor ε_φ(x_t; y, t).

    Subclasses set `alphas_cumprod` (a (T,) float buffer) and the model space (`channels`, `downscale`): a render of
    H×W pixels becomes a model input of `channels`×(H/downscale)×(W/downscale).
    """

    channels: int = 3
    downscale: int = 1
    prediction: str = "epsilon"  # what the network itself predicts (predictions.PREDICTIONS)
    needs_cameras: bool = False  # conditions every row on its camera (prompts.Condition.camera): 3D renderers only

    def __init__(self, alphas_cumprod: torch.Tensor):
        super().__init__()
        # not a weight: a checkpoint of a module holding a guidance model does not carry the schedule
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.noise_path = NoisePath.variance_preserving(alphas_cumprod)  # flow models replace it

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """ε̂ for each row: x_t (N, ...), t (N,) long, prompts a list of N strings → (N, ...) float32.

        All rows are evaluated in ONE batched model call; callers stack every condition a step needs.
        """
        raise NotImplementedError

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError with a helpful message if this model cannot condition on `prompt`. Default: accept all."""

    def check_resolution(self, height: int, width: int) -> None:
        """Raise ValueError if renders of height×width cannot be fed to this model."""
        if height % self.downscale or width % self.downscale:
            raise ValueError(
                f"image size {height}x{width} is not divisible by {self.downscale}, the model's downscale factor "
                f"(a latent model needs multiples of {self.downscale}); choose e.g. "
                f"{height // self.downscale * self.downscale or self.downscale}."
            )

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] → model space, differentiably. Default: pixels in [−1, 1]."""
        return rgb * 2 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space → RGB (B, 3, H, W) in [0, 1], for previews and final images (no gradient needed)."""
        return ((x + 1) / 2).clamp(0, 1)

    def evaluate(self, x: torch.Tensor, prompt: str) -> dict:
        """Metrics of final renders x (model space) against this model's distribution for `prompt`; {} if none.

        The exact priors know their distribution, so they can say what an image became (nearest component) or how
        likely the particles are; a learned model cannot, and returns nothing.
        """
        return {}

    def make_source_model(self) -> SourceModel:
        """A fresh trainable ε_ψ initialised to agree with (or near) this model, for VSD."""
        raise NotImplementedError(f"{type(self).__name__} has no trainable source model, so loss=vsd cannot use it")

    def sample(
        self,
        prompt: str,
        num_samples: int,
        num_steps: int = 50,
        generator=None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """Deterministic DDIM samples of the model under `prompt` (model space, (num_samples, *sample_shape)), from
        noise drawn with `generator`; guidance_scale as in `ddim_sample`. (scripts/sample.py's lower-bound row draws
        each sample's noise from that sample's own seed instead, and calls `ddim_sample` itself.)"""
        shape = self.sample_shape()
        # drawn on the CPU (where a seeded generator lives), then moved: the same samples on every device
        x = torch.randn((num_samples, *shape), generator=generator).to(self.alphas_cumprod.device)
        return ddim_sample(self, x, [prompt] * num_samples, num_steps, guidance_scale)

    def sample_shape(self) -> tuple[int, ...]:
        raise NotImplementedError


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ε(∅) + s·(ε(y) − ε(∅))."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


@torch.no_grad()
def ddim_timesteps(num_train_timesteps: int, num_steps: int) -> torch.Tensor:
    """Descending integer timesteps of an evenly spaced DDIM grid, e.g. 999 … 0 for num_steps=1000."""
    return torch.linspace(num_train_timesteps - 1, 0, num_steps).round().long()


def alpha_bar(alphas_cumprod: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """ᾱ_t per row of a (B,) long t, shaped to broadcast over an ndim tensor; t = −1 stands for the clean end, ᾱ = 1."""
    abar = torch.where(t >= 0, alphas_cumprod.to(t.device)[t.clamp_min(0)], torch.ones_like(t, dtype=torch.float))
    return abar.float().view(-1, *([1] * (ndim - 1)))


def ddim_move(z: torch.Tensor, eps: torch.Tensor, abar_cur: torch.Tensor, abar_next: torch.Tensor) -> torch.Tensor:
    """The deterministic DDIM update: estimate x0 from (z, ε̂) at ᾱ_cur, re-noise it with the same ε̂ at ᾱ_next."""
    x0 = (z - (1 - abar_cur).sqrt() * eps) / abar_cur.sqrt()
    return abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps


@torch.no_grad()
def ddim_step(
    guidance: Guidance,
    x_t: torch.Tensor,
    t: int,
    t_next: int,
    prompts: Sequence[str],
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """One deterministic DDIM move of x_t (B, ...) from t to t_next (t_next < t generates, t_next > t inverts);
    t_next = −1 means ᾱ = 1, the clean end.

    guidance_scale: None (or 1): ε̂ = ε(x_t; y), one row per sample; s: CFG ε(∅) + s·(ε(y) − ε(∅)), both conditions in
    ONE predict_noise call (2B rows)."""
    b = x_t.shape[0]
    tt = torch.full((b,), t, dtype=torch.long, device=x_t.device)
    if guidance_scale is None or guidance_scale == 1:
        eps = guidance.predict_noise(x_t, tt, prompts)
    else:
        eps_cond, eps_uncond = guidance.predict_noise(torch.cat([x_t, x_t]), tt.repeat(2), [*prompts, *[""] * b]).chunk(
            2
        )
        eps = cfg(eps_uncond, eps_cond, guidance_scale)
    a_t = alpha_bar(guidance.alphas_cumprod, tt, x_t.dim())
    return ddim_move(x_t, eps, a_t, alpha_bar(guidance.alphas_cumprod, torch.full_like(tt, t_next), x_t.dim()))


@torch.no_grad()
def ddim_sample(
    guidance: Guidance,
    x_T: torch.Tensor,
    prompts: Sequence[str],
    num_steps: int,
    guidance_scale: float | None = None,
    t_start: int | None = None,
) -> torch.Tensor:
    """Integrate the probability-flow ODE from x_T (B, ...) at t_start (default T−1: pure noise) down to x_0 with
    `num_steps` DDIM steps on an even grid t_start … 0, then the move to the clean end (one step per timestep at most,
    when num_steps > t_start + 1). guidance_scale as in `ddim_step`."""
    t_start = guidance.num_train_timesteps - 1 if t_start is None else t_start
    if not 0 <= t_start < guidance.num_train_timesteps:
        raise ValueError(f"DDIM t_start must be in [0, {guidance.num_train_timesteps - 1}], got {t_start}")
    if num_steps < 1:
        raise ValueError(f"DDIM needs at least one step, got num_steps={num_steps}")
    steps = ddim_timesteps(t_start + 1, min(num_steps, t_start + 1)).tolist() + [-1]
    x = x_T
    for t, t_next in zip(steps[:-1], steps[1:]):
        x = ddim_step(guidance, x, t, t_next, prompts, guidance_scale)
    return x


@torch.no_grad()
def sdedit(
    guidance: Guidance,
    x: torch.Tensor,
    prompts: Sequence[str],
    t_start: int,
    num_steps: int,
    noise: torch.Tensor,
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """SDEdit (Meng et al.): noise the image x (model space, (B, ...)) to t_start with `noise`, then integrate the
    probability-flow ODE under `prompts` back to x_0 in `num_steps` DDIM steps (t_start … 0, then the clean end).

    guidance_scale: CFG on the way down, ε(∅) + s·(ε(y) − ε(∅)), both conditions in one call per step; None: the plain
    conditional ODE (exact for the exact priors). A larger t_start follows the prompt more and the input less."""
    if not 0 <= t_start < guidance.num_train_timesteps:
        raise ValueError(f"SDEdit t_start must be in [0, {guidance.num_train_timesteps - 1}], got {t_start}")
    if num_steps < 1:
        raise ValueError(f"SDEdit needs at least one DDIM step, got num_steps={num_steps}")
    t0 = torch.full((x.shape[0],), t_start, dtype=torch.long, device=x.device)
    z = add_noise(x, noise.to(x), t0, guidance.alphas_cumprod)
    return ddim_sample(guidance, z, prompts, num_steps, guidance_scale, t_start)
