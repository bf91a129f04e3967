"""FLUX.1 (diffusers' FluxTransformer2DModel) as guidance: a guidance-distilled rectified-flow velocity model.

    u = Transformer(pack(x_s), σ, T5 tokens, CLIP-L pooled, guidance = g, img_ids, txt_ids)      u ≈ ε − x0

as diffusers' FluxPipeline calls it: latents packed in 2×2 patches (16 channels → 64 features per token), img_ids
(0, row, col) of each patch, txt_ids zeros, the timestep σ ∈ [0, 1] (the model scales σ and g by 1000 itself), T5 at
`max_sequence_length` 512 tokens and CLIP's pooled output.

Guidance distillation. FLUX.1-dev was distilled to follow the embedded guidance value g (`embedded_guidance`, the
pipeline's default 3.5) in ONE conditional call; it has no trained unconditional branch. Every row here is evaluated
at the same g, the empty prompt's too, so a loss that asks ε(∅) gets the distilled model's answer for "" at g — what
diffusers' true-CFG (`true_cfg_scale`, a negative prompt) does as well. A loss's own guidance_scale s then acts on top
of g: ε(∅) + s(ε(y) − ε(∅)); with s = 1 (loss.guidance_scale=1) the loss uses the distilled guidance alone, one row
per sample. FLUX.1-schnell (guidance_embeds false) takes no g.

The flow time: Flux shifts its sigmas with the image size (use_dynamic_shifting: μ linear in the token count); a
guidance model has one timestep table, so the shift is fixed at `shift_resolution` pixels (512: shift e^0.63 = 1.88),
or given outright as `flow_shift`.
"""

from __future__ import annotations

import torch

from scoredist.guidance.diffusers.base import DiffusersGuidance, dynamic_flow_shift


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(n, C, h, w) → (n, h/2 · w/2, 4C): each 2×2 patch one token, channels-major within it (diffusers' order)."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), 4 * c)


def unpack_latents(tokens: torch.Tensor, channels: int, h: int, w: int) -> torch.Tensor:
    """The inverse of pack_latents: (n, h/2 · w/2, 4C) → (n, C, h, w)."""
    n = tokens.shape[0]
    return tokens.view(n, h // 2, w // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, channels, h, w)


def image_ids(h: int, w: int, device) -> torch.Tensor:
    """(h/2 · w/2, 3): (0, row, col) of each packed patch, the positions Flux's rotary embedding reads."""
    rows = torch.arange(h // 2, device=device).repeat_interleave(w // 2)
    cols = torch.arange(w // 2, device=device).repeat(h // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).float()


class Flux(DiffusersGuidance):
    """Args as DiffusersGuidance, plus embedded_guidance (g, FluxPipeline's guidance_scale default 3.5),
    max_sequence_length (T5 tokens, the pipeline's 512) and shift_resolution (pixels the dynamic shift is fixed at)."""

    family = "flux"

    def __init__(
        self,
        pretrained: str = "black-forest-labs/FLUX.1-dev",
        embedded_guidance: float = 3.5,
        max_sequence_length: int = 512,
        shift_resolution: int = 512,
        flow_shift: float | None = None,
        **kwargs,
    ):
        self.flow_shift = flow_shift
        self.embedded_guidance = float(embedded_guidance)
        self.max_sequence_length = int(max_sequence_length)
        self.shift_resolution = int(shift_resolution)
        super().__init__(pretrained, **kwargs)

    def load_components(self, folder):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, T5EncoderModel

        return {
            "denoiser": folder.model(FluxTransformer2DModel, "transformer"),
            "vae": folder.model(AutoencoderKL, "vae"),
            "text_encoders": [
                folder.text_encoder(CLIPTextModel, "text_encoder"),
                folder.text_encoder(T5EncoderModel, "text_encoder_2"),
            ],
            "tokenizers": [folder.tokenizer("tokenizer"), folder.tokenizer("tokenizer_2")],
            "scheduler_config": folder.scheduler_config(FlowMatchEulerDiscreteScheduler),
        }

    def resolve_flow_shift(self, parts):
        config = parts["scheduler_config"]
        if self.flow_shift is not None or not config.get("use_dynamic_shifting"):
            return self.flow_shift
        vae = parts["vae"].config
        patch = 2 ** (len(vae.block_out_channels) - 1) * 2  # VAE downscale × the 2×2 packing
        return dynamic_flow_shift(config, (self.shift_resolution // patch) ** 2)

    def token_limits(self):
        return [
            (self.tokenizers[0], self.tokenizers[0].model_max_length),
            (self.tokenizers[1], self.max_sequence_length),
        ]

    def encode_text(self, prompts):
        clip_tok, t5_tok = self.tokenizers
        ids = clip_tok(
            prompts, padding="max_length", max_length=clip_tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        pooled = self.text_encoders[0](ids.to(self.text_encoder_device(0)), output_hidden_states=False).pooler_output
        ids = t5_tok(
            prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        ).input_ids
        tokens = self.text_encoders[1](ids.to(self.text_encoder_device(1)))[0]
        return tokens, pooled.to(tokens.dtype)

    def call_denoiser(self, model, x, t, cond):
        n, c, h, w = x.shape  # even h, w: check_resolution refuses other render sizes before training
        embeds, pooled = cond
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((n,), self.embedded_guidance, device=x.device, dtype=x.dtype)
        out = model(
            hidden_states=pack_latents(x),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            timestep=self.timestep_sigma(t).to(x.dtype),  # σ: the model multiplies it by 1000
            guidance=guidance,
            img_ids=image_ids(h, w, x.device),
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device),
            return_dict=False,
        )[0]
        return unpack_latents(out, c, h, w)

    def check_resolution(self, height: int, width: int) -> None:
        super().check_resolution(height, width)
        if (height // self.downscale) % 2 or (width // self.downscale) % 2:
            raise ValueError(
                f"Flux packs latents in 2×2 patches: {height}×{width} pixels give {height // self.downscale}×"
                f"{width // self.downscale} latents; choose a size divisible by {2 * self.downscale}"
            )
