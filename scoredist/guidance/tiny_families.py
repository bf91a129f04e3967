"""Tiny random-weight diffusers folders for SDXL, SD3 and FLUX.1, for tests and offline smoke runs.

The companion of `tiny_pipeline.py` (Stable Diffusion 1/2): each `make_tiny_*` writes a folder with the layout of the
family's hub repository (model_index.json plus one subfolder per component, weights in safetensors), so that
`StableDiffusionXLPipeline` / `StableDiffusion3Pipeline` / `FluxPipeline.from_pretrained(folder)` load it exactly as
they load the real repository. Weights are random (seeded): only shapes, dtypes and plumbing are real.

Families (layout of the hub repository each one copies):
    sdxl  stabilityai/stable-diffusion-xl-base-1.0: unet, vae, text_encoder (CLIP), text_encoder_2 (CLIP with
          projection), tokenizer, tokenizer_2, scheduler (Euler, scaled-linear β 0.00085–0.012).
    sd3   stabilityai/stable-diffusion-3-medium-diffusers: transformer, vae (16 channels), text_encoder and
          text_encoder_2 (CLIP with projection), text_encoder_3 (T5), tokenizer, tokenizer_2, tokenizer_3 (T5),
          scheduler (flow matching, shift 3).
    flux  black-forest-labs/FLUX.1-dev: transformer (guidance-distilled), vae (16 channels), text_encoder (CLIP),
          text_encoder_2 (T5), tokenizer, tokenizer_2 (T5), scheduler (flow matching, resolution-dependent shift).

`architecture="real"` gives the backbone (UNet / transformer) and the VAE their published sizes, with one-layer text
encoders at the published widths, for speed measurements only: the Flux transformer alone is 11.9B parameters (48 GB in
float32; pass dtype=torch.bfloat16 to halve the folder). `real_config(family)` returns the backbone's published
constructor arguments, so that FLOPs and parameters can be counted on the meta device without building it.

How the backbones are called (as the diffusers pipelines call them; guidance code calling them directly must match):
    sdxl  unet(latents (B, 4, h, w), t, encoder_hidden_states (B, 77, 2048),
               added_cond_kwargs={"text_embeds": pooled (B, 1280), "time_ids": (B, 6)}).sample
          t is the DDPM timestep in [0, 1000); the hidden states are the penultimate layers of both CLIPs, concatenated
          (768 + 1280); pooled is text_encoder_2's projected EOS embedding; time_ids are
          (orig_h, orig_w, crop_top, crop_left, target_h, target_w) in pixels. Epsilon prediction.
    sd3   transformer(hidden_states=latents (B, 16, h, w), encoder_hidden_states (B, 77 + 256, 4096),
                      pooled_projections (B, 2048), timestep=t).sample
          t = 1000·σ in [0, 1000] (the scheduler's timesteps, passed as they are); the text tokens are the two CLIPs'
          penultimate layers concatenated (768 + 1280) and zero-padded to 4096, followed by T5's 256 tokens; pooled is
          both CLIPs' projections concatenated. Predicts the velocity noise − x0 (x_t = (1 − σ)·x0 + σ·noise).
    flux  transformer(hidden_states=packed (B, h/2·w/2, 64), encoder_hidden_states=T5 (B, 512, 4096),
                      pooled_projections=CLIP pooler_output (B, 768), timestep=σ (B,), guidance=(B,) e.g. 3.5,
                      img_ids (h/2·w/2, 3), txt_ids (512, 3)).sample
          The pipeline passes timestep = t / 1000 = σ in [0, 1] and the model multiplies σ and guidance by 1000
          internally; latents are packed 2×2 (16 channels → 64 features per token), img_ids hold (0, row, col) of each
          2×2 patch, txt_ids are zeros. Same velocity target as SD3.

Tiny sizes: 64×64 RGB ↔ 8×8 latents (VAE downscale 8, like the real ones), CLIP encoders of width 32/48 with two
layers and tiny_pipeline's byte-level BPE vocabulary, a T5 encoder of width 64 (Flux) or 96 (SD3) with two layers and
the Unigram vocabulary built here; an SDXL-pattern UNet of widths 32/64, transformers of width 32 with one or two blocks
of each kind. A two-step pipeline call at 64×64 takes 0.05–0.3 s per family on one CPU thread.
"""

from __future__ import annotations

import copy
import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from scoredist.guidance.tiny_pipeline import MAX_TOKENS, MERGE_WORDS, build_tokenizer

FAMILIES = ("sdxl", "sd3", "flux")
ARCHITECTURES = ("tiny", "real")
T5_MAX_TOKENS = 512  # google/t5-v1_1-xxl's model_max_length; SD3 uses 256 of them by default, Flux-dev 512

