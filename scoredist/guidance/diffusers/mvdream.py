"""MVDream (four views of one object denoised jointly, each knowing its camera) as guidance.

    ε_v = UNet(x_t,v, t, CLIP(y), camera_v)        v = 1 … V views of one object, one UNet call for all of them

MVDream is Stable Diffusion 2.1-base's UNet with two changes (the authors' MultiViewUNetModel), both expressed here on
diffusers' UNet2DConditionModel:
- the camera: its 4×4 camera-to-world matrix flattened (16 numbers, `mvdream_camera`) goes through
  Linear(16, 1280) – SiLU – Linear(1280, 1280) and is added to the timestep embedding — exactly diffusers'
  `class_embed_type="projection"` with `projection_class_embeddings_input_dim=16` (TimestepEmbedding: linear_1,
  SiLU, linear_2; added to the time embedding);
- 3D self-attention: every transformer block's self-attention runs over the tokens of all V views of an object at
  once ((b·V, l, c) → (b, V·l, c), the authors' BasicTransformerBlock3D); cross-attention to the text and the
  feed-forward stay per view. `MultiviewSelfAttention` is that attention processor, set on every `attn1`.

Rows arrive as the shapes world's multi-view prior takes them: consecutive groups of `views_per_object` rows of one
object (a 3D renderer's cameras of one step), every row carrying its camera (`prompts.Condition.camera`); the rows
of one group share one timestep (MVDream was trained so; `schedule.shared_t=true`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from scoredist.cameras import Cameras, camera_to_world
from scoredist.guidance.diffusers.sd import StableDiffusion
from scoredist.prompts import require_cameras


class MultiviewSelfAttention:
    """diffusers attention processor: self-attention over the tokens of `views` consecutive rows together."""

    def __init__(self, views: int):
        self.views = views

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("MultiviewSelfAttention is for self-attention (attn1) without a mask")
        rows, tokens, width = hidden_states.shape
        if rows % self.views:
            raise ValueError(f"{rows} rows are not whole groups of {self.views} views of one object")
        x = hidden_states.reshape(rows // self.views, self.views * tokens, width)
        heads = attn.heads

        def split(y: torch.Tensor) -> torch.Tensor:  # (b, n, heads·d) → (b, heads, n, d)
            return y.view(y.shape[0], y.shape[1], heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(attn.to_q(x)), split(attn.to_k(x)), split(attn.to_v(x)), scale=attn.scale
        )
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1).to(x.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        out = out.reshape(rows, tokens, -1)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def mvdream_camera(cameras: torch.Tensor) -> torch.Tensor:
    """(N, 16) MVDream camera inputs of rows' cameras (N, 4: azimuth, elevation, distance, fovy; scoredist/cameras.py).

    MVDream-threestudio's get_camera_cond with its default camera_condition_type "rotation": threestudio's OpenGL
    camera-to-world matrix (z up; a camera at azimuth 0 sits on +x) with its translation scaled to unit length,
    flattened row by row. Our frame is y up with azimuth 0 on +z; the same camera's position and axes in threestudio's
    frame are (z, x, y) of ours, a permutation applied to the matrix's rows (its columns, the camera's own axes,
    are the same OpenGL right / up / backward)."""
    c2w = camera_to_world(Cameras.from_tensor(cameras))
    to_threestudio = torch.zeros(4, 4)
    to_threestudio[0, 2] = to_threestudio[1, 0] = to_threestudio[2, 1] = to_threestudio[3, 3] = 1.0
    c2w = to_threestudio @ c2w
    c2w[:, :3, 3] = c2w[:, :3, 3] / c2w[:, :3, 3].norm(dim=-1, keepdim=True)
    return c2w.reshape(-1, 16).float()


class MVDream(StableDiffusion):
    """MVDream on a diffusers-layout folder (unet/ with the camera's class embedding, vae/, text_encoder/, tokenizer/,
    scheduler/: what scripts/convert_checkpoint.py writes from the authors' checkpoint and an SD 2.1-base folder).

    Args (besides StableDiffusion's): views_per_object: V, the views of one object denoised together (4).
    """

    family = "mvdream"
    needs_cameras = True
    shares_timestep = True  # an object's views at one t, as trained (checked before a run: schedule.shared_t)
    views_on_an_orbit = True  # trained on views evenly spaced in azimuth (checked: renderer.views_per_group)

    def __init__(self, pretrained: str = "mvdream-sd21-diffusers", views_per_object: int = 4, **kwargs):
        super().__init__(pretrained, **kwargs)
        if int(views_per_object) < 1:
            raise ValueError(f"guidance.views_per_object must be at least 1, got {views_per_object}")
        self.views_per_object = int(views_per_object)
        if (
            self.unet.config.class_embed_type != "projection"
            or self.unet.config.projection_class_embeddings_input_dim != 16
        ):
            raise ValueError(
                "an MVDream UNet embeds 16 camera numbers (class_embed_type 'projection', input dim 16); this one has "
                f"class_embed_type={self.unet.config.class_embed_type!r}: is guidance.pretrained an MVDream folder?"
            )
        processor = MultiviewSelfAttention(self.views_per_object)
        self.unet.set_attn_processor(
            {
                name: processor if name.endswith("attn1.processor") else proc
                for name, proc in self.unet.attn_processors.items()
            }
        )
        if self.max_batch is not None and self.max_batch % self.views_per_object:
            raise ValueError(
                f"guidance.max_batch={self.max_batch} would split an object's {self.views_per_object} views across "
                "UNet calls: make it a multiple of guidance.views_per_object"
            )

    def embed(self, prompts: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """The text embeddings (N, 77, D) and the rows' camera inputs (N, 16)."""
        cameras = require_cameras(prompts, "MVDream")
        if len(prompts) % self.views_per_object:
            raise ValueError(
                f"guidance=mvdream takes views in groups of guidance.views_per_object={self.views_per_object}, got "
                f"{len(prompts)} rows: set the cameras per step (trainer.batch_size) to a multiple of "
                f"{self.views_per_object}"
            )
        camera = mvdream_camera(torch.tensor(cameras, dtype=torch.float64)[:, :4])
        return (*super().embed(prompts), camera.to(device=self.device, dtype=self.denoiser_dtype))

    def prompt_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, 77, D) text embeddings alone (no camera needed)."""
        return super().embed(prompts)[0]

    def model_eps(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        # Checked where it costs nothing: on a GPU it would sync every step, and the trainer has already refused a
        # schedule without shared_t (train.check_view_groups).
        groups = t.reshape(-1, self.views_per_object) if t.numel() % self.views_per_object == 0 else None
        if groups is not None and t.device.type == "cpu" and not bool((groups == groups[:, :1]).all()):
            raise ValueError(
                "MVDream denoises the views of one object at one timestep, but this step drew different t within a "
                "group: set schedule.shared_t=true (as +experiment=t23d_mvdream does)"
            )
        return super().model_eps(x_t, t, prompts)

    def call_denoiser(self, model, x, t, cond):
        return model(x, t, cond[0], class_labels=cond[1], return_dict=False)[0]

    def make_source_model(self, rank: int = 4, alpha: float | None = None):
        raise ValueError(
            "guidance=mvdream has no VSD source model (its UNet's class embedding is the camera already): use "
            "loss=sds as MVDream's authors do (+experiment=t23d_mvdream)"
        )
