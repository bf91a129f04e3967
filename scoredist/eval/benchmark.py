"""The paper's table as one command: every method of a preset as an ordinary run folder, then the table.

A preset is a train.py overlay, `conf/benchmark/<preset>.yaml` (`+benchmark=<preset>`): the run settings every method
shares (prompts, samples, optimiser, steps) and a `benchmark` node with the rows (method → the train.py overrides
that make it; rows with a `+sampler.name=...` override are samples of the model itself, `scoredist.eval.lower_bound`),
the lower-bound sampler's settings and the metrics class.
Because each method is one ordinary run, the same table comes out of a Hydra multirun on any launcher followed by
`scripts/collect.py` (`commands()` prints those commands).
"""

from __future__ import annotations

import json
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

    def run_overrides(self, method: str) -> list[str]:
        """What composes a row's run: the row's overrides, then the user's (which win)."""
        return [*self.method_overrides(method), *self.overrides]

    @property
    def seeds(self) -> list[int]:
        """The seeds every row runs (benchmark.seeds; the config's seed when the preset has none)."""
        return [int(s) for s in (self.spec.get("seeds") or [self.base.seed])]

    @property
    def prompt_shards(self) -> int:
        """benchmark.prompt_shards: how many jobs share one row × seed's samples (each trains a contiguous share of
        its chunks, `trainer.shard` of `trainer.shards`)."""
        return int(self.spec.get("prompt_shards") or 1)

    def shards(self, method: str) -> list[int | None]:
        """The prompt shards of a row's run: 0 … prompt_shards − 1, or [None] for a whole run (one shard, or a row
        that samples the model itself, which runs whole)."""
        if self.prompt_shards == 1 or method not in self.trained_rows():
            return [None]
        return list(range(self.prompt_shards))

    def units(self) -> list[tuple[str, int, int | None]]:
        """Every run folder of the benchmark as (row, seed, prompt shard or None), in table order."""
        return [(m, seed, shard) for m in self.spec.rows for seed in self.seeds for shard in self.shards(m)]

    def run_dir(self, method: str, seed: int, shard: int | None = None) -> Path:
        """out/<row>/seed<k>, or out/<row>/seed<k>/shard<j> for a prompt shard (collect merges a seed's shards)."""
        folder = self.out_dir / method / f"seed{seed}"
        return folder if shard is None else folder / f"shard{shard}"

    def config(self, method: str, seed: int | None = None, shard: int | None = None) -> DictConfig:
        """The composed config of one row's run for one seed (and prompt shard), writing to its run_dir, logged in
        the benchmark's group, saving snapshots at the preset's curve steps."""
        seed = self.seeds[0] if seed is None else seed
        cfg = compose_run(self.preset, self.run_overrides(method))
        cfg.seed = seed
        cfg.trainer.run_dir = str(self.run_dir(method, seed, shard))
        if shard is not None:
            cfg.trainer.shards, cfg.trainer.shard = self.prompt_shards, shard
        steps = [int(s) for s in (self.spec.get("curve_steps") or []) if int(s) < cfg.trainer.max_steps]
        cfg.trainer.snapshot_steps = steps
        cfg.benchmark.row = method  # the table's row name (two rows may share a loss: vsd and vsd_exact)
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
            from scoredist.guidance.diffusers.hub import resolve_pretrained

            resolve_pretrained(pretrained)  # WeightsNotFoundError saying what to pass
        if self.prompt_shards > 1:
            self.check_prompt_shards()
        return metrics

    def check_prompt_shards(self) -> None:
        """Every trained row has at least as many chunks as benchmark.prompt_shards (a shard trains whole chunks)."""
        from scoredist.samples import split_chunks
        from scoredist.train import own_chunks

        total = expected_samples(self.base)
        for method in self.trained_rows():
            cfg = self.config(method, shard=0)
            chunks = split_chunks(range(total), min(int(cfg.trainer.batch_size), total))
            try:
                own_chunks(cfg, [len(c) for c in chunks])
            except ValueError as e:
                message = str(e).replace("trainer.shards", "benchmark.prompt_shards")  # the benchmark's word for it
                raise ValueError(f"row {method}: {message}") from None

    def run(self, launcher: str | None = None, launcher_overrides: tuple[str, ...] = ()) -> dict | None:
        """Run every row not finished yet (here, or as one SLURM array of row × seed shards with `launcher`), time
        the trained rows side by side, then write and return the table. None when a shard did not finish."""
        metrics = self.check()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # one process per benchmark folder: a second plain rerun would otherwise continue the same rows alongside
        with RunLock(self.out_dir):
            OmegaConf.save(self.base, self.out_dir / "benchmark.yaml", resolve=False)
            (self.out_dir / "command.txt").write_text(self.command_line() + "\n")
            if launcher is not None:
                from scoredist.eval.shards import run_shards

                if not run_shards(self, launcher, list(launcher_overrides)):
                    return None
            for method in self.spec.rows:
                self.run_method(method)  # (every shard finished on the cluster: each says so)
            return self.table(metrics, self.timing())

    def trained_rows(self) -> list[str]:
        """The rows that train (not samples of the model itself)."""
        return [m for m in self.spec.rows if not any(o.startswith("+sampler.") for o in self.method_overrides(m))]

    def timing(self) -> dict[str, float]:
        """Seconds per training step of every trained row from interleaved rounds (`scoredist.eval.timing`), measured
        once per benchmark folder (timing.json) after the rows finished, so that a rerun of the table keeps them."""
        path = self.out_dir / "timing.json"
        if path.exists():
            return json.loads(path.read_text())
        spec = self.spec.get("timing") or {}
        rounds, steps = int(spec.get("rounds", 3)), int(spec.get("steps", 3))
        if rounds < 1 or not self.trained_rows():
            return {}
        print(f"timing {len(self.trained_rows())} methods side by side: {rounds} rounds of {steps} steps each")
        slices = self.calibrate(steps, rounds)
        result = {m: s.seconds_per_step for m, s in slices.items()}
        path.write_text(json.dumps(result, indent=2) + "\n")
        return result

    def calibrate(self, steps: int, rounds: int, warmup: int = 1) -> dict:
        from scoredist.devices import pick_device
        from scoredist.eval.timing import interleaved

        device = pick_device(self.base.trainer.device)
        guidance = instantiate(self.base.guidance, device=str(device), precision=self.base.trainer.precision)
        configs = {m: self.config(m) for m in self.trained_rows()}
        return interleaved(configs, steps, rounds, warmup, guidance)

    def preview_row(self, method: str, calibrated, samples: int) -> tuple[str, float]:
        """One row of the preview table and its training minutes (0 for the rows that sample the model itself)."""
        from scoredist.eval.lower_bound import guidance_rows, sampler_config

        cfg, runs = self.base, len(self.seeds)
        if calibrated is None:
            per_sample = guidance_rows(sampler_config(self.config(method)))
            cells, minutes = ("–", "–", "–"), 0.0
        else:
            chunks = -(-samples // int(cfg.trainer.batch_size))
            per_sample = calibrated.rows_per_sample_step * cfg.trainer.max_steps
            minutes = calibrated.seconds_per_step * cfg.trainer.max_steps * chunks * runs / 60
            cells = (str(cfg.trainer.max_steps), f"{calibrated.seconds_per_step:.3f}", f"{minutes:.1f}")
        steps, per_step, minutes_text = cells
        total_rows = per_sample * samples * runs
        line = f"| {method} | {runs} | {samples * runs} | {steps} | {per_sample:.0f} | {total_rows:.0f} | {per_step} | "
        line += f"{minutes_text} |"
        return line, minutes

    def preview(self, steps: int = 2) -> str:
        """`--dry-run`: what the benchmark would run and cost, calibrated by `steps` timed steps per trained row at
        its real batch on this machine (nothing is written)."""
        cfg = self.base
        samples = expected_samples(cfg)
        seeds = self.seeds
        slices = self.calibrate(steps, rounds=1)
        lines = [
            f"benchmark preset={self.preset} in {self.out_dir}: {len(self.spec.rows)} rows × {len(seeds)} seeds "
            f"({', '.join(map(str, seeds))}), {samples} samples per run ({samples * len(seeds)} per row), "
            f"{cfg.trainer.max_steps} steps, batch {cfg.trainer.batch_size}",
            "",
            "| row | runs | samples | steps | guidance rows / sample | guidance rows, total | s / step | minutes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = [self.preview_row(method, slices.get(method), samples) for method in self.spec.rows]
        lines += [line for line, _ in rows]
        total = sum(minutes for _, minutes in rows)
        lines += [
            "",
            f"training: about {total:.0f} minutes here (from {steps} timed steps per row just now; the exact and DDIM "
            "rows take seconds to a minute), then the table: nearest components, Fréchet distances, Inception "
            "features of every sample and of as many exact samples, bootstrap intervals and the curves. Rows and "
            "time per step are those of the first steps: a two-stage method (ours, the bridge) changes cost at its "
            "switch (the bridge's second stage evaluates k + 1 rows per step).",
        ]
        return "\n".join(lines)

    def run_method(self, method: str) -> None:
        for seed in self.seeds:
            for shard in self.shards(method):
                self.run_one(method, seed, shard)

    def run_one(self, method: str, seed: int, shard: int | None = None) -> None:
        run_dir = self.run_dir(method, seed, shard)
        name = f"{method} seed {seed}" + (f" shard {shard}" if shard is not None else "")
        if self.finished_run(run_dir):
            print(f"{name}: already finished in {run_dir}")
            return
        cfg = self.config(method, seed, shard)
        start = time.perf_counter()
        if cfg.get("sampler") is not None:
            from scoredist.eval.lower_bound import write_lower_bound

            write_lower_bound(cfg, run_dir)
        else:
            from scoredist.train import train

            if (run_dir / "checkpoints").is_dir():
                cfg.trainer.resume = str(run_dir)
            result = train(cfg)
            if result.interrupted:  # Ctrl-C / SIGTERM / SIGUSR2: the run checkpointed; stop here, a rerun continues
                from scoredist.cluster import requeue_if_warned

                requeue_if_warned(result.stopped_by)  # a shard's job at its limit or preempted (eval.shards)
                print(f"benchmark interrupted in {name}: rerun the same command to continue {self.out_dir}")
                raise SystemExit(130)
        print(f"{name}: {time.perf_counter() - start:.0f} s")

    def finished_run(self, run_dir: Path) -> bool:
        """Every sample of one run (or prompt shard) written, as its own config counts them (a rerun of the
        benchmark skips it)."""
        path, config = run_dir / "samples.jsonl", run_dir / "config.yaml"
        return path.exists() and config.exists() and len(read_records(path)) == expected_samples(OmegaConf.load(config))

    def finished(self, method: str) -> bool:
        """Every seed's run (every prompt shard of it) of the row finished."""
        return all(self.finished_run(self.run_dir(m, seed, shard)) for m, seed, shard in self.units() if m == method)

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

    def table(self, metrics, timing: dict | None = None) -> dict:
        runs = collect_runs(self.out_dir, list(self.spec.rows))
        return finish_table(self.out_dir, runs, metrics, self.title(), self.base.logger, self.group, timing)

    def title(self) -> str:
        return f"Benchmark preset={self.preset}"

    def command_line(self) -> str:
        return shlex.join(["python", "scripts/benchmark.py", f"preset={self.preset}", *self.overrides])

    def commands(self) -> list[str]:
        """The same benchmark as separate commands: one Hydra multirun of train.py per distinct row override set
        (add hydra/launcher=joblib|local|slurm to any of them), the lower bound, and collect.py."""
        common = [f"+benchmark={self.preset}", *self.overrides]
        seeds = ["seed=" + ",".join(map(str, self.seeds))] if len(self.seeds) > 1 else []
        shards = []
        if self.prompt_shards > 1:  # collect.py merges the shards of a run (scoredist.eval.collect.merge_shards)
            every = ",".join(map(str, range(self.prompt_shards)))
            shards = [f"trainer.shards={self.prompt_shards}", f"trainer.shard={every}"]
        lines = []
        for method in self.spec.rows:
            row = [*self.method_overrides(method), f"benchmark.row={method}", *seeds]
            if method not in self.trained_rows():
                lines.append(shlex.join(["python", "scripts/sample.py", *(["-m"] if seeds else []), *common, *row]))
            else:
                lines.append(shlex.join(["python", "train.py", "-m", *common, *row, *shards]))
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


def finish_table(
    out_dir: Path,
    runs,
    metrics,
    title: str,
    logger_cfg=None,
    group: str | None = None,
    timing: dict | None = None,
    baseline: str = "ours",
) -> dict:
    """Metrics of the runs → results files, printed table, and (with a logger config) one tracker run with the
    table and the grids. Runs on the shapes prior laid out for pairing (every method the same captions, samples and
    seeds) get the comparison with intervals (`scoredist.eval.report`); others the plain table."""
    if not runs:
        raise FileNotFoundError(f"no finished run folders under {out_dir}")
    if comparable(runs, metrics):
        from scoredist.eval.report import compare_runs

        results = compare_runs(out_dir, runs, metrics, title, timing, baseline=baseline)
        written = ", ".join(str(out_dir / name) for name in ("results.md", "results.json", "curves/"))
        print(f"\n{results['markdown']}written: {written}")
        if logger_cfg is not None:
            log_comparison(logger_cfg, out_dir, results, group, title)
        return results
    rows = evaluate_runs(runs, metrics)
    columns = columns_of(metrics)
    written = write_results(out_dir, rows, runs, columns, title)
    notes = "".join(f"note: {note}\n" for note in written["notes"])
    print(f"\n{written['table']}{notes}written: {written['md']}, {written['json']}, {out_dir / 'grids'}/")
    if logger_cfg is not None:
        log_table(logger_cfg, out_dir, rows, columns, written["grids"], group, title)
    return {"rows": rows, **written}


def comparable(runs, metrics) -> bool:
    """Whether the runs can be compared with paired intervals: exact-prior metrics, and every method with the same
    captions × samples per caption (at least 2) × seeds."""
    from scoredist.eval.exact import ShapesMetrics
    from scoredist.eval.report import group_by_method

    if not isinstance(metrics, ShapesMetrics):
        return False
    layouts = set()
    for method_runs in group_by_method(runs).values():
        prompts = sorted(r["prompt"] for run in method_runs for r in run.records)
        seeds = sorted(int(run.config.seed) for run in method_runs)
        layouts.add((tuple(prompts), tuple(seeds)))
    if len(layouts) != 1:
        return False
    prompts = next(iter(layouts))[0]
    return min(prompts.count(p) for p in set(prompts)) >= 2


def log_comparison(logger_cfg, out_dir: Path, results: dict, group, title) -> None:
    """The comparison in the tracker: one row per method (estimates and interval ends as columns), the curves and
    the grids as images."""
    rows = []
    for row in results["rows"]:
        flat = {"label": row["label"], "guidance_rows_per_sample": row["guidance_rows_per_sample"]}
        for key, cell in row["metrics"].items():
            flat.update({key: cell["estimate"], f"{key}_low": cell["low"], f"{key}_high": cell["high"]})
        rows.append(flat)
    columns = tuple((k, k, "{}", "") for k in rows[0] if k != "label")
    grids = {row["label"]: out_dir / results["grids"][row["method"]] for row in results["rows"]}
    curves = [out_dir / p for p in results["curve_plots"]]
    log_table(logger_cfg, out_dir, rows, columns, grids, group, title, curves)


def log_table(logger_cfg, out_dir: Path, rows, columns, grids, group, title, artifacts=()) -> None:
    if "group" in logger_cfg and not logger_cfg.group:
        logger_cfg = OmegaConf.merge(logger_cfg, {"group": group})
    logger = instantiate(logger_cfg)
    logger.start({"benchmark": title, "runs": [r.get("run_dir") for r in rows]}, out_dir, f"table-{out_dir.name}")
    exit_code = 1
    try:
        logger.log_table("benchmark", rows, columns, grids)
        if artifacts:
            logger.log_artifacts(list(artifacts), None)  # the convergence curves, at the step after the table
        exit_code = 0
    finally:
        logger.finish(exit_code=exit_code)


def metrics_config(runs, overrides: list[str]) -> DictConfig:
    """The metrics of a table built from existing runs: the `benchmark.metrics` node of the first run made with a
    preset, else the shapes preset's for runs on the shapes prior; then `benchmark.metrics.*` overrides."""
    node = next((r.config.benchmark.metrics for r in runs if r.config.get("benchmark")), None)
    shapes = (".ShapesPrior", ".ShapesFlowPrior")
    if node is None and all(str(r.config.guidance._target_).endswith(shapes) for r in runs):
        node = OmegaConf.load(CONF / "benchmark" / "shapes.yaml").benchmark.metrics
    cfg = OmegaConf.merge({"benchmark": {"metrics": node or {}}}, OmegaConf.from_dotlist(overrides))
    if not cfg.benchmark.metrics.get("_target_"):
        raise ValueError(
            "these runs were not made with +benchmark=<preset>, so their metrics are unknown: pass them, e.g. "
            "benchmark.metrics._target_=scoredist.eval.fid.ZeroShotFID benchmark.metrics.reference_images=DIR "
            "benchmark.metrics.clip=none"
        )
    return cfg.benchmark.metrics


def collect_from(
    dirs: list[Path], overrides: list[str], out_dir: Path, log: bool = False, baseline: str | None = None
) -> dict:
    """scripts/collect.py: the table of the finished runs under `dirs` (unfinished ones skipped with a warning);
    paired differences against the row `baseline` (default: ours, where there is one) where the runs can be paired."""
    runs = collect_runs(dirs)
    if not runs:
        raise FileNotFoundError(f"no finished run folders under {', '.join(map(str, dirs))}")
    bad = [o for o in overrides if not o.startswith("benchmark.metrics.")]
    if bad:
        raise ValueError(f"collect.py takes only benchmark.metrics.* overrides, got {bad}")
    metrics = instantiate(metrics_config(runs, overrides))
    logger_cfg = runs[0].config.logger if log else None
    # a benchmark folder's interleaved timing (measured once, when its rows finished) belongs to its table
    timing = {
        k: v
        for d in dirs
        if (Path(d) / "timing.json").is_file()
        for k, v in json.loads((Path(d) / "timing.json").read_text()).items()
    }
    title = f"Runs under {', '.join(map(str, dirs))}"
    if baseline is not None and baseline not in {r.method for r in runs}:
        raise ValueError(f"--baseline {baseline} names no row of these runs: {sorted({r.method for r in runs})}")
    return finish_table(
        Path(out_dir), runs, metrics, title, logger_cfg, timing=timing or None, baseline=baseline or "ours"
    )
