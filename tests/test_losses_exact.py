"""The loss family on the exact priors and the tiny SD pipeline: identities, convergence, every loss end to end."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
import torch
from hydra import compose, initialize_config_dir

from scoredist.checkpoint import load_checkpoint
from scoredist.guidance.base import add_noise
from scoredist.guidance.exact.shapes import ShapesPrior
from scoredist.images import to_uint8
from scoredist.losses.bridge import Bridge
from scoredist.losses.ours import Ours
from scoredist.losses.sds import SDS
from scoredist.losses.vsd import VSD
from scoredist.train import train
from tests.test_train import CONF

LOSSES = ["sds", "nfsd", "csd", "vsd", "dds", "ours", "bridge"]


@pytest.fixture(scope="module")
def prior():
    return ShapesPrior()


@pytest.fixture
def batch(prior):
    torch.manual_seed(1)
    x = prior.reference_image("a red cube")[None].repeat(2, 1, 1, 1) + 0.1 * torch.randn(2, 3, 32, 32)
    return x, torch.tensor([150, 600]), torch.randn_like(x)


def test_sds_with_scale_one_on_the_exact_prior_is_the_exact_denoising_residual(prior, batch):
    x, t, noise = batch
    g, _ = SDS(guidance_scale=1.0).direction(prior, x, t, noise, ["a red cube"] * 2, 0)
    x_t = add_noise(x, noise, t, prior.alphas_cumprod)
    torch.testing.assert_close(g, prior.predict_noise(x_t, t, ["a red cube"] * 2) - noise, atol=1e-5, rtol=1e-5)


def test_one_step_bridge_equals_ours_on_the_exact_prior(prior, batch):
    x, t, noise = batch
    prompts = ["a red cube"] * 2
    ours, _ = Ours(stage_one=None).direction(prior, x, t, noise, prompts, 0)
    bridge, _ = Bridge(num_steps=1, stage_one=None).direction(prior, x, t, noise, prompts, 0)
    torch.testing.assert_close(bridge, ours, atol=2e-3, rtol=1e-4)
    assert ours.abs().max() > 1  # the identity is not between two zeros
    k4, _ = Bridge(num_steps=4, stage_one=None).direction(prior, x, t, noise, prompts, 0)
    assert torch.isfinite(k4).all() and not torch.allclose(k4, ours, atol=1e-2)


def test_vsd_trains_its_source_and_leaves_the_prior_alone(prior, batch):
    x, t, noise = batch
    loss = VSD()
    loss.attach(prior, x)
    before = [p.detach().clone() for p in loss.source.parameters()]
    means_before = prior.components("a red cube")[0].clone()
    for _ in range(3):
        logs = loss.after_step(prior, x, ["a red cube"] * 2)
    assert logs["vsd/source_loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, loss.source.parameters()))
    assert torch.equal(prior.components("a red cube")[0], means_before)
    assert not any(p.requires_grad for p in prior.parameters())


def test_vsd_on_stable_diffusion_trains_the_lora_only(tiny_sd_path):
    from scoredist.guidance.diffusers.sd import StableDiffusion

    sd = StableDiffusion(pretrained=str(tiny_sd_path))
    # peft renames a wrapped layer's weights to `<name>.base_layer.weight`; compare under the original names
    frozen = lambda: {
        k.replace(".base_layer", ""): v.clone() for k, v in sd.unet.state_dict().items() if "lora" not in k
    }
    base = frozen()
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    loss = VSD(lora_lr=1e-2)
    loss.attach(sd, x)
    lora_before = [p.detach().clone() for p in loss.source.lora]
    for _ in range(2):
        loss.after_step(sd, x, ["a photo of a hamburger"])
    assert all(not torch.equal(a, b) for a, b in zip(lora_before, loss.source.lora))
    # 2D rows carry no camera: the camera embedding (tests/test_vsd_camera.py) gets no gradient and stays at zero
    assert not loss.source.camera_embedding.linear_2.weight.any()
    after = frozen()
    assert base.keys() == after.keys() and all(torch.equal(base[k], after[k]) for k in base)


def compose_run(*overrides, run_dir):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", "trainer.device=cpu", *overrides])
    cfg.trainer.run_dir = str(run_dir)
    return cfg


@pytest.fixture(scope="module")
def blue_cube_png(tmp_path_factory, prior):
    path = tmp_path_factory.mktemp("ref") / "blue_cube.png"
    iio.imwrite(path, to_uint8(prior.decode(prior.reference_image("a blue cube")[None]))[0])
    return path


@pytest.fixture(scope="module")
def shapes_runs(tmp_path_factory, blue_cube_png):
    """Every loss for 100 steps on guidance=shapes; dds edits a rendered blue cube towards the prompt. A world of 4
    views per caption instead of 16 keeps the unconditional rows (the whole world) cheap."""
    finals = {}
    for loss in LOSSES:
        edit = [f"loss.reference={blue_cube_png}", f"renderer.init={blue_cube_png}", "loss.source_prompt=a blue cube"]
        extra = edit if loss == "dds" else []
        run_dir = tmp_path_factory.mktemp(loss)
        cfg = compose_run(
            "guidance=shapes",
            "guidance.num_azimuths=4",
            "guidance.elevations=[15.0]",
            f"loss={loss}",
            "prompt=a red cube",
            "trainer.max_steps=100",
            "trainer.log_every=5",
            *extra,
            run_dir=run_dir,
        )
        train(cfg)
        finals[loss] = (run_dir, load_checkpoint(run_dir / "checkpoints" / "last.pt"))
    return finals


def test_every_loss_runs_100_steps_on_shapes_without_nan(shapes_runs):
    for loss, (run_dir, ckpt) in shapes_runs.items():
        assert ckpt["step"] == 100 and ckpt["nonfinite_total"] == 0, loss
        assert torch.isfinite(ckpt["renderer"]["image"]).all(), loss
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
        assert len(records) == 20 and all(torch.isfinite(torch.tensor(r["objective"])) for r in records), loss
        assert (run_dir / "final.png").exists() and (run_dir / "eval.json").exists(), loss


def test_final_images_differ_between_losses(shapes_runs):
    finals = {loss: ckpt["renderer"]["image"] for loss, (_, ckpt) in shapes_runs.items()}
    for a in LOSSES:
        for b in LOSSES:
            if a < b:
                assert (finals[a] - finals[b]).abs().mean() > 1e-3, (a, b)


def test_dds_edits_the_blue_cube_towards_red(shapes_runs, prior):
    run_dir, ckpt = shapes_runs["dds"]
    final, blue = ckpt["renderer"]["image"][0], prior.reference_image("a blue cube")
    obj = (blue - prior.reference_image("a red cube")).abs().sum(0) > 0.1  # pixels where the two cubes differ
    red_gain = (final[0] - blue[0])[obj].mean()
    blue_loss = (blue[2] - final[2])[obj].mean()
    assert red_gain > 0.2 and blue_loss > 0.2, (red_gain, blue_loss)
    # what the two prompts agree on (the background) changes far less than what they disagree on
    assert (final - blue)[:, ~obj].abs().mean() < 0.5 * (final - blue)[:, obj].abs().mean()
    # the reference is stored with the run, so a resumed edit keeps editing the same image
    torch.testing.assert_close(ckpt["loss"]["x_ref"][0], prior.reference_image("a blue cube"), atol=0.02, rtol=0)


def test_sds_through_the_trainer_converges_to_the_prompted_caption(tmp_path):
    cfg = compose_run("+experiment=demo", "loss=sds", "trainer.max_steps=150", run_dir=tmp_path)
    train(cfg)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["nearest_caption"] == ["red cube"] and result["nearest_rms"][0] < 0.35


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_runs_on_the_tiny_sd_pipeline(loss, tiny_sd_path, tmp_path):
    cfg = compose_run(f"guidance.pretrained={tiny_sd_path}", f"loss={loss}", "trainer.max_steps=3", run_dir=tmp_path)
    result = train(cfg)
    assert result.step == 3 and (tmp_path / "final.png").exists()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["nonfinite_total"] == 0
