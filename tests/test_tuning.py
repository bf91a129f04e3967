"""The benchmark's tuned setting (scripts/benchmark.py --tune, scoredist.eval.tuning) at a tiny size, end to end."""

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
from test_benchmark import TINY, load_benchmark_script  # noqa: E402

from scoredist.eval.benchmark import Benchmark  # noqa: E402
from scoredist.eval.tuning import Tuning, best_point  # noqa: E402

# optimizer.lr=0.01 moves the paper point: the grid's factors apply to it (and the user's value never undoes a point)
TUNE = [*TINY, "benchmark.rows=[sds,csd,ours]", "benchmark.tuning.points=[[2.0,1.0],[1.0,0.5]]",
        "benchmark.tuning.metric=fd_pixels", "optimizer.lr=0.01"]  # fmt: skip


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "bench"
    result = load_benchmark_script().main(["--tune", f"out={out}", *TUNE])
    return out, result


def run_config(folder: Path):
    return OmegaConf.load(folder / "config.yaml")


def test_grid_points_are_the_scaled_settings_written_literally(tuned):
    out, result = tuned
    points = {p["name"]: p for picked in result["choice"].values() for p in picked["points"]}
    assert points["sds-lr2x-scale1x"]["overrides"] == ["optimizer.lr=0.02", "loss.guidance_scale=40"]
    assert points["csd-lr1x-scale0.5x"]["overrides"] == ["optimizer.lr=0.01", "loss.w1=20", "loss.w2=20"]
    assert points["ours-lr1x-scale0.5x"]["overrides"] == [
        "optimizer.lr=0.01",
        "loss.guidance_scale=20",
        "loss.stage_one.guidance_scale=20",
    ]
    # the paper point: the benchmark's own run, its values written out
    assert points["sds"]["overrides"] == ["optimizer.lr=0.01", "loss.guidance_scale=40"] and points["sds"]["paper"]
    cfg = run_config(out / "tuning" / "csd-lr1x-scale0.5x" / "seed0")
    assert (cfg.optimizer.lr, cfg.loss.w1, cfg.loss.w2, cfg.seed) == (0.01, 20.0, 20.0, 0)
    cfg = run_config(out / "tuning" / "ours-lr2x-scale1x" / "seed0")
    assert (cfg.optimizer.lr, cfg.loss.guidance_scale, cfg.loss.stage_one.guidance_scale) == (0.02, 40.0, 40.0)
    assert run_config(out / "sds" / "seed0").optimizer.lr == 0.01
    assert (out / "sds" / "seed0" / "samples.jsonl").exists()  # the paper point ran in the benchmark's own folder


def test_each_method_gets_its_best_point_on_the_choosing_seed(tuned):
    out, result = tuned
    scored = json.loads((out / "tuning" / "choose" / "results.json").read_text())
    assert scored["design"]["seeds"] == [0]
    fd = {row["method"]: row["metrics"]["fd_pixels"]["estimate"] for row in scored["rows"]}
    assert len(fd) == 9  # 3 methods × (paper point + 2 grid points)
    for method, picked in result["choice"].items():
        names = [p["name"] for p in picked["points"]]
        assert picked["chosen"] == min(names, key=lambda n: fd[n]), method
        tuned_cfg = run_config(out / "tuning" / f"{method}_tuned" / "seed1")
        chosen = next(p for p in picked["points"] if p["name"] == picked["chosen"])
        for override in chosen["overrides"]:  # the tuned row runs exactly the chosen point's settings
            key, value = override.split("=")
            assert OmegaConf.select(tuned_cfg, key) == pytest.approx(float(value)), override
    text = (out / "tuning" / "tuning.md").read_text()
    assert "✓" in text and "| sds | 1 | 1 | `optimizer.lr=0.01 loss.guidance_scale=40 (paper setting)` |" in text


def test_both_settings_are_compared_on_the_report_seeds_only(tuned):
    out, result = tuned
    comparison = json.loads((out / "tuning" / "results.json").read_text())
    assert comparison["design"]["seeds"] == [1]  # the choosing seed is left out
    methods = [row["method"] for row in comparison["rows"]]
    assert methods == ["sds", "sds_tuned", "csd", "csd_tuned", "ours", "ours_tuned"]
    assert comparison["baseline"] == "ours_tuned"
    labels = [row["label"] for row in comparison["rows"]]
    assert labels[:2] == ["SDS", "SDS, tuned"]
    for row in comparison["rows"]:
        assert row["metrics"]["fd_pixels"]["low"] <= row["metrics"]["fd_pixels"]["estimate"]
        if row["method"] != "ours_tuned":  # paired difference with its interval against ours tuned
            assert row["difference_vs_ours_tuned"]["fd_pixels"]["high"] is not None
    text = (out / "tuning" / "tuning.md").read_text()
    assert "Tuned setting" in text and "SDS, tuned" in text


def test_best_point_follows_the_metric_direction_and_keeps_the_paper_point_on_ties():
    def points(*estimates):
        return [{"name": f"p{i}", "cell": {"estimate": e}} for i, e in enumerate(estimates)]

    assert best_point(points(3.0, 2.0, 5.0), "kid")["name"] == "p1"  # lower is better
    assert best_point(points(3.0, 2.0, 5.0), "log_density")["name"] == "p2"  # higher is better
    assert best_point(points(2.0, 2.0, 2.0), "fd_pixels")["name"] == "p0"  # a tie keeps the paper point
    assert best_point(points(None, float("nan"), 4.0), "kid")["name"] == "p2"  # no estimate never wins
    assert best_point(points(None, None), "kid")["name"] == "p0"


@pytest.mark.parametrize(
    "override, message",
    [
        ("benchmark.tuning.metric=view_coverage", "cannot choose"),
        ("benchmark.tuning.report_seeds=[0,1]", "other seeds than choose_seed"),
        ("benchmark.tuning.baseline=bridge", "not among the tuned rows"),
        ("benchmark.rows=[exact,ddim]", "nothing to tune"),
        ("benchmark.tuning.scales.sds=[loss.no_such_scale]", "not a number in sds's config"),
    ],
)
def test_a_tuning_node_that_cannot_work_is_refused_before_anything_runs(override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        Tuning(Benchmark("shapes", [*TUNE, override], tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def test_a_rerun_runs_nothing_again_and_a_pooled_metric_needs_features(tuned, capsys):
    out, _ = tuned
    before = {p: p.stat().st_mtime_ns for p in out.rglob("samples.jsonl")}
    assert len(before) == 3 * 2 + 6 + 3  # paper rows × seeds 0, 1; grid points; tuned rows
    load_benchmark_script().main(["--tune", f"out={out}", *TUNE])
    assert "sds-lr2x-scale1x seed 0: already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("samples.jsonl")} == before
    with pytest.raises(SystemExit) as stop:  # the CLI: one line, exit status 2
        load_benchmark_script().main(["--tune", f"out={out}", *TUNE, "benchmark.tuning.metric=kid"])
    assert stop.value.code == 2
    assert "benchmark.tuning.metric=kid needs Inception features" in capsys.readouterr().err
    # other base settings: the finished grid runs are not this grid's points, and are refused, not reused
    with pytest.raises(SystemExit) as stop:
        load_benchmark_script().main(["--tune", f"out={out}", *TUNE, "optimizer.lr=0.005"])
    assert stop.value.code == 2
    assert "seed0 was run with optimizer.lr=0.01, not 0.005: remove that folder" in capsys.readouterr().err
