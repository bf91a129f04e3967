"""What a finished (or resumed) run leaves a person: its files, its log lines, its progress bar, one eval schema.

In-process runs on the exact priors (seconds each); the README's commands themselves run in tests/test_readme.py.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import scoredist.train as trainer
from scoredist.checkpoint import replacing
from scoredist.images import write_image
from scoredist.train import train
from tests.test_train import config  # the composed config of a run, as every trainer test builds it

CONF = Path(__file__).resolve().parents[1] / "conf"
SHAPES = ("guidance=shapes", "renderer.height=32", "renderer.width=32")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def test_a_points_run_of_two_clouds_ends_with_every_file(tmp_path):
    """The points renderer's picture is one scatter plot per cloud, not one image per particle (the run used to die
    in finish_chunk with an IndexError after its last step)."""
    cfg = config(
        "+experiment=points_bridge",
        "samples_per_prompt=2",
        "trainer.batch_size=2",
        "trainer.max_steps=4",
        "renderer.num_points=64",
        run_dir=tmp_path / "run",
    )
    result = train(cfg)
    run = result.run_dir
    assert result.samples_done == 2 and not result.interrupted
    for name in ("final.png", "particles.png", "particles.npz", "eval.json", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    size = 256  # guidance.preview_size: each cloud decodes to one picture of the density with its particles
    sample_pngs = [iio.imread(run / "samples" / f"{i:05d}.png") for i in (0, 1)]
    assert all(png.shape == (size, size, 3) for png in sample_pngs)
    assert iio.imread(run / "final.png").shape[:2] == (size, 2 * size)  # the two clouds side by side
    saved = [torch.load(run / "samples" / f"{i:05d}.pt", weights_only=True) for i in (0, 1)]
    assert [tuple(x.shape) for x in saved] == [(64, 2), (64, 2)]
    assert not torch.equal(saved[0], saved[1])  # two clouds, each from its own seed
    assert [set(r["eval"]) for r in records(run)] == [{"mean_log_prob", "mean_log_prob_sharp"}] * 2


def test_per_row_metrics_are_lists_for_one_view_and_for_several(tmp_path):
    """samples.jsonl keeps one schema: a per-row metric is a list with one entry per row of the sample (one for a
    plain image, one per view of an ambiguous image), as in eval.json; never a bare string for a single row."""
    one = train(config(*SHAPES, "loss=sds", "prompt=a red cube", "trainer.max_steps=2", run_dir=tmp_path / "one"))
    views = train(config("+experiment=illusion_shapes", "trainer.max_steps=2", run_dir=tmp_path / "views"))
    single, multi = records(one.run_dir)[0]["eval"], records(views.run_dir)[0]["eval"]
    assert isinstance(single["nearest_component"], list) and len(single["nearest_component"]) == 1
    assert isinstance(multi["nearest_component"], list) and len(multi["nearest_component"]) == 2
    for run_dir, sample in ((one.run_dir, single), (views.run_dir, multi)):
        whole = json.loads((run_dir / "eval.json").read_text())
        assert whole["nearest_component"] == sample["nearest_component"]  # one sample: the run's eval is its own
        assert all(isinstance(v, list) for k, v in sample.items() if k.startswith("nearest_"))


def test_train_log_says_what_the_run_is_and_that_it_finished(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="scoredist"):
        result = train(
            config(
                *SHAPES, "loss=sds", "prompt=[a red cube,a blue cube]", "trainer.max_steps=2", run_dir=tmp_path / "run"
            )
        )
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("scoredist")]
    assert lines[0] == (
        f"run {result.run_dir}: 2 samples in 2 chunks, 2 steps each, on cpu; loss SDS, renderer ImageRenderer, "
        "guidance ShapesPrior"
    )
    assert lines[-1] == f"finished: 2 samples in {result.run_dir}"


def test_an_empty_prompt_is_run_but_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="scoredist"):
        train(config(*SHAPES, "loss=sds", "prompt=''", "trainer.max_steps=1", run_dir=tmp_path / "run"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "warning: prompt is empty, so this run distils the unconditional distribution (every row conditioned on the "
        'empty prompt); give prompt="..." if that is not what you meant'
    ]


@pytest.mark.parametrize(
    "override, key",
    [("optimizer.lr=-0.01", "optimizer.lr"), ("loss=vsd", None), ("+experiment=nerf_demo", None)],
)
def test_a_negative_learning_rate_names_its_setting(tmp_path, override, key):
    if key is None:  # the rates outside the optimizer: VSD's source model, a NeRF's own groups
        key = "loss.lora_lr" if override == "loss=vsd" else "renderer.encoding_lr"
        override = [override, f"{key}=-0.5"]
    else:
        override = [override]
    with pytest.raises(ValueError, match=rf"^{key} is -0\.[0-9]+; a learning rate must be >= 0"):
        train(config(*SHAPES, *override, "prompt=a red cube", run_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_s_bar_starts_at_the_steps_already_done(tmp_path, monkeypatch):
    """Killed in chunk 1 (of 4-step chunks) after its step-2 checkpoint: the resumed bar starts at 4 + 2 of 8, so a
    log file's first line is right (it used to print 4/8 and only later jump)."""
    common = (*SHAPES, "loss=sds", "prompt=[a red cube,a blue cube]", "trainer.max_steps=4", "trainer.ckpt_every=2")
    original = trainer.Chunk.train_step

    def dies_in_chunk_one(self):
        if self.index == 1 and self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(trainer.Chunk, "train_step", dies_in_chunk_one)
    with pytest.raises(KeyboardInterrupt):
        train(config(*common, run_dir=tmp_path / "run"))
    monkeypatch.setattr(trainer.Chunk, "train_step", original)
    bars = []
    real_tqdm = trainer.tqdm
    monkeypatch.setattr(trainer, "tqdm", lambda **kw: bars.append((kw, real_tqdm(**kw))) or bars[-1][1])
    train(config(*common, f"trainer.resume={tmp_path / 'run'}"))
    ((kwargs, bar),) = bars
    assert (kwargs["total"], kwargs["initial"]) == (8, 6)  # drawn first at the resumed position
    assert bar.n == 8


