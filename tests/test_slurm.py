"""Sweeps on a live SLURM cluster through the real launcher (hydra/launcher=slurm_cpu), never a mock: one sweep whose
jobs the test cancels, requeues, preempts (SIGUSR2) and feeds a bad prompt, checked against its uninterrupted twin;
a job that outlives its time limit; a submission the cluster refuses.

They run where a cluster is up (`bash ../shared/slurm/start-local-slurm.sh`; .ci/run starts one) and skip otherwise.
SLURM holds a requeued job for 120 s before it may start again (its BeginTime); the tests move that start to now
(`scontrol update StartTime=now`) so that they take minutes, not ten: what happens to the job is the same."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from scoredist.checkpoint import load_checkpoint
from tests.test_readme import slurm_env, slurm_partition
from tests.test_train import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
TRAIN = [sys.executable, str(ROOT / "train.py")]
# One CPU and 1 GB per job, so two run at once on the 2-core test node.
SMALL = ("hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1")
DEMO = ("+experiment=demo", "trainer.log_every=10", "trainer.image_every=1000")


@pytest.fixture(scope="module")
def env():
    if shutil.which("sbatch") is None or slurm_partition() is None:
        pytest.skip("needs a SLURM cluster: none is up here (bash ../shared/slurm/start-local-slurm.sh starts one)")
    return {**os.environ, **slurm_env(), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def slurm(env, *command: str) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
    return done.stdout


class StartNow(threading.Thread):
    """Moves a requeued job's start (SLURM holds it 120 s) to now, for the jobs of the arrays it is given, once it
    has been held for `settle_s`: the job's previous start must have ended in SLURM's books first, else its end can
    be taken for the new start's (seen: a requeued job allocated again 0.3 s after the requeue, then FAILED)."""

    settle_s = 5.0

    def __init__(self, env, arrays: set[str]):
        super().__init__(daemon=True)
        self.env, self.arrays, self.stop = env, arrays, threading.Event()
        self.held_since: dict[str, float] = {}

    def run(self):
        while not self.stop.wait(1.0):
            out = subprocess.run(
                ["squeue", "-h", "-r", "-t", "PD", "-o", "%i %r"], env=self.env, capture_output=True, text=True
            ).stdout
            held = {job for job, reason in (line.split() for line in out.splitlines()) if reason == "BeginTime"}
            now = time.monotonic()
            self.held_since = {job: self.held_since.get(job, now) for job in held}
            for job, since in self.held_since.items():
                if job.split("_")[0] in self.arrays and now - since >= self.settle_s:
                    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=self.env)