# ---------------------------------------------------------------------------------------------- published configs
# Constructor arguments of the real backbones. Keys left out equal the diffusers class defaults.
_REAL_CONFIGS: dict[str, dict] = {
    # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (as mirrored in the search corpus, e.g. a copy with
    # "projection_class_embeddings_input_dim": 2816 and "transformer_layers_per_block": [1, 2, 10]); the same values
    # follow from sd_xl_base.yaml through diffusers' create_unet_diffusers_config_from_ldm
    # (diffusers/loaders/single_file_utils.py sets addition_time_embed_dim = 256 for SDXL). 2816 = 1280 (pooled
    # OpenCLIP-bigG projection) + 6 time ids × 256. 2,567,463,684 parameters (SDXL paper, arXiv 2307.01952, Tab. 1:
    # 2.6B UNet parameters).
    "sdxl": {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "norm_num_groups": 32,
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
    # stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json (copies with
    # "_name_or_path": "stabilityai/stable-diffusion-3-medium-diffusers" found through the search tool, e.g.
    # huggingface.co/cwz/trained-sd3/blob/8d4c091/transformer/config.json). diffusers'
    # scripts/convert_sd3_to_diffusers.py builds it the same way: num_attention_heads = num_layers,
    # caption_projection_dim = 64 · heads, no qk-norm and no dual attention for SD3.0 (SD3.5-medium adds
    # qk_norm="rms_norm", dual_attention_layers 0–12 and pos_embed_max_size 384: 2.24B). 2,028,328,000 parameters
    # (Stability AI: "SD3 Medium, 2 billion parameters").
    "sd3": {
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 24,
        "attention_head_dim": 64,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 1536,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
    },
    # black-forest-labs/FLUX.1-dev, transformer/config.json (copies naming black-forest-labs/FLUX.1-dev found through
    # the search tool, e.g. huggingface.co/wavespeed/FLUX.1-dev-e4m3/blob/main/transformer/config.json). diffusers'
    # scripts/convert_flux_to_diffusers.py uses the class defaults (19 double blocks, 38 single blocks, width 3072);
    # dev differs from schnell only by guidance_embeds=True. 11,901,408,320 parameters (model card: "a 12 billion
    # parameter rectified flow transformer").
    "flux": {
        "patch_size": 1,
        "in_channels": 64,
        "num_layers": 19,
        "num_single_layers": 38,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "pooled_projection_dim": 768,
        "guidance_embeds": True,
        "axes_dims_rope": (16, 56, 56),
    },
}

_BACKBONES = {"sdxl": UNet2DConditionModel, "sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel}


def real_config(family: str) -> dict:
    """The published constructor arguments of the family's backbone (a fresh copy): `backbone_class(family)(**cfg)`.

    Build it under `with torch.device("meta"):` to count parameters or FLOPs without allocating memory.
    """
    _check_family(family)
    return copy.deepcopy(_REAL_CONFIGS[family])


def backbone_class(family: str) -> type:
    """UNet2DConditionModel for sdxl, SD3Transformer2DModel for sd3, FluxTransformer2DModel for flux."""
    _check_family(family)
    return _BACKBONES[family]


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


# ---------------------------------------------------------------------------------------------- T5 tokenizer
def _t5_vocab() -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary: (piece, log-probability) pairs.

    T5's special ids first (<pad> 0, </s> 1, <unk> 2, as in google/t5-v1_1-xxl), then the project's words as whole
    "▁word" pieces, then "▁" and every printable ASCII character, so that any ASCII prompt tokenizes without <unk>.
    The scores make Unigram prefer a whole word (−2) over spelling it out (at least −3 − 5·len).
    """
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    words = [("▁" + word, -2.0) for word in dict.fromkeys(MERGE_WORDS)]
    chars = [("▁", -3.0)] + [(c, -5.0) for c in string.printable if not c.isspace()]
    return specials + words + chars


def build_t5_tokenizer(out_dir: Path) -> T5TokenizerFast:
    """Build a T5 tokenizer in code (no sentencepiece model, no download), save it to out_dir and return it.

    The backend is a `tokenizers` Unigram model with T5's pre-tokenizer (whitespace split + "▁" metaspace), decoder
    and post-processor (append </s>); it is wrapped as T5TokenizerFast, which writes tokenizer.json and
    tokenizer_config.json (tokenizer_class "T5Tokenizer"), so that both `T5TokenizerFast.from_pretrained` and
    `AutoTokenizer.from_pretrained` read it back. No byte fallback (like the real T5): non-ASCII characters give <unk>.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    backend = Tokenizer(Unigram(_t5_vocab(), unk_id=2, byte_fallback=False))
    metaspace = {"replacement": "▁", "prepend_scheme": "always", "split": True}
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(**metaspace)]
    )
    backend.decoder = decoders.Metaspace(**metaspace)
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    # tokenizer_object: the constructor argument shared by transformers 4 (PreTrainedTokenizerFast) and 5
    # (TokenizersBackend); extra_ids=0 leaves out T5's 100 sentinel tokens, which text encoding never uses.
    tokenizer = T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=T5_MAX_TOKENS,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


