"""The benchmark on a SLURM cluster: `python scripts/benchmark.py launcher=slurm_cpu [launcher.KEY=VALUE ...]`.

Every row × seed of the benchmark is a shard: one run folder (out/<row>/seed<k>, as a local benchmark writes it),
trained by one job of a single SLURM job array. With `benchmark.prompt_shards=N` each trained row × seed is N shards
(out/<row>/seed<k>/shard<j>, each a contiguous share of the run's chunks: `trainer.shard` j of `trainer.shards` N),
which `scoredist.eval.collect` merges back into one run. The manifest, <out>/shards.jsonl, is written before anything
is submitted and rewritten when the jobs have ended: each shard's row, seed, prompt shard, folder, and its job and
state. A rerun of the same command submits only the shards that have not finished (a cancelled or timed-out shard
continues from its checkpoint); when every shard has finished, the table is made as a local run makes it (the same
folders, so the same numbers), with the side-by-side timing measured on the machine that runs the command. Shards
stopped by a time limit or a preemption are requeued at their checkpoint (submitit's protocol, as a sweep's jobs).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from scoredist import cluster
from scoredist.runs import json_text, rewrite_lines


def launcher_params(name: str, overrides: list[str], out_dir: Path) -> dict:
    """The settings of conf/hydra/launcher/<name>.yaml with `launcher.KEY=VALUE` overrides, as a sweep would get
    them; submitit's folder inside the benchmark's."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from scoredist.scripting import CONF

    hydra_overrides = [f"hydra/launcher={name}", *(f"hydra.{o}" for o in overrides)]
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=hydra_overrides, return_hydra_config=True)
    except ConfigCompositionException as e:
        raise ValueError(f"cannot compose launcher={name} with {overrides}: {str(e).splitlines()[0]}") from e
    node = cfg.hydra.launcher
    if not str(node.get("_target_", "")).endswith("SlurmLauncher"):
        raise ValueError(f"launcher={name} is not a SLURM launcher; the benchmark's shards run on slurm or slurm_cpu")
    node.submitit_folder = str(out_dir / ".submitit" / "%j")
    node.name = "benchmark"
    params = OmegaConf.to_container(node, resolve=True)
    params.pop("_target_")
    return params


class ShardRunner:
    """What each job runs: one row × seed (× prompt shard) of the benchmark (Benchmark.run_one, which resumes a folder
    that has a checkpoint). `checkpoint` is submitit's hook on SIGUSR2: the same shard again, continuing where it
    stopped."""

    def __init__(self, preset: str, overrides: list[str], out_dir: str):
        self.preset, self.overrides, self.out_dir = preset, list(overrides), out_dir

    def __call__(self, method: str, seed: int, shard: int | None) -> str:
        from scoredist.eval.benchmark import Benchmark

        bench = Benchmark(self.preset, self.overrides, self.out_dir)
        bench.run_one(method, seed, shard)
        return str(bench.run_dir(method, seed, shard))

    def checkpoint(self, *args):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)


class LauncherSettings:
    """What cluster.make_executor reads from a Hydra launcher: its params and executor kind."""

    _EXECUTOR = "slurm"

    def __init__(self, params: dict):
        self.params = params


def manifest(bench, jobs: dict[tuple, cluster.SweepJob] | None = None) -> list[dict]:
    jobs = jobs or {}
    lines = []
    for method, seed, shard in bench.units():
        run_dir = bench.run_dir(method, seed, shard)
        line = {"row": method, "seed": seed, **({"shard": shard} if shard is not None else {})}
        line.update(folder=str(run_dir), finished=bench.finished_run(run_dir))
        job = jobs.get((method, seed, shard))
        if job is not None:
            line.update(job_id=job.job_id, state=job.state)
        lines.append(line)
    return lines


def unit_name(line: dict) -> str:
    """A manifest line as the messages name it: "sds seed 1", "sds seed 1 shard 0"."""
    return f"{line['row']} seed {line['seed']}" + (f" shard {line['shard']}" if "shard" in line else "")


def write_manifest(bench, jobs=None) -> list[dict]:
    lines = manifest(bench, jobs)
    rewrite_lines(bench.out_dir / "shards.jsonl", [json_text(line) for line in lines])
    return lines


def run_shards(bench, launcher: str, overrides: list[str]) -> bool:
    """Submit the unfinished shards as one array, wait for all of them, rewrite the manifest; whether every shard
    has finished (the missing ones are named)."""
    from submitit.core.utils import FailedJobError

    params = launcher_params(launcher, overrides, bench.out_dir.resolve())
    todo = [(line["row"], line["seed"], line.get("shard")) for line in write_manifest(bench) if not line["finished"]]
    jobs = {}
    if todo:
        executor = cluster.make_executor(LauncherSettings(params))
        runner = ShardRunner(bench.preset, bench.overrides, str(bench.out_dir.resolve()))
        try:
            submitted = executor.map_array(runner, *(list(column) for column in zip(*todo)))
        except FailedJobError as e:
            raise ValueError(cluster.rejection(str(e), params)) from None
        jobs = {
            unit: cluster.SweepJob(i, [str(u) for u in unit if u is not None], job)
            for i, (unit, job) in enumerate(zip(todo, submitted))
        }
        array = submitted[0].job_id.split("_")[0]
        print(
            f"submitted the {len(todo)} unfinished of {len(bench.units())} shards as SLURM array "
            f"{array} (`squeue -j {array}`, `scancel {array}`); manifest: {bench.out_dir / 'shards.jsonl'}",
            file=sys.stderr,
        )
        cluster.wait(list(jobs.values()))
        final = cluster.scheduler_states([j.job_id for j in jobs.values()])
        for job in jobs.values():
            job.state = final.get(job.job_id, job.state)
    lines = write_manifest(bench, jobs)
    missing = [line for line in lines if not line["finished"]]
    for line in missing:
        how = f" (SLURM {line['job_id']} {line['state']})" if "job_id" in line else ""
        print(f"  missing: {unit_name(line)}{how}: {line['folder']}", file=sys.stderr)
    return not missing
