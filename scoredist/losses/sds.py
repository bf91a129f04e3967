"""Score Distillation Sampling (DreamFusion): g = ε_cfg(x_t; y) − ε.

In the bridge view the source distribution is approximated by the noise itself, which is where SDS's oversaturated,
oversmoothed look comes from.
"""

from __future__ import annotations

from scoredist.guidance.base import cfg
from scoredist.losses.base import ScoreLoss, noised, norm, predict_conditions
from scoredist.prompts import texts
from scoredist.schedules import value_at


class SDS(ScoreLoss):
    """suffix: appended to the caption, before the view phrase (the paper's 3D code conditions its SDS stage on its
    target prompt "y, ., view": `suffix: ", ."` in conf/experiment/t23d_ours.yaml)."""

    def __init__(self, guidance_scale=40.0, weighting: str = "1-abar", suffix: str = ""):
        super().__init__(weighting)
        self.guidance_scale, self.suffix = guidance_scale, suffix

    def conditioning_texts(self, prompts):
        if not self.suffix:
            return super().conditioning_texts(prompts)
        own = [("the prompt (prompt + loss.suffix)", text) for text in texts(prompts, self.suffix)]
        return own + [("the empty prompt", "")]

    def direction(self, guidance, x, t, noise, prompts, step):
        uncond = [""] * len(prompts)
        cond = texts(prompts, self.suffix)
        eps_cond, eps_uncond = predict_conditions(guidance, noised(guidance, x, t, noise), t, [cond, uncond])
        scale = value_at(self.guidance_scale, step)
        eps_cfg = cfg(eps_uncond, eps_cond, scale)
        return eps_cfg - noise, {"norm/cfg": norm(eps_cfg), "norm/noise": norm(noise), "guidance_scale": scale}
