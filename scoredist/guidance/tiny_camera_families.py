"""Tiny random-weight folders of the camera-conditioned families (Zero123 / Stable-Zero123, MVDream), for tests and
offline smoke runs; the companion of tiny_pipeline.py and tiny_families.py.

Layouts (what scripts/convert_checkpoint.py writes from the authors' checkpoints, and what the guidance loads):
    zero123  unet/ (UNet2DConditionModel, 8 input channels: x_t ‖ reference latent, 4 output), vae/,
             image_encoder/ (transformers CLIPVisionModelWithProjection), cc_projection/ (PoseProjection: Linear of
             the image embedding + 4 pose numbers to the context width), scheduler/ (DDPM config: scaled-linear β).
    mvdream  unet/ (UNet2DConditionModel with class_embed_type "projection" of 16 camera numbers, SD 2.1's linear
             transformer projections), vae/, text_encoder/, tokenizer/, scheduler/.

Tiny sizes: 64×64 RGB ↔ 4×8×8 latents (tiny_pipeline's VAE), UNets of widths 32/64, a CLIP vision tower of width 32
on 32×32 crops with an embedding of 24 (Zero123's are 1024 and 768), tiny_pipeline's text encoder and tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from scoredist.guidance.tiny_pipeline import HIDDEN, _scheduler, _tiny_text_encoder, _tiny_vae, build_tokenizer

IMAGE_EMBED = 24  # tiny CLIP image embedding width (Zero123: 768)
CAMERA_NUMBERS = 16  # MVDream's flattened 4×4 camera matrix
MVDREAM_WORDS = (
    "ugly bad anatomy pixelated obscure unnatural colors poor lighting unclear cropped lowres artifacts duplicate "
    "morbid mutilated poorly drawn face deformed dehydrated proportions astronaut riding horse"
)


def _tiny_unet(in_channels: int, cross_attention_dim: int, **kwargs) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
        **kwargs,
    )


def _tiny_image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=IMAGE_EMBED,
    )
    return CLIPVisionModelWithProjection(config)


def _save(out: Path, components: dict, class_name: str) -> Path:
    """Each component saved in its subfolder (safetensors) and model_index.json as diffusers writes it."""
    import diffusers

    index = {"_class_name": class_name, "_diffusers_version": diffusers.__version__}
    for name, module in components.items():
        module.save_pretrained(
            out / name, **({"safe_serialization": True} if isinstance(module, torch.nn.Module) else {})
        )
        library = "transformers" if type(module).__module__.startswith("transformers") else "diffusers"
        if type(module).__module__.startswith("scoredist"):
            library = "scoredist"  # read only by scoredist (the community pipeline names its own module here)
        index[name] = [library, type(module).__name__]
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out


def make_tiny_zero123(folder: str | Path, seed: int = 0) -> Path:
    """Write a random-weight Zero123-layout folder (module docstring) and return its path."""
    from scoredist.guidance.diffusers.zero123 import PoseProjection

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    components = {
        "unet": _tiny_unet(8, HIDDEN),
        "vae": _tiny_vae(),
        "image_encoder": _tiny_image_encoder(),
        "cc_projection": PoseProjection(IMAGE_EMBED + 4, HIDDEN),
        "scheduler": _scheduler("epsilon"),
    }
    return _save(out, components, "Zero1to3StableDiffusionPipeline")


def make_tiny_mvdream(folder: str | Path, seed: int = 0) -> Path:
    """Write a random-weight MVDream-layout folder (module docstring) and return its path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # MVDream-threestudio's negative prompt in whole words: about as many tokens as with CLIP's vocabulary
    tokenizer = build_tokenizer(out / "tokenizer", tuple(MVDREAM_WORDS.split()))
    components = {
        "unet": _tiny_unet(
            4,
            HIDDEN,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=CAMERA_NUMBERS,
            use_linear_projection=True,
        ),
        "vae": _tiny_vae(),
        "text_encoder": _tiny_text_encoder(tokenizer),
        "scheduler": _scheduler("epsilon"),
    }
    _save(out, components, "MVDreamPipeline")
    index = json.loads((out / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out


MAKERS = {"zero123": make_tiny_zero123, "stable_zero123": make_tiny_zero123, "mvdream": make_tiny_mvdream}
