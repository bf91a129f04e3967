"""Entropic Score Distillation (Wang et al., "Taming Mode Collapse in Score Distillation for Text-to-3D Generation",
CVPR 2024): VSD whose source is mixed between camera-conditioned and camera-free, which adds the entropy of the
renders over the views to what is maximised (against the Janus, multi-face, object):

    g = ε_cfg(x_t; y) − [ε_ψ(x_t; y, ∅_c) + (1 − λ) · (ε_ψ(x_t; y, c) − ε_ψ(x_t; y, ∅_c))]

λ = `entropy_weight`; λ = 0 is VSD (exactly, with `camera_dropout=0`). The camera-free row is the row's caption alone:
no camera (Stable Diffusion's source gets the all-zero camera feature, as theirs) and no view phrase (the exact priors'
source is conditioned on the phrase, not on the camera). Both rows of every sample go through one source call.

Facts from the authors: VITA-Group/3D-Mode-Collapse publishes no 3D code of its own; its README runs threestudio's
ProlificDreamer with `system.guidance.guidance_scale_lora=0.5`, and threestudio's stable_diffusion_vsd_guidance.py
forms the source as uncond + guidance_scale_lora · (camera − uncond): guidance_scale_lora = 1 − λ, so their published
setting is λ = 0.5 (the default here). The camera-free branch is trained by dropping the whole batch's camera with
probability 0.1 at each source fit (their `lora_cfg_training`, which ProlificDreamer's VSD has on as well):
`camera_dropout`. Everything else is VSD's (conf/loss/vsd.yaml, and its deliberate differences: the text dropout, and
the view phrase in ε_ψ's text, where threestudio's LoRA is asked the view-independent prompt).

In 2D (image renderers) a row has no camera and no view phrase: there is nothing to drop, and ESD is VSD, draw for
draw (the source is asked once, the camera dropout draws nothing). Its shapes benchmark
row shows that identity; ESD differs from VSD only with cameras (renderer=nerf). With `loss.source=particles` the rows
must have no view phrase (2D).
"""

from __future__ import annotations

import torch

from scoredist.losses.vsd import VSD, camera_kwargs
from scoredist.prompts import Prompt, texts


def camera_free(prompts) -> list:
    """The rows with their camera and view phrase dropped: their captions."""
    return [Prompt(p.caption) if isinstance(p, Prompt) else p for p in prompts]


def has_camera(prompts) -> bool:
    """Whether some row carries a camera or a view phrase, which ESD drops (none does in 2D)."""
    return texts(camera_free(prompts)) != texts(prompts) or bool(camera_kwargs(prompts))


class ESD(VSD):
    def __init__(self, entropy_weight: float = 0.5, camera_dropout: float = 0.1, **vsd_kwargs):
        super().__init__(**vsd_kwargs)
        if not 0 <= entropy_weight <= 1:
            raise ValueError(f"ESD entropy_weight λ must be in [0, 1], got {entropy_weight}")
        if not 0 <= camera_dropout <= 1:
            raise ValueError(f"ESD camera_dropout must be in [0, 1], got {camera_dropout}")
        self.entropy_weight, self.camera_dropout = entropy_weight, camera_dropout

    def check_rows(self, prompts):
        super().check_rows(prompts)
        views = [p for p in prompts if isinstance(p, Prompt) and (p.view or p.camera is not None)]
        if self.source_kind == "particles" and views:
            raise ValueError(
                "ESD with loss.source=particles needs rows without cameras (2D renders): the particles are grouped "
                "by prompt text, view phrase included, so a camera-free row has none; use loss.source=learned"
            )

    def source_noise(self, x_t, t, prompts) -> torch.Tensor:
        if self.entropy_weight == 0 or not has_camera(prompts):  # 2D: the camera-free rows are the rows
            return super().source_noise(x_t, t, prompts)
        rows = [*prompts, *camera_free(prompts)]
        eps = self.source.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), texts(rows), **camera_kwargs(rows))
        eps_camera, eps_free = eps.float().chunk(2)
        return eps_free + (1 - self.entropy_weight) * (eps_camera - eps_free)

    def fitting_rows(self, prompts):
        """The batch's cameras dropped with probability camera_dropout (one draw per fitting step, as theirs); a
        dropped camera is asked as "no camera" (Stable Diffusion's source: the all-zero feature, as at distillation).
        Rows without cameras draw nothing: in 2D, ESD's fits are VSD's, draw for draw."""
        if self.camera_dropout > 0 and has_camera(prompts) and float(torch.rand(())) < self.camera_dropout:
            return camera_free(prompts), {"cameras": [None] * len(prompts)}
        return super().fitting_rows(prompts)
