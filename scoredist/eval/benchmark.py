"""The paper's table as one command: every method of a preset as an ordinary run folder, then the table.

A preset is a train.py overlay, `conf/benchmark/<preset>.yaml` (`+benchmark=<preset>`): the run settings every method
shares (prompts, samples, optimiser, steps) and a `benchmark` node with the rows (method → the train.py overrides
that make it; rows with a `+sampler.name=...` override are samples of the model itself, `scoredist.eval.lower_bound`),
the lower-bound sampler's settings and the metrics class.
Because each method is one ordinary run, the same table comes out of a Hydra multirun on any launcher followed by
`scripts/collect.py` (`commands()` prints those commands).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from scoredist.eval.collect import collect_runs, expected_samples, read_records
from scoredist.eval.table import columns_of, evaluate_runs, write_results
from scoredist.runs import RunLock
from scoredist.scripting import CONF, compose_train

BENCHMARKS = Path("outputs") / "benchmarks"  # where a benchmark without out= goes (relative to the working folder)


def presets() -> list[str]:
    return sorted(p.stem for p in (CONF / "benchmark").glob("*.yaml"))


def compose_run(preset: str, overrides: list[str]) -> DictConfig:
    """The train config of one run of the preset: conf/train.yaml + the preset overlay + overrides."""
    if preset not in presets():
        raise ValueError(f"unknown benchmark preset {preset!r}; presets: {', '.join(presets())}")
    return compose_train([f"+benchmark={preset}", *overrides])


class Benchmark:
    """One benchmark: a preset, the user's overrides (applied to every run) and an output folder.

    Args:
        preset: the name of a conf/benchmark/ overlay ("shapes", "coco").
        overrides: train.py overrides for every run, e.g. ["trainer.max_steps=20", "benchmark.rows=[ddim,ours]"].
        out_dir: the benchmark folder: one run folder per method, then results.json / results.md / grids/.
    """

    def __init__(self, preset: str, overrides: list[str], out_dir: str | Path):
        self.preset, self.overrides, self.out_dir = preset, list(overrides), Path(out_dir)
        self.base = compose_run(preset, self.overrides)
        self.spec = self.base.benchmark
        unknown = [m for m in self.spec.rows if m not in self.spec.methods]
        if unknown:
            raise ValueError(
                f"benchmark.rows has {unknown}, which benchmark.methods does not define; methods: "
                f"{', '.join(self.spec.methods)}"
            )

    @property
    def group(self) -> str:
        return f"benchmark-{self.preset}-{self.out_dir.name}"

    def method_overrides(self, method: str) -> list[str]:
        return [str(o) for o in self.spec.methods[method]]

    def config(self, method: str) -> DictConfig:
        """The composed config of one row's run, writing to out_dir/<method>, logged in the benchmark's group."""
        cfg = compose_run(self.preset, [*self.method_overrides(method), *self.overrides])
        cfg.trainer.run_dir = str(self.out_dir / method)
        if "group" in cfg.logger:
            cfg.logger.group = cfg.logger.group or self.group
        return cfg

    def check(self):
        """Everything that can fail before any training, at once: the metrics (weights, reference images), the
        prompts, the guidance weights. Returns the metrics object."""
        cfg = self.base
        if self.spec.get("require_prompt_file") and not cfg.get("prompt_file"):
            raise ValueError(
                f"preset={self.preset} needs captions: pass prompt_file=/path/to/captions.txt (one caption per line, "
                "e.g. the MS-COCO val2014 captions of your reference images)"
            )
        if cfg.get("prompt_file") and not Path(cfg.prompt_file).is_file():
            raise FileNotFoundError(f"prompt_file {cfg.prompt_file} does not exist (one caption per line)")
        metrics = instantiate(self.spec.metrics)
        pretrained = cfg.guidance.get("pretrained")
        if pretrained:
            from scoredist.guidance.stable_diffusion import resolve_pretrained

            resolve_pretrained(pretrained)  # WeightsNotFoundError saying what to pass
        return metrics

    def run(self) -> dict:
        """Run every row not finished yet, then write and return the table."""
        metrics = self.check()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # one process per benchmark folder: a second plain rerun would otherwise continue the same rows alongside
        with RunLock(self.out_dir):
            OmegaConf.save(self.base, self.out_dir / "benchmark.yaml", resolve=False)
            (self.out_dir / "command.txt").write_text(self.command_line() + "\n")
            for method in self.spec.rows:
                self.run_method(method)
            return self.table(metrics)

    def run_method(self, method: str) -> None:
        run_dir = self.out_dir / method
        if self.finished(method):
            print(f"{method}: already finished in {run_dir}")
            return
        cfg = self.config(method)
        start = time.perf_counter()
        if cfg.get("sampler") is not None:
            from scoredist.eval.lower_bound import write_lower_bound

            write_lower_bound(cfg, run_dir)
        else:
            from scoredist.train import train

            if (run_dir / "checkpoints").is_dir():
                cfg.trainer.resume = str(run_dir)
            if train(cfg).interrupted:  # Ctrl-C / SIGTERM: the run checkpointed; stop here, a rerun continues
                print(f"benchmark interrupted in {method}: rerun the same command to continue {self.out_dir}")
                raise SystemExit(130)
        print(f"{method}: {time.perf_counter() - start:.0f} s")

    def finished(self, method: str) -> bool:
        """Every sample of the row written (a rerun of the benchmark skips it)."""
        path = self.out_dir / method / "samples.jsonl"
        if not path.exists():
            return False
        return len(read_records(path)) == expected_samples(self.base)

    def rows_done(self) -> int:
        return sum(self.finished(method) for method in self.spec.rows)

    def unfinished(self) -> bool:
        """Some row still to run, or the table not written yet (a benchmark stopped before or while writing it)."""
        return self.rows_done() < len(self.spec.rows) or not (self.out_dir / "results.json").exists()

    def same_settings(self, folder: Path) -> bool:
        """Was `folder` a benchmark of this preset with these settings (its benchmark.yaml, the composed config of
        the command that started it, equals ours)?"""
        saved = folder / "benchmark.yaml"
        if not saved.is_file():
            return False
        return OmegaConf.to_container(OmegaConf.load(saved)) == OmegaConf.to_container(self.base)

    def table(self, metrics) -> dict:
        runs = collect_runs(self.out_dir, list(self.spec.rows))
        return finish_table(self.out_dir, runs, metrics, self.title(), self.base.logger, self.group)

    def title(self) -> str:
        return f"Benchmark preset={self.preset}"

    def command_line(self) -> str:
        return shlex.join(["python", "scripts/benchmark.py", f"preset={self.preset}", *self.overrides])

    def commands(self) -> list[str]:
        """The same benchmark as separate commands: one Hydra multirun of train.py per distinct row override set
        (add hydra/launcher=joblib|local|slurm to any of them), the lower bound, and collect.py."""
        common = [f"+benchmark={self.preset}", *self.overrides]
        lines = []
        for method in self.spec.rows:
            if any(o.startswith("+sampler.") for o in self.method_overrides(method)):
                lines.append(shlex.join(["python", "scripts/sample.py", *common, *self.method_overrides(method)]))
            else:
                lines.append(shlex.join(["python", "train.py", "-m", *common, *self.method_overrides(method)]))
        lines.append("python scripts/collect.py multirun/<the sweep folders> outputs/<the sample.py folder>")
        return lines


def continue_or_start(preset: str, overrides: list[str], root: Path = BENCHMARKS) -> Benchmark:
    """scripts/benchmark.py without out=: the newest unfinished benchmark under `root` with this command's settings
    (an interrupted one: the message said to rerun the same command), said in one line; else a new timestamped
    folder. A finished one is never continued, so rerunning a finished command measures again."""
    fresh = unused_folder(root / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{preset}")
    bench = Benchmark(preset, overrides, fresh)
    for folder in newest_first(root):
        bench.out_dir = folder
        if bench.same_settings(folder) and bench.unfinished():
            print(f"continuing {folder}: {bench.rows_done()} of {len(bench.spec.rows)} rows done")
            return bench
    bench.out_dir = fresh
    return bench


def unused_folder(path: Path) -> Path:
    """path, or path-2, path-3, ... if it exists (two benchmarks started in the same second stay apart)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def newest_first(root: Path) -> list[Path]:
    """The benchmark folders under root, the most recently started first (benchmark.yaml is written at each start)."""
    folders = [p.parent for p in root.glob("*/benchmark.yaml")]
    return sorted(folders, key=lambda p: (p / "benchmark.yaml").stat().st_mtime, reverse=True)


