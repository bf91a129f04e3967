"""Stable Diffusion 1.x / 2.x (or any diffusers UNet2DConditionModel + CLIP text encoder folder) as guidance.

    ε_φ(x_t; y, t) = UNet(x_t, t, CLIP(y))       ("epsilon" models; "v_prediction" (SD 2.1-v) and "sample" models are
                                                converted by predictions.py, on the folder's own ᾱ schedule)

Model space: SD latents z = s · E(2·rgb − 1) with s = vae.config.scaling_factor, (B, 4, H/8, W/8); or, for a folder
without a `vae/` subfolder, pixels in [−1, 1] (B, 3, H, W). Loading, the prompt cache, the batched call and the memory
flags are the diffusers base's (base.py); the tiny test folder from `scoredist.guidance.tiny_pipeline` goes through
exactly the code users hit with a hub id.

VSD's source model (`LoRASource`) is a LoRA of the same UNet that, for NeRF renders, also sees each row's camera
through a class embedding, as ProlificDreamer's does.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from scoredist.guidance.base import SourceModel
from scoredist.guidance.diffusers.base import DiffusersGuidance

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections of every transformer block


class StableDiffusion(DiffusersGuidance):
    """Frozen text-conditioned UNet (SD 1.x/2.x layout), latent or pixel space.

    Args (besides the base's pretrained, revision, variant, max_batch, prompt_cache_size, model_offload, device,
    precision):
        enable_xformers: use xformers attention in the UNet (needs the xformers package; PyTorch's
            scaled-dot-product attention, diffusers' default processor, is used otherwise).
        offload_text_encoder: keep the text encoder on the CPU in fp32; it only runs once per new prompt, because
            prompt embeddings are cached, so this saves its GPU memory (≈0.7 GB for SD 2.1) at little cost.
        channels_last: run the UNet in channels_last memory format (often faster convolutions on CUDA).
        compile_unet: wrap the UNet's forward in torch.compile (CUDA; the first steps pay the compile time).
    """

    family = "sd"

    def __init__(
        self,
        pretrained: str = "stabilityai/stable-diffusion-2-1-base",
        revision: str | None = None,
        variant: str | None = None,
        enable_xformers: bool = False,
        offload_text_encoder: bool = False,
        max_batch: int | None = None,
        channels_last: bool = False,
        compile_unet: bool = False,
        prompt_cache_size: int = 1024,
        model_offload: bool = False,
        device: str = "cpu",
        precision: str = "fp32",
    ):
        super().__init__(
            pretrained,
            revision=revision,
            variant=variant,
            max_batch=max_batch,
            prompt_cache_size=prompt_cache_size,
            offload_text_encoders=offload_text_encoder,
            model_offload=model_offload,
            compile_denoiser=compile_unet,
            device=device,
            precision=precision,
        )
        self._num_source_models = 0
        self._active_adapter: str | None = None
        if enable_xformers:
            self.unet.enable_xformers_memory_efficient_attention()
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)

    def load_components(self, folder):
        """The VAE only when model_index.json lists one (pixel-space models have none). The scheduler config is read
        as DDPM's whatever its class (PNDM for SD 2.1-base): only the training schedule (β's → ᾱ) and prediction_type
        are needed, keys every DDPM-style scheduler shares."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        return {
            "denoiser": folder.model(UNet2DConditionModel, "unet"),
            "vae": folder.model(AutoencoderKL, "vae") if folder.has("vae") else None,
            "text_encoders": [folder.text_encoder(CLIPTextModel, "text_encoder")],
            "tokenizers": [folder.tokenizer("tokenizer", CLIPTokenizer)],
            "scheduler_config": folder.scheduler_config(DDPMScheduler),
        }

    def configure_model_space(self) -> None:
        self.channels = self.unet.config.in_channels
        if self.vae is None:
            self.downscale = 1
            return
        self.downscale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.vae.config.latent_channels != self.channels:
            raise ValueError(
                f"UNet in_channels={self.channels} != VAE latent_channels={self.vae.config.latent_channels}: "
                "inpainting/depth UNets are not supported as guidance"
            )

    # ---- the SD names of the base's parts (tests, LoRASource and scripts read them) --------------------------------

    @property
    def unet(self):
        return self.denoiser

    @property
    def text_encoder(self):
        return self.text_encoders[0]

    @property
    def tokenizer(self):
        return self.tokenizers[0]

    @property
    def prediction_type(self) -> str:
        return self.prediction

    @prediction_type.setter
    def prediction_type(self, value: str) -> None:
        self.prediction = value

    @property
    def unet_dtype(self) -> torch.dtype:
        return self.denoiser_dtype

    def prompt_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, 77, D) CLIP last hidden states (what SD's UNet reads), cached per prompt."""
        return self.embed(prompts)[0]

    def encode_text(self, prompts):
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return (self.text_encoder(tokens.input_ids.to(self.text_encoder_device()))[0],)  # last_hidden_state

    def call_denoiser(self, model, x, t, cond):
        return model(x, t, cond[0], return_dict=False)[0]

    def unet_eps(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """ONE UNet call on the stacked batch, whatever adapters are active: (N, C, h, w) → ε float32, with autograd
        to whatever requires it (the LoRA weights when called from LoRASource)."""
        return self.model_eps(x_t, t, prompts)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Every LoRA adapter disabled, so that a VSD source model sharing this UNet never leaks into ε_φ."""
        if not getattr(self.unet, "_hf_peft_config_loaded", False):
            yield
            return
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    # ---- model space: pixel-space folders have no VAE ---------------------------------------------------------------

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] → latents (B, 4, H/8, W/8) float32, differentiably; pixel models: 2·rgb − 1."""
        if self.vae is None:
            return rgb * 2 - 1
        return super().encode(rgb)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) → RGB (B, 3, 8h, 8w) in [0, 1], float32; pixel models: (x + 1) / 2."""
        if self.vae is None:
            return ((x.float() + 1) / 2).clamp(0, 1)
        return super().decode(x)

    def make_source_model(self, rank: int = 4, alpha: float | None = None) -> LoRASource:
        """A LoRA ε_ψ on this UNet (shared frozen weights), equal to ε_φ at start."""
        self._num_source_models += 1
        source = LoRASource(self, f"vsd{self._num_source_models}", rank=rank, alpha=alpha)
        self._active_adapter = source.adapter_name  # add_adapter activates the new adapter
        return source


class LoRASource(SourceModel):
    """VSD's ε_ψ: LoRA adapters on the attention projections of the guidance's own UNet, plus a camera embedding.

    The frozen UNet weights are shared with the guidance, not copied (memory matters for SD); only the low-rank
    matrices are new, kept in float32 for stable AdamW updates even when the UNet is fp16. peft initialises B = 0,
    so ε_ψ = ε_φ at start. `parameters()` yields only the LoRA weights and the camera embedding; the guidance is held
    outside the module tree so that it is neither trained, saved nor moved through this object.

    Camera conditioning (ProlificDreamer; the paper's code): each row's camera-to-world matrix, flattened to 16
    numbers, goes through `camera_embedding` (an MLP 16 → time-embedding width, diffusers' TimestepEmbedding) and is
    added to the UNet's timestep embedding as a class embedding. Its last layer starts at zero (there: random), so
    that ε_ψ = ε_φ at start for every camera, like the LoRA itself. Rows without a camera get the zero matrix, as the
    paper's 2D code feeds; a call where no row has a camera (2D images) leaves the embedding out entirely, so 2D VSD
    is exactly the prompt-only LoRA.
    """

    def __init__(self, guidance: StableDiffusion, adapter_name: str, rank: int = 4, alpha: float | None = None):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig

        config = LoraConfig(
            r=rank, lora_alpha=alpha or rank, target_modules=LORA_TARGETS, init_lora_weights=True, lora_dropout=0.0
        )
        with warnings.catch_warnings():  # several adapters on one UNet is intended here (one per source model)
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            guidance.unet.add_adapter(config, adapter_name=adapter_name)
        marker = f".{adapter_name}."
        params = [p for n, p in guidance.unet.named_parameters() if marker in n]
        for p in params:
            p.data = p.data.float()
            p.requires_grad_(True)
        self.lora = nn.ParameterList(params)  # the very Parameter objects inside the UNet's LoRA layers
        width = guidance.unet.time_embedding.linear_2.out_features  # 1280 for SD 1.x/2.x
        self.camera_embedding = TimestepEmbedding(CAMERA_FEATURES, width).to(guidance.device)
        nn.init.zeros_(self.camera_embedding.linear_2.weight)
        nn.init.zeros_(self.camera_embedding.linear_2.bias)
        self.adapter_name = adapter_name
        object.__setattr__(self, "guidance", guidance)

    def predict_noise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        prompts: Sequence[str],
        cameras: Sequence[Sequence[float] | None] | None = None,
    ) -> torch.Tensor:
        """ε_ψ for x_t (N, C, h, w), t (N,), N prompts → (N, C, h, w) float32, with autograd to the LoRA weights and
        the camera embedding. cameras: N rows of (azimuth, elevation, distance, fovy) (`Prompt.camera`) or None."""
        guidance = self.guidance
        if guidance._active_adapter != self.adapter_name:  # set_adapter walks every module: only when switching
            guidance.unet.set_adapter(self.adapter_name)  # also gives this adapter back its requires_grad
            guidance._active_adapter = self.adapter_name
        if cameras is None:  # rows without cameras (2D); a list, even of Nones, goes through the camera embedding
            return guidance.unet_eps(x_t, t, prompts)
        if len(cameras) != x_t.shape[0]:
            raise ValueError(f"got {len(cameras)} cameras for {x_t.shape[0]} rows of x_t")
        with self._class_labels(camera_features(cameras).to(guidance.device)):
            return guidance.unet_eps(x_t, t, prompts)

    @contextlib.contextmanager
    def _class_labels(self, labels: torch.Tensor) -> Iterator[None]:
        """Within the block, the shared UNet adds `camera_embedding(labels)` to its timestep embedding.

        The embedding is installed on the UNet only here: the frozen guidance (ε_φ) calls the same UNet without it.
        `unet_eps` may split the rows into several UNet calls (max_batch); a pre-hook hands each call the next rows'
        labels, in order, and every label must have been used by the end.
        """
        unet, remaining = self.guidance.unet, [labels]

        def add_labels(module, args, kwargs):
            rows = args[0].shape[0]
            kwargs["class_labels"], remaining[0] = remaining[0][:rows], remaining[0][rows:]
            return args, kwargs

        original = unet.class_embedding  # None for SD 1.x/2.x
        unet.class_embedding = self.camera_embedding
        hook = unet.register_forward_pre_hook(add_labels, with_kwargs=True)
        try:
            yield
        finally:
            hook.remove()
            unet.class_embedding = original
        if remaining[0].shape[0]:
            raise RuntimeError(f"{remaining[0].shape[0]} camera rows were not used by the UNet calls")


CAMERA_FEATURES = 16  # a flattened 4×4 camera-to-world matrix


def camera_features(cameras: Sequence[Sequence[float] | None]) -> torch.Tensor:
    """(N, 16) float32: each row's flattened camera-to-world matrix; rows without a camera get zeros."""
    from scoredist.cameras import Cameras, camera_to_world

    features = torch.zeros(len(cameras), CAMERA_FEATURES)
    rows = [i for i, c in enumerate(cameras) if c is not None]
    if rows:
        cams = Cameras.from_tensor(torch.tensor([list(cameras[i]) for i in rows], dtype=torch.float32))
        features[rows] = camera_to_world(cams).flatten(1)
    return features
