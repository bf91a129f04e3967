"""Score Distillation via Reparametrized DDIM (SDI; Lukoianov et al., NeurIPS 2024), as the authors' code computes it.

SDS whose noisy input comes from DDIM inversion of the current render instead of a fresh draw:

    x̃ = DDIM inversion of x under CFG scale `inversion_guidance_scale` (−7.5) up to t + δ, labelled t
    g = ε̂_cfg(x̃; y, t) − κ,   κ = (x̃ − sqrt(ᾱ_t) x) / sqrt(1 − ᾱ_t),   w(t) = sqrt((1 − ᾱ_t) / ᾱ_t)

which is their loss 0.5 · mean((x − x̂0)²) / B with x̂0 = (x̃ − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t), written in ε units:
x − x̂0 = w(t) · g, and reduction "mean" divides by a row's number of entries (their batch is one view).

Facts from threestudio's stable_diffusion_sdi_guidance.py and configs/sdi.yaml (written by the paper's first author):
- the inversion: `inversion_steps` (10) steps on the "leading" grid 1, 101, …, 901 below t, preceded by a step from
  the render (their first step starts at t = −99, ᾱ_0; here at t = 0, see `inversion.grid_path`) and followed by one
  to t + δ, δ uniform in {0, …, overshoot − 1} (overshoot 100); each step adds η · z · σ with η = `inversion_eta`
  (0.3). The inverted latent is then treated as being at t, not t + δ (the code's choice; `overshoot: 1` inverts
  exactly to t, the paper's form).
- both the inversion and the final prediction ask the prompt and ∅ (CFG rows in one call each). `cfg_form`
  "standard" is ε(∅) + s · (ε(y) − ε(∅)), their perp-neg branch, which produced the 3D results (sdi.yaml uses
  perp-neg); "text" is ε(y) + s · (ε(y) − ε(∅)), their branch without perp-neg, which their 2D notebook runs (an
  effective scale of s + 1: 8.5 for the prediction, −6.5 for the inversion).
- t is not drawn: it falls linearly from 0.98 to 0.25 of T over the run in 3D (0.98 to 0.02 in their 2D notebook),
  the same for every sample: `schedule=decay schedule.t_min=0.98 schedule.t_min_end=0.25 schedule.t_max_end=0.25`.
- `inversion: false` is their enable_sdi=False: the plain SDS input x_t = sqrt(ᾱ_t) x + sqrt(1 − ᾱ_t) ε, so κ = ε.
The δ and the inversion noise are drawn from torch's global generator, which the trainer seeds per chunk and keeps
in checkpoints.

Model rows per step and sample: 2 (k + 2), k = the grid points below t (0 to 10): 4 at t ≤ 1, 24 at t > 901.
"""

from __future__ import annotations

import torch

from scoredist.guidance.base import add_noise, alpha_bar, cfg
from scoredist.losses.base import ScoreLoss, norm, predict_conditions
from scoredist.losses.inversion import grid_path, invert
from scoredist.prompts import texts
from scoredist.schedules import value_at

CFG_FORMS = ("standard", "text")


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float, form: str) -> torch.Tensor:
    """CFG in one of SDI's two forms (see the module docstring): the project's own, or anchored at ε(y)."""
    if form == "standard":
        return cfg(eps_uncond, eps_cond, scale)
    return eps_cond + scale * (eps_cond - eps_uncond)


class SDI(ScoreLoss):
    calls_whole_rows = False  # the inversion calls the model on the rows still inverting

    def __init__(
        self,
        guidance_scale=7.5,
        inversion_guidance_scale: float = -7.5,
        inversion_steps: int = 10,
        inversion_eta: float = 0.3,
        overshoot: int = 100,
        cfg_form: str = "standard",
        inversion: bool = True,
        weighting: str = "sqrt((1-abar)/abar)",
        reduction: str = "mean",
    ):
        super().__init__(weighting, reduction)
        if cfg_form not in CFG_FORMS:
            raise ValueError(f"SDI cfg_form must be one of {CFG_FORMS}, got {cfg_form!r}")
        if inversion_steps < 1 or overshoot < 1:
            raise ValueError(f"SDI needs inversion_steps >= 1 and overshoot >= 1, got {inversion_steps}, {overshoot}")
        self.guidance_scale, self.inversion_guidance_scale = guidance_scale, inversion_guidance_scale
        self.inversion_steps, self.inversion_eta, self.overshoot = inversion_steps, inversion_eta, overshoot
        self.cfg_form, self.inversion = cfg_form, inversion

    def predict(self, guidance, z, t, prompts, scale) -> torch.Tensor:
        """ε̂ of the prompt and ∅ in one call, combined in `cfg_form`."""
        eps_cond, eps_uncond = predict_conditions(guidance, z, t, [prompts, [""] * len(prompts)])
        return guided(eps_uncond, eps_cond, scale, self.cfg_form)

    @torch.no_grad()
    def noisy_input(self, guidance, x, t, noise, prompts) -> torch.Tensor:
        """x̃: the render inverted to t + δ (labelled t), or SDS's noised render without inversion."""
        if not self.inversion:
            return add_noise(x, noise, t, guidance.alphas_cumprod)
        last = guidance.num_train_timesteps - 1
        delta = torch.randint(0, self.overshoot, t.shape).to(t.device)
        path, active = grid_path((t + delta).clamp_max(last), t, self.inversion_steps, guidance.num_train_timesteps)
        rows_text = texts(prompts)

        def predict(z, tt, rows):
            return self.predict(guidance, z, tt, [rows_text[r] for r in rows.tolist()], self.inversion_guidance_scale)

        return invert(guidance, x, path, active, predict, eta=self.inversion_eta)

    def direction(self, guidance, x, t, noise, prompts, step):
        x = x.detach()
        x_t = self.noisy_input(guidance, x, t, noise, prompts)
        scale = value_at(self.guidance_scale, step)
        with torch.no_grad():
            eps_hat = self.predict(guidance, x_t, t, prompts, scale)
        a_t = alpha_bar(guidance.alphas_cumprod, t, x.dim())
        kappa = (x_t - a_t.sqrt() * x) / (1 - a_t).sqrt()
        logs = {"norm/cfg": norm(eps_hat), "norm/kappa": norm(kappa), "guidance_scale": scale}
        return eps_hat - kappa, logs