# ---------------------------------------------------------------------------------------------- text encoders
def _clip(
    tokenizer: CLIPTokenizer, hidden: int, layers: int, heads: int, projection: int | None = None
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A CLIP text encoder of the given width: (B, 77) ids → hidden states (B, 77, hidden).

    With `projection`, a CLIPTextModelWithProjection whose text_embeds (B, projection) are the pooled conditioning.
    """
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,  # CLIP's MLP ratio (768 → 3072, 1280 → 5120)
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5(tokenizer: T5TokenizerFast, d_model: int, layers: int, heads: int, d_kv: int, d_ff: int) -> T5EncoderModel:
    """A T5 v1.1 encoder (gated-GELU MLP, relative position buckets): (B, L) ids → (B, L, d_model)."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


# Real widths (one layer each): CLIP ViT-L/14 text (768 wide, 12 heads, projection 768), OpenCLIP ViT-bigG/14 text
# (1280 wide, 20 heads, projection 1280), T5 v1.1 XXL (d_model 4096, 64 heads of 64, d_ff 10240) — the widths the real
# backbones expect: SDXL cross-attention 768 + 1280 = 2048 and pooled 1280; SD3 joint 4096 and pooled 768 + 1280 = 2048;
# Flux joint 4096 and pooled 768 (real_config above). Widths from the encoders' published config.json files
# (openai/clip-vit-large-patch14, laion/CLIP-ViT-bigG-14-laion2B-39B-b160k, google/t5-v1_1-xxl), as copied into the
# three pipelines' text_encoder*/config.json.
def _clip_l(tokenizer, architecture: str, projection: bool = False):
    if architecture == "real":
        return _clip(tokenizer, 768, 1, 12, 768 if projection else None)
    return _clip(tokenizer, 32, 2, 4, 32 if projection else None)


def _clip_g(tokenizer, architecture: str):
    # Tiny: width 48 and projection 24, different from CLIP-L's 32, so a mixed-up width fails loudly.
    if architecture == "real":
        return _clip(tokenizer, 1280, 1, 20, 1280)
    return _clip(tokenizer, 48, 2, 4, 24)


def _t5_xxl(tokenizer, architecture: str, tiny_width: int) -> T5EncoderModel:
    if architecture == "real":
        return _t5(tokenizer, 4096, 1, 64, 64, 10240)
    return _t5(tokenizer, tiny_width, 2, 4, 16, 2 * tiny_width)


# ---------------------------------------------------------------------------------------------- VAE and schedulers
def _vae(architecture: str, latent_channels: int, scaling_factor: float, shift_factor: float | None) -> AutoencoderKL:
    """AutoencoderKL with four levels (downscale 8): (B, 3, H, W) in [−1, 1] ↔ (B, latent_channels, H/8, W/8).

    "real" is the SDXL / SD3 / Flux VAE architecture (channels 128-256-512-512, two resnets per level; SD3's and Flux's
    drop the 1×1 quant convs, as in diffusers' scripts/convert_sd3_to_diffusers.py). Latents are normalised as
    (z − shift_factor) · scaling_factor by the pipelines.
    """
    no_quant_conv = shift_factor is not None  # the 16-channel VAEs of SD3 and Flux
    big = architecture == "real"
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512) if big else (16, 16, 16, 16),
        layers_per_block=2 if big else 1,
        latent_channels=latent_channels,
        norm_num_groups=32 if big else 8,
        sample_size=1024 if big else 64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=not no_quant_conv,
        use_post_quant_conv=not no_quant_conv,
        force_upcast=True,  # as in SDXL's and FLUX.1-dev's vae/config.json (SD3's is built from SDXL's config)
    )


def _on_cpu(make_scheduler):
    """Build a scheduler on the CPU whatever the default device: its σ tables are data, which meta tensors lack."""
    with torch.device("cpu"):
        return make_scheduler()


