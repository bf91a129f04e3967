"""Delta Denoising Score (Hertz et al.): edit x away from a reference, keeping what the prompts agree on.

    g = ε(x_t; y_tgt) − ε(x_ref,t; y_src),   x_t and x_ref,t share t and ε

y_tgt is the run's prompt, y_src describes the reference. The reference is an image file (`reference`), encoded into the
model's space once, or, when none is given, the renderer's initial state (the image being edited). With
`guidance_scale` set, both branches use CFG (four conditions, still one call), as in the DDS paper.

A render whose rows carry cameras (a NeRF's random views) has no initial state to edit: its first render is one random
view of an untrained field, so without `reference` the first step stops with a ValueError naming loss.reference.
"""

from __future__ import annotations

import torch

from scoredist.guidance.base import cfg
from scoredist.images import read_image
from scoredist.losses.base import ScoreLoss, noised, norm, predict_conditions
from scoredist.prompts import texts
from scoredist.schedules import value_at


class DDS(ScoreLoss):
    def __init__(
        self,
        source_prompt: str = "",
        reference: str | None = None,
        guidance_scale=None,
        weighting: str = "1-abar",
    ):
        super().__init__(weighting)
        self.source_prompt, self.reference, self.guidance_scale = source_prompt, reference, guidance_scale
        self.x_ref = None

    def attach(self, guidance, x_init):
        if self.reference is None:
            self.x_ref = x_init.detach().clone()
            return
        h, w = x_init.shape[-2] * guidance.downscale, x_init.shape[-1] * guidance.downscale
        rgb = read_image(self.reference, h, w).to(x_init.device)  # a non-image file: a ValueError naming it
        with torch.no_grad():
            self.x_ref = guidance.encode(rgb).float()

    def conditioning_texts(self, prompts):
        found = [("the prompt", text) for text in texts(prompts)] + [("loss.source_prompt", self.source_prompt)]
        return found + ([("the empty prompt", "")] if self.guidance_scale is not None else [])

    def direction(self, guidance, x, t, noise, prompts, step):
        self.check_rows(prompts)
        b = len(prompts)
        # one reference for the whole batch broadcasts against the batch's noise: x_ref,t has B rows either way
        x_t, x_ref_t = noised(guidance, x, t, noise), noised(guidance, self.x_ref, t, noise)
        src = [self.source_prompt] * b
        if self.guidance_scale is None:
            eps_tgt, eps_src = predict_conditions(guidance, [x_t, x_ref_t], t, [prompts, src])
        else:
            uncond = [""] * b
            e_tgt, e_tgt_u, e_src, e_src_u = predict_conditions(
                guidance, [x_t, x_t, x_ref_t, x_ref_t], t, [prompts, uncond, src, uncond]
            )
            scale = value_at(self.guidance_scale, step)
            eps_tgt, eps_src = cfg(e_tgt_u, e_tgt, scale), cfg(e_src_u, e_src, scale)
        g = eps_tgt - eps_src
        return g, {"norm/delta": norm(g)}

    def check_rows(self, prompts) -> None:
        """Refuse rows with cameras (views of a 3D scene) edited from the renderer's first render: that render was one
        random camera's view of the untrained field, so every later view would be pulled towards it (grey blobs, at a
        NeRF's cost per step) instead of edited from an image. The rows' cameras say so; the loss knows no renderer."""
        if self.reference is None and any(getattr(p, "camera", None) is not None for p in prompts):
            raise ValueError(
                "loss=dds on a renderer with cameras (renderer=nerf) needs a reference image: pass "
                'loss.reference=IMAGE (and loss.source_prompt="what it shows"); without one DDS would edit one random '
                "view of the untrained field"
            )

    def state_dict(self):
        return {"x_ref": self.x_ref}

    def load_state_dict(self, state):
        # checkpoints load on the CPU; the reference must live where the run computes
        self.x_ref = state["x_ref"].to(self.x_ref.device)
