"""Rectified-Flow Score Distillation (RFDS; Yang et al., "Text-to-Image Rectified Flow as Plug-and-Play Priors",
ICLR 2025): SDS written in the velocity of a flow-matching model,

    g = û_cfg(x_t; y) − (ε − x)        û_cfg = û(x_t; neg) + s · (û(x_t; y) − û(x_t; neg)),   u = ε − x0,

on the flow path x_t = (1 − σ) x + σ ε. Through predictions.py the guidance answers ε̂ for any backbone; on any path
x_t = α x + σ ε the velocity gap is the noise gap rescaled, û − u = (ε̂ − ε)(α + σ)/α (x̂0 − x = −(σ/α)(ε̂ − ε)), and
(α + σ)/α = 1 + sqrt((1 − ᾱ)/ᾱ) depends on the signal-to-noise ratio alone, so

    g = (1 + sqrt((1 − ᾱ_t)/ᾱ_t)) · (ε̂_cfg − ε)        (on the flow path: (ε̂_cfg − ε) / (1 − σ)).

Settings are the authors' code (yangxiaofeng/rectified_flow_prior@235e39f, threestudio/models/guidance/RFDS_sd3.py
and 2dplayground_RFDS_sd3.py): SD3-medium, t a uniform integer index of the 1000-step shift-3 grid in [20, 980]
(σ 0.058 … 0.993; schedule=uniform here: σ 0.060 … 0.994), CFG 50 with the empty negative prompt in 2D (100 with
"unrealistic, blurry, low quality, oversaturation." in 3D), loss sigmoid(u)·F.mse_loss(ε − x, û_cfg, "mean")/B
with u ~ N(0, 1) drawn per row and one mean-reduced MSE over the batch (so the batch is scaled by the mean of the
sigmoids, a random factor ≈ 0.5 that does not depend on t: `random_weight`). No w(t). Their 2-rectified-flow
variant (RFDS.py) has no random factor.
"""

from __future__ import annotations

import torch

from scoredist.guidance.base import cfg
from scoredist.losses.base import LazyMean, ScoreLoss, noised, norm, predict_conditions
from scoredist.prompts import texts
from scoredist.schedules import value_at


def velocity_gap_factor(alphas_cumprod: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(α + σ)/α = 1 + sqrt((1 − ᾱ_t)/ᾱ_t) per row, shaped to broadcast over an ndim tensor: û − u = factor·(ε̂ − ε)."""
    abar = alphas_cumprod.to(t.device)[t].double()
    return (1 + ((1 - abar) / abar).sqrt()).float().view(-1, *([1] * (ndim - 1)))


class RFDS(ScoreLoss):
    """suffix: appended to the caption (their 2D code conditions on "<prompt>, front view": view-dependent prompting
    at elevation = azimuth = 0; the t2i_rfds overlay sets it). random_weight: multiply the batch's direction by the
    mean of sigmoid(u_i), u_i ~ N(0, 1) (their SD3 code); false: their 2-rectified-flow code, no factor."""

    def __init__(
        self,
        guidance_scale=50.0,
        negative_prompt: str = "",
        suffix: str = "",
        random_weight: bool = True,
        weighting: str = "uniform",
        reduction: str = "mean",
    ):
        super().__init__(weighting, reduction)
        self.guidance_scale, self.negative_prompt, self.suffix = guidance_scale, negative_prompt, suffix
        self.random_weight = random_weight

    def conditioning_texts(self, prompts):
        own = [("the prompt (prompt + loss.suffix)", text) for text in texts(prompts, self.suffix)]
        return own + [("loss.negative_prompt", self.negative_prompt)]

    def direction(self, guidance, x, t, noise, prompts, step):
        cond = texts(prompts, self.suffix)
        negative = [self.negative_prompt] * len(prompts)
        eps_cond, eps_neg = predict_conditions(guidance, noised(guidance, x, t, noise), t, [cond, negative])
        scale = value_at(self.guidance_scale, step)
        eps_cfg = cfg(eps_neg, eps_cond, scale)
        gap = velocity_gap_factor(guidance.alphas_cumprod, t, x.dim()) * (eps_cfg - noise)  # û_cfg − (ε − x)
        logs = {"norm/velocity_gap": norm(gap), "guidance_scale": scale}
        if self.random_weight:
            # torch's global generator: seeded per chunk by the trainer and checkpointed with the run
            factor = torch.sigmoid(torch.randn(len(prompts))).mean().to(x.device)
            gap = factor * gap
            logs["random_weight"] = LazyMean(factor)
        return gap, logs