def _sdxl_scheduler() -> EulerDiscreteScheduler:
    # stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json (huggingface.co, found through the
    # search tool): Euler, scaled-linear β 0.00085 → 0.012 over 1000 steps, epsilon, "leading" spacing, offset 1.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        timestep_spacing="leading",
        steps_offset=1,
        use_karras_sigmas=False,
    )


def _sd3_scheduler() -> FlowMatchEulerDiscreteScheduler:
    # stabilityai/stable-diffusion-3-medium-diffusers, scheduler/scheduler_config.json: shift 3.0, 1000 steps.
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def _flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    # black-forest-labs/FLUX.1-dev, scheduler/scheduler_config.json (copies found through the search tool, e.g.
    # huggingface.co/multimodalart/FLUX.1-dev2pro-full, "Duplicate from ... FLUX.1-dev"): the shift μ is interpolated
    # between base_shift at 256 image tokens and max_shift at 4096 tokens; the static shift 3.0 is unused.
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


# ---------------------------------------------------------------------------------------------- tiny backbones
def _tiny_sdxl_unet(cross_attention_dim: int, pooled_dim: int) -> UNet2DConditionModel:
    """SDXL's UNet pattern (no attention at the first level, text_time conditioning) at width 32/64, on 4×8×8."""
    time_embed_dim = 8
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=True,
        norm_num_groups=16,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # What SDXL's pipeline checks: addition_time_embed_dim · 6 time ids + text_encoder_2's projection_dim.
        projection_class_embeddings_input_dim=6 * time_embed_dim + pooled_dim,
    )


def _tiny_sd3_transformer(joint_dim: int, pooled_dim: int) -> SD3Transformer2DModel:
    # caption_projection_dim must equal heads × head_dim: both token streams share the joint blocks' width.
    return SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=joint_dim,
        caption_projection_dim=32,
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=32,  # latents up to 64×64 (512×512 pixels)
    )


def _tiny_flux_transformer(joint_dim: int, pooled_dim: int) -> FluxTransformer2DModel:
    # The rotary axes (4, 6, 6) must add up to attention_head_dim, as Flux's (16, 56, 56) add up to 128.
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=joint_dim,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )


# ---------------------------------------------------------------------------------------------- components
def build_components(family: str, folder: str | Path, architecture: str = "tiny") -> dict:
    """The pipeline's components as {name: module/tokenizer/scheduler}, not saved (tokenizers are written to folder).

    Seed torch first for reproducible weights. Under `with torch.device("meta"):` this builds even the "real" sizes in
    seconds without memory, to check that the text encoders' widths fit the backbone.
    """
    _check_family(family)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    builders = {"sdxl": _sdxl_components, "sd3": _sd3_components, "flux": _flux_components}
    return builders[family](Path(folder), architecture)


def _sdxl_components(out: Path, architecture: str) -> dict:
    tokenizer, tokenizer_2 = build_tokenizer(out / "tokenizer"), build_tokenizer(out / "tokenizer_2")
    text_encoder, text_encoder_2 = _clip_l(tokenizer, architecture), _clip_g(tokenizer_2, architecture)
    cross_dim = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    pooled_dim = text_encoder_2.config.projection_dim
    if architecture == "real":
        unet = UNet2DConditionModel(**real_config("sdxl"))
    else:
        unet = _tiny_sdxl_unet(cross_dim, pooled_dim)
    return {
        "vae": _vae(architecture, 4, 0.13025, None),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "unet": unet,
        "scheduler": _on_cpu(_sdxl_scheduler),
    }


def _sd3_components(out: Path, architecture: str) -> dict:
    tokenizer, tokenizer_2 = build_tokenizer(out / "tokenizer"), build_tokenizer(out / "tokenizer_2")
    tokenizer_3 = build_t5_tokenizer(out / "tokenizer_3")
    text_encoder = _clip_l(tokenizer, architecture, projection=True)
    text_encoder_2 = _clip_g(tokenizer_2, architecture)
    # Tiny T5 width 96 > 32 + 48: the pipeline zero-pads the CLIP tokens up to T5's width, as 2048 → 4096 in SD3.
    text_encoder_3 = _t5_xxl(tokenizer_3, architecture, tiny_width=96)
    pooled_dim = text_encoder.config.projection_dim + text_encoder_2.config.projection_dim
    if architecture == "real":
        transformer = SD3Transformer2DModel(**real_config("sd3"))
    else:
        transformer = _tiny_sd3_transformer(text_encoder_3.config.d_model, pooled_dim)
    return {
        "transformer": transformer,
        "scheduler": _on_cpu(_sd3_scheduler),
        "vae": _vae(architecture, 16, 1.5305, 0.0609),  # SD3's latent scale/shift (convert_sd3_to_diffusers.py)
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "text_encoder_3": text_encoder_3,
        "tokenizer_3": tokenizer_3,
    }


