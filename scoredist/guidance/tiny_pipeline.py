"""A tiny random-weight Stable-Diffusion-style folder, for tests and offline smoke runs.

The folder has the layout of a diffusers hub repository (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/), written with `save_pretrained` in safetensors, so `StableDiffusion(pretrained=folder)` exercises exactly
the loading code that users hit with a real hub id. The weights are random (seeded): the model's predictions mean
nothing, only shapes, dtypes and plumbing are real.

`architecture="sd21-base"` swaps in a UNet with Stable Diffusion 2.1-base's published architecture (865M parameters,
64×64 latents, cross-attention width 1024) and a one-layer text encoder of width 1024: random weights, but the same
compute per UNet call as the real model, for speed measurements (scripts/bench_speed.py) where no weights exist.

Sizes (latent variant): UNet on 4×8×8 latents, block_out_channels (32, 64), cross_attention_dim 32; VAE with four
levels so that the downscale factor is 8 like SD's (64×64 RGB ↔ 4×8×8 latents); CLIP text encoder with hidden size 32,
two layers and a ~600-token byte-level BPE vocabulary written here. The pixel-space variant has no VAE and a UNet on
3×16×16 RGB in [−1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 77  # CLIP's context length; SD's UNet sees (77, hidden) per prompt
HIDDEN = 32
# Whole-word merges so that the tokenizer has real multi-character tokens besides the byte alphabet, and so that the
# project's own prompts (captions, view suffixes, the source/target suffixes and the NFSD negative prompt) take about
# as many tokens as with the real CLIP vocabulary instead of one per character (which would overflow 77 tokens).
MERGE_WORDS = tuple(
    (
        "a an the of on in with and photo image painting red green blue yellow white black cube sphere cone cylinder "
        "torus front side back overhead view oversaturated smooth pixelated cartoon foggy hazy blurry bad structure "
        "noisy malformed detailed high resolution quality sharp unrealistic low out focus ugly contrast dull dark "
        "gloomy"
    ).split()
)


def _byte_level_vocab_and_merges(extra_words: tuple[str, ...] = ()) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: the 256 byte-level symbols, each also in its end-of-word form "x</w>", a few
    whole-word merges, then BOS/EOS. Every byte sequence is covered, so no prompt can produce an unknown token."""
    alphabet = sorted(ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    # Longest words first: their merge chains then outrank shorter words' merges that could split them midway.
    for word in sorted(dict.fromkeys(MERGE_WORDS + tuple(extra_words)), key=len, reverse=True):
        # Merge left to right: "cube" → c u → cu b → cub e</w> → cube</w>.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if f"{left} {right}" not in merges:
                merges.append(f"{left} {right}")
                tokens.append(merged)
            left = merged
    tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_tokenizer(out_dir: Path, extra_words: tuple[str, ...] = ()) -> CLIPTokenizer:
    """Write vocab.json + merges.txt to out_dir, load them as a CLIPTokenizer (max length 77) and save it there too.
    extra_words: more whole-word merges (a family's own long prompts, such as MVDream's negative prompt).

    The raw files stay beside tokenizer.json, as in real SD repositories, so older transformers can read the folder.
    """
    vocab, merges = _byte_level_vocab_and_merges(tuple(extra_words))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # Positional: the first two parameters are (vocab_file, merges_file) in transformers 4 and (vocab, merges) in 5.
    tokenizer = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _tiny_unet(channels: int, sample_size: int, prediction_type: str) -> UNet2DConditionModel:
    del prediction_type  # lives in the scheduler config, as in real SD folders
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def _sd21_base_unet() -> UNet2DConditionModel:
    """The UNet of stabilityai/stable-diffusion-2-1-base (its published unet/config.json), randomly initialised."""
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
        norm_num_groups=32,
    )


def _tiny_vae() -> AutoencoderKL:
    # Four levels → three 2× downsamplings → downscale 8, as in SD.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def _tiny_text_encoder(tokenizer: CLIPTokenizer, hidden: int = HIDDEN, layers: int = 2) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _scheduler(prediction_type: str) -> DDPMScheduler:
    # SD's training schedule: scaled_linear β from 0.00085 to 0.012 over 1000 steps.
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
    )


ARCHITECTURES = ("tiny", "sd21-base")


def build_tiny_pipeline(
    out_dir: str | Path,
    pixel_space: bool = False,
    prediction_type: str = "epsilon",
    seed: int = 0,
    architecture: str = "tiny",
) -> Path:
    """Write a random-weight SD-style folder to out_dir and return its path.

    pixel_space=True leaves out the VAE (the UNet then works on 3×16×16 RGB in [−1, 1]); prediction_type is
    "epsilon", "v_prediction" or "sample" and goes into scheduler/scheduler_config.json; architecture "sd21-base"
    gives the UNet SD 2.1-base's size (latent space only).
    """
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")
    if architecture not in ARCHITECTURES or (architecture != "tiny" and pixel_space):
        raise ValueError(f"architecture must be one of {ARCHITECTURES} (sd21-base: latent space), got {architecture!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    tokenizer = build_tokenizer(out / "tokenizer")
    if architecture == "sd21-base":
        unet, text_encoder = _sd21_base_unet(), _tiny_text_encoder(tokenizer, hidden=1024, layers=1)
    else:
        unet = _tiny_unet(3, 16, prediction_type) if pixel_space else _tiny_unet(4, 8, prediction_type)
        text_encoder = _tiny_text_encoder(tokenizer)
    components = {"unet": unet, "text_encoder": text_encoder, "scheduler": _scheduler(prediction_type)}
    if not pixel_space:
        components["vae"] = _tiny_vae()
    for name, module in components.items():
        if isinstance(module, torch.nn.Module):
            module.save_pretrained(out / name, safe_serialization=True)
        else:
            module.save_pretrained(out / name)
    _write_model_index(out, components, pixel_space)
    return out


def _write_model_index(out: Path, components: dict, pixel_space: bool) -> None:
    """model_index.json as diffusers writes it: {component: [library, class]}.

    Written by hand rather than through StableDiffusionPipeline.save_pretrained, which cannot describe a folder
    without a VAE and imports the whole pipeline stack (safety checker, image processors) just to write this file.
    """
    import diffusers

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
    }
    for name, module in components.items():
        library = "transformers" if name == "text_encoder" else "diffusers"
        index[name] = [library, type(module).__name__]
    if pixel_space:
        index["_class_name"] = "PixelSpaceTextToImage"  # no diffusers pipeline class fits; only scoredist reads it
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
