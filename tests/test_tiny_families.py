"""The tiny SDXL / SD3 / FLUX.1 folders load through diffusers' own pipelines and run; the real configs have the
published sizes (checked on the meta device only: FLUX.1-dev alone is 11.9B parameters)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from scoredist.guidance.tiny_families import (
    FAMILIES,
    backbone_class,
    build_components,
    build_t5_tokenizer,
    make_tiny_flux,
    make_tiny_sd3,
    make_tiny_sdxl,
    real_config,
)
from scoredist.prompts import NFSD_NEGATIVE, SRC_SUFFIX, TGT_SUFFIX

MAKERS = {"sdxl": make_tiny_sdxl, "sd3": make_tiny_sd3, "flux": make_tiny_flux}
PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
# What output_type="latent" returns for a 64×64 image: SDXL 4×8×8, SD3 16×8×8, Flux its packed tokens (8/2 · 8/2 = 16
# tokens of 16 channels × 2×2 = 64 features).
LATENT_SHAPES = {"sdxl": (1, 4, 8, 8), "sd3": (1, 16, 8, 8), "flux": (1, 16, 64)}
# The hub repositories' model_index.json, component → class (stabilityai/stable-diffusion-xl-base-1.0,
# stabilityai/stable-diffusion-3-medium-diffusers, black-forest-labs/FLUX.1-dev).
CLASSES = {
    "sdxl": {
        "unet": "UNet2DConditionModel",
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModel",
        "text_encoder_2": "CLIPTextModelWithProjection",
        "tokenizer": "CLIPTokenizer",
        "tokenizer_2": "CLIPTokenizer",
        "scheduler": "EulerDiscreteScheduler",
    },
    "sd3": {
        "transformer": "SD3Transformer2DModel",
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModelWithProjection",
        "text_encoder_2": "CLIPTextModelWithProjection",
        "text_encoder_3": "T5EncoderModel",
        "tokenizer": "CLIPTokenizer",
        "tokenizer_2": "CLIPTokenizer",
        "tokenizer_3": "T5TokenizerFast",
        "scheduler": "FlowMatchEulerDiscreteScheduler",
    },
    "flux": {
        "transformer": "FluxTransformer2DModel",
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModel",
        "text_encoder_2": "T5EncoderModel",
        "tokenizer": "CLIPTokenizer",
        "tokenizer_2": "T5TokenizerFast",
        "scheduler": "FlowMatchEulerDiscreteScheduler",
    },
}
# Published backbone sizes: SDXL paper (arXiv 2307.01952) Tab. 1, 2.6B UNet parameters; SD3-medium model card, "2
# billion parameters"; FLUX.1-dev model card, "12 billion parameter". diffusers counts 2,567,463,684 / 2,028,328,000 /
# 11,901,408,320 for these configs; 1% tolerance separates neighbours such as SD3.5-medium (2.24B). FLUX.1-schnell (no
# guidance embedder, 11.89B) is within it: the meta forward below passes guidance=, which schnell's config refuses.
PUBLISHED_PARAMS = {"sdxl": 2.567e9, "sd3": 2.028e9, "flux": 11.90e9}
PROMPT = "a red cube, front view"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {family: MAKERS[family](tmp_path_factory.mktemp(family)) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_loads_in_the_diffusers_pipeline_and_runs(folders, family):
    import diffusers

    folder = folders[family]
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    timesteps = []

    def record_timestep(module, args, kwargs):  # SDXL passes t positionally, SD3 and Flux as timestep=
        timesteps.append(float(torch.as_tensor(kwargs["timestep"] if "timestep" in kwargs else args[1]).flatten()[0]))

    (pipe.unet if family == "sdxl" else pipe.transformer).register_forward_pre_hook(record_timestep, with_kwargs=True)
    for output_type, shape in (("latent", LATENT_SHAPES[family]), ("pt", (1, 3, 64, 64))):
        generator = torch.Generator().manual_seed(0)
        out = pipe(PROMPT, height=64, width=64, num_inference_steps=2, output_type=output_type, generator=generator)
        assert tuple(out.images.shape) == shape and torch.isfinite(out.images).all()
    # The timestep convention each backbone sees (tiny_families' docstring): Flux σ in [0, 1], the others ~[0, 1000].
    assert (max(timesteps) <= 1.0) == (family == "flux") and min(timesteps) >= 0

    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINES[family]
    assert {name: entry[1] for name, entry in index.items() if isinstance(entry, list) and entry[0]} == CLASSES[family]
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    for name in CLASSES[family]:
        if name.startswith(("unet", "transformer", "vae", "text_encoder")):
            assert any(f.startswith(f"{name}/") and f.endswith(".safetensors") for f in files), name


def test_family_configs_match_the_published_ones(folders):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    sdxl_unet = json.loads((folders["sdxl"] / "unet" / "config.json").read_text())
    te2 = json.loads((folders["sdxl"] / "text_encoder_2" / "config.json").read_text())
    te = json.loads((folders["sdxl"] / "text_encoder" / "config.json").read_text())
    assert sdxl_unet["addition_embed_type"] == "text_time"
    assert (
        sdxl_unet["projection_class_embeddings_input_dim"]
        == te2["projection_dim"] + 6 * sdxl_unet["addition_time_embed_dim"]
    )
    assert sdxl_unet["cross_attention_dim"] == te["hidden_size"] + te2["hidden_size"]
    sched = json.loads((folders["sdxl"] / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")

    for family, (channels, scale, shift) in {"sd3": (16, 1.5305, 0.0609), "flux": (16, 0.3611, 0.1159)}.items():
        vae = AutoencoderKL.from_pretrained(folders[family], subfolder="vae", local_files_only=True)
        config = vae.config
        assert (config.latent_channels, config.scaling_factor, config.shift_factor) == (channels, scale, shift)
        assert 2 ** (len(vae.config.block_out_channels) - 1) == 8  # the pipelines' vae_scale_factor
    sd3 = FlowMatchEulerDiscreteScheduler.from_pretrained(folders["sd3"], subfolder="scheduler")
    assert sd3.config.shift == 3.0 and not sd3.config.use_dynamic_shifting
    flux = FlowMatchEulerDiscreteScheduler.from_pretrained(folders["flux"], subfolder="scheduler")
    expected = {"base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
    assert flux.config.use_dynamic_shifting and {k: flux.config[k] for k in expected} == expected
    assert json.loads((folders["flux"] / "transformer" / "config.json").read_text())["guidance_embeds"] is True


def test_t5_tokenizer_round_trips_project_prompts(folders):
    from transformers import AutoTokenizer, T5TokenizerFast

    folder = folders["sd3"]
    for tokenizer in (
        AutoTokenizer.from_pretrained(folder, subfolder="tokenizer_3"),
        T5TokenizerFast.from_pretrained(folder, subfolder="tokenizer_3"),
    ):
        assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)  # T5's ids
        assert tokenizer.model_max_length == 512
        ids = tokenizer(PROMPT).input_ids
        assert tokenizer.convert_ids_to_tokens(ids) == ["▁a", "▁red", "▁cube", ",", "▁front", "▁view", "</s>"]
        for text in (PROMPT, "a red cube" + SRC_SUFFIX + ", back view", "a blue sphere" + TGT_SUFFIX, NFSD_NEGATIVE):
            ids = tokenizer(text).input_ids
            assert tokenizer.unk_token_id not in ids and ids[-1] == tokenizer.eos_token_id
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # Flux's tokenizer_2 is the same builder's output.
    flux = T5TokenizerFast.from_pretrained(folders["flux"], subfolder="tokenizer_2")
    assert flux(PROMPT).input_ids == tokenizer(PROMPT).input_ids


def test_t5_tokenizer_builds_without_a_folder_of_its_own(tmp_path):
    tokenizer = build_t5_tokenizer(tmp_path / "t5")
    assert sorted(p.name for p in (tmp_path / "t5").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert tokenizer("héllo").input_ids.count(tokenizer.unk_token_id) == 1  # no byte fallback, like the real T5


@pytest.mark.parametrize("family", FAMILIES)
def test_real_config_has_the_published_parameter_count(family):
    with torch.device("meta"):
        model = backbone_class(family)(**real_config(family))
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PUBLISHED_PARAMS[family], rel=0.01)
    assert real_config(family) is not real_config(family)  # a fresh copy: callers may edit it


@pytest.mark.parametrize("family", FAMILIES)
def test_real_components_fit_together_on_the_meta_device(family, tmp_path):
    """The one-layer real-width text encoders feed the real backbone: a forward pass on meta tensors checks every
    width (cross/joint attention, pooled vector, time ids) at 1024×1024 without computing anything."""
    with torch.device("meta"):
        c = build_components(family, tmp_path, "real")
        clip_ids = torch.zeros(1, 77, dtype=torch.long)
        if family == "sdxl":
            te, te2 = (
                c["text_encoder"](clip_ids, output_hidden_states=True),
                c["text_encoder_2"](clip_ids, output_hidden_states=True),
            )
            text = torch.cat([te.hidden_states[-2], te2.hidden_states[-2]], -1)
            added = {"text_embeds": te2.text_embeds, "time_ids": torch.zeros(1, 6)}
            out = c["unet"](torch.zeros(1, 4, 128, 128), torch.tensor([500.0]), text, added_cond_kwargs=added).sample
            expected = (1, 4, 128, 128)
        elif family == "sd3":
            te, te2 = (c[k](clip_ids, output_hidden_states=True) for k in ("text_encoder", "text_encoder_2"))
            t5 = c["text_encoder_3"](torch.zeros(1, 256, dtype=torch.long)).last_hidden_state
            clip = torch.cat([te.hidden_states[-2], te2.hidden_states[-2]], -1)
            text = torch.cat([torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1])), t5], -2)
            pooled = torch.cat([te.text_embeds, te2.text_embeds], -1)
            out = c["transformer"](torch.zeros(1, 16, 128, 128), text, pooled, torch.tensor([500.0])).sample
            expected = (1, 16, 128, 128)
        else:
            pooled = c["text_encoder"](clip_ids).pooler_output
            t5 = c["text_encoder_2"](torch.zeros(1, 512, dtype=torch.long)).last_hidden_state
            out = c["transformer"](
                hidden_states=torch.zeros(1, 4096, 64),
                encoder_hidden_states=t5,
                pooled_projections=pooled,
                timestep=torch.tensor([0.5]),
                guidance=torch.tensor([3.5]),
                img_ids=torch.zeros(4096, 3),
                txt_ids=torch.zeros(512, 3),
            ).sample
            expected = (1, 4096, 64)
    assert tuple(out.shape) == expected
    backbone = c["unet"] if family == "sdxl" else c["transformer"]
    assert sum(p.numel() for p in backbone.parameters()) == pytest.approx(PUBLISHED_PARAMS[family], rel=0.01)
    assert sum(p.numel() for p in c["vae"].parameters()) == pytest.approx(83.7e6, rel=0.01)  # the real VAEs' size


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    from safetensors.torch import load_file

    def unet(seed, name):
        folder = make_tiny_sdxl(tmp_path / name, seed=seed)
        return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")

    a, b, c = unet(0, "a"), unet(0, "b"), unet(1, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bad_family_or_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="family"):
        real_config("sd15")
    with pytest.raises(ValueError, match="architecture"):
        make_tiny_flux(tmp_path, architecture="sd21-base")


def test_script_family_option(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "make_tiny_pipeline", Path(__file__).resolve().parents[1] / "scripts" / "make_tiny_pipeline.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    main = script.main
    main([str(tmp_path / "flux"), "--family", "flux", "--dtype", "bfloat16"])
    assert "flux" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(tmp_path / "flux" / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16
    for bad in (["--family", "sd3", "--architecture", "sd21-base"], ["--architecture", "real"], ["--pixel-space"]):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "bad"), *bad] + (["--family", "flux"] if bad == ["--pixel-space"] else []))
