"""Interval Score Matching (LucidDreamer, Liang et al., CVPR 2024), as the authors' code computes it.

    g = grad_scale · [ε(x_t; neg) + γ · (ε(x_t; y) − ε(x_t; neg)) − ε(x_s; ∅)],   w(t) = sqrt((1 − ᾱ_t) / ᾱ_t)

with γ the guidance scale, the earlier timestep s = max(t − δ_T, 1), and both x_s and x_t reached by deterministic
DDIM inversion of the render x under the inversion prompt ∅ (`inverse_prompt`, "" in every config of theirs): x is
first noised to timestep 1 with the step's noise (x_1 = sqrt(ᾱ_1) x + sqrt(1 − ᾱ_1) ε, the only place ε enters),
inverted up to s in strides of 200 (at most 5 model calls, `inversion_stride` / `inversion_steps`), then one more step
from s to t with ε(x_s; ∅), which is also the target. The interval δ_T falls linearly from `interval_start` (100) to
`interval` (80) over the first `warmup_fraction` of the run (their 1500 of 5000 iterations; their t_max falls from
0.98 to 0.5 over the same warm-up: a schedule, `schedule=decay schedule.t_max_end=0.5 schedule.decay_fraction=0.3`).

Facts from EnVision-Research/LucidDreamer (guidance/sd_utils.py `train_step`, `add_noise_with_cfg`; arguments):
- the CFG branch at x_t is the negative prompt (their `uncond` embedding is `negative`), the inversion's ∅ is
  `inverse_text`; with `denoise_guidance_scale` (`inversion_guidance_scale`) > 1 the inversion is the "reverse CFG"
  ε(∅) + s · (ε(neg) − ε(∅)) in one call of both rows.
- the gradient is grad_scale · w(t) · g per latent entry (`SpecifyGradient`: no mean over entries): reduction "sum",
  as every loss here. They sum it over a step's 4 views; the trainer averages a sample's views, for every loss alike
  (a factor of 4 in 3D, none in 2D, where a sample is one row; Adam, which they use, does not see a constant factor).
- grad_scale = their lambda_guidance, 0.1 in every published config (1.0 is only the argparse default).
Not reproduced: their offset noise (+0.1 · a per-channel draw, SD latents only), random flips and depth-as-latent
draws (renderer-side augmentations of their 3DGS pipeline), and perp-neg view prompts.

Model rows per step and sample: n + 1 rows of ∅ (n = max(1, ceil((s − 1) / 200)) inversion calls, 1 to 5) + 2 of the
guided call: 4 to 8. Their t is in [21, 500] after the warm-up (timesteps[i] = i + 1), here the schedule's [20, 500].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scoredist.guidance.base import add_noise, alpha_bar, cfg, ddim_move
from scoredist.losses.base import LazyMean, ScoreLoss, norm, predict_conditions
from scoredist.losses.inversion import invert, strided_path
from scoredist.prompts import Prompt, beside
from scoredist.schedules import linear_ramp, value_at

START = 1  # LucidDreamer's inversion starts at timesteps[0], which is 1 on Stable Diffusion's leading grid


class ISM(ScoreLoss):
    calls_whole_rows = False  # the inversion calls the model on the rows still inverting

    def __init__(
        self,
        guidance_scale=7.5,
        negative_prompt: str = "",
        inverse_prompt: str = "",
        interval: int = 80,
        interval_start: int = 100,
        warmup_fraction: float = 0.3,
        max_steps: int = 5000,
        inversion_stride: int = 200,
        inversion_steps: int = 5,
        inversion_guidance_scale: float = 1.0,
        grad_scale: float = 0.1,
        weighting: str = "sqrt((1-abar)/abar)",
    ):
        super().__init__(weighting)
        if inversion_stride < 1 or inversion_steps < 1:
            raise ValueError(
                f"ISM needs inversion_stride >= 1 and inversion_steps >= 1, got {inversion_stride}, {inversion_steps}"
            )
        self.guidance_scale, self.negative_prompt, self.inverse_prompt = guidance_scale, negative_prompt, inverse_prompt
        self.interval, self.interval_start = interval, interval_start
        self.warmup_steps = int(round(warmup_fraction * max_steps))
        self.inversion_stride, self.inversion_steps = inversion_stride, inversion_steps
        self.inversion_guidance_scale, self.grad_scale = inversion_guidance_scale, grad_scale

    def conditioning_texts(self, prompts):
        return super().conditioning_texts(prompts) + [
            ("loss.negative_prompt", self.negative_prompt),
            ("loss.inverse_prompt", self.inverse_prompt),
        ]

    def interval_at(self, step: int) -> int:
        """δ_T: interval_start at step 0, `interval` from the end of the warm-up on (truncated, as theirs)."""
        return int(linear_ramp(step, 0, self.warmup_steps, self.interval_start, self.interval))

    def inversion_eps(self, guidance, z: torch.Tensor, t: torch.Tensor, rows: Sequence[Prompt]) -> torch.Tensor:
        """ε̂ on the inversion path: ε(∅); with inversion_guidance_scale > 1, their reverse CFG with the negative.
        rows: the prompts of z's rows (their cameras go with the ∅ rows to a camera-conditioned model)."""
        inverse = beside(self.inverse_prompt, rows)
        if self.inversion_guidance_scale <= 1:
            return guidance.predict_noise(z, t, inverse)
        eps_inv, eps_neg = predict_conditions(guidance, z, t, [inverse, [self.negative_prompt] * len(rows)])
        return eps_inv + self.inversion_guidance_scale * (eps_neg - eps_inv)

    def direction(self, guidance, x, t, noise, prompts, step):
        b = len(prompts)
        s = (t - self.interval_at(step)).clamp_min(START)
        with torch.no_grad():
            x_1 = add_noise(x.detach(), noise, torch.full_like(t, START), guidance.alphas_cumprod)
            path, active = strided_path(s, START, self.inversion_stride, self.inversion_steps)
            predict = lambda z, tt, rows: self.inversion_eps(guidance, z, tt, [prompts[i] for i in rows.tolist()])
            x_s = invert(guidance, x_1, path, active, predict)
            eps_s = self.inversion_eps(guidance, x_s, s, prompts)  # ISM's target, and the step from s to t
            a_s, a_t = (alpha_bar(guidance.alphas_cumprod, u, x.dim()) for u in (s, t))
            x_t = ddim_move(x_s, eps_s, a_s, a_t)
            eps_neg, eps_cond = predict_conditions(guidance, x_t, t, [[self.negative_prompt] * b, prompts])
        scale = value_at(self.guidance_scale, step)
        eps_cfg = cfg(eps_neg, eps_cond, scale)
        g = self.grad_scale * (eps_cfg - eps_s)
        logs = {"norm/cfg": norm(eps_cfg), "norm/target": norm(eps_s), "guidance_scale": scale}
        logs["ism/interval"] = float(self.interval_at(step))
        logs["ism/inversion_rows_per_sample"] = LazyMean(active.sum(0))  # model rows of ∅ on the way to s
        return g, logs

    def state_dict(self):
        # the warm-up length was resolved from the max_steps the run started with; keep it when a resume changes that
        return {"warmup_steps": self.warmup_steps}

    def load_state_dict(self, state):
        self.warmup_steps = state.get("warmup_steps", self.warmup_steps)
