"""StableDiffusion guidance on tiny random-weight folders built by tests/conftest.py (no hub, CPU, seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scoredist.errors import WeightsNotFoundError
from scoredist.guidance.base import add_noise, scaled_linear_alphas_cumprod
from scoredist.guidance.diffusers.sd import LoRASource, StableDiffusion

PROMPTS = ["a photo of a red cube", "", "a blue sphere, overhead view", "a photo of a red cube"]


@pytest.fixture(scope="module")
def sd(tiny_sd_path):
    return StableDiffusion(str(tiny_sd_path))


def _batch(n: int, seed: int = 0, shape=(4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g), torch.randint(0, 1000, (n,), generator=g)


def test_tiny_folder_layout_and_load(tiny_sd_path, sd):
    index = json.loads((Path(tiny_sd_path) / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert list((Path(tiny_sd_path) / "unet").glob("*.safetensors")), "weights must be safetensors"
    assert (sd.channels, sd.downscale, sd.sample_shape(), sd.prediction_type) == (4, 8, (4, 8, 8), "epsilon")
    # SD's scaled_linear schedule, read from the folder's scheduler config.
    torch.testing.assert_close(sd.alphas_cumprod, scaled_linear_alphas_cumprod().float(), atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in sd.parameters())


def test_tiny_build_is_seeded(tiny_sd_path, tmp_path):
    from safetensors.torch import load_file

    from scoredist.guidance.tiny_pipeline import build_tiny_pipeline

    again = build_tiny_pipeline(tmp_path / "again")
    a = load_file(Path(tiny_sd_path) / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(again / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batched_equals_row_by_row(sd):
    x, t = _batch(len(PROMPTS))
    eps = sd.predict_noise(x, t, PROMPTS)
    assert eps.shape == x.shape and eps.dtype == torch.float32
    rows = torch.cat([sd.predict_noise(x[i : i + 1], t[i : i + 1], [p]) for i, p in enumerate(PROMPTS)])
    torch.testing.assert_close(eps, rows, atol=1e-5, rtol=0)
    # The prompt actually conditions the output (rows 0 and 1 with the same x_t, t differ only in the prompt).
    x2, t2 = x[:1].repeat(2, 1, 1, 1), t[:1].repeat(2)
    two = sd.predict_noise(x2, t2, PROMPTS[:2])
    assert (two[0] - two[1]).abs().max() > 1e-4


def test_one_unet_call_per_predict_noise(sd):
    calls = []
    handle = sd.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        sd.predict_noise(*_batch(3), PROMPTS[:3])
    finally:
        handle.remove()
    assert calls == [3]


def test_max_batch_splits_rows_into_calls_with_the_same_result(tiny_sd_path, sd):
    split = StableDiffusion(str(tiny_sd_path), max_batch=2)
    x, t = _batch(5)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(5)]
    calls = []
    handle = split.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        eps = split.predict_noise(x, t, prompts)
    finally:
        handle.remove()
    assert calls == [2, 2, 1]
    torch.testing.assert_close(eps, sd.predict_noise(x, t, prompts), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_batch"):
        StableDiffusion(str(tiny_sd_path), max_batch=0)


def test_prompt_cache_keeps_the_most_recent_prompts(tiny_sd_path):
    sd = StableDiffusion(str(tiny_sd_path), prompt_cache_size=2)
    encoded = []
    handle = sd.text_encoder.register_forward_hook(lambda m, args, out: encoded.append(args[0].shape[0]))
    try:
        first = sd.prompt_embeddings(["a red cube"])
        sd.prompt_embeddings(["a blue sphere", "a green cone"])  # evicts "a red cube"
        assert list(sd._prompt_cache) == ["a blue sphere", "a green cone"]
        again = sd.prompt_embeddings(["a red cube"])  # encoded again, identical
    finally:
        handle.remove()
    assert encoded == [1, 2, 1]
    torch.testing.assert_close(first, again)
    with pytest.raises(ValueError, match="prompt_cache_size"):
        sd.prompt_embeddings(["a", "b", "c"])


def test_prompt_cache_encodes_each_prompt_once(tiny_sd_path):
    sd = StableDiffusion(str(tiny_sd_path))
    batches = []
    sd.text_encoder.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    x, t = _batch(3)
    sd.predict_noise(x, t, ["a", "b", "a"])
    sd.predict_noise(x[:2], t[:2], ["b", "a"])
    sd.predict_noise(x, t, ["c", "a", "b"])
    # Call 1 encodes {a, b} in one batch; call 2 nothing; call 3 only "c".
    assert batches == [2, 1]
    assert set(sd._prompt_cache) == {"a", "b", "c"}
    # A cached embedding equals a fresh encoding of the same prompt.
    tokens = sd.tokenizer(["b"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    fresh = sd.text_encoder(tokens.input_ids)[0][0]
    torch.testing.assert_close(sd.prompt_embeddings(["b"])[0], fresh)


def test_v_prediction_converted_to_eps(tiny_sd_v_path):
    sd = StableDiffusion(str(tiny_sd_v_path))
    assert sd.prediction_type == "v_prediction"
    x, t = _batch(2, seed=1)
    t = torch.tensor([30, 900])
    prompts = PROMPTS[:2]
    eps = sd.predict_noise(x, t, prompts)
    with torch.no_grad():
        v = sd.unet(x, t, encoder_hidden_states=sd.prompt_embeddings(prompts)).sample
    abar = scaled_linear_alphas_cumprod()[t].float().view(-1, 1, 1, 1)
    hand = abar.sqrt() * v + (1 - abar).sqrt() * x  # v = a ε − b x0, x_t = a x0 + b ε  ⇒  ε = a v + b x_t
    torch.testing.assert_close(eps, hand, atol=1e-5, rtol=0)
    assert (eps - v).abs().max() > 0.1  # the conversion is not the identity
    # "sample" (x̂0) prediction: ε = (x_t − a x̂0) / b, same raw output reinterpreted.
    sd.prediction_type = "sample"
    torch.testing.assert_close(
        sd.predict_noise(x, t, prompts), (x - abar.sqrt() * v) / (1 - abar).sqrt(), atol=1e-4, rtol=1e-5
    )


def test_encode_decode_shapes_and_gradient(sd):
    rgb = torch.rand(2, 3, 64, 64, requires_grad=True)
    z = sd.encode(rgb)
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    with torch.no_grad():
        hand = sd.vae.encode(rgb * 2 - 1).latent_dist.mean * sd.vae.config.scaling_factor
    torch.testing.assert_close(z.detach(), hand)
    (z * torch.randn_like(z)).sum().backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    out = sd.decode(z)
    assert out.shape == (2, 3, 64, 64) and not out.requires_grad
    assert 0 <= out.min() and out.max() <= 1
    sd.check_resolution(64, 128)
    with pytest.raises(ValueError, match="divisible by 8"):
        sd.check_resolution(60, 64)


def test_check_prompt(sd):
    sd.check_prompt("a photo of a red cube, oversaturated, smooth, pixelated, cartoon, foggy, hazy, blurry")
    with pytest.raises(ValueError, match="more than the text encoder's 77"):
        sd.check_prompt("zq " * 80)
    with pytest.raises(ValueError, match="string"):
        sd.check_prompt(None)


def test_missing_local_folder_fails_fast(tmp_path):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        StableDiffusion(str(tmp_path / "no-such-folder"))
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "local folder does not exist" in msg and "guidance.pretrained=/path/to/local/folder" in msg
    assert "scripts/make_tiny_pipeline.py tiny-sd" in msg and "guidance=shapes" in msg
    # An existing folder that is not a diffusers folder is rejected the same way.
    with pytest.raises(WeightsNotFoundError, match="folder has no model_index.json"):
        StableDiffusion(str(tmp_path))


@pytest.mark.parametrize("why", ["HF_HUB_OFFLINE", "unreachable"])
def test_uncached_hub_id_offline_fails_fast(monkeypatch, tmp_path, why):
    from huggingface_hub import constants

    from scoredist.guidance.diffusers import hub

    if why == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # no HF_HUB_OFFLINE, but the network is down: the probe says so and nothing is retried
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # even if a dev machine has SD
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        StableDiffusion("stabilityai/stable-diffusion-2-1-base")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert ("HF_HUB_OFFLINE is set" if why == "HF_HUB_OFFLINE" else "the model hub is unreachable") in msg
    assert "not in the cache" in msg and "guidance.pretrained=/path/to/local/folder" in msg and "guidance=shapes" in msg


def test_folder_without_safetensors_is_rejected(tiny_pixel_path, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_pixel_path, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="loading a component failed .*safetensors"):
        StableDiffusion(str(broken))


def test_pixel_space_pipeline(tiny_pixel_path):
    sd = StableDiffusion(str(tiny_pixel_path))
    assert sd.vae is None and (sd.channels, sd.downscale, sd.sample_shape()) == (3, 1, (3, 16, 16))
    rgb = torch.rand(2, 3, 16, 16)
    x = sd.encode(rgb)
    torch.testing.assert_close(x, rgb * 2 - 1)
    torch.testing.assert_close(sd.decode(x), rgb)
    eps = sd.predict_noise(x, torch.tensor([5, 700]), PROMPTS[:2])
    assert eps.shape == (2, 3, 16, 16) and torch.isfinite(eps).all()
    sd.check_resolution(17, 31)  # downscale 1: any size


def test_lora_source_model(tiny_sd_path):
    sd = StableDiffusion(str(tiny_sd_path))
    base_before = {n: p.detach().clone() for n, p in sd.unet.named_parameters()}
    prompts = PROMPTS[:2]
    x0, t = _batch(2, seed=2)
    noise = torch.randn_like(x0)
    x_t = add_noise(x0, noise, t, sd.alphas_cumprod)
    frozen_before = sd.predict_noise(x_t, t, prompts)

    source = sd.make_source_model()
    assert isinstance(source, LoRASource)
    names = [n for n, _ in sd.unet.named_parameters() if "lora" in n]
    params = list(source.lora)  # the LoRA matrices; the camera embedding comes on top (tests/test_vsd_camera.py)
    # 4 transformer blocks (down, mid, 2× up) × 2 attentions × 4 projections × (A, B) = 64 LoRA tensors, rank 4.
    assert len(params) == len(names) == 64
    assert all(p.requires_grad and p.dtype == torch.float32 for p in params)
    assert {p.shape[0] for p, n in zip(params, names) if "lora_A" in n} == {4}
    lora_init = {n: p.detach().clone() for n, p in sd.unet.named_parameters() if "lora" in n}
    assert all(not v.any() for n, v in lora_init.items() if "lora_B" in n)
    # B = 0 at init: the source equals the frozen model exactly.
    torch.testing.assert_close(source.predict_noise(x_t, t, prompts), frozen_before, atol=0, rtol=0)

    opt = torch.optim.Adam(source.parameters(), lr=1e-2)
    for _ in range(2):  # step 1 moves B (A's gradient is B-weighted, so 0); step 2 then moves A too
        loss = ((source.predict_noise(x_t, t, prompts) - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # peft wraps each targeted Linear: its frozen weight is now "<name>.base_layer.weight".
    after = {n.replace(".base_layer", ""): p for n, p in sd.unet.named_parameters()}
    assert all(torch.equal(after[n], base_before[n]) for n in base_before), "frozen base weights changed"
    assert all(after[n].grad is None for n in base_before)
    assert all((after[n] - lora_init[n]).abs().max() > 0 for n in names), "every LoRA matrix should have moved"

    trained = source.predict_noise(x_t, t, prompts)
    assert (trained - frozen_before).abs().max() > 1e-3
    # The frozen guidance runs with the adapter disabled: unchanged by training, and the adapter stays trainable.
    torch.testing.assert_close(sd.predict_noise(x_t, t, prompts), frozen_before, atol=0, rtol=0)
    assert all(p.requires_grad for p in source.parameters())
    torch.testing.assert_close(source.predict_noise(x_t, t, prompts), trained.detach(), atol=0, rtol=0)

    # A second source model gets its own fresh adapter (= frozen); switching back restores the trained one.
    second = sd.make_source_model()
    assert not set(map(id, second.parameters())) & set(map(id, source.parameters()))
    torch.testing.assert_close(second.predict_noise(x_t, t, prompts), frozen_before, atol=0, rtol=0)
    torch.testing.assert_close(source.predict_noise(x_t, t, prompts), trained.detach(), atol=0, rtol=0)


def test_make_tiny_pipeline_script_help():
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_tiny_pipeline.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
    assert "--pixel-space" in out.stdout and "--prediction-type" in out.stdout


def test_precision_and_text_encoder_offload(tiny_sd_path, sd):
    with pytest.raises(ValueError, match="precision"):
        StableDiffusion(str(tiny_sd_path), precision="fp8")
    # On CPU fp16 is not used (slow/unsupported kernels): everything stays fp32. The text encoder can live outside the
    # module tree (kept on the CPU by .to(device)) and gives the same predictions.
    half = StableDiffusion(str(tiny_sd_path), precision="fp16", offload_text_encoder=True)
    assert half.unet_dtype == torch.float32 and half.vae_dtype == torch.float32
    assert "text_encoders" not in dict(half.named_children()) and "text_encoders" in dict(sd.named_children())
    x, t = _batch(2, seed=3)
    torch.testing.assert_close(half.predict_noise(x, t, PROMPTS[:2]), sd.predict_noise(x, t, PROMPTS[:2]))


def test_v_prediction_recovers_the_true_noise_from_an_exact_v(tiny_sd_v_path, monkeypatch):
    """Independent of the conversion formula: a UNet that returns the exact v = a ε − b x0 must give back ε."""
    sd = StableDiffusion(str(tiny_sd_v_path))
    torch.manual_seed(3)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 800])
    abar = scaled_linear_alphas_cumprod()[t].float().view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    monkeypatch.setattr(sd.unet, "forward", lambda sample, *a, **k: (v.to(sample.dtype),))
    torch.testing.assert_close(sd.predict_noise(x_t, t, PROMPTS[:2]), eps, atol=1e-5, rtol=0)
