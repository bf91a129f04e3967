"""The authors' checkpoints of Zero123, Stable-Zero123 and MVDream (latent-diffusion "ldm" layout) → the diffusers
folders their guidance loads (scripts/convert_checkpoint.py is the command line).

The UNet's keys are mapped by `ldm_unet_key`, written from the two architectures' layouts: the ldm UNet numbers its
blocks in one flat list (input_blocks.k, middle_block.k, output_blocks.k), each entry a sequence of (resnet, attention,
down/upsampler) modules, where diffusers nests them as down_blocks.i.{resnets, attentions, downsamplers}.j. The
UNet's diffusers config comes from the authors' published UNet settings (`UNET_SETTINGS`) through diffusers' own
`create_unet_diffusers_config_from_ldm`. Family parts:
    zero123 / stable_zero123  cc_projection.{weight,bias} → cc_projection/ (PoseProjection); the image encoder
                              (CLIP ViT-L/14's vision tower) and the VAE, frozen in training, copied from the model
                              Zero123 was fine-tuned from (lambdalabs/sd-image-variations-diffusers).
    mvdream                   model.diffusion_model.camera_embed.{0,2} → the UNet's class_embedding.linear_{1,2};
                              the text encoder, tokenizer and VAE (frozen in training) copied from SD 2.1-base.
A checkpoint is read with safetensors or torch.load(weights_only=True): no pickled code runs.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import torch

from scoredist.guidance.converted import CONVERTED

UNET_PREFIX = "model.diffusion_model."
# The authors' UNet settings (ldm's openaimodel.UNetModel arguments; what the converted config is built from):
# zero123: zero123/configs/sd-objaverse-finetune-c_concat-256.yaml; MVDream: mvdream/configs/sd-v2-base.yaml.
SD1_UNET = {
    "image_size": 32,
    "in_channels": 8,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_heads": 8,
    "transformer_depth": 1,
    "context_dim": 768,
    "use_linear_in_transformer": False,
}
SD21_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "transformer_depth": 1,
    "context_dim": 1024,
    "use_linear_in_transformer": True,
}
UNET_SETTINGS = {"zero123": SD1_UNET, "stable_zero123": SD1_UNET, "mvdream": SD21_UNET}
assert tuple(UNET_SETTINGS) == CONVERTED


# ---------------------------------------------------------------------------------------------- UNet keys
def ldm_unet_key(key: str, layers_per_block: int, attention_levels: set[int]) -> str:
    """The ldm name of a diffusers UNet2DConditionModel parameter `key`.

    layers_per_block: L resnets per down level (the up levels have L + 1); attention_levels: the up levels with
    attention (their upsampler comes after the attention in the ldm entry, so its index is 2, else 1).
    """
    stride = layers_per_block + 1  # ldm entries per down level: L (resnet[, attention]) + one downsampler
    simple = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "class_embedding.linear_1.": "label_emb.0.0.",
        "class_embedding.linear_2.": "label_emb.0.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for new, old in simple.items():
        if key.startswith(new):
            return old + key[len(new) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = level * stride + j + 1
        return f"input_blocks.{index}.{1 if kind == 'attentions' else 0}.{_inner(kind, rest)}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * stride}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{1 if kind == 'attentions' else 2 * j}.{_inner(kind, rest)}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{level * stride + j}.{1 if kind == 'attentions' else 0}.{_inner(kind, rest)}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        level = int(m[1])
        has_attention = level in attention_levels
        return f"output_blocks.{level * stride + layers_per_block}.{2 if has_attention else 1}.conv.{m[2]}"
    raise KeyError(f"no ldm name known for UNet parameter {key!r}")


RESNET_PARTS = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}


def _inner(kind: str, rest: str) -> str:
    """Inside a resnet the names differ; inside a transformer (proj_in, transformer_blocks, norm, proj_out) not."""
    if kind == "attentions":
        return rest
    for new, old in RESNET_PARTS.items():
        if rest.startswith(new):
            return old + rest[len(new) :]
    raise KeyError(f"unknown resnet parameter {rest!r}")


def ldm_names(unet) -> dict[str, str]:
    """{diffusers key: ldm key} for every parameter of a diffusers UNet (without the model.diffusion_model. prefix)."""
    config = unet.config
    up_attention = {i for i, kind in enumerate(config.up_block_types) if kind.startswith("CrossAttn")}
    return {k: ldm_unet_key(k, config.layers_per_block, up_attention) for k in unet.state_dict()}


def unet_config(family: str, settings: dict | None = None) -> dict:
    """The diffusers UNet2DConditionModel config of a family's UNet (diffusers' create_unet_diffusers_config_from_ldm
    on the authors' settings), with MVDream's 16-number camera as a projection class embedding."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    params = dict(settings or UNET_SETTINGS[family])
    original = {
        "model": {
            "params": {
                "unet_config": {"params": params},
                "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
            }
        }
    }
    config = create_unet_diffusers_config_from_ldm(original, {})
    config["sample_size"] = params["image_size"]  # latent pixels (its default is read from a checkpoint's type)
    if family == "mvdream":
        config.update(class_embed_type="projection", projection_class_embeddings_input_dim=16)
    return config


