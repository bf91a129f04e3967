"""Score Distillation Sampling (DreamFusion): g = ε_cfg(x_t; y) − ε.

In the bridge view the source distribution is approximated by the noise itself, which is where SDS's oversaturated,
oversmoothed look comes from.
"""

from __future__ import annotations

from scoredist.guidance.base import cfg
from scoredist.losses.base import ScoreLoss, noised, norm, predict_conditions
from scoredist.schedules import value_at


class SDS(ScoreLoss):
    def __init__(self, guidance_scale=40.0, weighting: str = "1-abar"):
        super().__init__(weighting)
        self.guidance_scale = guidance_scale

    def direction(self, guidance, x, t, noise, prompts, step):
        uncond = [""] * len(prompts)
        eps_cond, eps_uncond = predict_conditions(guidance, noised(guidance, x, t, noise), t, [prompts, uncond])
        scale = value_at(self.guidance_scale, step)
        eps_cfg = cfg(eps_uncond, eps_cond, scale)
        return eps_cfg - noise, {"norm/cfg": norm(eps_cfg), "norm/noise": norm(noise), "guidance_scale": scale}
