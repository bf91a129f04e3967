"""Sweeps on a SLURM cluster (hydra/launcher=slurm, slurm_cpu): what the sweep's driver and its jobs do around
submitit, so that a sweep survives its scheduler. The launcher classes are hydra_plugins/scoredist_launcher.

- The driver submits the sweep as one job array; a submission SLURM refuses ends in one line naming the resource and
  the override that fixes it, and leaves no folder behind.
- It waits by asking the scheduler itself (`squeue --states=all`, which knows ended jobs for MinJobAge seconds, then
  `sacct` where accounting is on) instead of submitit's sacct-only watcher, so a cancelled job ends the wait with or
  without accounting; no job's end (cancelled, failed, timed out, killed for memory) raises in the driver.
- Every job gets one line in <sweep>/jobs.jsonl: its number, overrides, status, SLURM id and final state, and for one
  that did not finish its folder, the last lines of its log and the command that resumes it. The summary printed at
  the end (scoredist.runs.RunFolderGuard) reads them; the sweep exits 1 when any job did not finish.
- A job stopped by the scheduler's warning (SIGUSR2: the time limit is near, or a preemption) checkpoints at its
  current step (the trainer's stop request) and is requeued through submitit's protocol (launcher.checkpoint);
  the requeued job finds its own checkpoint and continues there (scoredist.runs.continue_requeued_run).
- A job whose run failed exits non-zero, so that SLURM records it FAILED.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# States in which a job may still run (again, for a requeued one); anything else has ended.
ACTIVE_STATES = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
    "SUSPENDED", "STAGE_OUT", "SIGNALING", "SPECIAL_EXIT", "RESV_DEL_HOLD",
}  # fmt: skip
# A job seen ended (and without a result file) on this many polls in a row has ended: a result file written as the
# job ends, or a preempted job about to be requeued, gets that long to show.
ENDED_POLLS = 3
POLL_S = 5.0
LOG_LINES = 5


class JobFailed(RuntimeError):
    """Raised in a sweep job whose run failed (its error is in jobs.jsonl already), so the job exits non-zero."""


@dataclass
class SweepJob:
    num: int
    overrides: list[str]
    job: object  # submitit.slurm.SlurmJob
    state: str = "PENDING"
    ended_polls: int = 0
    done: bool = False
    device: int | None = None  # the GPU a local job was given (scoredist.local_sweep)

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    def has_result(self) -> bool:
        return Path(self.job.paths.result_pickle).exists()


# --- in the job ------------------------------------------------------------------------------------------------------


def in_submitit_job() -> bool:
    """Whether this process runs a submitit job (SLURM or local): submitit's own SIGUSR2 handler is in place."""
    owner = getattr(signal.getsignal(signal.SIGUSR2), "__self__", None)
    return owner is not None and type(owner).__module__.startswith("submitit")


def requeue_if_warned(stopped_by: str | None) -> None:
    """A run stopped by the scheduler's warning (SIGUSR2) inside a submitit job, its checkpoint written: hand it to
    submitit's handler for that signal, which the trainer's stop request had replaced. It calls the launcher's
    checkpoint() (the same job again), requeues the job with `scontrol requeue` and exits; past max_num_timeout it
    raises instead (the job is over, and FAILED). Any other stop (Ctrl-C, SIGTERM, outside submitit) returns."""
    if stopped_by != "SIGUSR2" or not in_submitit_job():
        return
    log.info("stopped by the scheduler's warning (SIGUSR2): requeuing this job; it continues from its checkpoint")
    signal.getsignal(signal.SIGUSR2)(signal.SIGUSR2, None)


def end_job(job_return) -> None:
    """In the job, after Hydra ran it: a run that failed raises, so the job's exit status is non-zero (FAILED in
    sacct) and the driver knows it from the job's own record."""
    outcome = job_return.return_value  # raises the exception a job let escape (a bug): FAILED as well
    if isinstance(outcome, dict) and outcome.get("status") != "finished":
        raise JobFailed(outcome.get("error") or "the run failed (see its train.log)")


# --- in the driver ---------------------------------------------------------------------------------------------------


