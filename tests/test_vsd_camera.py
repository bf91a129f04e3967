"""Camera-conditioned VSD (ProlificDreamer): the LoRA source model sees each NeRF row's camera; 2D rows unchanged."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scoredist.checkpoint import load_checkpoint, save_checkpoint
from scoredist.guidance.base import add_noise
from scoredist.guidance.diffusers.sd import StableDiffusion, camera_features
from scoredist.losses.vsd import VSD, camera_kwargs
from scoredist.prompts import Prompt
from scoredist.renderers.cameras import Cameras, camera_to_world, eye_positions
from scoredist.train import train
from tests.stubs import StubGuidance
from tests.test_nerf import run_config

FRONT = (0.0, 20.0, 1.2, 50.0)  # azimuth, elevation, distance, fovy (Cameras.as_tensor's order)
BACK = (180.0, 20.0, 1.2, 50.0)


@pytest.fixture(scope="module")
def sd(tiny_sd_path):
    return StableDiffusion(str(tiny_sd_path))


def noised_batch(sd, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((n, 4, 8, 8), generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    return add_noise(x0, torch.randn(x0.shape, generator=g), t, sd.alphas_cumprod), t


def train_source(source, sd, cameras, steps: int = 1, cameras_argument: bool = True):
    """`steps` Adam steps of the denoising loss on fixed rows, with the given cameras (or without the argument)."""
    x_t, t = noised_batch(sd, len(cameras), seed=1)
    target = torch.randn_like(x_t)
    optimizer = torch.optim.Adam(source.parameters(), lr=1e-2)
    given = {"cameras": cameras} if cameras_argument else {}
    for _ in range(steps):
        loss = (source.predict_noise(x_t, t, ["a red cube"] * len(cameras), **given) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


# ---------------------------------------------------------------------------------------------------------------------
# The camera matrix
# ---------------------------------------------------------------------------------------------------------------------


def test_camera_to_world_is_a_rigid_pose_at_the_eye_looking_at_the_origin():
    cams = Cameras.from_tensor(torch.tensor([FRONT, BACK, (73.0, -8.0, 1.5, 40.0)]))
    c2w = camera_to_world(cams)
    rotation = c2w[:, :3, :3]
    torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(3), atol=1e-6)  # right-handed
    torch.testing.assert_close(c2w[:, :3, 3], eye_positions(cams).float())
    torch.testing.assert_close(c2w[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(3, 4))
    # OpenGL: the camera looks along its −z column, i.e. towards the origin; the front camera's backward axis is ≈ +z.
    backward = c2w[:, :3, 2]
    torch.testing.assert_close(backward, eye_positions(cams).float() / cams.distance[:, None])
    el = math.radians(20.0)
    torch.testing.assert_close(backward[0], torch.tensor([0.0, math.sin(el), math.cos(el)]))
    assert c2w[0, 1, 1] > 0.9  # up on screen is up in the world


def test_camera_features_flatten_the_matrix_and_give_rows_without_a_camera_zeros():
    features = camera_features([FRONT, None, BACK])
    assert features.shape == (3, 16)
    torch.testing.assert_close(features[0], camera_to_world(Cameras.from_tensor(torch.tensor([FRONT])))[0].flatten())
    assert not features[1].any() and (features[0] != features[2]).any()
    with pytest.raises(ValueError, match="azimuth, elevation, distance, fovy"):
        Cameras.from_tensor(torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------------------------------
# The LoRA source model
# ---------------------------------------------------------------------------------------------------------------------


def test_lora_source_equals_the_frozen_model_at_init_and_depends_on_the_camera_after_a_step(sd):
    source = sd.make_source_model()
    x_t, t = noised_batch(sd, 2, seed=0)
    prompts = ["a red cube"] * 2
    frozen = sd.predict_noise(x_t, t, prompts)
    for cameras in ([FRONT, FRONT], [BACK, None]):
        torch.testing.assert_close(source.predict_noise(x_t, t, prompts, cameras=cameras), frozen, atol=0, rtol=0)

    train_source(source, sd, [FRONT, BACK])
    with torch.no_grad():
        front = source.predict_noise(x_t, t, prompts, cameras=[FRONT, FRONT])
        back = source.predict_noise(x_t, t, prompts, cameras=[BACK, BACK])
        no_camera = source.predict_noise(x_t, t, prompts)
        zero_camera = source.predict_noise(x_t, t, prompts, cameras=[None, FRONT])
    assert (front - back).abs().max() > 1e-4, "the source model should tell the front from the back"
    # A row without a camera is the zero matrix, an embedding like any other (not the prompt-only call).
    torch.testing.assert_close(zero_camera[1], front[1])
    assert (zero_camera[0] - front[0]).abs().max() > 1e-6 and (zero_camera[0] - no_camera[0]).abs().max() > 1e-6
    # The frozen model never sees the embedding, and the UNet has none installed outside the source's calls.
    torch.testing.assert_close(sd.predict_noise(x_t, t, prompts), frozen, atol=0, rtol=0)
    assert sd.unet.class_embedding is None
    assert not any("camera" in key for key in sd.state_dict())


def test_rows_without_cameras_call_the_prompt_only_lora_and_a_dropped_camera_is_the_zero_feature(sd):
    """No cameras argument (2D rows): the prompt-only LoRA, and training leaves the camera embedding alone. A cameras
    list gives every row the embedding, a None row the all-zero feature (threestudio's dropped camera, which ESD fits
    and asks), the same alone as beside rows with cameras."""
    source = sd.make_source_model()
    embedding_before = {k: v.clone() for k, v in source.camera_embedding.state_dict().items()}
    train_source(source, sd, [None, None], cameras_argument=False)
    assert all(torch.equal(v, embedding_before[k]) for k, v in source.camera_embedding.state_dict().items())
    assert camera_kwargs(["a red cube", Prompt("a red cube", ", front view")]) == {}  # so stubs get no new argument
    torch.manual_seed(0)
    for p in source.camera_embedding.parameters():
        torch.nn.init.normal_(p, std=0.05)  # a trained embedding: the zero feature is then not "no embedding"
    x_t, t = noised_batch(sd, 2, seed=3)
    with torch.no_grad():
        plain = source.predict_noise(x_t, t, ["a red cube"] * 2)
        dropped = source.predict_noise(x_t, t, ["a red cube"] * 2, cameras=[None, None])
        beside = source.predict_noise(x_t, t, ["a red cube"] * 2, cameras=[FRONT, None])
    assert (dropped - plain).abs().max() > 1e-4
    torch.testing.assert_close(beside[1], dropped[1], atol=1e-5, rtol=1e-5)


def test_camera_rows_split_over_several_unet_calls_get_their_own_cameras(tiny_sd_path):
    whole, split = StableDiffusion(str(tiny_sd_path)), StableDiffusion(str(tiny_sd_path), max_batch=2)
    sources = [whole.make_source_model(), split.make_source_model()]
    torch.manual_seed(0)
    for p in sources[0].camera_embedding.parameters():
        torch.nn.init.normal_(p, std=0.05)
    sources[1].load_state_dict(sources[0].state_dict())
    x_t, t = noised_batch(whole, 5, seed=4)
    cameras = [FRONT, BACK, None, (90.0, 0.0, 1.0, 60.0), FRONT]
    with torch.no_grad():
        outputs = [s.predict_noise(x_t, t, ["a red cube"] * 5, cameras=cameras) for s in sources]
        shuffled = sources[1].predict_noise(x_t, t, ["a red cube"] * 5, cameras=cameras[::-1])
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    assert (shuffled - outputs[1]).abs().max() > 1e-4  # the cameras really reach their own rows
    with pytest.raises(ValueError, match="2 cameras for 5 rows"):
        sources[0].predict_noise(x_t, t, ["a red cube"] * 5, cameras=[FRONT, BACK])


# ---------------------------------------------------------------------------------------------------------------------
# VSD
# ---------------------------------------------------------------------------------------------------------------------


def camera_rows():
    return [Prompt("a red cube", ", front view", FRONT), Prompt("a red cube", ", back view", BACK)]


def test_vsd_passes_each_rows_camera_and_dropout_keeps_it():
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def predict_noise(self, x_t, t, prompts, cameras=None):
            seen.append((list(prompts), cameras))
            return x_t * self.weight

    loss = VSD(condition_dropout=1.0)
    loss.source = Recorder()
    loss.optimizer = torch.optim.SGD(loss.source.parameters(), lr=0.1)
    x = torch.zeros(2, 3, 8, 8)
    loss.direction(StubGuidance(), x, torch.tensor([10, 500]), torch.randn_like(x), camera_rows(), step=0)
    loss.after_step(StubGuidance(), x, camera_rows())
    (asked_prompts, asked_cameras), (fitted_prompts, fitted_cameras) = seen
    assert asked_prompts == ["a red cube, front view", "a red cube, back view"] and asked_cameras == [FRONT, BACK]
    assert fitted_prompts == ["", ""] and fitted_cameras == [FRONT, BACK]  # every text dropped, no camera


def vsd_after_steps(sd, loss: VSD, steps: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    x = torch.randn(2, 4, 8, 8)
    for _ in range(steps):
        loss.after_step(sd, x, camera_rows())
    x_t, t = noised_batch(sd, 2, seed=5)
    with torch.no_grad():
        return loss.source.predict_noise(x_t, t, ["a red cube"] * 2, cameras=[FRONT, BACK])


def test_vsd_checkpoint_resume_of_the_camera_embedding_is_exact(tiny_sd_path, tmp_path):
    straight = VSD(lora_lr=1e-2)
    straight.attach(StableDiffusion(str(tiny_sd_path)), None)
    guidance = straight.source.guidance
    vsd_after_steps(guidance, straight, 2, seed=0)
    path = save_checkpoint({"loss": straight.state_dict()}, tmp_path / "vsd.pt")
    assert any(k.startswith("camera_embedding.") for k in straight.state_dict()["source"])
    expected = vsd_after_steps(guidance, straight, 2, seed=1)

    resumed = VSD(lora_lr=1e-2)
    resumed.attach(StableDiffusion(str(tiny_sd_path)), None)  # a new process: fresh guidance, fresh source
    resumed.load_state_dict(load_checkpoint(path)["loss"])
    got = vsd_after_steps(resumed.source.guidance, resumed, 2, seed=1)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    for key, value in straight.state_dict()["source"].items():
        torch.testing.assert_close(resumed.state_dict()["source"][key], value, atol=0, rtol=0, msg=key)


def test_vsd_on_a_nerf_trains_the_camera_embedding_end_to_end(tiny_sd_path, tmp_path):
    cfg = run_config(
        tmp_path / "vsd",
        "guidance=sd",
        f"guidance.pretrained={tiny_sd_path}",
        "prompt=a hamburger",
        "loss=vsd",
        "loss.lora_lr=0.01",
        "trainer.max_steps=3",
        "renderer.height=8",
        "renderer.width=8",
        "renderer.stages=[]",
        "renderer.export_mesh=null",
    )
    run_dir = train(cfg).run_dir
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(math.isfinite(r["objective"]) and r["vsd/source_loss"] > 0 for r in records)
    source = load_checkpoint(run_dir / "checkpoints" / "last.pt")["loss"]["source"]
    assert source["camera_embedding.linear_2.weight"].abs().max() > 0  # zero at init: the cameras trained it
