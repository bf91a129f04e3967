"""The tuned setting of a benchmark (issue 18, item 7): each method's learning rate and guidance scale chosen on one
seed, then compared on other seeds with the paper setting beside it.

The paper setting gives every method one optimiser and its own published guidance scale; a reviewer then asks
whether a method loses only because that setting suits it less. `python scripts/benchmark.py --tune` answers it:

1. choose: every trained row listed in `benchmark.tuning.scales` runs on `tuning.choose_seed` at each point of
   `tuning.points` ([lr factor, scale factor] on the preset's learning rate and on every guidance scale of the row's
   loss, the keys in `tuning.scales`), beside the paper point (the benchmark's own run of that seed). Each point is
   scored by `tuning.metric` (its estimate over that seed's samples, with the comparison's bootstrap interval), and
   the best per method is its tuned setting (ties keep the paper point).
2. report: the tuned rows `<method>_tuned` run on `tuning.report_seeds`, and one paired comparison over those seeds
   holds both settings (the paper rows' own runs of those seeds and the tuned rows), differences against the tuned
   row of `tuning.baseline`. The choosing seed is left out of it: a point chosen on a seed looks better there.

Everything goes under <benchmark folder>/tuning/: choose/ (the grid's runs and their comparison), the tuned rows'
run folders, tuning.md (the choice and the comparison) and results.json / results.md / curves/ / grids/ of the
comparison. A rerun skips every finished run, as the benchmark does; a tuned row already run at another point (the
grid or the metric changed) is refused, never reported as the new choice. Only the optimiser's lr and the keys in
`tuning.scales` move: VSD's `loss.lora_lr` and CSD's `loss.w2_end` keep the paper setting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from scoredist.eval.benchmark import Benchmark
from scoredist.eval.collect import TUNED, collect_runs
from scoredist.eval.comparison import METRICS, direction_of, kind_of
from scoredist.eval.report import cell_text, compare_runs
from scoredist.runs import RunLock

CHOOSE_RESAMPLES = 300  # bootstrap draws for the grid's intervals (the choice uses the estimate)


class GridRows(Benchmark):
    """The grid's and the tuned rows' runs, in <benchmark>/tuning/: a row is its paper row's overrides, the user's,
    then the point's (last, so that they win: `--tune optimizer.lr=0.01` moves the paper point, not the grid)."""

    def __init__(self, bench: Benchmark):
        super().__init__(bench.preset, bench.overrides, bench.out_dir / "tuning")
        self.points: dict[str, tuple[str, list[str]]] = {}  # row → (its paper row, the point's overrides)
        with open_dict(self.spec):
            self.spec.curve_steps = []  # the choice needs the final samples only

    def add(self, name: str, paper_row: str, overrides: list[str]) -> None:
        self.points[name] = (paper_row, list(overrides))

    def method_overrides(self, method: str) -> list[str]:
        return super().method_overrides(self.points[method][0]) if method in self.points else []

    def run_overrides(self, method: str) -> list[str]:
        return [*super().run_overrides(method), *self.points[method][1]]


