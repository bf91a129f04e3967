"""Cost counted and convergence snapshots (issue 18): the trainer counts the guidance rows each sample cost and, at
trainer.snapshot_steps, saves every sample as it stands; a resumed run counts on from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scoredist.eval.folders import read_images
from scoredist.train import train
from tests.test_train import config

TWO = ("guidance=shapes", "prompt=[a red cube,a blue cone]", "samples_per_prompt=2", "guidance.resolution=16",
       "guidance.num_azimuths=2", "guidance.elevations=[15.0]", "guidance.supersample=1")  # fmt: skip


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_snapshots_and_guidance_rows_of_an_sds_run_in_two_chunks(tmp_path):
    run = train(config(*TWO, "loss=sds", "trainer.max_steps=6", "trainer.batch_size=2",
                       "trainer.snapshot_steps=[2,4,6]", run_dir=tmp_path / "r")).run_dir  # fmt: skip
    snaps = lines(run / "snapshots.jsonl")
    # 6 is max_steps: the final sample itself, not a snapshot
    assert sorted((s["step"], s["index"]) for s in snaps) == [(st, i) for st in (2, 4) for i in range(4)]
    for s in snaps:  # SDS evaluates two rows per sample and step: ε(x_t; y) and ε(x_t; ∅)
        assert s["guidance_rows"] == 2 * s["step"]
        assert (run / s["image"]).is_file() and (run / s["tensor"]).is_file()
    records = lines(run / "samples.jsonl")
    assert [r["guidance_rows"] for r in records] == [12.0] * 4
    # the snapshot is the sample at that step: its PNG reads back as its tensor (clipped to the image's range, in
    # 8 bits), and it differs from the end
    s4 = next(s for s in snaps if s["step"] == 4 and s["index"] == 3)
    tensor = torch.load(run / s4["tensor"], weights_only=True)
    png = read_images([run / s4["image"]], (16, 16)) * 2 - 1
    assert (png - tensor.clamp(-1, 1)).abs().max() < 1 / 255 + 1e-6
    final = torch.load(run / records[3]["tensor"], weights_only=True)
    assert (final - tensor).abs().max() > 1e-3


def test_a_resumed_run_counts_guidance_rows_on_from_its_checkpoint(tmp_path):
    common = (*TWO, "loss=sds", "trainer.batch_size=4", "trainer.snapshot_steps=[2,5]")
    straight = train(config(*common, "trainer.max_steps=6", run_dir=tmp_path / "a")).run_dir
    half = train(config(*common, "trainer.max_steps=3", run_dir=tmp_path / "b")).run_dir
    train(config(*common, "trainer.max_steps=6", f"trainer.resume={half}"))
    assert [r["guidance_rows"] for r in lines(half / "samples.jsonl")] == [12.0] * 4
    assert sorted({s["step"] for s in lines(half / "snapshots.jsonl")}) == [2, 5]
    ours = {(s["step"], s["index"]): s["guidance_rows"] for s in lines(half / "snapshots.jsonl")}
    theirs = {(s["step"], s["index"]): s["guidance_rows"] for s in lines(straight / "snapshots.jsonl")}
    assert ours == theirs


@pytest.mark.parametrize("steps", ["[0]", "[-3]", "[2.5]"])
def test_snapshot_steps_that_are_not_steps_are_refused_by_name(tmp_path, steps):
    with pytest.raises(ValueError, match=r"trainer.snapshot_steps must be positive integers \(training steps\)"):
        train(config(*TWO, "trainer.max_steps=6", f"trainer.snapshot_steps={steps}", run_dir=tmp_path / "r"))


def test_vsd_guidance_rows_count_its_source_fit_but_not_the_fit_ratio_measurement(tmp_path):
    """VSD on the shapes prior: per sample and step ε(y), ε(∅), ψ's ε_φ term in the direction and in its fit (4 rows);
    the fit ratio measured on every logging step adds none."""
    common = (*TWO, "loss=vsd", "trainer.max_steps=3", "trainer.log_every=1")
    measured = train(config(*common, run_dir=tmp_path / "a")).run_dir
    quiet = train(config(*common, "loss.measure_fit=false", run_dir=tmp_path / "b")).run_dir
    assert [r["guidance_rows"] for r in lines(measured / "samples.jsonl")] == [12.0] * 4
    assert [r["guidance_rows"] for r in lines(quiet / "samples.jsonl")] == [12.0] * 4
    assert all("vsd/fit_ratio_t0-250" in m for m in lines(measured / "metrics.jsonl"))
    assert not any("vsd/fit_ratio_t0-250" in m for m in lines(quiet / "metrics.jsonl"))
