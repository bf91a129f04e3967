"""The camera-conditioned diffusers families on their tiny folders (tiny_camera_families.py): Zero123 / Stable-Zero123
(reference image + relative pose) and MVDream (camera embedding + cross-view attention), and the converter of the
authors' checkpoints. Constants are threestudio's (zero123_guidance.py, stable_zero123_guidance.py) and
MVDream-threestudio's (multiview_diffusion_guidance.py, MVDream's camera_utils.py), written here as literals."""

from __future__ import annotations

import math

import pytest
import torch

from scoredist.prompts import Condition

REFERENCE = "assets/references/yellow_torus_rgba.png"


@pytest.fixture(scope="module")
def zero123(tiny_camera_paths):
    from scoredist.guidance.diffusers.zero123 import Zero123

    return Zero123(pretrained=str(tiny_camera_paths["zero123"]), reference=REFERENCE)


@pytest.fixture(scope="module")
def mvdream(tiny_camera_paths):
    from scoredist.guidance.diffusers.mvdream import MVDream

    return MVDream(pretrained=str(tiny_camera_paths["mvdream"]))


def rows(text: str, cameras) -> list[Condition]:
    return [Condition(text, c) for c in cameras]


# ---------------------------------------------------------------------------------------------------------------------
# Zero123
# ---------------------------------------------------------------------------------------------------------------------


def test_zero123_pose_is_threestudios_relative_polar_azimuth_and_distance(zero123):
    """T = [deg2rad(ref_el − el), sin Δaz, cos Δaz, distance − ref distance], the reference at az 0°, el 5°, 3.8."""
    assert zero123.reference_camera == (0.0, 5.0, 3.8)
    pose = zero123.pose_vector(torch.tensor([[90.0, 35.0, 3.8], [-30.0, 5.0, 4.3], [180.0, -10.0, 3.8]]))
    expected = torch.tensor(
        [
            [math.radians(-30.0), 1.0, 0.0, 0.0],
            [0.0, -0.5, 0.8660254, 0.5],
            [math.radians(15.0), 0.0, -1.0, 0.0],
        ]
    )
    torch.testing.assert_close(pose, expected, atol=1e-6, rtol=0)


def test_stable_zero123_pose_ends_with_the_references_polar_angle(tiny_camera_paths):
    from scoredist.guidance.diffusers.zero123 import StableZero123

    guidance = StableZero123(pretrained=str(tiny_camera_paths["zero123"]), reference=REFERENCE, reference_elevation=5)
    pose = guidance.pose_vector(torch.tensor([[90.0, 35.0, 3.8], [0.0, 5.0, 10.0]]))
    torch.testing.assert_close(pose[:, 3], torch.full((2,), math.radians(85.0)))  # 90° − 5°, whatever the distance
    torch.testing.assert_close(pose[0, :3], torch.tensor([math.radians(-30.0), 1.0, 0.0]), atol=1e-6, rtol=0)