def finish_table(out_dir: Path, runs, metrics, title: str, logger_cfg=None, group: str | None = None) -> dict:
    """Metrics of the runs → results files, printed table, and (with a logger config) one tracker run with the
    table and the grids."""
    if not runs:
        raise FileNotFoundError(f"no finished run folders under {out_dir}")
    rows = evaluate_runs(runs, metrics)
    columns = columns_of(metrics)
    written = write_results(out_dir, rows, runs, columns, title)
    notes = "".join(f"note: {note}\n" for note in written["notes"])
    print(f"\n{written['table']}{notes}written: {written['md']}, {written['json']}, {out_dir / 'grids'}/")
    if logger_cfg is not None:
        log_table(logger_cfg, out_dir, rows, columns, written["grids"], group, title)
    return {"rows": rows, **written}


def log_table(logger_cfg, out_dir: Path, rows, columns, grids, group, title) -> None:
    if "group" in logger_cfg and not logger_cfg.group:
        logger_cfg = OmegaConf.merge(logger_cfg, {"group": group})
    logger = instantiate(logger_cfg)
    logger.start({"benchmark": title, "runs": [r["run_dir"] for r in rows]}, out_dir, f"table-{out_dir.name}")
    exit_code = 1
    try:
        logger.log_table("benchmark", rows, columns, grids)
        exit_code = 0
    finally:
        logger.finish(exit_code=exit_code)


