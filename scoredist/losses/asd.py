"""Asynchronous Score Distillation (ScaleDreamer, Ma et al., ECCV 2024), as the authors' code computes it.

    g = ε(x_t; neg) + s · (ε(x_t; y) − ε(x_t; neg)) − ε(x_{t+Δt}; y, t + Δt),   w(t) = 1 − ᾱ_t

The subtracted source term is the same frozen model, asked without CFG about the render noised with the same ε at a
later timestep t + Δt: Δt = ⌊U · plus_ratio · (t − t_min)⌋, U ~ U[0, 1) per row (`plus_random`; without it
U = 1), t_min the schedule's lowest timestep at this step, t + Δt clamped to [1, T − 1]. Δt = 0 leaves
(s − 1) · (ε(y) − ε(neg)), a classifier-score direction.

Facts from theEricMa/ScaleDreamer (threestudio/models/guidance/stable_diffusion_asd_guidance.py, the later of its two
`get_t_plus` definitions, which Python keeps; configs/single-prompt_benchmark/asd_sd_nerf.yaml):
- the noise is shared by both terms; the CFG branch is the negative prompt ("" in their SD configs); w(t) = 1 − ᾱ at
  t, not at t + Δt; their loss is 0.5 · sum((x − sg(x − w·g))²) / B, reduction "sum" as every loss here.
- plus_ratio 0.1 and plus_random true in every config (the code's own default is false); guidance scale 7.5.
- their t schedule anneals both bounds over the whole run: t_min 0.5 → 0.02, t_max 0.98 → 0.5 (`schedule=decay
  schedule.t_min=0.5`): the `schedule` argument here is the run's own schedule (`${schedule}`), read for t_min (its
  first allowed timestep, ⌈T · t_min⌉, where theirs is ⌊T · t_min⌋: Δt may differ by one step's share).
- their SD configs add perp-neg view prompts (guidance_perp_neg −0.5); not reproduced (no view-prompt negatives here).
Model rows per step and sample: 3, in one call ([y at t, neg at t, y at t + Δt]).
"""

from __future__ import annotations

import torch

from scoredist.guidance.base import add_noise, cfg
from scoredist.losses.base import LazyMean, ScoreLoss, norm
from scoredist.prompts import conditions
from scoredist.schedules import TimestepSchedule, value_at


class ASD(ScoreLoss):
    def __init__(
        self,
        schedule: TimestepSchedule | None = None,
        guidance_scale=7.5,
        negative_prompt: str = "",
        plus_ratio: float = 0.1,
        plus_random: bool = True,
        weighting: str = "1-abar",
    ):
        super().__init__(weighting)
        if plus_ratio < 0:
            raise ValueError(f"ASD plus_ratio must be >= 0 (t + Δt is the later timestep), got {plus_ratio}")
        self.schedule = schedule if schedule is not None else TimestepSchedule()
        self.guidance_scale, self.negative_prompt = guidance_scale, negative_prompt
        self.plus_ratio, self.plus_random = plus_ratio, plus_random

    def conditioning_texts(self, prompts):
        return super().conditioning_texts(prompts) + [("loss.negative_prompt", self.negative_prompt)]

    def shifted(self, t: torch.Tensor, step: int, num_train_timesteps: int) -> torch.Tensor:
        """t + Δt per row; U drawn from torch's global generator (seeded per chunk by the trainer, checkpointed)."""
        t_min = self.schedule.index_range(step, num_train_timesteps)[0]
        span = (self.plus_ratio * (t - t_min).float()).clamp(min=0.0)
        span = torch.minimum(span, (num_train_timesteps - 1 - t).float())
        if self.plus_random:
            span = span * torch.rand(t.shape).to(t.device)
        return (t + span.long()).clamp(1, num_train_timesteps - 1)

    def direction(self, guidance, x, t, noise, prompts, step):
        b = len(prompts)
        t_plus = self.shifted(t, step, guidance.num_train_timesteps)
        x = x.detach()
        x_t, x_plus = (add_noise(x, noise, u, guidance.alphas_cumprod) for u in (t, t_plus))
        with torch.no_grad():  # one call: [y at t | neg at t | y at t + Δt]
            eps = guidance.predict_noise(
                torch.cat([x_t, x_t, x_plus]),
                torch.cat([t, t, t_plus]),
                conditions([prompts, [self.negative_prompt] * b, prompts]),
            )
        eps_cond, eps_neg, eps_plus = eps.chunk(3)
        scale = value_at(self.guidance_scale, step)
        eps_cfg = cfg(eps_neg, eps_cond, scale)
        logs = {"norm/cfg": norm(eps_cfg), "norm/shifted": norm(eps_plus), "guidance_scale": scale}
        logs["asd/delta_t"] = LazyMean(t_plus - t)
        return eps_cfg - eps_plus, logs

    def state_dict(self):
        # the schedule's length (DecaySchedule) as the run started; the run's own schedule keeps it the same way
        return {"schedule": self.schedule.state_dict()}

    def load_state_dict(self, state):
        self.schedule.load_state_dict(state.get("schedule", {}))
