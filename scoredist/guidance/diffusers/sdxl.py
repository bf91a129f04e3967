"""SDXL (diffusers' UNet2DConditionModel with text_time conditioning) as guidance: ε on the VP path.

    ε = UNet(x_t, t, [CLIP-L ‖ OpenCLIP-bigG penultimate states], text_embeds = bigG pooled projection,
             time_ids = (H, W, 0, 0, H, W))

as diffusers' StableDiffusionXLPipeline builds it: both tokenizers at 77 tokens, penultimate hidden states
concatenated (768 + 1280 = 2048), the pooled projection of the second encoder, and the micro-conditioning ids original
size = target size = the render's size in pixels, no crop. The empty prompt is the zero embedding (model_index.json's
`force_zeros_for_empty_prompt`, true for SDXL-base, as the pipeline's negative prompt); with that flag false it is
encoded like any prompt.
"""

from __future__ import annotations

import torch

from scoredist.guidance.diffusers.base import DiffusersGuidance


class StableDiffusionXL(DiffusersGuidance):
    family = "sdxl"

    def __init__(self, pretrained: str = "stabilityai/stable-diffusion-xl-base-1.0", **kwargs):
        super().__init__(pretrained, **kwargs)

    def load_components(self, folder):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        self.force_zeros_for_empty_prompt = bool(folder.model_index.get("force_zeros_for_empty_prompt", True))
        return {
            "denoiser": folder.model(UNet2DConditionModel, "unet"),
            "vae": folder.model(AutoencoderKL, "vae"),
            "text_encoders": [
                folder.text_encoder(CLIPTextModel, "text_encoder"),
                folder.text_encoder(CLIPTextModelWithProjection, "text_encoder_2"),
            ],
            "tokenizers": [folder.tokenizer("tokenizer"), folder.tokenizer("tokenizer_2")],
            # the folder's Euler config read as DDPM: only the β schedule and prediction_type matter
            "scheduler_config": folder.scheduler_config(DDPMScheduler),
        }

    def encode_text(self, prompts):
        hidden, pooled = [], None
        for index, tok in enumerate(self.tokenizers):
            ids = tok(
                prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            out = self.text_encoders[index](ids.to(self.text_encoder_device(index)), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            if index == 1:
                pooled = out.text_embeds
        embeds = torch.cat(hidden, dim=-1)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=embeds.device)
            embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return embeds, pooled

    def call_denoiser(self, model, x, t, cond):
        h, w = x.shape[-2] * self.downscale, x.shape[-1] * self.downscale
        time_ids = torch.tensor([h, w, 0, 0, h, w], device=x.device, dtype=x.dtype).expand(x.shape[0], 6)
        added = {"text_embeds": cond[1], "time_ids": time_ids}
        return model(x, t, encoder_hidden_states=cond[0], added_cond_kwargs=added, return_dict=False)[0]