def metrics_config(runs, overrides: list[str]) -> DictConfig:
    """The metrics of a table built from existing runs: the `benchmark.metrics` node of the first run made with a
    preset, else the shapes preset's for runs on the shapes prior; then `benchmark.metrics.*` overrides."""
    node = next((r.config.benchmark.metrics for r in runs if r.config.get("benchmark")), None)
    if node is None and all(str(r.config.guidance._target_).endswith(".ShapesPrior") for r in runs):
        node = OmegaConf.load(CONF / "benchmark" / "shapes.yaml").benchmark.metrics
    cfg = OmegaConf.merge({"benchmark": {"metrics": node or {}}}, OmegaConf.from_dotlist(overrides))
    if not cfg.benchmark.metrics.get("_target_"):
        raise ValueError(
            "these runs were not made with +benchmark=<preset>, so their metrics are unknown: pass them, e.g. "
            "benchmark.metrics._target_=scoredist.eval.fid.ZeroShotFID benchmark.metrics.reference_images=DIR "
            "benchmark.metrics.clip=none"
        )
    return cfg.benchmark.metrics


def collect_from(dirs: list[Path], overrides: list[str], out_dir: Path, log: bool = False) -> dict:
    """scripts/collect.py: the table of the finished runs under `dirs` (unfinished ones skipped with a warning)."""
    runs = collect_runs(dirs)
    if not runs:
        raise FileNotFoundError(f"no finished run folders under {', '.join(map(str, dirs))}")
    bad = [o for o in overrides if not o.startswith("benchmark.metrics.")]
    if bad:
        raise ValueError(f"collect.py takes only benchmark.metrics.* overrides, got {bad}")
    metrics = instantiate(metrics_config(runs, overrides))
    logger_cfg = runs[0].config.logger if log else None
    return finish_table(Path(out_dir), runs, metrics, f"Runs under {', '.join(map(str, dirs))}", logger_cfg)
