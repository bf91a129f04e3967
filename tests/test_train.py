"""The trainer end to end: run folders, resume equivalence, interruption, non-finite steps, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from scoredist.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from scoredist.errors import NonFiniteError
from scoredist.train import train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RGBA = ROOT / "assets" / "references" / "yellow_torus_rgba.png"


def config(*overrides: str, run_dir: Path | None = None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", "trainer.device=cpu", *overrides])
    if run_dir is not None:
        cfg.trainer.run_dir = str(run_dir)
    return cfg


SHAPES = ("guidance=shapes", "prompt=a red cube")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["loss", "renderer", "guidance", "schedule", "logger", "lr_scheduler", "optimizer"])
def test_every_yaml_of_every_group_composes_and_instantiates(group, tiny_paths):
    options = group_options(group)
    assert options, group
    tiny = {"sd": tiny_paths["tiny"], **{f: tiny_paths[f"tiny_{f}"] for f in ("sdxl", "sd3", "flux", "mvdream")}}
    tiny["zero123"] = tiny["stable_zero123"] = tiny_paths["tiny_zero123"]
    for option in options:
        extra = [f"guidance.reference={RGBA}"] if option.endswith("zero123") else []
        cfg = config(f"{group}={option}", f"guidance.pretrained={tiny[option]}" if option in tiny else "seed=0", *extra)
        node = cfg[group]
        if group == "guidance":
            obj = instantiate(node, device="cpu", precision="fp32")
        elif group == "lr_scheduler":
            obj = instantiate(node)(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.01))
        elif group == "optimizer":  # a partial, called with the renderer's parameter groups
            obj = instantiate(node)([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": node.lr}])
        else:
            obj = instantiate(node)
        assert type(obj).__name__ == node._target_.rsplit(".", 1)[1], option


def test_every_experiment_composes_and_its_parts_instantiate():
    for option in group_options("experiment"):
        cfg = config(f"+experiment={option}")
        if OmegaConf.is_missing(cfg, "image"):  # image-to-3D overlays need the user's image
            cfg = config(f"+experiment={option}", f"image={RGBA}")
        assert cfg.trainer.max_steps > 0, option
        instantiate(cfg.loss), instantiate(cfg.schedule), instantiate(cfg.renderer)  # a typo'd key raises here
        if cfg.get("lr_scheduler") is not None:
            param = torch.nn.Parameter(torch.zeros(1))
            instantiate(cfg.lr_scheduler)(instantiate(cfg.optimizer)([param]))


def test_tiny_pipeline_run_writes_the_run_folder(tiny_sd_path, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = config(
        f"guidance.pretrained={tiny_sd_path}",
        "logger=wandb",
        "trainer.max_steps=5",
        "trainer.image_every=2",
        "trainer.log_every=1",
        "prompt=a photo of a hamburger",
        run_dir=tmp_path / "run",
    )
    from scoredist.loggers import WandbLogger

    images_logged = []
    log_image = WandbLogger.log_image
    monkeypatch.setattr(
        WandbLogger, "log_image", lambda self, key, *a: images_logged.append(key) or log_image(self, key, *a)
    )
    result = train(cfg)
    run = result.run_dir
    assert result.step == 5 and not result.interrupted
    assert "final" in images_logged
    assert OmegaConf.load(run / "config.yaml").prompt == "a photo of a hamburger"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5] and all(r["nonfinite_total"] == 0 for r in lines)
    import imageio.v3 as iio

    final = iio.imread(run / "final.png")
    assert final.ndim == 3 and final.shape[2] == 3 and final.std() > 0
    # the parameters after 0, 2 and 4 updates (the initial state first)
    assert sorted(p.name for p in (run / "progress").glob("*.png")) == [f"step_{n:06d}.png" for n in (0, 2, 4)]
    frame = iio.imread(run / "progress" / "step_000000.png")
    assert iio.imread(run / "progress.png").shape == (frame.shape[0], 3 * frame.shape[1], 3)  # the strip: all three
    assert (run / "progress.mp4").stat().st_size > 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 5
    assert list((run / "wandb").glob("offline-run-*")), "wandb offline run directory missing"


def final_params(run_dir: Path) -> torch.Tensor:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["renderer"]["image"]


@pytest.mark.parametrize("loss", ["sds", "vsd"])
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(loss, tmp_path):
    n = 12
    straight = train(config(*SHAPES, f"loss={loss}", f"trainer.max_steps={n}", run_dir=tmp_path / "a")).run_dir
    half = train(config(*SHAPES, f"loss={loss}", f"trainer.max_steps={n // 2}", run_dir=tmp_path / "b")).run_dir
    assert load_checkpoint(half / "checkpoints" / "last.pt")["step"] == n // 2
    halfway = final_params(half)
    resumed = train(config(*SHAPES, f"loss={loss}", f"trainer.max_steps={n}", f"trainer.resume={half}"))
    assert resumed.run_dir == half and resumed.step == n
    torch.testing.assert_close(final_params(half), final_params(straight), rtol=1e-6, atol=1e-6)
    assert (final_params(half) - halfway).abs().max() > 1e-3  # the resumed half really moved the parameters
    steps = [json.loads(line)["step"] for line in (half / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "metrics.jsonl has duplicated steps after resume"


def test_ours_resumed_past_its_switch_is_in_stage_two(tmp_path):
    common = (*SHAPES, "loss=ours", "trainer.log_every=1")
    first = train(config(*common, "trainer.max_steps=6", "loss.switch_step=4", run_dir=tmp_path / "r")).run_dir
    train(config(*common, "trainer.max_steps=9", "loss.switch_step=4", f"trainer.resume={first}"))
    stages = {json.loads(line)["step"]: json.loads(line)["ours/stage"] for line in (first / "metrics.jsonl").open()}
    # metric of step s is logged after the update of step s-1
    assert [stages[s] for s in range(1, 10)] == [1, 1, 1, 1, 2, 2, 2, 2, 2]


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tmp_path, monkeypatch):
    from scoredist.guidance.exact import shapes

    calls = {"n": 0}
    original = shapes.ShapesPrior.predict_noise

    def flaky(self, x_t, t, prompts):
        calls["n"] += 1
        eps = original(self, x_t, t, prompts)
        return eps * float("nan") if calls["n"] in (3,) or calls["n"] >= 6 else eps

    monkeypatch.setattr(shapes.ShapesPrior, "predict_noise", flaky)
    cfg = config(
        *SHAPES,
        "loss=sds",
        "trainer.max_steps=50",
        "trainer.max_nonfinite=3",
        "trainer.log_every=1",
        run_dir=tmp_path / "nan",
    )
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(NonFiniteError, match="3 non-finite steps"):
        train(cfg)
    ckpt = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert ckpt["nonfinite_total"] == 4 and torch.isfinite(ckpt["renderer"]["image"]).all()
    records = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").open()]
    assert records[-1]["nonfinite_total"] == 1  # step 3 was skipped; steps 6.. never logged


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def dies_midway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


def test_truncated_or_foreign_checkpoints_are_refused_by_name(tmp_path):
    good = save_checkpoint({"step": 3, "x": torch.ones(1000)}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt.*not a scoredist checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing" / "last.pt")


def test_bad_values_fail_before_any_model_loads(tmp_path):
    with pytest.raises(ValueError, match="trainer.max_steps must be a positive integer, got -1"):
        train(config(*SHAPES, "trainer.max_steps=-1", run_dir=tmp_path / "x"))
    with pytest.raises(ValueError, match="trainer.precision"):
        train(config(*SHAPES, "trainer.precision=fp8", run_dir=tmp_path / "x"))


def test_latent_size_not_divisible_by_8_is_refused(tiny_sd_path, tmp_path):
    cfg = config(f"guidance.pretrained={tiny_sd_path}", "renderer.height=60", "renderer.width=64", run_dir=tmp_path)
    with pytest.raises(ValueError, match="60x64 is not divisible by 8"):
        train(cfg)
    rgb = config(f"guidance.pretrained={tiny_sd_path}", "renderer.mode=rgb", "renderer.height=60", run_dir=tmp_path)
    with pytest.raises(ValueError, match="60x64 is not divisible by 8, the model's downscale factor"):
        train(rgb)  # RGB renders go through the VAE: the model itself refuses them


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.mark.slow
def test_cli_help_and_clear_errors(tmp_path):
    help_text = run_cli("--help").stdout
    assert "scoredist" in help_text and "loss=sds|" in help_text and "ours" in help_text
    unknown = run_cli("loss=sdss", f"hydra.run.dir={tmp_path}/u")
    assert unknown.returncode != 0 and "sdss" in unknown.stderr and "Available options" in unknown.stderr
    bad = run_cli("guidance=shapes", "trainer.max_steps=-1", "logger=none", f"hydra.run.dir={tmp_path}/b")
    assert bad.returncode == 2 and "trainer.max_steps must be a positive integer" in bad.stderr
    assert "Traceback" not in bad.stderr
    start = time.monotonic()
    missing = run_cli("guidance.pretrained=/nonexistent/sd", "logger=none", f"hydra.run.dir={tmp_path}/m")
    assert missing.returncode == 2 and "guidance=shapes" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "b").exists()  # failed starts leave no run folder
    hub = run_cli("logger=none", f"hydra.run.dir={tmp_path}/h")  # the default hub id, offline
    assert hub.returncode == 2 and "make_tiny_pipeline" in hub.stderr
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_sigint_writes_a_checkpoint_that_resumes(tmp_path):
    run = tmp_path / "interrupted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    args = [
        sys.executable,
        "train.py",
        *SHAPES,
        "loss=sds",
        "logger=none",
        "trainer.device=cpu",
        "trainer.log_every=1",
        "trainer.max_steps=100000",
        "trainer.ckpt_every=100000",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "resume with trainer.resume=" in out
    step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert step >= 3
    resumed = run_cli(*SHAPES, "loss=sds", "logger=none", f"trainer.max_steps={step + 2}", f"trainer.resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == step + 2
    assert (run / "final.png").exists()


def test_rgb_renderer_through_the_vae_saves_the_render_itself(tiny_sd_path, tmp_path):
    import imageio.v3 as iio

    cfg = config(
        f"guidance.pretrained={tiny_sd_path}",
        "renderer.mode=rgb",
        "trainer.max_steps=2",
        "trainer.image_every=1",
        run_dir=tmp_path,
    )
    train(cfg)
    logits = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["renderer"]["image"]
    assert logits.shape == (1, 3, 64, 64)  # RGB pixels, not 4×8×8 latents
    expected = (torch.sigmoid(logits[0]).permute(1, 2, 0) * 255).round().byte().numpy()
    final = iio.imread(tmp_path / "final.png")[::2, ::2]  # saved upsampled ×2 (nearest) to 128 px
    assert final.shape == (64, 64, 3) and abs(final.astype(int) - expected.astype(int)).max() <= 1


def test_interrupted_two_stage_run_with_lr_decay_resumes_exactly(tmp_path):
    # the lengths a stopped run needs (switch step, LR decay length) pinned, as they are in a run stopped by a signal
    common = (*SHAPES, "loss=ours", "loss.switch_step=5", "lr_scheduler=cosine", "lr_scheduler.total_steps=12")
    straight = train(config(*common, "trainer.max_steps=12", run_dir=tmp_path / "a")).run_dir
    half = train(config(*common, "trainer.max_steps=6", run_dir=tmp_path / "b")).run_dir
    train(config(*common, "trainer.max_steps=12", f"trainer.resume={half}"))
    torch.testing.assert_close(final_params(half), final_params(straight), rtol=1e-6, atol=1e-6)


def test_resume_with_a_larger_max_steps_continues_the_schedules_it_started_with(tmp_path):
    common = (*SHAPES, "loss=ours", "lr_scheduler=cosine", "trainer.log_every=1")
    first = train(config(*common, "trainer.max_steps=6", run_dir=tmp_path / "r")).run_dir  # switch at 3, LR ends at 6
    train(config(*common, "trainer.max_steps=10", f"trainer.resume={first}"))
    records = [json.loads(line) for line in (first / "metrics.jsonl").open()]
    assert [r["ours/stage"] for r in records] == [1, 1, 1, 2, 2, 2, 2, 2, 2, 2]  # never back to stage one
    ckpt = load_checkpoint(first / "checkpoints" / "last.pt")
    assert ckpt["loss"]["switch"] == 3 and ckpt["lr_scheduler"]["total_steps"] == 6
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # stays at the final rate


class NaNGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward: a gradient that overflowed on its way back."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def test_a_finite_loss_with_nonfinite_gradients_skips_the_step(tmp_path, monkeypatch):
    import scoredist.train as trainer

    original, calls = trainer.Chunk.to_model, {"n": 0}

    def poisoned_on_step_two(self, render_x):
        calls["n"] += 1
        x = original(self, render_x)
        return NaNGradient.apply(x) if calls["n"] == 3 else x  # call 1 is the loss's attach, 2.. the steps

    monkeypatch.setattr(trainer.Chunk, "to_model", poisoned_on_step_two)
    cfg = config(*SHAPES, "loss=sds", "trainer.max_steps=3", "trainer.log_every=1", run_dir=tmp_path / "r")
    with pytest.warns(UserWarning, match="step 2: non-finite"):  # numbered as in metrics.jsonl
        train(cfg)
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 3] and records[-1]["nonfinite_total"] == 1  # step 2 was not logged
    monkeypatch.setattr(trainer.Chunk, "to_model", original)
    reference = train(config(*SHAPES, "loss=sds", "trainer.max_steps=1", run_dir=tmp_path / "one")).run_dir
    # the skipped step left the image as step 1 made it; step 3 then moved it (a NaN update would have spread)
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert torch.isfinite(ckpt["renderer"]["image"]).all() and ckpt["nonfinite_total"] == 1
    assert not torch.equal(ckpt["renderer"]["image"], final_params(reference))
    assert ckpt["optimizer"]["state"][0]["step"] == 2  # Adam took two steps out of three


def test_the_logged_learning_rate_follows_the_cosine_closed_form(tmp_path):
    from tests.test_schedules import cosine_factor

    cfg = config(*SHAPES, "loss=sds", "lr_scheduler=cosine", "lr_scheduler.final_fraction=0.2", "optimizer.lr=0.05",
                 "trainer.max_steps=7", "trainer.log_every=1", run_dir=tmp_path)  # fmt: skip
    train(cfg)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").open()]
    # the line of step s holds the rate step s was taken with: after s − 1 scheduler steps
    assert lrs == pytest.approx([0.05 * cosine_factor(s - 1, 7, 0.2) for s in range(1, 8)], rel=1e-12)


def test_decay_and_csd_lengths_survive_a_resume_with_a_larger_max_steps(tmp_path):
    common = (*SHAPES, "loss=csd", "loss.w2_end=0.0", "schedule=decay", "trainer.log_every=1")
    first = train(config(*common, "trainer.max_steps=6", run_dir=tmp_path / "r")).run_dir
    train(config(*common, "trainer.max_steps=9", f"trainer.resume={first}"))
    ckpt = load_checkpoint(first / "checkpoints" / "last.pt")
    assert ckpt["schedule"] == {"max_steps": 6} and ckpt["loss"] == {"max_steps": 6}
    w2 = [json.loads(line)["csd/w2"] for line in (first / "metrics.jsonl").open()]
    assert w2 == pytest.approx([40.0 * (1 - min(s, 6) / 6) for s in range(9)])  # w2 at step s: 40 → 0 over 6 steps
    ts = [json.loads(line)["t"] for line in (first / "metrics.jsonl").open()]
    assert all(t <= 500 for t in ts[6:])  # past step 6 the decayed bound (t_max_end 0.5) holds, not a restart


def test_decode_inverts_encode_with_the_vae_scale(tiny_sd_path):
    from scoredist.guidance.base import Guidance
    from scoredist.guidance.diffusers.sd import StableDiffusion

    rgb = torch.rand(2, 3, 16, 16)
    pixels = Guidance(torch.linspace(0.99, 0.01, 10))
    torch.testing.assert_close(pixels.decode(pixels.encode(rgb)), rgb)
    assert pixels.encode(torch.tensor([0.0, 0.5, 1.0])).tolist() == [-1.0, 0.0, 1.0]
    sd = StableDiffusion(pretrained=str(tiny_sd_path))
    # a VAE whose latent is its input averaged over 8×8 blocks (decoded by repeating it back): exact on flat images,
    # so what remains to check is the scale (and shift) the guidance puts on the way in and takes off on the way out
    dist = lambda mean: type("Posterior", (), {"latent_dist": type("Dist", (), {"mean": mean})})()
    sample = lambda x: type("Decoded", (), {"sample": x})()
    sd.vae.encode = lambda x: dist(torch.nn.functional.avg_pool2d(x, 8)[:, :1].repeat(1, 4, 1, 1))
    sd.vae.decode = lambda z: sample(torch.nn.functional.interpolate(z[:, :3], scale_factor=8))
    flat = torch.rand(2, 1, 1, 1).expand(2, 3, 16, 16)
    latents = sd.encode(flat)
    scale, shift = sd.vae.config.scaling_factor, sd.vae.config.shift_factor or 0.0
    assert scale not in (0, 1) and latents.shape == (2, 4, 2, 2)
    torch.testing.assert_close(latents, (flat[:, :1, :2, :2].repeat(1, 4, 1, 1) * 2 - 1 - shift) * scale)
    torch.testing.assert_close(sd.decode(latents), flat)


def test_logged_values_are_read_as_floats_without_autograd_warnings():
    import warnings

    from scoredist.losses.base import norm
    from scoredist.train import as_float

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float() of a tensor that requires grad warns: the trainer must detach first
        assert as_float(torch.tensor(2.5, requires_grad=True) * 2) == 5.0
    assert as_float(norm(torch.tensor([[3.0, 4.0], [6.0, 8.0]]))) == pytest.approx(7.5)  # mean of |row| = 5 and 10
    assert as_float(7) == 7 and type(as_float(7)) is int  # steps, chunk indices and stages stay integers
    assert as_float(True) is True and as_float("text") == "text" and as_float(None) is None
    assert as_float(0.25) == 0.25


def test_every_skipped_step_of_a_logging_window_is_counted_and_named():
    from types import SimpleNamespace

    from scoredist.train import NonFiniteCounter

    run = SimpleNamespace(nonfinite_total=0)
    counter = NonFiniteCounter(run, max_in_a_row=3)
    for skipped in (True, False, True, True):  # steps 3..6 of a window read at step 6
        counter.add(skipped)
    with pytest.warns(UserWarning) as warned:
        assert counter.read(SimpleNamespace(step=6)) is True
    assert [str(w.message) for w in warned] == [
        "step 3: non-finite direction, skipped (1 total)",
        "step 5: non-finite direction, skipped (2 total)",
        "step 6: non-finite direction, skipped (3 total)",
    ]
    assert run.nonfinite_total == 3 and counter.in_a_row == 2


def test_a_logging_step_writes_one_record_of_floats_and_a_short_progress_bar_postfix():
    from types import SimpleNamespace

    from scoredist.losses.base import LazyRMS
    from scoredist.train import log_step

    records, postfixes = [], []
    run = SimpleNamespace(
        nonfinite_total=1,
        metrics=SimpleNamespace(write=records.append),
        logger=SimpleNamespace(log=lambda record, step: None),
        global_step=lambda chunk, step: step,
    )
    bar = SimpleNamespace(set_postfix=lambda postfix, refresh: postfixes.append(postfix))
    chunk = SimpleNamespace(index=2, step=5)
    logs = {"norm/x": torch.tensor(2.0), "direction_rms": LazyRMS(torch.tensor([[3.0, -4.0], [0.0, 5.0]]))}
    log_step(run, chunk, torch.tensor(1.23456), torch.tensor([100, 301]), logs, bar)
    log_step(run, chunk, torch.tensor(float("nan")), torch.tensor([10]), {"direction_rms": float("nan")}, bar)
    assert records[0] == {
        "chunk": 2,
        "step": 5,
        "objective": pytest.approx(1.23456),
        "t": 200.5,
        "norm/x": 2.0,
        "direction_rms": pytest.approx(math.sqrt(50 / 4)),  # sqrt((9 + 16 + 0 + 25) / 4)
        "nonfinite_total": 1,
    }
    assert records[1] == {
        "chunk": 2,
        "step": 5,
        "objective": None,
        "t": 10.0,
        "direction_rms": None,
        "nonfinite_values": 2,
        "nonfinite_total": 1,
    }
    # the bar shows the update's size per value, not the objective (a sum over pixels and samples)
    assert postfixes == [{"chunk": 2, "rms(w·g)": "3.54", "t": "200"}, {"chunk": 2, "rms(w·g)": "nan", "t": "10"}]


def test_the_shards_of_a_run_train_its_chunks_bitwise_and_collect_merges_them(tmp_path):
    """trainer.shard j of trainer.shards: a contiguous share of the run's chunks (4 chunks in 3 shards: [0], [1],
    [2, 3]), each sample bitwise the unsharded run's; collect merges the finished shards into one run and leaves out
    a run whose shards have not all finished."""
    from scoredist.eval.collect import collect_runs, expected_samples

    run = (*SHAPES[:1], "prompt=[a red cube,a blue sphere]", "samples_per_prompt=2", "trainer.batch_size=1")
    run += ("trainer.max_steps=3", "trainer.snapshot_steps=[2]", "guidance.resolution=16")
    whole = train(config(*run, run_dir=tmp_path / "whole" / "run")).run_dir
    shards = [tmp_path / "sharded" / f"shard{j}" for j in range(3)]
    for j, folder in enumerate(shards):
        cfg = config(*run, "trainer.shards=3", f"trainer.shard={j}", run_dir=folder)
        assert train(cfg).samples_done == expected_samples(cfg) == [1, 1, 2][j]
    indices = [[r["index"] for r in map(json.loads, (f / "samples.jsonl").read_text().splitlines())] for f in shards]
    assert indices == [[0], [1], [2, 3]]
    for i, folder in enumerate([shards[0], shards[1], shards[2], shards[2]]):
        ours = torch.load(folder / "samples" / f"{i:05d}.pt", weights_only=True)
        assert torch.equal(ours, torch.load(whole / "samples" / f"{i:05d}.pt", weights_only=True))
    assert (shards[1] / "final.png").exists() and (shards[2] / "progress.png").exists()  # each shard's first chunk

    (merged,) = collect_runs(tmp_path / "sharded")
    (plain,) = collect_runs(tmp_path / "whole")
    assert merged.path == (tmp_path / "sharded").resolve() and merged.parts == [f.resolve() for f in shards]
    drop = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "image", "tensor")}  # noqa: E731
    assert [drop(r) for r in merged.records] == [drop(r) for r in plain.records]
    assert [r["image"] for r in merged.records] == [f"shard{j}/samples/{i:05d}.png" for i, j in enumerate([0, 1, 2, 2])]
    assert all((merged.path / r["image"]).is_file() for r in merged.records)
    snapshots = merged.part_records("snapshots.jsonl")
    assert sorted(r["index"] for r in snapshots) == [0, 1, 2, 3]
    assert all((merged.path / r["image"]).is_file() for r in snapshots)
    assert expected_samples(merged.config) == 4

    (shards[1] / "samples.jsonl").unlink()
    with pytest.warns(UserWarning, match=r"skipping run .*sharded: shards \[1\] of 3 have not finished"):
        assert collect_runs(tmp_path / "sharded") == []
    with pytest.raises(ValueError, match=r"trainer.shards=5, but this run has 4 chunks .*: use trainer.shards=4$"):
        train(config(*run, "trainer.shards=5", "trainer.shard=4", run_dir=tmp_path / "five"))
    with pytest.raises(ValueError, match=r"trainer.shard must be one of 0 … 2 \(trainer.shards=3\), got 3"):
        train(config(*run, "trainer.shards=3", "trainer.shard=3", run_dir=tmp_path / "three"))