def sweep_array(sweep: Path, timeout: float = 60) -> str:
    """The SLURM array id of a sweep, from submitit's job folders."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = [p.name for p in (sweep / ".submitit").glob("*") if re.fullmatch(r"\d+(_\d+)?", p.name)]
        if ids:
            return ids[0].split("_")[0]
        time.sleep(0.5)
    raise AssertionError(f"no job of {sweep} was submitted")


def logged_step(folder: Path) -> int:
    path = folder / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


def job_folder(sweep: Path, num: int) -> Path | None:
    found = sorted(sweep.glob(f"{num}-*"))
    return found[0] if found else None


def when_running(sweep: Path, num: int, at_step: int, driver: subprocess.Popen, timeout: float = 240) -> None:
    """Until job `num` has logged `at_step` steps."""
    deadline = time.monotonic() + timeout
    while True:
        folder = job_folder(sweep, num)
        if folder is not None and logged_step(folder) >= at_step:
            return
        assert driver.poll() is None, driver.communicate()[1]
        assert time.monotonic() < deadline, f"job {num} did not reach step {at_step}"
        time.sleep(0.3)


def preempt(env, job: str, sweep: Path, num: int, timeout: float = 60) -> None:
    """SIGUSR2 to a running job's step, as a preemption sends it. `scancel --signal` retries for as long as SLURM
    answers "Job can not be altered now" (it may, while the job acts on the signal), which would signal the job's
    next start too: it is stopped once the job has been requeued."""
    sender = subprocess.Popen(
        ["scancel", "--signal=USR2", job], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout
    try:
        while "Requeued job" not in (job_folder(sweep, num) / "train.log").read_text():
            assert time.monotonic() < deadline, f"{job} was not requeued after SIGUSR2"
            time.sleep(0.2)
    finally:
        sender.kill()
        sender.wait()


def sacct_states(env, array: str) -> dict[str, str]:
    out = slurm(env, "sacct", "-n", "-P", "-X", "-j", array, "-o", "JobID,State")
    return {job: state.split()[0] for job, state in (line.split("|") for line in out.splitlines())}


def steps_and_values(folder: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["objective"]) for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]


def interrupted_step(folder: Path) -> int:
    return int(re.findall(r"interrupted at chunk 0 step (\d+)", (folder / "train.log").read_text())[-1])


@contextmanager
def sweep_driver(env, cwd: Path, sweep: Path, *overrides: str):
    """A sweep's driver running, the SLURM array it submitted (requeued jobs started at once), everything cancelled
    if the test fails first."""
    driver = subprocess.Popen(
        [*TRAIN, "-m", *SMALL, *DEMO, *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    array = sweep_array(sweep)
    start_now = StartNow(env, {array})
    start_now.start()
    try:
        yield driver, array
    finally:
        start_now.stop.set()
        if driver.poll() is None:
            driver.kill()
            slurm(env, "scancel", array)


@pytest.fixture(scope="module")
def time_limited(env, tmp_path_factory):
    """A 1-minute limit on a ~90 s run, started before `scheduled` and running beside it (one CPU each): SLURM warns
    (SIGUSR2, signal_delay_s: a quarter of the limit), the run checkpoints, submitit requeues it, the next start
    continues at that step."""
    cwd = tmp_path_factory.mktemp("time-limit")
    sweep = cwd / "sweep"
    overrides = ("hydra.launcher.timeout_min=1", "trainer.max_steps=2400", "trainer.log_every=100", "loss=sds")
    with sweep_driver(env, cwd, sweep, *overrides) as (driver, array):
        yield {"sweep": sweep, "array": array, "driver": driver}


@pytest.fixture(scope="module")
def scheduled(env, tmp_path_factory, time_limited):
    """One sweep of five jobs, two at a time: 0 runs undisturbed; 1 is requeued (`scontrol requeue`: SIGTERM, then
    SLURM queues it again); 2 is preempted (SIGUSR2, submitit's requeue); 3 is cancelled (scancel); 4 has a prompt
    the prior does not know. Jobs 0–3 are the same run."""
    cwd = tmp_path_factory.mktemp("sweep")
    sweep = cwd / "sweep"
    prompts = ",".join(['"a red cube"'] * 4 + ['"a purple unicorn"'])
    with sweep_driver(env, cwd, sweep, "trainer.max_steps=300", f"prompt={prompts}") as (driver, array):
        when_running(sweep, 1, 40, driver)
        slurm(env, "scontrol", "requeue", f"{array}_1")
        when_running(sweep, 2, 40, driver)
        preempt(env, f"{array}_2", sweep, 2)
        when_running(sweep, 3, 40, driver)
        slurm(env, "scancel", f"{array}_3")
        _, err = driver.communicate(timeout=600)
    return {"sweep": sweep, "array": array, "code": driver.returncode, "err": err, "env": env, "cwd": cwd}


def test_the_sweep_reports_the_cancelled_and_the_failed_job_while_the_others_finish(scheduled):
    err, array = scheduled["err"], scheduled["array"]
    assert scheduled["code"] == 1, err
    assert "3 of 5 jobs finished" in err, err
    assert re.search(rf"failed: job 3 \(.*\) \[SLURM {array}_3 CANCELLED\]: SLURM job cancelled", err), err
    assert re.search(rf"failed: job 4 \(.*a purple unicorn.*\) \[SLURM {array}_4 FAILED\]: .*purple", err), err
    records = [json.loads(line) for line in (scheduled["sweep"] / "jobs.jsonl").read_text().splitlines()]
    assert [(r["num"], r["status"], r["state"]) for r in records] == [
        (0, "finished", "COMPLETED"),
        (1, "finished", "COMPLETED"),
        (2, "finished", "COMPLETED"),
        (3, "failed", "CANCELLED"),
        (4, "failed", "FAILED"),
    ]
    assert [(r["scheduler"], r["job_id"]) for r in records] == [("SLURM", f"{array}_{n}") for n in range(5)]
    cancelled = records[3]
    assert any("interrupted at chunk 0 step" in line for line in cancelled["log"]), cancelled["log"]  # a clean stop
    assert cancelled["resume"] == f"python train.py trainer.resume={job_folder(scheduled['sweep'], 3)}"


def test_sacct_records_the_bad_prompt_failed_and_the_rest_as_they_ended(scheduled):
    states = sacct_states(scheduled["env"], scheduled["array"])
    array = scheduled["array"]
    assert states == {
        f"{array}_0": "COMPLETED",
        f"{array}_1": "COMPLETED",
        f"{array}_2": "COMPLETED",
        f"{array}_3": "CANCELLED",
        f"{array}_4": "FAILED",
    }


@pytest.mark.parametrize("num", [1, 2], ids=["requeued", "preempted"])
def test_a_requeued_or_preempted_job_resumes_at_its_step_and_ends_as_the_undisturbed_one(scheduled, num):
    sweep = scheduled["sweep"]
    folder, twin = job_folder(sweep, num), job_folder(sweep, 0)
    stopped = interrupted_step(folder)
    assert 40 <= stopped < 300
    resumes = [json.loads(line) for line in (folder / "resumes.jsonl").read_text().splitlines()]
    assert [(r["chunk"], r["step"], r["changes"]) for r in resumes] == [(0, stopped, {})]
    assert not (twin / "resumes.jsonl").exists()
    # no step logged twice, and the same steps and values as the undisturbed run (the same process setup: bitwise)
    assert steps_and_values(folder) == steps_and_values(twin)
    ours, theirs = (load_checkpoint(f / "checkpoints" / "last.pt") for f in (folder, twin))
    assert ours["step"] == theirs["step"] == 300
    for key, tensor in theirs["renderer"].items():
        assert torch.equal(ours["renderer"][key], tensor), key
    assert (folder / "final.png").is_file() and len((folder / "samples.jsonl").read_text().splitlines()) == 1
    if num == 2:  # the preemption went through submitit's protocol: checkpoint(), then `scontrol requeue`
        assert "Requeued job" in (folder / "train.log").read_text()


def test_the_cancelled_job_resumes_with_the_printed_command(scheduled):
    record = json.loads((scheduled["sweep"] / "jobs.jsonl").read_text().splitlines()[3])
    command = shlex.split(record["resume"])
    assert command[:2] == ["python", "train.py"]
    env = {k: v for k, v in scheduled["env"].items() if k != "SLURM_CONF"}
    done = subprocess.run([*TRAIN, *command[2:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    folder = Path(record["folder"])
    assert load_checkpoint(folder / "checkpoints" / "last.pt")["step"] == 300
    assert [s for s, _ in steps_and_values(folder)] == list(range(10, 301, 10))


def test_a_run_longer_than_its_time_limit_is_requeued_at_its_step_and_finishes(env, time_limited):
    """The job ends COMPLETED after one or more requeues, each continuing at the step the last start stopped at."""
    driver, sweep, array = time_limited["driver"], time_limited["sweep"], time_limited["array"]
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err
    folder = job_folder(sweep, 0)
    log = (folder / "train.log").read_text()
    resumes = [json.loads(line) for line in (folder / "resumes.jsonl").read_text().splitlines()]
    # (SLURM's warning may come before training starts: submitit then requeues at once, with nothing to resume)
    assert len(resumes) >= 1 and log.count("this job is timed-out") >= len(resumes), log
    stops = [int(s) for s in re.findall(r"interrupted at chunk 0 step (\d+)", log)]
    assert [r["step"] for r in resumes] == stops and stops == sorted(stops) and 0 < stops[0], log
    assert [s for s, _ in steps_and_values(folder)] == list(range(100, 2401, 100))
    record = json.loads((sweep / "jobs.jsonl").read_text())
    assert record["status"] == "finished" and record["job_id"] == array, record
    # (not sacct's state: when a start ends within a few seconds of its own limit's warning, SLURM's SIGUSR2 can reach
    # srun as it tears down and the job is booked FAILED, 12:0, after the run wrote its result: seen once in CI)


def test_a_refused_submission_is_one_line_naming_the_fix_and_leaves_no_folder(env, tmp_path):
    """The GPU launcher on a cluster without GPUs."""
    done = subprocess.run(
        [*TRAIN, "-m", "hydra/launcher=slurm", *DEMO, "loss=sds,ours"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: SLURM refused the sweep's jobs: ") and "hydra/launcher=slurm_cpu" in last, last
    assert "Traceback" not in done.stderr and "sbatch: error" not in done.stderr
    assert list(tmp_path.iterdir()) == []
    too_big = subprocess.run(
        [*TRAIN, "-m", *SMALL, "hydra.launcher.cpus_per_task=64", *DEMO, "loss=sds,ours"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert too_big.returncode == 2
    assert re.search(r"64 CPUs asked, a node has \d+: hydra.launcher.cpus_per_task=\d+", too_big.stderr), too_big.stderr
    assert list(tmp_path.iterdir()) == []


SHARED_SLURM = ROOT.parent / "shared" / "slurm"


@pytest.fixture(scope="module")
def no_accounting(env):
    """A second one-node cluster beside the first, without accounting (sacct: "accounting storage is disabled"), as
    many clusters run: only squeue and scontrol know a job, and only for MinJobAge after it ended."""
    if not (SHARED_SLURM / "start-local-slurm.sh").is_file():
        pytest.skip(f"needs {SHARED_SLURM}/start-local-slurm.sh to start a cluster without accounting")
    root = Path(tempfile.mkdtemp(prefix="scoredist-slurm-na-"))  # not below pytest's folders: munged wants a path
    root.chmod(0o755)  # every part of which all may enter
    knobs = {"SLURM_ROOT": str(root), "SLURM_ACCOUNTING": "0", "SLURMCTLD_PORT": "6837", "SLURMD_PORT": "6838"}
    cluster_env = {**env, **knobs, "SLURM_CONF": str(root / "etc" / "slurm.conf")}
    started = subprocess.run(
        ["bash", str(SHARED_SLURM / "start-local-slurm.sh")], env=cluster_env, capture_output=True, text=True
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        sacct = subprocess.run(["sacct"], env=cluster_env, capture_output=True, text=True)
        assert "accounting storage is disabled" in (sacct.stdout + sacct.stderr).lower()
        yield cluster_env
    finally:
        subprocess.run(["bash", str(SHARED_SLURM / "stop-local-slurm.sh"), "--purge"], env=cluster_env)
        shutil.rmtree(root, ignore_errors=True)


def test_without_accounting_a_cancelled_job_ends_the_wait_and_is_named(no_accounting, tmp_path):
    env, sweep = no_accounting, tmp_path / "sweep"
    with sweep_driver(env, tmp_path, sweep, "trainer.max_steps=300", "loss=sds,ours") as (driver, array):
        when_running(sweep, 1, 40, driver)
        slurm(env, "scancel", f"{array}_1")
        _, err = driver.communicate(timeout=300)  # submitit's own watcher would wait here for ever
    assert driver.returncode == 1, err
    assert "1 of 2 jobs finished" in err
    assert re.search(rf"failed: job 1 \(.*\) \[SLURM {array}_1 CANCELLED\]: SLURM job cancelled", err), err


BENCH = (
    "prompt=[a red cube,a blue sphere]", "samples_per_prompt=2", "trainer.max_steps=3", "trainer.batch_size=2",
    "guidance.resolution=16", "guidance.num_azimuths=4", "guidance.elevations=[15.0]", "guidance.supersample=1",
    "benchmark.lower_bound.num_steps=5", "benchmark.metrics.feature_net=null", "logger=none",
    "benchmark.curve_steps=[2]", "benchmark.timing.rounds=1", "benchmark.timing.steps=1",
    "benchmark.rows=[ddim,sds,ours]", "benchmark.seeds=[0,1]",
)  # fmt: skip
BENCH_SLURM = ("launcher=slurm_cpu", "launcher.cpus_per_task=1", "launcher.mem_gb=1", "benchmark.prompt_shards=2")


def benchmark(env, out: Path, *args: str, wait: bool = True):
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), f"out={out}", *BENCH, *args]
    if not wait:
        return subprocess.Popen(
            command, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(command, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)


def table_without_times(out: Path) -> dict:
    """results.json less what differs between two runs of the same benchmark: times and the folders' names."""
    results = json.loads((out / "results.json").read_text())
    for row in results["rows"]:
        for key in [k for k in row if "second" in k]:
            del row[key]
        row["runs"] = ["/".join(Path(r).parts[-2:]) for r in row["runs"]]  # <row>/seed<k> (shards merged there)
    return results


def test_the_benchmark_as_one_array_of_shards_cancelled_then_rerun_gives_the_local_table(env, tmp_path):
    """Every row × seed × prompt shard a job of one array (2 chunks per trained run in 2 shards; the DDIM row whole);
    cancelled at once, the command names the missing shards and exits 1; the same command again submits only those,
    and the table equals the one a local run of the same settings makes without shards."""
    local = benchmark(env, tmp_path / "local")
    assert local.returncode == 0, local.stderr
    out = tmp_path / "cluster"
    first = benchmark(env, out, *BENCH_SLURM, wait=False)
    array = sweep_array(out)
    slurm(env, "scancel", array)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 1, err
    manifest = [json.loads(line) for line in (out / "shards.jsonl").read_text().splitlines()]
    units = [(m["row"], m["seed"], m.get("shard")) for m in manifest]
    trained = [(r, s, j) for r in ("sds", "ours") for s in (0, 1) for j in (0, 1)]
    assert units == [("ddim", 0, None), ("ddim", 1, None), *trained]
    missing = [m for m in manifest if not m["finished"]]
    assert missing and all(m["state"] == "CANCELLED" for m in missing), manifest
    for m in missing:
        shard = f" shard {m['shard']}" if "shard" in m else ""
        assert f"missing: {m['row']} seed {m['seed']}{shard} (SLURM {m['job_id']} CANCELLED)" in err, err
    again = benchmark(env, out, *BENCH_SLURM)
    assert again.returncode == 0, again.stderr
    assert f"submitted the {len(missing)} unfinished of 10 shards as SLURM array" in again.stderr
    manifest = [json.loads(line) for line in (out / "shards.jsonl").read_text().splitlines()]
    assert all(m["finished"] for m in manifest)
    assert table_without_times(out) == table_without_times(tmp_path / "local")