def _flux_components(out: Path, architecture: str) -> dict:
    tokenizer, tokenizer_2 = build_tokenizer(out / "tokenizer"), build_t5_tokenizer(out / "tokenizer_2")
    text_encoder = _clip_l(tokenizer, architecture)
    text_encoder_2 = _t5_xxl(tokenizer_2, architecture, tiny_width=64)
    if architecture == "real":
        transformer = FluxTransformer2DModel(**real_config("flux"))
    else:
        transformer = _tiny_flux_transformer(text_encoder_2.config.d_model, text_encoder.config.hidden_size)
    return {
        "scheduler": _on_cpu(_flux_scheduler),
        # FLUX.1-dev's vae/config.json (copies naming a black-forest-labs/FLUX.1-dev snapshot, found through the search
        # tool, e.g. huggingface.co/magespace/FLUX.1-dev-bnb-nf4/blob/102045b/vae/config.json): 16 channels, scaling
        # 0.3611, shift 0.1159, no quant convs, force_upcast true
        "vae": _vae(architecture, 16, 0.3611, 0.1159),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
    }


# ---------------------------------------------------------------------------------------------- folders
def _write(family: str, folder: str | Path, seed: int, architecture: str, dtype: torch.dtype) -> Path:
    """Seed, build, cast the modules to dtype and save through the diffusers pipeline class itself, which writes
    model_index.json exactly as diffusers does and every module in safetensors."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    components = build_components(family, out, architecture)
    if dtype != torch.float32:  # modules are built in float32; casting them anyway makes diffusers warn
        for module in components.values():
            if isinstance(module, torch.nn.Module):
                module.to(dtype)
    if family == "sdxl":
        # add_watermarker=False: the invisible-watermark package is optional and plays no part in the folder
        pipe = StableDiffusionXLPipeline(**components, add_watermarker=False)
    elif family == "sd3":
        pipe = StableDiffusion3Pipeline(**components)
    else:
        pipe = FluxPipeline(**components)
    pipe.save_pretrained(out, safe_serialization=True)
    _name_t5_tokenizers_fast(out / "model_index.json")
    return out


def _name_t5_tokenizers_fast(model_index: Path) -> None:
    """Record the T5 tokenizers as "T5TokenizerFast", as the hub repositories do.

    transformers 5 merged the two classes (T5TokenizerFast is T5Tokenizer), so diffusers writes "T5Tokenizer"; under
    transformers 4 that name would load the sentencepiece tokenizer, which needs a spiece.model this folder lacks.
    """
    import json

    index = json.loads(model_index.read_text())
    for name, entry in index.items():
        if entry == ["transformers", "T5Tokenizer"]:
            index[name] = ["transformers", "T5TokenizerFast"]
    model_index.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def make_tiny_sdxl(
    folder: str | Path, seed: int = 0, architecture: str = "tiny", dtype: torch.dtype = torch.float32
) -> Path:
    """Write a random-weight SDXL-base-1.0-style folder (4-channel latents, downscale 8) and return its path.

    architecture "real": SDXL's 2.57B UNet and VAE, one-layer CLIP-L / CLIP-bigG text encoders (10 GB in float32).
    """
    return _write("sdxl", folder, seed, architecture, dtype)


def make_tiny_sd3(
    folder: str | Path, seed: int = 0, architecture: str = "tiny", dtype: torch.dtype = torch.float32
) -> Path:
    """Write a random-weight SD3-medium-style folder (16-channel latents, downscale 8) and return its path.

    architecture "real": SD3-medium's 2.03B transformer and VAE, one-layer CLIP-L / CLIP-bigG / T5-XXL encoders.
    """
    return _write("sd3", folder, seed, architecture, dtype)


def make_tiny_flux(
    folder: str | Path, seed: int = 0, architecture: str = "tiny", dtype: torch.dtype = torch.float32
) -> Path:
    """Write a random-weight FLUX.1-dev-style folder (16-channel latents packed 2×2, downscale 8); return its path.

    architecture "real": FLUX.1-dev's 11.9B transformer (48 GB in float32, 24 GB in bfloat16) and VAE, one-layer
    CLIP-L / T5-XXL encoders. Building it in float32 needs about 1.5× the folder's size in RAM.
    """
    return _write("flux", folder, seed, architecture, dtype)


MAKERS = {"sdxl": make_tiny_sdxl, "sd3": make_tiny_sd3, "flux": make_tiny_flux}