class Tuning:
    """The tuned setting of one benchmark (`bench`: its preset, overrides and folder)."""

    def __init__(self, bench: Benchmark):
        self.bench = bench
        self.spec = bench.spec.get("tuning")
        if self.spec is None:
            raise ValueError(f"preset={bench.preset} has no benchmark.tuning node: --tune needs one (see shapes.yaml)")
        self.folder = bench.out_dir / "tuning"
        self.grid = GridRows(bench)
        self.check()

    def check(self) -> None:
        """Everything that can be wrong with the tuning node, before anything runs."""
        if self.bench.prompt_shards > 1:
            raise ValueError(
                f"--tune runs every row whole; drop benchmark.prompt_shards={self.bench.prompt_shards} (tune first, "
                "then shard the main table)"
            )
        if not direction_of(self.metric):
            choosable = [key for key, *_ in METRICS if direction_of(key)]
            raise ValueError(
                f"benchmark.tuning.metric={self.metric} cannot choose (lower or higher is not better); "
                f"choose one of {', '.join(choosable)}"
            )
        if int(self.spec.choose_seed) in [int(s) for s in self.spec.report_seeds] or not self.spec.report_seeds:
            raise ValueError(
                "benchmark.tuning.report_seeds must be other seeds than choose_seed (a point chosen on a "
                "seed looks better there)"
            )
        if not self.methods():
            raise ValueError(
                f"none of benchmark.rows {list(self.bench.spec.rows)} has guidance-scale keys in "
                f"benchmark.tuning.scales ({', '.join(self.spec.scales)}): nothing to tune"
            )
        if self.spec.baseline not in self.methods():
            raise ValueError(
                f"benchmark.tuning.baseline={self.spec.baseline} is not among the tuned rows {self.methods()}"
            )
        for method in self.methods():
            cfg = self.bench.config(method)
            for key in self.spec.scales[method]:
                if not isinstance(OmegaConf.select(cfg, str(key)), (int, float)):
                    raise ValueError(
                        f"benchmark.tuning.scales.{method} names {key}, which is not a number in {method}'s config"
                    )

    @property
    def metric(self) -> str:
        return str(self.spec.metric)

    def methods(self) -> list[str]:
        """The trained rows that have guidance-scale keys in `tuning.scales`, in the benchmark's order (the others
        are not tuned and stay out of the tuned comparison)."""
        return [m for m in self.bench.trained_rows() if m in self.spec.scales]

    def points(self) -> list[tuple[float, float]]:
        return [(float(lr), float(scale)) for lr, scale in self.spec.points]

    @staticmethod
    def point_name(method: str, lr_factor: float, scale_factor: float) -> str:
        return f"{method}-lr{lr_factor:g}x-scale{scale_factor:g}x"  # a folder name: ASCII only

    def point_overrides(self, method: str, lr_factor: float, scale_factor: float) -> list[str]:
        """The overrides that make a grid point of a row (beside the row's own): the scaled lr and guidance scales,
        e.g. ["optimizer.lr=0.04", "loss.w1=20", "loss.w2=20"]."""
        cfg = self.bench.config(method)
        scaled = [f"optimizer.lr={_num(cfg.optimizer.lr * lr_factor)}"]
        for key in self.spec.scales[method]:
            value = OmegaConf.select(cfg, str(key))
            scaled.append(f"{key}={_num(value * scale_factor)}")
        return scaled

    def plan(self) -> str:
        methods, points = self.methods(), self.points()
        choose, report = int(self.spec.choose_seed), [int(s) for s in self.spec.report_seeds]
        return (
            f"tuning {len(methods)} methods ({', '.join(methods)}): {len(points)} points each besides the paper "
            f"point on seed {choose} ({len(methods) * len(points)} runs), then the tuned rows on seeds {report} "
            f"({len(methods) * len(report)} runs); chosen by {self.metric}"
        )

    def run(self, metrics) -> dict:
        """Choose, then report (module docstring). Returns {"choice": ..., "comparison": results dict}."""
        if kind_of(self.metric) == "pooled" and getattr(metrics, "feature_net", None) is None:
            raise ValueError(
                f"benchmark.tuning.metric={self.metric} needs Inception features, but benchmark.metrics.feature_net "
                "is null: set a feature network or choose by another metric, e.g. benchmark.tuning.metric=fd_pixels"
            )
        print(self.plan())
        self.folder.mkdir(parents=True, exist_ok=True)
        with RunLock(self.bench.out_dir):  # as a benchmark: one process per folder
            # what a plain rerun (no out=) looks for to continue this folder; and the command, for the record
            OmegaConf.save(self.bench.base, self.bench.out_dir / "benchmark.yaml", resolve=False)
            command = self.bench.command_line().replace(" preset=", " --tune preset=", 1)
            (self.folder / "command.txt").write_text(command + "\n")
            choice = self.choose(metrics)
            comparison = self.report(metrics, choice)
        text = choice_markdown(choice, self.metric) + "\n" + comparison["markdown"]
        (self.folder / "tuning.md").write_text(text)
        print(f"\n{choice_markdown(choice, self.metric)}\nwritten: {self.folder / 'tuning.md'}")
        return {"choice": choice, "comparison": comparison}

    def choose(self, metrics) -> dict:
        """Run every grid point on the choosing seed and pick each method's best. Returns {method: {"points": [...],
        "chosen": name}} with each point's name, factors, overrides and metric cell."""
        seed = int(self.spec.choose_seed)
        candidates: dict[str, list[dict]] = {}
        run_dirs = []
        for method in self.methods():
            # the paper point: the benchmark's own run of this seed
            paper = {"name": method, "lr": 1.0, "scale": 1.0, "overrides": self.point_overrides(method, 1.0, 1.0)}
            self.refuse_stale(self.bench.run_dir(method, seed), paper["overrides"])
            self.bench.run_one(method, seed)
            run_dirs.append(self.bench.run_dir(method, seed))
            candidates[method] = [{**paper, "paper": True}]
            for lr, scale in self.points():
                name = self.point_name(method, lr, scale)
                overrides = self.point_overrides(method, lr, scale)
                self.grid.add(name, method, overrides)
                self.refuse_stale(self.grid.run_dir(name, seed), overrides)
                self.grid.run_one(name, seed)
                run_dirs.append(self.grid.run_dir(name, seed))
                candidates[method].append({"name": name, "lr": lr, "scale": scale, "overrides": overrides})
        scored = compare_runs(
            self.folder / "choose",
            collect_runs(run_dirs),
            metrics,
            f"Tuning: the grid on seed {seed}",
            resamples=CHOOSE_RESAMPLES,
            curve_resamples=CHOOSE_RESAMPLES,
            baseline="",
        )
        cells = {row["method"]: row["metrics"][self.metric] for row in scored["rows"]}
        choice = {}
        for method, points in candidates.items():
            for point in points:
                point["cell"] = cells[point["name"]]
            choice[method] = {"points": points, "chosen": best_point(points, self.metric)["name"]}
        (self.folder / "choice.json").write_text(json.dumps(choice, indent=2) + "\n")
        return choice

    @staticmethod
    def refuse_stale(run_dir: Path, overrides: list[str]) -> None:
        """A finished run made with other values than a point's (the settings, the grid or the metric changed since)
        is never reported as that point: refuse, saying what to do."""
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            return
        cfg = OmegaConf.load(saved)
        for override in overrides:
            key, value = override.split("=", 1)
            if OmegaConf.select(cfg, key) != float(value):
                raise ValueError(
                    f"{saved.parent} was run with {key}={OmegaConf.select(cfg, key)}, not {value}: remove that folder "
                    "to run it again, or tune into another out="
                )

    def report(self, metrics, choice: dict) -> dict:
        """The tuned rows on the report seeds and the comparison of both settings there."""
        seeds = [int(s) for s in self.spec.report_seeds]
        with open_dict(self.grid.spec):
            self.grid.spec.curve_steps = list(self.bench.spec.get("curve_steps") or [])
        run_dirs = []
        for method, picked in choice.items():
            chosen = next(p for p in picked["points"] if p["name"] == picked["chosen"])
            self.grid.add(method + TUNED, method, chosen["overrides"])
            for seed in seeds:
                self.refuse_stale(self.bench.run_dir(method, seed), picked["points"][0]["overrides"])  # the paper's
                self.bench.run_one(method, seed)
                self.refuse_stale(self.grid.run_dir(method + TUNED, seed), chosen["overrides"])
                self.grid.run_one(method + TUNED, seed)
                run_dirs += [self.bench.run_dir(method, seed), self.grid.run_dir(method + TUNED, seed)]
        runs = collect_runs(run_dirs)
        title = f"Benchmark preset={self.bench.preset}: paper and tuned settings on seeds {seeds}"
        return compare_runs(self.folder, runs, metrics, title, baseline=self.spec.baseline + TUNED)


