"""Noise-Free Score Distillation (Katzir et al.): replace −ε by a denoising term that needs no noise sample.

g = s · (ε(x_t; y) − ε(x_t; ∅)) + δ_D,   δ_D = ε(x_t; ∅)                     if t < t_threshold
                                          ε(x_t; ∅) − ε(x_t; y_neg)          otherwise
"""

from __future__ import annotations

import torch

from scoredist.losses.base import ScoreLoss, noised, norm, predict_conditions
from scoredist.prompts import NFSD_NEGATIVE
from scoredist.schedules import value_at


class NFSD(ScoreLoss):
    def __init__(
        self,
        guidance_scale=40.0,
        negative_prompt: str = NFSD_NEGATIVE,
        t_threshold: int = 200,
        weighting: str = "1-abar",
    ):
        super().__init__(weighting)
        self.guidance_scale, self.negative_prompt, self.t_threshold = guidance_scale, negative_prompt, t_threshold

    def conditioning_texts(self, prompts):
        return super().conditioning_texts(prompts) + [("loss.negative_prompt", self.negative_prompt)]

    def direction(self, guidance, x, t, noise, prompts, step):
        b = len(prompts)
        eps_cond, eps_uncond, eps_neg = predict_conditions(
            guidance, noised(guidance, x, t, noise), t, [prompts, [""] * b, [self.negative_prompt] * b]
        )
        classifier = value_at(self.guidance_scale, step) * (eps_cond - eps_uncond)
        low_t = (t < self.t_threshold).view(-1, *([1] * (x.dim() - 1)))
        delta_d = torch.where(low_t, eps_uncond, eps_uncond - eps_neg)
        return classifier + delta_d, {"norm/classifier": norm(classifier), "norm/delta_d": norm(delta_d)}
