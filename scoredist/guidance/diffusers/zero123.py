"""Zero123 and Stable-Zero123 (novel views of one reference image at a relative pose) as guidance.

    ε = UNet([x_t ‖ E(ref)], t, P([CLIP(ref) ‖ T(row camera)]))          8 input channels, one context token

as threestudio's Zero123Guidance calls the authors' LatentDiffusion (hybrid conditioning):
- E(ref): the VAE posterior's mode of the reference image in [−1, 1] at the render's latent size, NOT multiplied by
  the latent scale factor (the authors' `encode_first_stage(...).mode()`), concatenated to x_t along channels;
- CLIP(ref): the reference's projected CLIP ViT-L/14 image embedding (768), the image resized to the encoder's 224²
  (bicubic, corners aligned, no antialiasing: kornia's resize in the authors' code) and normalised with CLIP's mean
  and std;
- T: the pose of the row's camera relative to the reference (`pose_vector`), 4 numbers; P: the learned projection
  Linear(772 → 768) (`PoseProjection`, the authors' cc_projection);
- the unconditional branch of classifier-free guidance (a row with the empty prompt) zeroes the projected embedding
  P(·) and the reference latent, as threestudio's and the authors' code do; the prompt's words are otherwise unread
  (Zero123 has no text encoder): every non-empty prompt is "the reference object".

The reference image: an RGBA PNG whose alpha is the object's mask (background removed), composited on white and
resized to 256² with area averaging, as threestudio's `prepare_embeddings`; an RGB image is taken as it is.

Cameras are rows' `prompts.Condition.camera` (azimuth, elevation, distance, fovy; scoredist/cameras.py). Azimuth
grows counter-clockwise seen from above in both this frame and threestudio's, so relative azimuths mean the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from scoredist.guidance.diffusers.base import DiffusersGuidance
from scoredist.prompts import require_cameras

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation (FrozenCLIPImageEmbedder's buffers)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
REFERENCE_SIZE = 256  # threestudio resizes the reference to 256² before both encoders


class PoseProjection(ModelMixin, ConfigMixin):
    """Zero123's cc_projection: Linear(image embedding + 4 pose numbers → context width). The config keys and the
    attribute name are those of diffusers' community Zero1to3 pipeline (CCProjection), so its folders load here."""

    @register_to_config
    def __init__(self, in_channel: int = 772, out_channel: int = 768):
        super().__init__()
        self.projection = torch.nn.Linear(in_channel, out_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class Zero123(DiffusersGuidance):
    """Zero123 on a diffusers-layout folder: unet/ (8 input channels), vae/, image_encoder/
    (CLIPVisionModelWithProjection), cc_projection/ (PoseProjection), scheduler/ — what scripts/convert_checkpoint.py
    writes from the authors' .ckpt.

    Args (besides the diffusers base's):
        reference: the input image (RGBA with the object's mask as alpha, or RGB on white).
        reference_azimuth, reference_elevation, reference_distance: the reference's camera (degrees, scene units);
            threestudio's zero123.yaml: 0°, 5° and 3.8.
    """

    family = "zero123"
    needs_cameras = True
    reads_text = False  # every non-empty text is "the reference object": a loss's negative or source text would be too

    def __init__(
        self,
        pretrained: str = "zero123-xl-diffusers",
        reference: str = "",
        reference_azimuth: float = 0.0,
        reference_elevation: float = 5.0,
        reference_distance: float = 3.8,
        **kwargs,
    ):
        super().__init__(pretrained, **kwargs)
        self.reference_camera = (float(reference_azimuth), float(reference_elevation), float(reference_distance))
        self.reference_rgb = load_reference(reference).to(self.device)  # (1, 3, 256, 256) in [0, 1]
        with torch.no_grad():
            self.reference_embedding = self.clip_embedding(self.reference_rgb)  # (1, 768)
        self._reference_latents: dict[tuple[int, int], torch.Tensor] = {}

    def load_components(self, folder):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPVisionModelWithProjection

        return {
            "modules": {
                "image_encoder": folder.text_encoder(CLIPVisionModelWithProjection, "image_encoder"),
                "pose_projection": folder.model(PoseProjection, "cc_projection"),
            },
            "denoiser": folder.model(UNet2DConditionModel, "unet"),
            "vae": folder.model(AutoencoderKL, "vae"),
            "text_encoders": [],
            "tokenizers": [],
            "scheduler_config": folder.scheduler_config(DDPMScheduler),
        }

    def configure_model_space(self) -> None:
        super().configure_model_space()
        if self.denoiser.config.in_channels != 2 * self.channels:
            raise ValueError(
                f"a Zero123 UNet takes the noisy latent and the reference latent ({2 * self.channels} channels), this "
                f"one {self.denoiser.config.in_channels}: is guidance.pretrained a Zero123 folder?"
            )

    # ---- conditioning ---------------------------------------------------------------------------------------------

    def pose_vector(self, cameras: torch.Tensor) -> torch.Tensor:
        """T (N, 4) for rows' cameras (N, ≥ 3: azimuth, elevation, distance): threestudio's Zero123Guidance.get_cond,
        [Δpolar = ref elevation − elevation (radians), sin Δazimuth, cos Δazimuth, distance − ref distance]."""
        ref_az, ref_el, ref_dist = self.reference_camera
        cameras = cameras.double()
        d_az = torch.deg2rad(cameras[:, 0] - ref_az)
        return torch.stack(
            [torch.deg2rad(ref_el - cameras[:, 1]), d_az.sin(), d_az.cos(), cameras[:, 2] - ref_dist], dim=-1
        ).float()

    @torch.no_grad()
    def clip_embedding(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (B, 768) projected CLIP image embeddings."""
        encoder = self.image_encoder
        size = encoder.config.image_size  # 224 for ViT-L/14
        x = F.interpolate(rgb.float(), (size, size), mode="bicubic", align_corners=True)
        mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
        x = ((x - mean) / std).to(device=next(encoder.parameters()).device, dtype=next(encoder.parameters()).dtype)
        return encoder(pixel_values=x).image_embeds.to(self.device)

    @torch.no_grad()
    def reference_latent(self, height: int, width: int) -> torch.Tensor:
        """(1, 4, h, w) unscaled VAE posterior mode of the reference at the rows' latent size (cached per size)."""
        key = (height, width)
        if key not in self._reference_latents:
            size = (height * self.downscale, width * self.downscale)
            rgb = self.reference_rgb
            if tuple(rgb.shape[-2:]) != size:
                rgb = F.interpolate(rgb, size, mode="bilinear", align_corners=False)
            x = (rgb * 2 - 1).to(device=self.device, dtype=self.vae_dtype)
            self._reference_latents[key] = self.vae.encode(x).latent_dist.mode().float()
        return self._reference_latents[key]

    def embed(self, prompts: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """Per row: the projected context (N, 1, 768) and the reference-latent flag (N,) — zeros for ∅ rows."""
        cameras = torch.tensor(require_cameras(prompts, type(self).__name__), dtype=torch.float64)
        n = len(prompts)
        pose = self.pose_vector(cameras).to(self.device)
        image = self.reference_embedding.expand(n, -1)
        tokens = torch.cat([image, pose], dim=-1)[:, None]  # (N, 1, 772)
        projection = self.pose_projection
        context = projection(tokens.to(dtype=next(projection.parameters()).dtype, device=projection.device))
        context = context.to(self.device)  # the projection may wait on the CPU (model_offload)
        conditional = torch.tensor([str(p) != "" for p in prompts], device=self.device)
        context = torch.where(conditional[:, None, None], context, torch.zeros_like(context))
        return context.to(self.denoiser_dtype), conditional

    def call_denoiser(self, model, x, t, cond):
        context, conditional = cond
        latent = self.reference_latent(x.shape[-2], x.shape[-1]).to(x.dtype).expand(x.shape[0], -1, -1, -1)
        latent = torch.where(conditional[:, None, None, None], latent, torch.zeros_like(latent))
        return model(torch.cat([x, latent], dim=1), t, encoder_hidden_states=context, return_dict=False)[0]


class StableZero123(Zero123):
    """Stable-Zero123 (stabilityai/stable-zero123): Zero123's network trained on better renders, whose fourth pose
    number is the reference's absolute polar angle (radians), not a change of distance (threestudio's
    StableZero123Guidance.get_cond)."""

    family = "stable_zero123"

    def __init__(self, pretrained: str = "stable-zero123-diffusers", **kwargs):
        super().__init__(pretrained, **kwargs)

    def pose_vector(self, cameras: torch.Tensor) -> torch.Tensor:
        pose = super().pose_vector(cameras)
        pose[:, 3] = math.radians(90.0 - self.reference_camera[1])
        return pose


def load_reference(path: str) -> torch.Tensor:
    """The reference image (1, 3, 256, 256) in [0, 1]: area-resized, composited on white by its alpha."""
    from scoredist.images import read_rgba

    if not path:
        raise ValueError(
            "guidance.reference is empty: pass the input image (guidance.reference=path/to/object_rgba.png, or "
            "+experiment=i23d_zero123 image=path/to/object_rgba.png)"
        )
    rgb, alpha = read_rgba(path, REFERENCE_SIZE, REFERENCE_SIZE)
    return rgb * alpha + (1 - alpha)