def make_executor(launcher):
    """submitit's executor for the launcher's settings, mapped as Hydra's submitit plugin maps them (the keys every
    executor shares as they are, the others with the cluster's prefix)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    kind = launcher._EXECUTOR
    params = dict(launcher.params)
    params["signal_delay_s"] = warning_delay(params)
    folder = params.pop("submitit_folder")
    init = {f"{kind}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=kind, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"{kind}_{k}": v for k, v in params.items()})
    return executor


def warning_delay(params: dict) -> int:
    """signal_delay_s, but at most a quarter of the time limit. SLURM checks limits every 30 s and sends the warning
    at the first check that finds the limit within delay + 30 s, so a delay near half a short limit warns at the
    first check after the start, while Python is still importing (SIGUSR2 then kills the process): a 1-minute limit
    with 30 s did. A quarter of it (15 s) warns 15 to 45 s after the start."""
    delay, limit_s = int(params.get("signal_delay_s", 120)), int(params.get("timeout_min", 60)) * 60
    if 4 * delay > limit_s:
        log.info(f"signal_delay_s={delay} is over a quarter of the {limit_s} s limit: warning {limit_s // 4} s before")
        return limit_s // 4
    return delay


def submit(launcher, job_overrides, initial_job_idx: int) -> list[SweepJob]:
    """Submit the sweep as one array. A refused submission exits 2 with one line, and the sweep's folder (created by
    this command, holding only Hydra's and submitit's records) is removed."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides
    from submitit.core.utils import FailedJobError

    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    executor = make_executor(launcher)
    nums = [initial_job_idx + i for i in range(len(job_overrides))]
    for num, overrides in zip(nums, job_overrides):
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
    state = Singleton.get_state()
    arguments = [(list(o), "hydra.sweep.dir", n, f"job_id_for_{n}", state) for n, o in zip(nums, job_overrides)]
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's refusal; rejection() says it
            jobs = executor.map_array(launcher, *zip(*arguments))
    except FailedJobError as e:
        remove_sweep_folder(sweep_dir)
        from scoredist.runs import exit_with_error

        exit_with_error(rejection(str(e), launcher.params))
    sweep = [SweepJob(n, list(o), j) for n, o, j in zip(nums, job_overrides, jobs)]
    array = sweep[0].job_id.split("_")[0]
    print(
        f"submitted {len(sweep)} job{'s' * (len(sweep) != 1)} as SLURM array {array}: watch with `squeue -j {array}`, "
        f"stop with `scancel {array}`; job folders in {sweep_dir}",
        file=sys.stderr,
    )
    return sweep


def remove_sweep_folder(sweep_dir: Path) -> None:
    """Remove a sweep folder this command created (and the dated parents it created on the way, left empty)."""
    from scoredist.runs import CREATED, remove_created

    folder = sweep_dir.resolve()
    if folder in CREATED:
        remove_created(folder)


def rejection(error: str, params: dict) -> str:
    """Why sbatch refused the sweep, in one line: its reason, the resource asked for against what the partition
    has, and the override that fixes it."""
    reasons = [line.split("error:", 1)[1].strip() for line in error.splitlines() if "error:" in line]
    reason = reasons[-1] if reasons else error.strip().splitlines()[-1] if error.strip() else "no reason given"
    node = partition_limits(params.get("partition"))
    fix = None
    if re.search(r"partition", reason, re.I):
        names = ", ".join(partitions()) or "see sinfo"
        fix = f"choose one of this cluster's partitions with hydra.launcher.partition=NAME ({names})"
    elif re.search(r"gres|gpu", reason, re.I) and params.get("gpus_per_node"):
        fix = (
            f"the partition has no GPUs ({params['gpus_per_node']} asked per node): use hydra/launcher=slurm_cpu, or "
            "hydra.launcher.partition=<a GPU partition>"
        )
    elif re.search(r"time limit", reason, re.I):
        fix = f"ask for less time: hydra.launcher.timeout_min=N (now {params.get('timeout_min')})"
    elif node is not None and (params.get("cpus_per_task") or 0) > node["cpus"]:
        cpus = node["cpus"]
        fix = f"{params['cpus_per_task']} CPUs asked, a node has {cpus}: hydra.launcher.cpus_per_task={cpus}"
    elif node is not None and (params.get("mem_gb") or 0) * 1024 > node["mem_mb"]:
        gb = node["mem_mb"] / 1024
        fix = f"{params['mem_gb']} GB asked, a node has {gb:.1f} GB: hydra.launcher.mem_gb={int(gb)}"
    elif params.get("gpus_per_node") and node is not None and "gpu" not in node["gres"]:
        fix = "the partition has no GPUs: use hydra/launcher=slurm_cpu, or hydra.launcher.partition=<a GPU partition>"
    return f"SLURM refused the sweep's jobs: {reason}" + (f"; {fix}" if fix else "")