def test_the_reference_is_composited_on_white_by_its_alpha(tmp_path):
    """threestudio's prepare_embeddings: rgb·a + (1 − a), after an area resize to 256²."""
    import numpy as np
    from PIL import Image

    from scoredist.guidance.diffusers.zero123 import load_reference

    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :32] = (255, 0, 0, 255)  # opaque red on the left
    rgba[:, 32:] = (0, 0, 255, 0)  # transparent blue on the right: white after compositing
    Image.fromarray(rgba).save(tmp_path / "half.png")
    ref = load_reference(str(tmp_path / "half.png"))
    assert ref.shape == (1, 3, 256, 256)
    torch.testing.assert_close(ref[0, :, 10, 10], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(ref[0, :, 10, 200], torch.tensor([1.0, 1.0, 1.0]))


def test_clip_normalisation_is_openais():
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from scoredist.guidance.diffusers.zero123 import CLIP_MEAN, CLIP_STD

    assert CLIP_MEAN == tuple(OPENAI_CLIP_MEAN) and CLIP_STD == tuple(OPENAI_CLIP_STD)


def test_zero123_conditions_as_the_authors_and_zeroes_image_and_pose_for_the_empty_prompt(zero123):
    """Every row in ONE UNet call; a conditional row sees [x_t ‖ VAE mode of the reference, unscaled] and the context
    P([CLIP(ref) ‖ T]); an ∅ row sees [x_t ‖ 0] and the zero context (zeros after the projection)."""
    torch.manual_seed(0)
    cameras = [(30.0, 10.0, 3.8, 20.0), (200.0, 40.0, 3.8, 20.0)]
    conds = rows("the object", cameras) + rows("", cameras)
    x = torch.randn(4, 4, 8, 8)
    t = torch.tensor([100, 600, 100, 600])
    calls = []
    hook = zero123.denoiser.register_forward_hook(lambda m, args, kwargs_out: calls.append(args[0].shape[0]))
    try:
        eps = zero123.predict_noise(x, t, conds)
    finally:
        hook.remove()
    assert calls == [4]

    with torch.no_grad():
        # the reference at the rows' size (64² for the tiny model; 256² — as given — for Zero123's own 32² latents)
        ref = torch.nn.functional.interpolate(zero123.reference_rgb, (64, 64), mode="bilinear", align_corners=False)
        latent = zero123.vae.encode(ref * 2 - 1).latent_dist.mode()  # no scaling factor
        pose = zero123.pose_vector(torch.tensor(cameras))
        image = zero123.reference_embedding.expand(2, -1)
        context = zero123.pose_projection(torch.cat([image, pose], -1)[:, None])
        unet = zero123.denoiser
        cond = unet(torch.cat([x[:2], latent.expand(2, -1, -1, -1)], 1), t[:2], context).sample
        uncond = unet(torch.cat([x[2:], torch.zeros(2, 4, 8, 8)], 1), t[2:], torch.zeros_like(context)).sample
    torch.testing.assert_close(eps, torch.cat([cond, uncond]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(eps[0], eps[2], atol=1e-3)  # the reference and pose matter


def test_zero123_embeds_the_reference_with_clips_projection_at_the_encoders_size(zero123):
    """The image embedding is the projected one (image_embeds), of the reference resized to the encoder's input."""
    import torch.nn.functional as F

    from scoredist.guidance.diffusers.zero123 import CLIP_MEAN, CLIP_STD

    size = zero123.image_encoder.config.image_size
    x = F.interpolate(zero123.reference_rgb, (size, size), mode="bicubic", align_corners=True)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = zero123.image_encoder(pixel_values=x).image_embeds
    torch.testing.assert_close(zero123.reference_embedding, expected)
    assert expected.shape[-1] == zero123.pose_projection.config.in_channel - 4


def test_zero123_refuses_rows_without_cameras_and_a_missing_reference(zero123, tiny_camera_paths):
    from scoredist.guidance.diffusers.zero123 import Zero123

    with pytest.raises(ValueError, match="renderer=nerf"):
        zero123.predict_noise(torch.zeros(1, 4, 8, 8), torch.tensor([10]), ["a plain string"])
    with pytest.raises(ValueError, match="image="):
        Zero123(pretrained=str(tiny_camera_paths["zero123"]))
    with pytest.raises(FileNotFoundError, match="no image"):
        Zero123(pretrained=str(tiny_camera_paths["zero123"]), reference="nowhere.png")


def test_a_text_folder_is_not_taken_for_zero123(tiny_sd_path):
    from scoredist.guidance.diffusers.zero123 import Zero123

    with pytest.raises(Exception, match="image_encoder|Zero123"):
        Zero123(pretrained=str(tiny_sd_path), reference=REFERENCE)


# ---------------------------------------------------------------------------------------------------------------------
# MVDream
# ---------------------------------------------------------------------------------------------------------------------


def test_mvdream_camera_is_threestudios_c2w_with_a_unit_translation_row_by_row():
    """MVDream-threestudio's get_camera_cond("rotation"): threestudio's OpenGL camera-to-world (z up, azimuth 0 on
    +x) with its translation normalised, flattened row-major. Hand-computed for two cameras."""
    from scoredist.guidance.diffusers.mvdream import mvdream_camera

    got = mvdream_camera(torch.tensor([[0.0, 0.0, 2.0, 40.0], [90.0, 30.0, 2.5, 20.0]])).view(2, 4, 4)
    s, c = 0.5, math.sqrt(3) / 2
    front = torch.tensor([[0.0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    # at azimuth 90°, elevation 30°: eye (0, c, s); right (−1, 0, 0); up (0, −s, c); backward = eye
    side = torch.tensor([[-1.0, 0, 0, 0], [0, -s, c, c], [0, c, s, s], [0, 0, 0, 1]])
    torch.testing.assert_close(got, torch.stack([front, side]), atol=1e-6, rtol=0)


def test_the_camera_is_a_projection_class_embedding_added_to_the_time_embedding(mvdream):
    """diffusers' class_embed_type "projection": Linear(16, D) – SiLU – Linear(D, D), added (not concatenated) to the
    timestep embedding — MVDream's camera_embed."""
    unet = mvdream.unet
    embedding = unet.class_embedding
    width = unet.time_embedding.linear_2.out_features
    assert (embedding.linear_1.in_features, embedding.linear_1.out_features) == (16, width)
    assert (embedding.linear_2.in_features, embedding.linear_2.out_features) == (width, width)
    assert isinstance(embedding.act, torch.nn.SiLU) and not unet.config.class_embeddings_concat
    camera = torch.randn(3, 16)
    emb = torch.randn(3, width)
    # the UNet's own get_class_embed + addition, as forward does it
    torch.testing.assert_close(
        emb + unet.get_class_embed(sample=torch.zeros(1), class_labels=camera), emb + embedding(camera)
    )


def test_cross_view_attention_is_one_attention_over_the_views_tokens(mvdream):
    """MultiviewSelfAttention on (b·V, l, c) equals plain attention on (b, V·l, c), group by group; V = 1 equals the
    per-view processor."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from scoredist.guidance.diffusers.mvdream import MultiviewSelfAttention

    attn = mvdream.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    torch.manual_seed(0)
    hidden = torch.randn(8, 5, attn.to_q.in_features)
    with torch.no_grad():
        joint = MultiviewSelfAttention(4)(attn, hidden)
        plain = AttnProcessor2_0()
        expected = torch.cat([plain(attn, group.reshape(1, 20, -1)).reshape(4, 5, -1) for group in hidden.split(4)])
        torch.testing.assert_close(joint, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(MultiviewSelfAttention(1)(attn, hidden), plain(attn, hidden), atol=1e-5, rtol=1e-5)


def test_mvdream_views_see_each_other_only_within_their_object(mvdream):
    """Changing view 1 of the first object changes that object's other views' ε, not the second object's (rows 4–7),
    and a row's camera changes its own ε."""
    torch.manual_seed(1)
    cams = [(a, 15.0, 2.0, 40.0) for a in (0.0, 90.0, 180.0, 270.0)]
    conds = rows("a red cube", cams) + rows("", cams)
    x = torch.randn(8, 4, 8, 8)
    t = torch.full((8,), 500)
    eps = mvdream.predict_noise(x, t, conds)
    moved = x.clone()
    moved[1] += 1.0
    eps2 = mvdream.predict_noise(moved, t, conds)
    assert (eps2[0] - eps[0]).abs().max() > 1e-4 and (eps2[3] - eps[3]).abs().max() > 1e-4
    torch.testing.assert_close(eps2[4:], eps[4:])
    turned = rows("a red cube", [(a + 45.0, 15.0, 2.0, 40.0) for a in (0.0, 90.0, 180.0, 270.0)]) + conds[4:]
    assert (mvdream.predict_noise(x, t, turned)[0] - eps[0]).abs().max() > 1e-5


def test_mvdream_refuses_split_groups_and_mixed_timesteps(mvdream, tiny_camera_paths):
    from scoredist.guidance.diffusers.mvdream import MVDream

    cams = [(a, 15.0, 2.0, 40.0) for a in (0.0, 90.0, 180.0, 270.0)]
    with pytest.raises(ValueError, match="schedule.shared_t=true"):
        mvdream.predict_noise(torch.zeros(4, 4, 8, 8), torch.tensor([1, 2, 3, 4]), rows("a cube", cams))
    with pytest.raises(ValueError, match="trainer.batch_size"):
        mvdream.predict_noise(torch.zeros(2, 4, 8, 8), torch.tensor([1, 1]), rows("a cube", cams[:2]))
    with pytest.raises(ValueError, match="multiple of guidance.views_per_object"):
        MVDream(pretrained=str(tiny_camera_paths["mvdream"]), max_batch=6)
    with pytest.raises(Exception, match="MVDream folder|with the camera embedding"):
        MVDream(pretrained=str(tiny_camera_paths["zero123"]))


# ---------------------------------------------------------------------------------------------------------------------
# Converter
# ---------------------------------------------------------------------------------------------------------------------

TINY_LDM = dict(
    image_size=8,
    in_channels=8,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[2, 1],
    num_res_blocks=2,
    channel_mult=[1, 2, 2],
    num_heads=4,
    transformer_depth=1,
    context_dim=32,
    use_linear_in_transformer=False,
)
TINY_LDM_MV = dict(TINY_LDM, in_channels=4, use_linear_in_transformer=True)


def ldm_checkpoint(family: str, settings: dict, seed: int = 0) -> tuple[dict, dict]:
    """A tiny UNet in the authors' (ldm) layout, made in code: (the ldm state dict, the diffusers state dict)."""
    from diffusers import UNet2DConditionModel

    from scoredist.guidance.convert import UNET_PREFIX, ldm_names, unet_config

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(family, settings))
    weights = unet.state_dict()
    ldm = {UNET_PREFIX + old: weights[new] for new, old in ldm_names(unet).items()}
    if family == "mvdream":  # the authors call the camera MLP camera_embed, not label_emb
        ldm = {k.replace("label_emb.0.", "camera_embed."): v for k, v in ldm.items()}
    return ldm, weights


@pytest.mark.parametrize("family,settings", [("zero123", TINY_LDM), ("mvdream", TINY_LDM_MV)])
def test_the_unet_key_mapping_agrees_with_diffusers_own_ldm_converter(family, settings):
    """Our diffusers → ldm names, read back by diffusers' convert_ldm_unet_checkpoint (an independent implementation
    of the same layout), give every weight back in its place."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from scoredist.guidance.convert import camera_embed_as_label_emb, unet_config

    ldm, weights = ldm_checkpoint(family, settings)
    back = convert_ldm_unet_checkpoint(camera_embed_as_label_emb(ldm), unet_config(family, settings))
    assert set(back) == set(weights)
    assert all(torch.equal(back[k], weights[k]) for k in weights)


def test_the_published_unets_convert_to_their_parameter_counts():
    """The authors' settings give SD 1.x's UNet with 8 input channels (Zero123: 859.53M) and SD 2.1's with the camera
    MLP (MVDream: 865.91M + 16·1280 + 1280 + 1280² + 1280)."""
    from diffusers import UNet2DConditionModel

    from scoredist.guidance.convert import unet_config

    counts = {}
    for family in ("zero123", "mvdream"):
        with torch.device("meta"):
            counts[family] = sum(p.numel() for p in UNet2DConditionModel(**unet_config(family)).parameters())
    assert counts["zero123"] == 859_520_964 + 320 * 4 * 9  # SD 1.5's UNet + 4 more input channels of conv_in
    assert counts["mvdream"] == 865_910_724 + 16 * 1280 + 1280 + 1280 * 1280 + 1280


def save_checkpoint(state: dict, path, lightning: bool) -> None:
    if lightning:  # a Lightning .ckpt: weights under "state_dict", beside plain bookkeeping
        torch.save({"state_dict": state, "global_step": 105000, "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.mark.parametrize("family", ["zero123", "mvdream"])
def test_a_converted_checkpoint_loads_as_its_guidance_with_the_same_weights(family, tmp_path, tiny_camera_paths):
    """The converter on a tiny checkpoint made in code (Zero123: a Lightning .ckpt read with weights_only; MVDream: a
    .safetensors) writes a folder the guidance loads, whose UNet holds exactly the checkpoint's weights and whose
    frozen parts are the base folder's — re-saved as safetensors when the base has .bin files only (as
    lambdalabs/sd-image-variations-diffusers' main branch)."""
    from diffusers import AutoencoderKL

    from scoredist.guidance.convert import convert

    base = tiny_camera_paths[family]  # the tiny folders hold what --base holds: vae/ and image_encoder/ or text parts
    if family == "zero123":
        base = bin_only_copy(base, tmp_path / "base")
    settings = TINY_LDM if family == "zero123" else TINY_LDM_MV
    ldm, weights = ldm_checkpoint(family, settings, seed=3)
    if family == "zero123":
        ldm["cc_projection.weight"] = torch.randn(32, 24 + 4)
        ldm["cc_projection.bias"] = torch.randn(32)
        checkpoint = tmp_path / "zero123.ckpt"
    else:
        checkpoint = tmp_path / "mvdream.safetensors"
    save_checkpoint(ldm, checkpoint, lightning=family == "zero123")
    out = convert(family, checkpoint, tmp_path / "converted", base, settings)

    if family == "zero123":
        from transformers import CLIPVisionModelWithProjection

        from scoredist.guidance.diffusers.zero123 import Zero123

        guidance = Zero123(pretrained=str(out), reference=REFERENCE)
        torch.testing.assert_close(guidance.pose_projection.projection.weight, ldm["cc_projection.weight"])
        encoder = CLIPVisionModelWithProjection.from_pretrained(base, subfolder="image_encoder").state_dict()
        assert all(torch.equal(v, encoder[k]) for k, v in guidance.image_encoder.state_dict().items())
    else:
        from scoredist.guidance.diffusers.mvdream import MVDream

        guidance = MVDream(pretrained=str(out))
    loaded = guidance.denoiser.state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    base_vae = AutoencoderKL.from_pretrained(base, subfolder="vae").state_dict()
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert all(torch.equal(v, base_vae[k]) for k, v in guidance.vae.state_dict().items())


def bin_only_copy(folder, out):
    """The tiny Zero123 folder's VAE and image encoder saved as .bin (torch pickles of tensors) in a new base folder."""
    import shutil

    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModelWithProjection

    out.mkdir()
    shutil.copy(folder / "model_index.json", out / "model_index.json")
    AutoencoderKL.from_pretrained(folder, subfolder="vae").save_pretrained(out / "vae", safe_serialization=False)
    encoder = CLIPVisionModelWithProjection.from_pretrained(folder, subfolder="image_encoder")
    encoder.config.save_pretrained(out / "image_encoder")  # transformers 5 writes safetensors only: the .bin by hand
    torch.save(encoder.state_dict(), out / "image_encoder" / "pytorch_model.bin")
    assert not list(out.rglob("*.safetensors"))
    return out


def test_the_converter_names_missing_and_leftover_weights(tmp_path, tiny_camera_paths):
    from scoredist.guidance.convert import convert

    ldm, _ = ldm_checkpoint("zero123", TINY_LDM)
    ldm["cc_projection.weight"], ldm["cc_projection.bias"] = torch.zeros(32, 28), torch.zeros(32)
    extra = dict(ldm, **{"model.diffusion_model.input_blocks.99.0.weight": torch.zeros(1)})
    save_checkpoint(extra, tmp_path / "extra.safetensors", lightning=False)
    with pytest.raises(KeyError, match="no place"):
        convert("zero123", tmp_path / "extra.safetensors", tmp_path / "a", tiny_camera_paths["zero123"], TINY_LDM)
    missing = {k: v for k, v in ldm.items() if "time_embed" not in k}
    save_checkpoint(missing, tmp_path / "missing.safetensors", lightning=False)
    with pytest.raises(KeyError, match="lacks 4 UNet weights"):
        convert("zero123", tmp_path / "missing.safetensors", tmp_path / "b", tiny_camera_paths["zero123"], TINY_LDM)


def test_a_checkpoint_with_code_in_it_is_refused_in_one_line(tmp_path):
    from scoredist.guidance.convert import read_checkpoint

    torch.save({"state_dict": {}, "callback": torch.optim.SGD}, tmp_path / "code.ckpt")
    with pytest.raises(ValueError, match="weights_only"):
        read_checkpoint(tmp_path / "code.ckpt")


def test_mvdream_evaluates_conditional_and_negative_rows_in_one_unet_call(mvdream):
    """A step's 2 × 4 rows (the loss's two conditions of one object's four views) go through ONE UNet call, and a
    row's ε is the UNet's with the text and the camera MLP of its own row (as MVDream-threestudio calls it)."""
    from scoredist.guidance.diffusers.mvdream import mvdream_camera

    torch.manual_seed(2)
    cams = [(a, 10.0, 2.0, 40.0) for a in (30.0, 120.0, 210.0, 300.0)]
    conds = rows("a red cube", cams) + rows("ugly, blurry", cams)
    x, t = torch.randn(8, 4, 8, 8), torch.full((8,), 300)
    calls = []
    hook = mvdream.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        eps = mvdream.predict_noise(x, t, conds)
    finally:
        hook.remove()
    assert calls == [8]
    with torch.no_grad():
        text = mvdream.prompt_embeddings([str(c) for c in conds])
        camera = mvdream_camera(torch.tensor(cams + cams))
        expected = mvdream.unet(x, t, text, class_labels=camera).sample
    torch.testing.assert_close(eps, expected)


# ---------------------------------------------------------------------------------------------------------------------
# Checks before a run
# ---------------------------------------------------------------------------------------------------------------------


def test_a_text_free_model_refuses_a_loss_that_would_condition_on_other_texts(zero123):
    """Zero123 tells only "" from any other text: SDS's prompt and ∅ pass; a negative prompt, NFSD's negative or ours'
    source prompt would be conditioned like the prompt, so the run stops before it starts."""
    from scoredist.losses.nfsd import NFSD
    from scoredist.losses.sds import SDS
    from scoredist.train import check_texts

    captions = [("the object", "prompt")]
    check_texts(zero123, SDS(guidance_scale=3.0), captions, [""])
    for loss in (SDS(negative_prompt="ugly"), NFSD()):
        with pytest.raises(ValueError, match="reads no text"):
            check_texts(zero123, loss, captions, [""])


def test_mvdream_needs_shared_timesteps_and_orbit_groups_before_a_run(mvdream):
    from omegaconf import OmegaConf

    from scoredist.schedules import TimestepSchedule
    from scoredist.train import check_view_groups

    grouped = OmegaConf.create({"views_per_group": 4})
    check_view_groups(mvdream, grouped, TimestepSchedule(shared_t=True))
    with pytest.raises(ValueError, match="schedule.shared_t=true"):
        check_view_groups(mvdream, grouped, TimestepSchedule())
    with pytest.raises(ValueError, match="renderer.views_per_group=4"):
        check_view_groups(mvdream, OmegaConf.create({"views_per_group": 1}), TimestepSchedule(shared_t=True))


def test_i23d_gives_the_renderer_the_guidances_reference_camera():
    """One place for the reference's camera: the renderer's reference view follows the guidance's pose origin."""
    from hydra import compose, initialize_config_dir

    from tests.test_readme import ROOT

    overrides = ["+experiment=i23d_zero123", f"image={REFERENCE}", "guidance.reference_azimuth=30"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert list(cfg.renderer.reference_camera) == [30.0, 5.0, 3.8, 20.0]
    assert cfg.renderer.reference_image == cfg.guidance.reference == REFERENCE


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_zero123_on_cuda_in_fp16_and_with_model_offload_matches_the_cpu(zero123, tiny_camera_paths):
    """The projection and image encoder stay on the CPU under model_offload (only the UNet and VAE are hooked): the
    rows' context must still reach the device. fp16 within its rounding of the CPU fp32 answer."""
    from scoredist.guidance.diffusers.zero123 import Zero123

    cams = [(30.0, 10.0, 3.8, 20.0), (200.0, 40.0, 3.8, 20.0)]
    conds = rows("the object", cams) + rows("", cams)
    torch.manual_seed(0)
    x, t = torch.randn(4, 4, 8, 8), torch.tensor([100, 600, 100, 600])
    reference = zero123.predict_noise(x, t, conds)
    for flags in ({}, {"model_offload": True}):
        guidance = Zero123(
            pretrained=str(tiny_camera_paths["zero123"]), reference=REFERENCE, device="cuda", precision="fp16", **flags
        )
        out = guidance.predict_noise(x.cuda(), t.cuda(), conds).cpu()
        assert (out - reference).abs().max() < 0.05 * reference.abs().max(), flags


def test_an_image_to_3d_overlay_without_its_image_says_which_key_to_give():
    from hydra import compose, initialize_config_dir

    from scoredist.train import validate
    from tests.test_readme import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=i23d_zero123", "trainer.device=cpu"])
    with pytest.raises(ValueError, match=r"^image has no value: give it on the command line \(image=\.\.\.\)$"):
        validate(cfg)
