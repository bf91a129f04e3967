"""Score Distillation Sampling (DreamFusion): g = ε_cfg(x_t; y) − ε.

In the bridge view the source distribution is approximated by the noise itself, which is where SDS's oversaturated,
oversmoothed look comes from.

MVDream's form (its threestudio guidance, recon_loss with recon_std_rescale r): the loss is 0.5·‖x − x̂0‖² with
x̂0 = (x_t − √(1 − ᾱ)·ε_cfg)/√ᾱ, which is SDS with w(t) = √((1 − ᾱ)/ᾱ); r > 0 rescales x̂0 towards the spread of the
unguided prediction, per object (its `views_per_object` rows together):

    x̂0 ← x̂0 · (r · std(x̂0_cond) / std(x̂0_cfg) + 1 − r),     g = (x − x̂0) · √ᾱ / √(1 − ᾱ)

(std over all entries of the object's views, unbiased, each + 1e-8), which counters the oversaturation of its large
guidance scale (50).
"""

from __future__ import annotations

import torch

from scoredist.guidance.base import cfg
from scoredist.losses.base import ScoreLoss, noised, norm, predict_conditions
from scoredist.prompts import texts
from scoredist.schedules import value_at

RECON_WEIGHTING = "sqrt((1-abar)/abar)"  # the w(t) under which w·g is x − x̂0


class SDS(ScoreLoss):
    """suffix: appended to the caption, before the view phrase (the paper's 3D code conditions its SDS stage on its
    target prompt "y, ., view": `suffix: ", ."` in conf/experiment/t23d_ours.yaml).
    negative_prompt: the text of CFG's unconditional rows ("": the empty prompt; threestudio's prompt processors put
    their negative prompt there).
    recon_std_rescale: MVDream's r (module docstring); 0: plain SDS. Needs weighting sqrt((1-abar)/abar)."""

    def __init__(
        self,
        guidance_scale=40.0,
        weighting: str = "1-abar",
        suffix: str = "",
        negative_prompt: str = "",
        recon_std_rescale: float = 0.0,
    ):
        super().__init__(weighting)
        self.guidance_scale, self.suffix, self.negative_prompt = guidance_scale, suffix, negative_prompt
        if not 0.0 <= float(recon_std_rescale) <= 1.0:
            raise ValueError(f"loss.recon_std_rescale must be in [0, 1], got {recon_std_rescale}")
        if recon_std_rescale and weighting != RECON_WEIGHTING:
            raise ValueError(
                f"loss.recon_std_rescale is MVDream's x0-reconstruction loss, whose w(t) is {RECON_WEIGHTING}: set "
                f"loss.weighting='{RECON_WEIGHTING}' (got {weighting!r})"
            )
        self.recon_std_rescale = float(recon_std_rescale)

    def conditioning_texts(self, prompts):
        if not self.suffix and not self.negative_prompt:
            return super().conditioning_texts(prompts)
        own = [("the prompt (prompt + loss.suffix)", text) for text in texts(prompts, self.suffix)]
        return own + [("the negative prompt" if self.negative_prompt else "the empty prompt", self.negative_prompt)]

    def direction(self, guidance, x, t, noise, prompts, step):
        uncond = [self.negative_prompt] * len(prompts)
        cond = texts(prompts, self.suffix)
        x_t = noised(guidance, x, t, noise)
        eps_cond, eps_uncond = predict_conditions(guidance, x_t, t, [cond, uncond])
        scale = value_at(self.guidance_scale, step)
        eps_cfg = cfg(eps_uncond, eps_cond, scale)
        logs = {"norm/cfg": norm(eps_cfg), "norm/noise": norm(noise), "guidance_scale": scale}
        if self.recon_std_rescale:
            return self.rescaled_direction(guidance, x, x_t, t, eps_cfg, eps_cond), logs
        return eps_cfg - noise, logs

    def rescaled_direction(self, guidance, x, x_t, t, eps_cfg, eps_cond) -> torch.Tensor:
        """g = (x − x̂0)·√ᾱ/√(1 − ᾱ) with MVDream's std-rescaled x̂0 (module docstring)."""
        shape = (-1, *([1] * (x.dim() - 1)))
        abar = guidance.alphas_cumprod.to(x.device)[t].to(x.dtype).view(shape)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        x0_cfg, x0_cond = (x_t - s * eps_cfg) / a, (x_t - s * eps_cond) / a
        views = getattr(guidance, "views_per_object", None) or x.shape[0]
        if x.shape[0] % views:
            raise ValueError(f"loss.recon_std_rescale rescales per object: {x.shape[0]} rows are not groups of {views}")
        spread = lambda y: y.reshape(-1, views, *y.shape[1:]).flatten(1).std(1) + 1e-8  # (objects,)
        factor = (spread(x0_cond) / spread(x0_cfg)).repeat_interleave(views).view(shape)
        r = self.recon_std_rescale
        x0 = x0_cfg * (r * factor + 1 - r)
        return (x.detach() - x0) * a / s
