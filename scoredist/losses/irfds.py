"""iRFDS (Yang et al., ICLR 2025): invert an image into the noise a rectified-flow model maps to it, then edit it by
sampling the flow from that noise under another prompt.

The parameter x is the noise z (renderer=image, mode latent, a standard-normal start); x0 is the reference image. At a
flow time σ the model sees x_s = (1 − σ) x0 + σ z and predicts û ≈ ε − x0; the authors' loss pulls z towards the
noise that velocity implies,

    L = ½ [ mean (z − sg(û + x0))² + mean(z)² + (var(z) − 1)² ]        (their MSE over entries, batch 1)

and z − (û + x0) = (1 + σ/α)(z − ε̂) with ε̂ the model's noise estimate (x_s = α x0 + σ z, x̂0 − x0 = (σ/α)(z − ε̂)), so
on any backbone, through predictions.py,

    g = (1 + sqrt((1 − ᾱ)/ᾱ)) · (z − ε̂(x_t; y)) + mean(z) + 2 (var(z) − 1)(z − mean(z)) · N/(N − 1)

per sample (N its entries), reduced over the entries as their mean-reduced MSE is. The prediction is conditional only
(no CFG), as theirs. At the end the flow is sampled from z: under the caption (inversion.png, which should give the
reference back) and under `edit_prompt` (edit.png), `edit_steps` Euler steps with CFG `edit_guidance_scale` — DDIM on
the VP path, which on a flow path is exactly the Euler step x_σ' = x_σ + (σ' − σ) û.

Settings: the authors' SD3 code (yangxiaofeng/rectified_flow_prior@235e39f, threestudio/models/guidance/iRFDS_sd3.py,
2dplayground_iRFDS_sd3.py): t uniform over the 15 timesteps of SD3's shifted sampling grid (schedule=uniform with
schedule.grid=15 over [0, 1] indexes the same grid), AdamW lr 2e-3, 1400 steps, the edit with 15 steps and CFG 2.
"""

from __future__ import annotations

import torch

from scoredist.guidance.base import add_noise, ddim_sample
from scoredist.images import read_image
from scoredist.losses.base import ScoreLoss, norm
from scoredist.losses.rfds import velocity_gap_factor
from scoredist.prompts import texts


def mean_variance_gradient(z: torch.Tensor) -> torch.Tensor:
    """N/2 · ∂/∂z [mean(z)² + (var(z) − 1)²] per sample (rows of z, N entries each), var unbiased (torch.var's
    default, as theirs): the regulariser's share of g, where the MSE's factor 2 and their ½ cancel."""
    flat = z.flatten(1)
    n = flat.shape[1]
    mean, var = flat.mean(1, keepdim=True), flat.var(1, keepdim=True)
    grad = mean + 2 * (var - 1) * (flat - mean) * n / (n - 1)
    return grad.view_as(z)


class IRFDS(ScoreLoss):
    renders_are_samples = False  # the parameters are noise: eval.json evaluates inversion.png and edit.png instead

    def __init__(
        self,
        reference: str | None = None,
        edit_prompt: str | None = None,
        edit_steps: int = 15,
        edit_guidance_scale: float = 2.0,
        regularize: bool = True,
        weighting: str = "uniform",
        reduction: str = "mean",
    ):
        super().__init__(weighting, reduction)
        self.reference, self.edit_prompt = reference, edit_prompt
        self.edit_steps, self.edit_guidance_scale, self.regularize = int(edit_steps), edit_guidance_scale, regularize
        self.x0 = None

    def attach(self, guidance, x_init):
        if self.reference is None:
            raise ValueError(
                "loss=irfds inverts an image: pass loss.reference=IMAGE (and the caption that describes it)"
            )
        h, w = x_init.shape[-2] * guidance.downscale, x_init.shape[-1] * guidance.downscale
        rgb = read_image(self.reference, h, w).to(x_init.device)
        with torch.no_grad():
            self.x0 = guidance.encode(rgb).float()

    def conditioning_texts(self, prompts):
        found = [("the prompt", text) for text in texts(prompts)]
        edit = [("loss.edit_prompt", self.edit_prompt)] if self.edit_prompt else []
        return found + edit + [("the empty prompt", "")]

    def direction(self, guidance, x, t, noise, prompts, step):
        z = x.detach()
        x0 = self.x0.expand_as(z)
        x_t = add_noise(x0, z, t, guidance.alphas_cumprod)  # the reference noised with the noise being optimised
        eps = guidance.predict_noise(x_t, t, texts(prompts))
        g = velocity_gap_factor(guidance.alphas_cumprod, t, x.dim()) * (z - eps)
        logs = {"norm/noise_gap": norm(z - eps)}
        if self.regularize:
            g = g + mean_variance_gradient(z)
        return g, logs

    def check_rows(self, prompts) -> None:
        if any(getattr(p, "camera", None) is not None for p in prompts):
            raise ValueError("loss=irfds inverts one image into its noise: use renderer=image (mode latent)")

    @torch.no_grad()
    def outputs(self, guidance, x, captions):
        """The flow sampled from the inverted noise x: under each row's caption (should give the reference back) and
        under edit_prompt. {file name: (model-space images (B, ...), the prompt of each row)}."""
        runs = {"inversion.png": list(captions)}
        if self.edit_prompt:
            runs["edit.png"] = [self.edit_prompt] * len(captions)
        return {
            name: (ddim_sample(guidance, x.detach(), prompts, self.edit_steps, self.edit_guidance_scale), prompts)
            for name, prompts in runs.items()
        }

    def state_dict(self):
        return {"x0": self.x0}

    def load_state_dict(self, state):
        self.x0 = state["x0"].to(self.x0.device)
