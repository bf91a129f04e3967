"""SDXL, SD3 and Flux as guidance (scoredist/guidance/diffusers/), each against diffusers' own pipeline on a tiny
random-weight folder built in code: the same text conditioning, the same timestep and latent layout, and the ε̂ the
prediction-type layer makes of the denoiser's output; the memory flags give the plain path's output."""

from __future__ import annotations

import math

import pytest
import torch

from scoredist.errors import WeightsNotFoundError
from scoredist.guidance.diffusers.flux import Flux, image_ids, pack_latents, unpack_latents
from scoredist.guidance.diffusers.sd3 import StableDiffusion3
from scoredist.guidance.diffusers.sdxl import StableDiffusionXL

PROMPTS = ["a red cube, front view", ""]


@pytest.fixture(scope="module")
def pipelines(tiny_family_paths):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline

    classes = {"sdxl": StableDiffusionXLPipeline, "sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}
    return {f: classes[f].from_pretrained(tiny_family_paths[f], local_files_only=True) for f in classes}


@pytest.fixture(scope="module")
def guidances(tiny_family_paths):
    return {
        "sdxl": StableDiffusionXL(str(tiny_family_paths["sdxl"])),
        "sd3": StableDiffusion3(str(tiny_family_paths["sd3"])),
        "flux": Flux(str(tiny_family_paths["flux"])),
    }


def vp_rows(guidance, t: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(t), guidance.channels, 8, 8, generator=g)


# ---- SD3 -----------------------------------------------------------------------------------------------------------


def test_sd3_conditions_on_the_pipelines_prompt_embeddings(guidances, pipelines):
    pipe, sd3 = pipelines["sd3"], guidances["sd3"]
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPTS[0], None, None, do_classifier_free_guidance=False, max_sequence_length=256
        )
        empty, _, empty_pooled, _ = pipe.encode_prompt("", None, None, do_classifier_free_guidance=False)
    ours_embeds, ours_pooled = sd3.embed(PROMPTS)
    torch.testing.assert_close(ours_embeds, torch.cat([embeds, empty]))
    torch.testing.assert_close(ours_pooled, torch.cat([pooled, empty_pooled]))
    assert ours_embeds.shape[1] == 77 + 256  # CLIP tokens, then T5's


def test_sd3_eps_is_the_transformers_velocity_at_the_schedulers_own_timestep_converted(guidances, pipelines):
    pipe, sd3 = pipelines["sd3"], guidances["sd3"]
    t = torch.tensor([0, 250, 500, 980])
    x_vp = vp_rows(sd3, t)
    eps = sd3.predict_noise(x_vp, t, [PROMPTS[0]] * 4)
    # the scheduler's 1000-step training grid runs from pure noise down: index t here is its entry 999 − t
    grid_t, grid_sigma = pipe.scheduler.timesteps[999 - t], pipe.scheduler.sigmas[999 - t]
    torch.testing.assert_close(sd3.noise_path.sigma[t].float(), grid_sigma.float())
    sigma = grid_sigma.view(-1, 1, 1, 1)
    x_flow = x_vp * ((1 - sigma) ** 2 + sigma**2).sqrt()  # the same noise level: x_s = r · x_t^VP
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS[0], None, None, do_classifier_free_guidance=False)
        v = pipe.transformer(
            hidden_states=x_flow,
            encoder_hidden_states=embeds.expand(4, -1, -1),
            pooled_projections=pooled.expand(4, -1),
            timestep=grid_t,
        ).sample
    torch.testing.assert_close(eps, x_flow + (1 - sigma) * v, rtol=1e-4, atol=1e-4)  # ε = x_s + (1 − σ) u


def test_sd3_gives_its_transformer_float32_timesteps_under_bf16_weights(tiny_family_paths):
    """Rounded to bf16, 1000·σ would name another σ than x_s was noised with (750.75 → 752)."""
    sd3 = StableDiffusion3(str(tiny_family_paths["sd3"]), precision="bf16")
    seen = []
    hook = sd3.denoiser.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["timestep"]), with_kwargs=True)
    try:
        sd3.predict_noise(torch.randn(1, 16, 8, 8), torch.tensor([499]), ["a red cube"])
    finally:
        hook.remove()
    assert seen[0].dtype == torch.float32 and seen[0].item() == pytest.approx(750.0)


# ---- Flux ----------------------------------------------------------------------------------------------------------


