"""Sweeps on this machine, one job per GPU (hydra/launcher=local): the common lab machine, several GPUs and no
scheduler. Each job runs in a process of its own (submitit's local executor) that sees only its GPU
(CUDA_VISIBLE_DEVICES), and a device takes its next job when its last one ends, so eight GPUs run eight jobs at once
and a sweep of 32 runs in four rounds. Without GPUs, `cpu_jobs` processes share the CPU. The driver's end is
scoredist.cluster's: jobs.jsonl, the summary, a non-zero exit when a job did not finish."""

from __future__ import annotations

import sys
import time

from scoredist.cluster import SweepJob, job_returns


def slots(params: dict) -> list[int | None]:
    """One entry per job that may run at once: a GPU index (each repeated jobs_per_device times), or None (a CPU
    job) when there are no GPUs to give."""
    devices = params.get("devices", "auto")
    if devices == "auto":
        import torch

        devices = list(range(torch.cuda.device_count()))
    devices = list(devices or [])
    if not devices:
        return [None] * max(1, int(params.get("cpu_jobs", 1)))
    return [d for d in devices for _ in range(max(1, int(params.get("jobs_per_device", 1))))]


def launch(launcher, job_overrides, initial_job_idx: int) -> list:
    """The driver: start jobs while a slot is free, collect them as they end, then one JobReturn per job."""
    import submitit
    from hydra.core.singleton import Singleton

    params = launcher.params
    executor = submitit.LocalExecutor(folder=params["submitit_folder"])
    executor.update_parameters(timeout_min=params["timeout_min"], tasks_per_node=params.get("tasks_per_node", 1))
    free = slots(params)
    todo = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
    where = f"GPUs {sorted(set(free))}" if free[0] is not None else f"{len(free)} CPU process(es) at a time"
    print(f"running {len(todo)} job{'s' * (len(todo) != 1)} on this machine, {where}", file=sys.stderr)
    jobs, running = [], []
    while todo or running:
        while todo and free:
            num, overrides = todo.pop(0)
            sweep_job = start(executor, launcher, num, overrides, free.pop(0), Singleton.get_state())
            jobs.append(sweep_job)
            running.append(sweep_job)
        for sweep_job in list(running):
            if sweep_job.job.done():
                sweep_job.done = True
                sweep_job.state = local_state(sweep_job)
                running.remove(sweep_job)
                free.append(sweep_job.device)
        time.sleep(0.5)
    return job_returns(launcher, sorted(jobs, key=lambda j: j.num), scheduler="local")


def start(executor, launcher, num: int, overrides: list[str], device: int | None, singletons) -> SweepJob:
    """Job `num` in a process of its own that sees only `device` (CUDA_VISIBLE_DEVICES), or no GPU for None."""
    gpus = {"gpus_per_node": 1, "visible_gpus": [device]} if device is not None else {"gpus_per_node": 0}
    executor.update_parameters(**gpus)
    job = executor.submit(launcher, overrides, "hydra.sweep.dir", num, f"job_id_for_{num}", singletons)
    return SweepJob(num, overrides, job, state="RUNNING", device=device)


def local_state(sweep_job: SweepJob) -> str:
    """COMPLETED or FAILED from the job's exit, as SLURM would say it; a process killed without a result (by a
    signal, out of memory) is what submitit saw."""
    if not sweep_job.has_result():
        return str(sweep_job.job.get_info().get("jobState", "UNKNOWN")).upper()
    try:
        sweep_job.job.results()
    except Exception:
        return "FAILED"
    return "COMPLETED"
