"""Stable Diffusion 3 / 3.5 (diffusers' SD3Transformer2DModel) as guidance: a rectified-flow velocity model.

    u = Transformer(x_s, 1000·σ, [CLIP-L ‖ CLIP-G penultimate states, zero-padded to T5's width ; T5 tokens],
                    [CLIP-L pooled ‖ CLIP-G pooled])                     x_s = (1 − σ) x0 + σ ε,  u ≈ ε − x0

as diffusers' StableDiffusion3Pipeline builds it (encode_prompt: both CLIPs at 77 tokens, T5 at
`max_sequence_length` 256; the empty prompt is encoded, not zeroed). σ of timestep index t is the t-th sigma of the
folder's shifted training grid (SD3-medium: shift 3; SD3.5's dynamic shift is fixed by `flow_shift`). Latents: 16
channels, z = s·(E(x) − shift_factor). A folder without text_encoder_3 (SD3's "drop T5" option) gets zero T5 tokens,
as the pipeline does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scoredist.guidance.diffusers.base import DiffusersGuidance


class StableDiffusion3(DiffusersGuidance):
    """Args as DiffusersGuidance, plus max_sequence_length: T5 tokens per prompt (the pipeline's default 256)."""

    family = "sd3"

    def __init__(
        self,
        pretrained: str = "stabilityai/stable-diffusion-3-medium-diffusers",
        max_sequence_length=256,
        flow_shift: float | None = None,
        **kwargs,
    ):
        self.max_sequence_length = int(max_sequence_length)
        self.flow_shift = flow_shift
        super().__init__(pretrained, **kwargs)

    def load_components(self, folder):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, T5EncoderModel

        clips = ["text_encoder", "text_encoder_2"]
        encoders = [folder.text_encoder(CLIPTextModelWithProjection, name) for name in clips]
        tokenizers = [folder.tokenizer("tokenizer"), folder.tokenizer("tokenizer_2")]
        if folder.has("text_encoder_3"):  # SD3 runs without T5 too (zero T5 tokens, as the pipeline)
            encoders.append(folder.text_encoder(T5EncoderModel, "text_encoder_3"))
            tokenizers.append(folder.tokenizer("tokenizer_3"))
        return {
            "denoiser": folder.model(SD3Transformer2DModel, "transformer"),
            "vae": folder.model(AutoencoderKL, "vae"),
            "text_encoders": encoders,
            "tokenizers": tokenizers,
            "scheduler_config": folder.scheduler_config(FlowMatchEulerDiscreteScheduler),
        }

    def token_limits(self):
        limits = [(tok, tok.model_max_length) for tok in self.tokenizers[:2]]
        return limits + [(tok, self.max_sequence_length) for tok in self.tokenizers[2:]]

    def _clip(self, index: int, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate hidden states (n, 77, d), projected pooled (n, p)) of CLIP encoder `index`."""
        tok = self.tokenizers[index]
        ids = tok(
            prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        out = self.text_encoders[index](ids.to(self.text_encoder_device(index)), output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds

    def encode_text(self, prompts):
        (h1, p1), (h2, p2) = self._clip(0, prompts), self._clip(1, prompts)
        clip = torch.cat([h1, h2], dim=-1)
        width = self.denoiser.config.joint_attention_dim
        if len(self.text_encoders) > 2:
            tok = self.tokenizers[2]
            ids = tok(
                prompts,
                padding="max_length",
                max_length=self.max_sequence_length,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            ).input_ids
            t5 = self.text_encoders[2](ids.to(self.text_encoder_device(2)))[0]
        else:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, width, device=clip.device, dtype=clip.dtype)
        if width < clip.shape[-1]:  # F.pad would silently crop the CLIP features
            raise ValueError(f"joint_attention_dim {width} is narrower than the two CLIP encoders ({clip.shape[-1]})")
        clip = F.pad(clip, (0, width - clip.shape[-1]))
        return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat([p1, p2], dim=-1)

    def call_denoiser(self, model, x, t, cond):
        # the scheduler's timesteps (σ on the 0 … 1000 scale) in float32, as the pipeline passes them: rounded to the
        # weights' bf16 they would name another σ than the one x was noised with (750.75 → 752)
        timestep = 1000 * self.timestep_sigma(t)
        return model(
            hidden_states=x,
            encoder_hidden_states=cond[0],
            pooled_projections=cond[1],
            timestep=timestep,
            return_dict=False,
        )[0]