def test_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """final.png, samples and eval.json are written to a temporary name and renamed: a writer that dies half-way
    leaves the previous file intact and no temporary behind."""
    path = write_image(tmp_path / "final.png", np.zeros((4, 4, 3), np.uint8))
    before = path.read_bytes()

    def dies_half_way(target, array, **kwargs):
        Path(target).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr("scoredist.images.iio.imwrite", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / "final.png", np.ones((4, 4, 3), np.uint8))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.png"]
    with replacing(tmp_path / "eval.json") as tmp:
        assert tmp.name.endswith(".json") and tmp.parent == tmp_path  # formats chosen by suffix still work
        tmp.write_text("{}\n")
    assert (tmp_path / "eval.json").read_text() == "{}\n"


def test_a_torn_samples_line_reruns_its_chunk_and_keeps_the_checkpoint_s_steps(tmp_path, monkeypatch, caplog):
    """Killed in chunk 2 after its step-2 checkpoint, and chunk 1's samples.jsonl line torn (a kill while it was
    written): the resume says where it really goes on (chunk 2 step 2), finishes chunk 2 from its checkpoint, runs
    chunk 1 again, and metrics.jsonl ends with each (chunk, step) once."""
    common = (
        *SHAPES,
        "loss=sds",
        "prompt=[a red cube,a blue cube,a green cube]",
        "trainer.max_steps=4",
        "trainer.ckpt_every=2",
        "trainer.log_every=1",
    )
    straight = train(config(*common, run_dir=tmp_path / "straight")).run_dir
    original = trainer.Chunk.train_step

    def dies_in_chunk_two(self):
        if self.index == 2 and self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(trainer.Chunk, "train_step", dies_in_chunk_two)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config(*common, run_dir=run))
    monkeypatch.setattr(trainer.Chunk, "train_step", original)
    lines = (run / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2
    (run / "samples.jsonl").write_text(lines[0] + "\n" + lines[1][:40])  # the last line torn, no newline

    with caplog.at_level(logging.INFO, logger="scoredist"):
        result = train(config(*common, f"trainer.resume={run}"))
    assert f"resuming {run} at chunk 2 step 2 (1 chunks finished)" in caplog.text
    assert result.samples_done == 3
    assert sorted(r["index"] for r in records(run)) == [0, 1, 2]
    positions = [(r["chunk"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert positions == [(0, s) for s in range(1, 5)] + [(2, s) for s in range(1, 5)] + [(1, s) for s in range(1, 5)]
    for i in range(3):
        a, b = (torch.load(d / "samples" / f"{i:05d}.pt", weights_only=True) for d in (run, straight))
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "renderer, guidance, expected",
    [
        (
            "points",
            "shapes",
            "renderer=points makes points, but guidance ShapesPrior takes images: use guidance=points2d",
        ),
        ("image", "points2d", "renderer=image makes images, but guidance Points2DPrior takes points: use guidance=sd"),
        ("nerf", "points2d", "renderer=nerf makes images, but guidance Points2DPrior takes points: use guidance=sd"),
    ],
)
def test_a_renderer_and_a_guidance_that_do_not_fit_are_refused_before_anything_runs(
    renderer, guidance, expected, tmp_path
):
    cfg = config(f"renderer={renderer}", f"guidance={guidance}", "prompt=a ring", run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_a_key_an_overlay_set_for_another_loss_is_named_before_anything_runs(tmp_path):
    """`+experiment=nerf_demo loss=sds` keeps ours' stage settings under loss: one line naming the key and the class
    (it was a TypeError from inside instantiate, exit 1); the overlay's SDS baseline composes the same NeRF."""
    cfg = config("+experiment=nerf_demo", "loss=sds", run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"^loss\.stage_one is not a setting of SDS \(its settings: guidance_scale, "):
        train(cfg)
    assert not (tmp_path / "run").exists()
    ours, sds = config("+experiment=nerf_demo"), config("+experiment=nerf_demo_sds")
    assert (sds.loss.guidance_scale, sds.loss.weighting) == (ours.loss.stage_one.guidance_scale, "1-abar")
    assert sds.renderer == ours.renderer and sds.trainer == ours.trainer and sds.guidance == ours.guidance
