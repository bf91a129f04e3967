"""The benchmark at a tiny size: the paper's seven rows and the exact-sample floor as ordinary run folders, the same
table from collect.py, unfinished folders skipped with a warning, preset=coco refusing to start without its inputs,
and the multirun path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from scoredist.eval.benchmark import Benchmark, collect_from, compose_run, presets
from scoredist.images import save_png

ROOT = Path(__file__).resolve().parents[1]
# 2 prompts × 2 samples × 3 steps on a 16×16 shapes world with 2 views per caption; no feature network (the
# Inception path has its own test), no tracker.
TINY = [
    "prompt=[a red cube,a blue sphere]",
    "samples_per_prompt=2",
    "trainer.max_steps=3",
    "trainer.batch_size=4",
    "trainer.image_every=3",
    "guidance.resolution=16",
    "guidance.num_azimuths=2",
    "guidance.elevations=[15.0]",
    "guidance.supersample=1",
    "benchmark.lower_bound.num_steps=5",
    "benchmark.metrics.feature_net=null",
    "logger=none",
]
ROWS = ["Exact samples (floor)", "DDIM (lower bound)", "SDS", "NFSD", "CSD", "VSD", "Ours", "Bridge (k = 4)"]


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    result = Benchmark("shapes", TINY, out).run()
    return out, result


def table_rows(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()[2:] if line]


def test_every_preset_composes_and_its_metrics_instantiate(tmp_path):
    assert presets() == ["coco", "shapes"]
    for preset in presets():
        coco = [f"benchmark.metrics.reference_images={tmp_path}", "benchmark.metrics.clip=none"]
        cfg = compose_run(preset, coco if preset == "coco" else [])
        assert set(cfg.benchmark.rows) <= set(cfg.benchmark.methods), preset
        for method in cfg.benchmark.rows:  # every row's overrides compose
            compose_run(preset, [str(o) for o in cfg.benchmark.methods[method]])
        if preset == "shapes":
            metrics = instantiate(cfg.benchmark.metrics, feature_net=None)
            assert type(metrics).__name__ == "ShapesMetrics"
        else:
            with pytest.raises(Exception, match="has no images") as refused:  # an empty folder, refused by name
                instantiate(cfg.benchmark.metrics)
            assert isinstance(refused.value.__cause__, FileNotFoundError)  # a user error: one line on the CLI
            save_png(torch.rand(1, 3, 8, 8), tmp_path / "0.png")
            assert type(instantiate(cfg.benchmark.metrics)).__name__ == "ZeroShotFID"


def test_the_tiny_benchmark_writes_the_table_with_the_seven_rows_and_the_floor(tiny_benchmark):
    out, result = tiny_benchmark
    md = (out / "results.md").read_text()
    rows = table_rows(md.split("\n", 2)[2])
    assert [r[0] for r in rows] == ROWS
    data = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in data] == ROWS
    for r in data:
        assert r["samples_total"] == 4 and r["prompts_total"] == 2
        assert r["fd_pixels"] > 0 and 0 <= r["fidelity"] <= 1 and 0 <= r["artifact_rate"] <= 1
        assert (out / r["grid"]).is_file()
        assert r["seconds_per_sample"] > 0
    assert data[2]["time_vs_sds"] == pytest.approx(1.0)
    # exact samples of the prompt's own distribution: every sample shows its caption, and the floor is the lowest FD
    assert data[0]["fidelity"] == 1.0
    assert data[0]["fd_pixels"] < min(r["fd_pixels"] for r in data[2:])
    for method in ("exact", "ddim", "sds", "ours", "bridge"):
        assert (out / method / "samples.jsonl").is_file() and (out / method / "config.yaml").is_file()
    assert (out / "benchmark.yaml").is_file() and "benchmark.py" in (out / "command.txt").read_text()


def test_collect_on_the_same_folders_gives_the_same_table(tiny_benchmark, tmp_path):
    out, result = tiny_benchmark
    again = collect_from([out], [], tmp_path / "table")
    assert table_rows(again["table"]) == table_rows(result["table"])


def test_rerunning_skips_finished_rows(tiny_benchmark, capsys):
    out, _ = tiny_benchmark
    start = time.perf_counter()
    Benchmark("shapes", [*TINY, "benchmark.rows=[ddim,sds]"], out).run()
    assert "sds: already finished" in capsys.readouterr().out
    assert time.perf_counter() - start < 60


def test_a_missing_run_folder_is_skipped_with_a_warning(tiny_benchmark, tmp_path):
    out, _ = tiny_benchmark
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("wandb"))
    lines = (copy / "vsd" / "samples.jsonl").read_text().splitlines()
    (copy / "vsd" / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n")  # a run killed half-way
    shutil.rmtree(copy / "csd")
    with pytest.warns(UserWarning, match=r"skipping unfinished run .*vsd: 2 of 4 samples finished"):
        result = collect_from([copy], [], copy)
    assert [r[0] for r in table_rows(result["table"])] == [r for r in ROWS if r not in ("VSD", "CSD")]


def test_preset_coco_without_its_inputs_fails_at_once_saying_what_to_pass(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import benchmark as script

    out = tmp_path / "coco"
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        script.main(["preset=coco", f"out={out}", "logger=none"])
    assert exit_info.value.code == 2
    assert "prompt_file=/path/to/captions.txt" in capsys.readouterr().err
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a cat\n")
    with pytest.raises(SystemExit):
        script.main(["preset=coco", f"out={out}", "logger=none", f"prompt_file={captions}"])
    assert "benchmark.metrics.reference_images=" in capsys.readouterr().err
    refs = tmp_path / "refs"
    refs.mkdir()
    save_png(torch.rand(1, 3, 8, 8), refs / "0.png")
    args = [f"prompt_file={captions}", f"benchmark.metrics.reference_images={refs}", "benchmark.metrics.clip=none"]
    with pytest.raises(SystemExit):
        script.main(["preset=coco", f"out={out}", "logger=none", *args, f"guidance.pretrained={tmp_path}/no-weights"])
    assert "guidance.pretrained=/path/to/local/folder" in capsys.readouterr().err
    assert not out.exists() and time.perf_counter() - start < 60  # nothing was trained or written


def test_commands_give_the_multirun_equivalent():
    lines = Benchmark("shapes", ["trainer.max_steps=9"], "unused").commands()
    assert lines[0] == "python scripts/sample.py +benchmark=shapes trainer.max_steps=9 +sampler.name=exact"
    assert lines[1] == "python scripts/sample.py +benchmark=shapes trainer.max_steps=9 +sampler.name=ddim"
    assert lines[2] == "python train.py -m +benchmark=shapes trainer.max_steps=9 loss=sds"
    assert lines[-1].startswith("python scripts/collect.py")


@pytest.mark.slow
def test_the_same_table_through_a_hydra_multirun_and_sample_py(tmp_path):
    """The lower bound through scripts/sample.py, two methods through `train.py -m`, the table by collect.py."""
    env_overrides = ["+benchmark=shapes", *TINY]
    sweep = tmp_path / "sweep"
    subprocess.run(
        [sys.executable, "train.py", "-m", *env_overrides, "loss=sds,ours", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    lower = tmp_path / "ddim"
    subprocess.run(
        [sys.executable, "scripts/sample.py", *env_overrides, "+sampler.name=ddim", f"hydra.run.dir={lower}"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "scripts/collect.py", str(sweep), str(lower), "--out", str(tmp_path / "table")],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    rows = table_rows((tmp_path / "table" / "results.md").read_text().split("\n", 2)[2])
    assert [r[0] for r in rows] == ["DDIM (lower bound)", "SDS", "Ours"], done.stdout