def scheduler_output(*command: str) -> str | None:
    """A SLURM client command's stdout, or None when it fails (no cluster, no accounting)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def partitions() -> list[str]:
    out = scheduler_output("sinfo", "-h", "-o", "%P") or ""
    return [p.rstrip("*") for p in out.split()]


def partition_limits(partition: str | None) -> dict | None:
    """The largest node of a partition (the default one for None): CPUs, memory in MB, generic resources."""
    out = scheduler_output("sinfo", "-h", "-N", *(["-p", partition] if partition else []), "-o", "%c|%m|%G|%P")
    nodes = []
    for line in (out or "").splitlines():
        cpus, mem, gres, part = line.split("|")
        if partition or part.endswith("*"):
            nodes.append({"cpus": int(cpus), "mem_mb": int(mem), "gres": gres})
    return max(nodes, key=lambda n: (n["cpus"], n["mem_mb"])) if nodes else None


def scheduler_states(job_ids: list[str]) -> dict[str, str]:
    """Each job's state as SLURM has it now: squeue for every job it still holds (ended ones too, for MinJobAge
    seconds), sacct (where accounting is on) for the rest. A job neither knows is left out."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    states = {}
    out = scheduler_output("squeue", "-h", "-r", "--states=all", "-j", ",".join(arrays), "-o", "%i|%T")
    for line in (out or "").splitlines():
        job_id, _, state = line.partition("|")
        states[job_id.strip()] = state.strip()
    missing = [j for j in job_ids if j not in states]
    if missing:
        out = scheduler_output("sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State")
        for line in (out or "").splitlines():
            job_id, _, state = line.partition("|")
            states[job_id.strip()] = state.split()[0] if state.split() else "UNKNOWN"
    return states


def wait(jobs: list[SweepJob], poll_s: float = POLL_S) -> None:
    """Until every job has a result file or has ended without one. Says when the counts change."""
    said = None
    while not all(j.done for j in jobs):
        states = scheduler_states([j.job_id for j in jobs if not j.done])
        for j in jobs:
            if j.done:
                continue
            j.state = states.get(j.job_id, "UNKNOWN")
            ended = j.state not in ACTIVE_STATES
            if ended or j.has_result():  # a result shows a moment before SLURM's final state: wait for that too
                j.ended_polls += 1
                j.done = (ended and j.has_result()) or j.ended_polls >= ENDED_POLLS
            else:
                j.ended_polls = 0
        summary = progress(jobs)
        if summary != said:
            print(f"[{time.strftime('%H:%M:%S')}] jobs: {summary}", file=sys.stderr)
            said = summary
        if not all(j.done for j in jobs):
            time.sleep(poll_s)


def progress(jobs: list[SweepJob]) -> str:
    """How many jobs are in each state ("1 done, 2 pending, 1 running")."""
    counts: dict[str, int] = {}
    for j in jobs:
        key = "done" if j.done else j.state.lower()
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def job_returns(launcher, jobs: list[SweepJob], scheduler: str = "SLURM") -> list:
    """One JobReturn per job for Hydra's sweeper, none of which raises: the run's outcome for a job with a result,
    a failed outcome (its SLURM state) for the others; then jobs.jsonl completed with what only the driver knows."""
    from hydra.core.utils import JobReturn, JobStatus

    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    final = scheduler_states([j.job_id for j in jobs]) if scheduler == "SLURM" else {}
    returns = []
    for j in jobs:
        j.state = final.get(j.job_id, j.state)
        outcome = None
        if j.has_result():
            try:
                job_return = j.job.results()[0]
                outcome = job_return.return_value
            except Exception as e:  # the run failed (JobFailed) or raised: its own record says how
                outcome = {"status": "failed", "error": last_line(str(e))}
        if not isinstance(outcome, dict):
            outcome = {"status": "failed", "error": ended_without_result(j.state, scheduler)}
        job_return = JobReturn(overrides=j.overrides, status=JobStatus.COMPLETED)
        job_return.return_value = outcome
        returns.append(job_return)
    complete_records(sweep_dir, jobs, scheduler)
    return returns


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def ended_without_result(state: str, scheduler: str = "SLURM") -> str:
    what = {
        "CANCELLED": "cancelled (scancel) before it finished",
        "TIMEOUT": "reached its time limit (and max_num_timeout requeues)",
        "OUT_OF_MEMORY": "killed for using more memory than it asked for (hydra.launcher.mem_gb)",
        "NODE_FAIL": "lost its node",
        "PREEMPTED": "preempted and not requeued",
        "UNKNOWN": "ended; SLURM no longer knows how (no accounting)",
    }
    return f"{scheduler} job {what.get(state, state.lower())}"