def best_point(points: list[dict], metric: str) -> dict:
    """The point whose cell["estimate"] is best by the metric's direction (METRICS); ties and points without an
    estimate keep the earlier point, the paper point first."""
    higher = direction_of(metric) == "↑"

    def badness(point: dict) -> float:
        value = point["cell"].get("estimate") if point.get("cell") else None
        if value is None or not math.isfinite(value):
            return math.inf
        return -value if higher else value

    return min(points, key=badness)  # min keeps the first of equals


def _num(value: float) -> str:
    """A number as an override writes it, 12 significant digits (0.04; 20.0 → 20)."""
    return f"{float(value):.12g}"


def choice_markdown(choice: dict, metric: str) -> str:
    header = next(h for key, h, *_ in METRICS if key == metric)
    lines = [
        f"### Tuned setting: the grid on the choosing seed ({header}; the point with ✓ is the row's tuned setting)",
        "",
        f"| method | lr × | scale × | overrides | {header} [95 %] | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for method, picked in choice.items():
        for p in picked["points"]:
            mark = "✓" if p["name"] == picked["chosen"] else ""
            overrides = " ".join(p["overrides"]) + (" (paper setting)" if p.get("paper") else "")
            value = cell_text(metric, p["cell"])
            lines.append(f"| {method} | {p['lr']:g} | {p['scale']:g} | `{overrides}` | {value} | {mark} |")
    return "\n".join(lines) + "\n"