def test_flux_packs_latents_and_numbers_patches_as_the_pipeline(pipelines):
    pipe = pipelines["flux"]
    x = torch.randn(2, 16, 8, 6)
    packed = pack_latents(x)
    torch.testing.assert_close(packed, pipe._pack_latents(x, 2, 16, 8, 6))
    torch.testing.assert_close(unpack_latents(packed, 16, 8, 6), x)
    torch.testing.assert_close(image_ids(8, 6, "cpu"), pipe._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32))


def test_flux_fixes_its_resolution_dependent_shift_as_the_pipeline_computes_it(guidances, pipelines):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    flux, config = guidances["flux"], pipelines["flux"].scheduler.config
    tokens = (512 // 16) ** 2  # 512² pixels: 64² latents, 32² packed tokens
    mu = calculate_shift(
        tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
    )
    s = torch.arange(1, 1001, dtype=torch.float64) / 1000
    expected = math.exp(mu) / (math.exp(mu) + (1 / s - 1))  # the scheduler's exponential time_shift
    torch.testing.assert_close(flux.noise_path.sigma[:-1], expected[:-1])
    assert mu == pytest.approx(0.5 + 0.65 * (1024 - 256) / 3840)


def test_flux_evaluates_every_row_the_empty_prompts_too_at_the_embedded_guidance(guidances, pipelines):
    pipe, flux = pipelines["flux"], guidances["flux"]
    seen = []
    hook = flux.denoiser.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["guidance"].clone()), with_kwargs=True
    )
    t = torch.tensor([100, 700])
    x_vp = vp_rows(flux, t)
    try:
        eps = flux.predict_noise(x_vp, t, PROMPTS)
    finally:
        hook.remove()
    assert torch.equal(seen[0], torch.tensor([3.5, 3.5]))
    sigma = flux.noise_path.sigma[t].float().view(-1, 1, 1, 1)
    x_flow = x_vp * ((1 - sigma) ** 2 + sigma**2).sqrt()
    with torch.no_grad():
        rows = [pipe.encode_prompt(p, None, max_sequence_length=512) for p in PROMPTS]
        v = pipe.transformer(
            hidden_states=pipe._pack_latents(x_flow, 2, 16, 8, 8),
            encoder_hidden_states=torch.cat([r[0] for r in rows]),
            pooled_projections=torch.cat([r[1] for r in rows]),
            timestep=sigma.flatten(),
            guidance=torch.full((2,), 3.5),
            img_ids=pipe._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32),
            txt_ids=rows[0][2],
        ).sample
    v = pipe._unpack_latents(v, 64, 64, 8)  # 64 px at the tiny VAE's downscale 8
    torch.testing.assert_close(eps, x_flow + (1 - sigma) * v, rtol=1e-4, atol=1e-4)


def test_flux_embedded_guidance_changes_the_prediction(tiny_family_paths, guidances):
    t = torch.tensor([300])
    x_vp = vp_rows(guidances["flux"], t)
    low = Flux(str(tiny_family_paths["flux"]), embedded_guidance=1.0).predict_noise(x_vp, t, PROMPTS[:1])
    assert not torch.allclose(low, guidances["flux"].predict_noise(x_vp, t, PROMPTS[:1]))


# ---- SDXL ----------------------------------------------------------------------------------------------------------


def test_sdxl_conditions_as_the_pipeline_with_zeros_for_the_empty_prompt(guidances, pipelines):
    pipe, sdxl = pipelines["sdxl"], guidances["sdxl"]
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(PROMPTS[0], do_classifier_free_guidance=True)
    ours_embeds, ours_pooled = sdxl.embed(PROMPTS)
    torch.testing.assert_close(ours_embeds, torch.cat([embeds, negative]))
    torch.testing.assert_close(ours_pooled, torch.cat([pooled, negative_pooled]))
    assert negative.abs().sum() == 0 and negative_pooled.abs().sum() == 0  # force_zeros_for_empty_prompt