def complete_records(sweep_dir: Path, jobs: list[SweepJob], scheduler: str = "SLURM") -> None:
    """Rewrite jobs.jsonl with one record per job, in job order: the job's own record where it wrote one (the last,
    a requeued job may have ended more than once), else one saying how it ended; each with its SLURM id and state,
    and for a job that did not finish its folder, the last lines of its log and how to resume it."""
    from scoredist.runs import json_text, last_job_records, rewrite_lines

    own = last_job_records(sweep_dir)
    lines = []
    for j in jobs:
        record = own.get(j.num) or {"num": j.num, "overrides": j.overrides, "status": "failed"}
        if record.get("status") != "finished" and "error" not in record:
            record["error"] = ended_without_result(j.state, scheduler)
        record.update(scheduler=scheduler, job_id=j.job_id, state=j.state)
        if j.device is not None:
            record["device"] = j.device
        if record.get("status") != "finished":
            folder = record.get("folder") or job_folder(sweep_dir.resolve(), j.num)
            record.update(folder=folder, log=log_tail(j.job, folder), resume=resume_command(folder))
        lines.append(json_text(record, default=str))
    rewrite_lines(sweep_dir / "jobs.jsonl", lines)


def job_folder(sweep_dir: Path, num: int) -> str | None:
    """A job's folder by its number (hydra.sweep.subdir starts with it), if it made one."""
    found = [p for p in [*sorted(sweep_dir.glob(f"{num}-*")), sweep_dir / str(num)] if p.is_dir()]
    return str(found[0]) if found else None


def resume_command(folder: str | None) -> str | None:
    from scoredist.checkpoint import checkpoint_path
    from scoredist.runs import resume_hint

    if folder is None or not checkpoint_path(folder).is_file():
        return None
    return f"python train.py {resume_hint(folder)}"


def log_tail(job, folder: str | None, lines: int = LOG_LINES) -> list[str]:
    """The last lines the job wrote: submitit's stderr file (SLURM's own notes, as a cancellation, end up there),
    else the run's train.log. A progress bar's redraws count as lines of their own."""
    for path in (Path(job.paths.stderr), Path(folder or "/nonexistent") / "train.log"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        kept = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
        if kept:
            return kept[-lines:]
    return []


def launch(launcher, job_overrides, initial_job_idx: int) -> list:
    """The driver's whole part: submit, wait, collect. Ctrl-C leaves the jobs running and says how to reach them."""
    jobs = submit(launcher, job_overrides, initial_job_idx)
    try:
        wait(jobs)
    except KeyboardInterrupt:
        array = jobs[0].job_id.split("_")[0]
        print(
            f"\nthe driver stopped; the jobs go on: `squeue -j {array}` shows them, `scancel {array}` stops them",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    return job_returns(launcher, jobs)


def jobs_summary(records: list[dict]) -> list[str]:
    """The lines the sweep's summary prints for each job that did not finish."""
    out = []
    for r in records:
        if r.get("status") == "finished":
            continue
        where = f" [{r['scheduler']} {r['job_id']} {r.get('state')}]" if r.get("job_id") else ""
        out.append(f"  failed: job {r['num']} ({' '.join(r['overrides'])}){where}: {r.get('error')}")
        if r.get("folder"):
            out.append(f"    folder: {r['folder']}")
        if r.get("resume"):
            out.append(f"    resume: {r['resume']}")
        for line in r.get("log") or []:
            out.append(f"    | {line}")
    return out