def convert_unet(state: dict, config: dict):
    """The diffusers UNet of an ldm checkpoint's model.diffusion_model.* weights; every weight must be used."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    names = ldm_names(unet)
    missing = [UNET_PREFIX + old for old in names.values() if UNET_PREFIX + old not in state]
    if missing:
        raise KeyError(f"the checkpoint lacks {len(missing)} UNet weights, e.g. {missing[:3]}: wrong family?")
    used = {UNET_PREFIX + old for old in names.values()}
    unused = [k for k in state if k.startswith(UNET_PREFIX) and k not in used]
    if unused:
        raise KeyError(f"{len(unused)} UNet weights of the checkpoint have no place, e.g. {unused[:3]}")
    weights = {new: state[UNET_PREFIX + old] for new, old in names.items()}
    unet = UNet2DConditionModel(**config)
    unet.load_state_dict(weights, strict=True)
    return unet


# ---------------------------------------------------------------------------------------------- checkpoints
def read_checkpoint(path: str | Path) -> dict:
    """The flat state dict of a .safetensors / .ckpt / .pt file (a Lightning checkpoint's "state_dict" unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    load = lambda mmap: torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    try:
        try:  # memory-mapped: a training checkpoint (optimizer states, EMA) can be many times the weights
            state = load(True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = load(False)  # a file of the old (non-zip) format cannot be mapped: read it whole
    except pickle.UnpicklingError as err:  # weights_only met something other than tensors and plain containers
        raise ValueError(
            f"{path} holds more than tensors ({type(err).__name__}); only weights are read here (weights_only=True). "
            "Save its state_dict to .safetensors first, in an environment you trust"
        ) from err
    return state.get("state_dict", state) if isinstance(state, dict) else state


def camera_embed_as_label_emb(state: dict) -> dict:
    """MVDream's camera_embed.{0,2} are the Linear–SiLU–Linear that diffusers calls class_embedding (ldm: label_emb)."""
    renamed = {}
    for key, value in state.items():
        if key.startswith(UNET_PREFIX + "camera_embed."):
            index, rest = key[len(UNET_PREFIX + "camera_embed.") :].split(".", 1)
            key = f"{UNET_PREFIX}label_emb.0.{index}.{rest}"
        renamed[key] = value
    return renamed


def convert(
    family: str, checkpoint: str | Path, out: str | Path, base: str | Path, settings: dict | None = None
) -> Path:
    """Write the diffusers folder of `checkpoint` to `out`, with the parts that stayed frozen in the authors' training
    copied from `base`, a local diffusers folder: Zero123 — the model it was fine-tuned from,
    lambdalabs/sd-image-variations-diffusers (image_encoder/: CLIP ViT-L/14's vision tower, vae/); MVDream — Stable
    Diffusion 2.1-base (text_encoder/, tokenizer/, vae/)."""
    from diffusers import DDPMScheduler

    if family not in CONVERTED:
        raise ValueError(f"family must be one of {CONVERTED}, got {family!r}")
    state = read_checkpoint(checkpoint)
    out, base = Path(out), Path(base)
    out.mkdir(parents=True, exist_ok=True)
    if family == "mvdream":
        state = camera_embed_as_label_emb(state)
    convert_unet(state, unet_config(family, settings)).save_pretrained(out / "unet", safe_serialization=True)
    # the training schedule of every config here: scaled-linear β 0.00085 → 0.012 over 1000 steps, ε-prediction
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False).save_pretrained(
        out / "scheduler"
    )
    index = {"_class_name": "MVDreamPipeline" if family == "mvdream" else "Zero1to3StableDiffusionPipeline"}
    index["scheduler"] = ["diffusers", "DDPMScheduler"]
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    frozen = ("vae", "text_encoder", "tokenizer") if family == "mvdream" else ("vae", "image_encoder")
    base_index = json.loads(_need(base / "model_index.json").read_text())
    for part in frozen:
        copy_part(base, part, base_index[part], out)
        index[part] = base_index[part]
    if family != "mvdream":
        from scoredist.guidance.diffusers.zero123 import PoseProjection

        weight = state["cc_projection.weight"]
        projection = PoseProjection(weight.shape[1], weight.shape[0])
        projection.load_state_dict({"projection.weight": weight, "projection.bias": state["cc_projection.bias"]})
        projection.save_pretrained(out / "cc_projection", safe_serialization=True)
        index["cc_projection"] = ["scoredist", "PoseProjection"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out


def copy_part(base: Path, part: str, entry: list, out: Path) -> None:
    """One component of the base folder into out/part, its weights re-saved as safetensors (what the guidance loads;
    lambdalabs/sd-image-variations-diffusers' main branch has .bin files only). Tokenizers are copied as they are."""
    import importlib

    source = _need(base / part)
    library, class_name = entry
    cls = getattr(importlib.import_module(library), class_name)
    if not hasattr(cls, "save_pretrained") or not issubclass(cls, torch.nn.Module):
        shutil.copytree(source, out / part, dirs_exist_ok=True)
        return
    load_frozen(cls, source).save_pretrained(out / part, safe_serialization=True)


def load_frozen(cls, folder: Path):
    """A diffusers or transformers model from its folder: safetensors through from_pretrained, or .bin files read
    here with torch.load(weights_only=True) into the model built from its config (every weight must be found)."""
    if list(folder.glob("*.safetensors")):
        return cls.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    files = sorted(folder.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{folder} has no .safetensors or .bin weights")
    config_class = getattr(cls, "config_class", None)  # transformers models; diffusers models build from_config
    module = cls(config_class.from_pretrained(folder)) if config_class else cls.from_config(cls.load_config(folder))
    state = {}
    for file in files:
        state.update(torch.load(file, map_location="cpu", weights_only=True))
    result = module.load_state_dict(state, strict=False)
    extra = [k for k in result.unexpected_keys if not k.endswith("position_ids")]  # older transformers' buffers
    if result.missing_keys or extra:
        raise KeyError(f"{folder}: weights missing {result.missing_keys[:3]} or unused {extra[:3]}")
    return module


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: --base must be a local diffusers folder holding it")
    return path