def test_sdxl_eps_is_the_unets_with_the_pipelines_size_ids(guidances, pipelines):
    pipe, sdxl = pipelines["sdxl"], guidances["sdxl"]
    t = torch.tensor([10, 600])
    x = vp_rows(sdxl, t)
    eps = sdxl.predict_noise(x, t, [PROMPTS[0]] * 2)
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS[0], do_classifier_free_guidance=False)
        dim = pipe.text_encoder_2.config.projection_dim
        ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, text_encoder_projection_dim=dim)
        expected = pipe.unet(
            x,
            t,
            encoder_hidden_states=embeds.expand(2, -1, -1),
            added_cond_kwargs={"text_embeds": pooled.expand(2, -1), "time_ids": ids.expand(2, -1)},
        ).sample
    assert ids.tolist() == [[64, 64, 0, 0, 64, 64]]
    torch.testing.assert_close(eps, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sdxl.alphas_cumprod, pipe.scheduler.alphas_cumprod.float())


# ---- every family --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_memory_flags_give_the_plain_paths_output(family, tiny_family_paths, guidances):
    cls = type(guidances[family])
    folder = str(tiny_family_paths[family])
    t = torch.tensor([50, 400, 900])
    x = vp_rows(guidances[family], t, seed=4)
    prompts = ["a red cube", "a blue sphere", ""]
    plain = guidances[family].predict_noise(x, t, prompts)
    # model_offload on the CPU installs CPU → CPU hooks: what it checks here is that the hooked path computes the same;
    # the device moves themselves are checked by test_memory_flags_on_cuda_match_the_cpu_fp32_path (GPU-marked)
    for flags in ({"offload_text_encoders": True}, {"model_offload": True}, {"max_batch": 1}):
        torch.testing.assert_close(cls(folder, **flags).predict_noise(x, t, prompts), plain, rtol=1e-5, atol=1e-5)
    bf16 = cls(folder, precision="bf16")  # honoured on the CPU (fp16 is not: CPU kernels lack it)
    assert bf16.denoiser_dtype == torch.bfloat16
    out = bf16.predict_noise(x, t, prompts)
    assert out.dtype == torch.float32
    assert (out - plain).abs().max() < 0.05 * plain.abs().max()  # bf16 rounding: 8 bits of mantissa


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_a_missing_folder_stops_with_the_one_line_message_naming_its_tiny_builder(family, tmp_path):
    cls = {"sdxl": StableDiffusionXL, "sd3": StableDiffusion3, "flux": Flux}[family]
    with pytest.raises(WeightsNotFoundError, match=rf"make_tiny_pipeline.py tiny-{family} --family {family}"):
        cls(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_the_vae_scales_and_shifts_latents_as_the_pipeline(family, guidances, pipelines):
    guidance, vae = guidances[family], pipelines[family].vae
    rgb = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    z = guidance.encode(rgb)
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
    with torch.no_grad():
        expected = (vae.encode(2 * rgb - 1).latent_dist.mean - shift) * scale
        decoded = ((vae.decode(z / scale + shift).sample + 1) / 2).clamp(0, 1)
    assert z.shape == (2, guidance.channels, 8, 8) and z.dtype == torch.float32
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(guidance.decode(z), decoded)
    assert family == "sdxl" or shift != 0  # the 16-channel VAEs' shift is exercised
    assert guidance.channels == (4 if family == "sdxl" else 16)
    assert guidance.prediction == ("epsilon" if family == "sdxl" else "flow")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_memory_flags_on_cuda_match_the_cpu_fp32_path(family, tiny_family_paths, guidances):
    """On a GPU: fp16 / bf16 weights, model offload (denoiser and VAE visiting the GPU in turn), text encoders on the
    CPU and split calls all give the CPU fp32 answer, to the precision's rounding; encode/decode use the hooks."""
    cls, folder = type(guidances[family]), str(tiny_family_paths[family])
    t = torch.tensor([50, 400, 900])
    x = vp_rows(guidances[family], t, seed=6)
    prompts = ["a red cube", "a blue sphere", ""]
    reference = guidances[family].predict_noise(x, t, prompts)
    for precision in ("fp16", "bf16"):
        for flags in ({}, {"model_offload": True}, {"offload_text_encoders": True, "max_batch": 2}):
            guidance = cls(folder, device="cuda", precision=precision, **flags)
            out = guidance.predict_noise(x.cuda(), t.cuda(), prompts).cpu()
            assert (out - reference).abs().max() < 0.05 * reference.abs().max(), (precision, flags)
            rgb = torch.rand(1, 3, 64, 64, device="cuda")
            assert guidance.decode(guidance.encode(rgb)).shape == (1, 3, 64, 64)
            if flags.get("model_offload"):
                assert next(guidance.denoiser.parameters()).device.type == "cpu"  # the VAE ran last: back on the CPU
