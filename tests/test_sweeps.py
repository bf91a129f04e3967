"""The command line as a user runs it (subprocesses): resume from the run's own recipe, sweeps that survive a bad job,
no two runs in one folder, a concurrent resume refused, nothing created by a failed start, a bug's traceback kept in
train.log, one-line errors for a bad config choice or output folder, and the help's groups."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from scoredist.checkpoint import load_checkpoint
from scoredist.renderers.image import ImageRenderer
from scoredist.runs import resume_hint
from scoredist.train import train
from tests.test_train import ROOT, config

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
TRAIN = [sys.executable, str(ROOT / "train.py")]


def cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAIN, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def start(*args: str, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        [*TRAIN, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(path: Path, proc: subprocess.Popen, lines: int = 0, timeout: float = 120) -> None:
    """Until `path` exists (and, for a text file, has `lines` lines)."""
    deadline = time.monotonic() + timeout
    while not path.exists() or (lines and len(path.read_text().splitlines()) < lines):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.2)


def step_of(run: Path) -> int:
    return load_checkpoint(run / "checkpoints" / "last.pt")["step"]


def test_an_interrupted_demo_resumes_from_its_own_recipe_alone(tmp_path):
    run = tmp_path / "demo"
    proc = start("+experiment=demo", "trainer.max_steps=40", "trainer.log_every=1", f"hydra.run.dir={run}")
    wait_for(run / "metrics.jsonl", proc, lines=5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"resume with trainer.resume={run}" in out, out
    assert 5 <= step_of(run) < 40

    record = (run / ".hydra" / "config.yaml").read_bytes(), (run / "config.yaml").read_bytes()
    other = cli(f"trainer.resume={run}", "loss=sds")
    assert other.returncode == 2 and re.search(r"trained with loss Ours .* asks for SDS", other.stderr), other.stderr
    assert ((run / ".hydra" / "config.yaml").read_bytes(), (run / "config.yaml").read_bytes()) == record

    resumed = cli(f"trainer.resume={run}")  # nothing else: guidance=shapes, loss=ours, cosine LR come from the run
    assert resumed.returncode == 0, resumed.stderr
    assert step_of(run) == 40 and "resuming" in resumed.stderr
    straight = train(config("+experiment=demo", "trainer.max_steps=40", run_dir=tmp_path / "straight")).run_dir
    ours, theirs = (load_checkpoint(r / "checkpoints" / "last.pt")["renderer"]["image"] for r in (run, straight))
    assert torch.equal(ours, theirs)  # the final image of the interrupted run is the uninterrupted one's
    assert (run / "final.png").read_bytes() == (straight / "final.png").read_bytes()

    extended = cli(f"trainer.resume={run}", "trainer.max_steps=44")  # the demo's settings, not the defaults
    assert extended.returncode == 0, extended.stderr
    assert step_of(run) == 44 and "decayed to 0" in extended.stderr  # the demo's cosine LR ended at step 40
    recipe = OmegaConf.load(run / "config.yaml")
    assert recipe.guidance._target_.endswith("ShapesPrior") and recipe.trainer.max_steps == 44
    history = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert [h["changes"] for h in history] == [{}, {"trainer.max_steps": [40, 44]}]
    assert "trainer.max_steps=44" in history[1]["overrides"]
    assert "resuming" in (run / "train.log").read_text()  # train.log holds the run's messages
    assert (run / ".hydra" / "config.yaml").read_bytes() == record[0]  # how the run started stays recorded


def test_a_sweep_runs_every_good_job_and_reports_the_bad_one(tmp_path):
    sweep = tmp_path / "sweep"
    result = cli(
        "-m", "+experiment=demo", "trainer.max_steps=3", "trainer.batch_size=1,0,1", "prompt=a red cube",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "2 of 3 jobs finished" in result.stderr
    assert re.search(
        r"failed: job 1 \(.*trainer.batch_size=0.*\): trainer.batch_size must be a positive", result.stderr
    )
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [name.split("-")[0] for name in jobs] == ["0", "2"]  # the failed job left no folder
    assert all(re.fullmatch(r"\d+-[A-Za-z0-9._+-]+", name) and len(name) < 80 for name in jobs), jobs
    assert all(step_of(sweep / name) == 3 for name in jobs)
    # a job folder is a plain Hydra value: `trainer.resume=<folder>` works typed as is (no = or , to quote)
    resumed = cli(f"trainer.resume={sweep / jobs[0]}", "trainer.max_steps=5")
    assert resumed.returncode == 0 and step_of(sweep / jobs[0]) == 5, resumed.stderr
    # a folder named as sweeps named them before ("=" and ","): the printed hint works as printed
    old_style = (sweep / jobs[1]).rename(sweep / "2-loss=sds,seed=1")
    hint = resume_hint(old_style)
    assert hint == f"'trainer.resume=\"{old_style}\"'"
    resumed = cli(*shlex.split(hint), "trainer.max_steps=4")
    assert resumed.returncode == 0 and step_of(old_style) == 4, resumed.stderr
    # the full overrides and config are kept in the job's record
    assert "trainer.batch_size=1" in OmegaConf.load(sweep / jobs[0] / ".hydra" / "overrides.yaml")
    assert OmegaConf.load(sweep / jobs[0] / "config.yaml").prompt == "a red cube"
    assert [json.loads(line)["status"] for line in (sweep / "jobs.jsonl").read_text().splitlines()] == [
        "finished",
        "failed",
        "finished",
    ]


def test_the_readme_sweep_runs_offline_as_written(tmp_path):
    line = next(x for x in (ROOT / "README.md").read_text().splitlines() if x.startswith("python train.py -m +"))
    args = line.split("#")[0].split()[2:]
    result = cli(*args, "trainer.max_steps=2", f"hydra.sweep.dir={tmp_path / 's'}")
    assert result.returncode == 0, result.stderr
    assert len([p for p in (tmp_path / "s").iterdir() if p.is_dir()]) >= 2


def test_two_runs_started_together_never_share_a_folder(tmp_path):
    same = "hydra.run.dir=${fresh_folder:" + str(tmp_path / "same") + "}"  # the name both would get in one second
    procs = [start("+experiment=demo", "trainer.max_steps=2", same) for _ in range(2)]
    procs.append(start("+experiment=demo", "trainer.max_steps=2", cwd=tmp_path))  # the default outputs/<now>-ours
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs", "same", "same-2"]
    assert step_of(tmp_path / "same") == step_of(tmp_path / "same-2") == 2
    (default,) = (tmp_path / "outputs").glob("*/*")
    assert re.fullmatch(r"\d\d-\d\d-\d\d-ours", default.name) and step_of(default) == 2


def test_a_concurrent_resume_is_refused_while_the_run_trains(tmp_path):
    run = tmp_path / "long"
    proc = start("+experiment=demo", "trainer.max_steps=100000", "trainer.ckpt_every=2", f"hydra.run.dir={run}")
    try:
        wait_for(run / "checkpoints" / "last.pt", proc)
        second = cli(f"trainer.resume={run}", "trainer.max_steps=100000")
        assert second.returncode == 2 and re.search(r"in use by pid \d+", second.stderr), second.stderr
        assert "Traceback" not in second.stderr and proc.poll() is None  # the first run is untouched
        explicit = cli("+experiment=demo", f"hydra.run.dir={run}")  # a new run pointed at the same folder
        assert explicit.returncode == 2 and "already holds files" in explicit.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130


def test_nothing_is_created_by_a_missing_resume_or_a_failed_start(tmp_path):
    missing = cli(f"trainer.resume={tmp_path / 'nope'}", cwd=tmp_path)
    assert missing.returncode == 2 and "no run folder" in missing.stderr and "Traceback" not in missing.stderr
    bad = cli("+experiment=demo", "prompt=a plaid cube", cwd=tmp_path)
    assert bad.returncode == 2 and "plaid" in bad.stderr and "Traceback" not in bad.stderr
    bug_free = cli("+experiment=demo", "optimizer.lr=nan", cwd=tmp_path)
    assert bug_free.returncode == 2 and "optimizer.lr is nan" in bug_free.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, no empty outputs/<date>


class BrokenArtifacts(ImageRenderer):
    """An image renderer whose end-of-run figure has a bug (renderer._target_=tests.test_sweeps.BrokenArtifacts)."""

    def write_artifacts(self, *args, **kwargs):
        raise RuntimeError("the views figure broke")


def test_a_bug_at_the_end_of_a_run_leaves_its_traceback_in_train_log(tmp_path):
    run = tmp_path / "r"
    result = cli(
        "+experiment=demo", "trainer.max_steps=3", "renderer._target_=tests.test_sweeps.BrokenArtifacts",
        f"hydra.run.dir={run}",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("RuntimeError: the views figure broke") == 1  # on the terminal once, from Hydra
    log = (run / "train.log").read_text()
    assert "][ERROR] error: the run stopped on an error that is not a setting's" in log
    assert "Traceback (most recent call last):" in log and "in write_artifacts" in log
    assert log.rstrip().endswith("RuntimeError: the views figure broke")


@pytest.mark.parametrize(
    "argument, message",
    [
        (
            "loss=foo",
            "error: loss=foo: loss has no option 'foo'. Available options: asd, bridge, csd, dds, esd, irfds, ism, "
            "nfsd, ours, rfds, sdi, sds, vsd",
        ),
        ("+experiment=nope", "error: +experiment=nope: experiment has no option 'nope'. Available options: demo, "),
        ("experiment=demo", "error: experiment=demo: experiment is not chosen by the config; add it with +experiment"),
    ],
)
def test_an_unknown_config_choice_exits_2_with_one_line(argument, message, tmp_path):
    result = cli(argument, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "HYDRA_FULL_ERROR" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_help_shows_the_groups_as_they_are_typed_and_the_launchers(tmp_path):
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "loss=sds|asd|bridge|csd|dds|esd|irfds|ism|nfsd|ours|rfds|sdi|vsd" in lines
    assert "+benchmark=coco|shapes|shapes_full" in lines
    assert any(
        line.startswith("+experiment=demo|gs_demo|i23d_shapes|i23d_stable_zero123|i23d_zero123|") for line in lines
    )
    assert not any(line.startswith(("experiment", "benchmark")) for line in lines)  # Hydra's "experiment: demo, ..."
    (launchers,) = [line for line in lines if line.startswith("hydra/launcher=")]
    assert {"local", "slurm", "joblib"} <= set(launchers.split("=")[1].split("|"))


def test_an_output_folder_below_a_file_exits_2_saying_not_a_directory(tmp_path):
    (tmp_path / "notes").write_text("a file")
    result = cli("+experiment=demo", f"hydra.run.dir={tmp_path / 'notes' / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"error: cannot create {tmp_path}/notes/run: {tmp_path}/notes is not a directory (a file is in the way). "
        "Choose another folder\n"
    )


def test_the_wandb_runs_of_a_seed_sweep_are_told_apart_by_name_and_tag_and_stage_inside_their_folders(tmp_path):
    home = tmp_path / "home"  # wandb's own folders (settings, cache, default staging) out of the user's home
    env = {**ENV, "WANDB_MODE": "offline", "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}
    sweep = tmp_path / "sweep"
    args = ["-m", "+experiment=demo", "seed=0,1", "logger=wandb", "trainer.max_steps=2", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run([*TRAIN, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for seed in (0, 1):
        (job,) = sweep.glob(f"{seed}-*")
        (record,) = job.glob("wandb/offline-run-*/run-*.wandb")  # the offline run's record, as `wandb sync` reads it
        data = record.read_bytes()
        assert f"ours | a red cube | seed={seed}".encode() in data and f"seed:{seed}".encode() in data
        assert f"| seed={1 - seed}".encode() not in data and str(sweep).encode() in data  # the group: the sweep
        assert list(record.parent.glob("artifacts/staging/*"))  # the samples table's files, inside the run
    assert not list((home / "data").glob("wandb/artifacts/staging/*"))


def test_a_local_sweep_runs_one_job_per_device_at_a_time_each_seeing_only_its_own(tmp_path):
    """hydra/launcher=local with two devices: four jobs, two at a time, each job's CUDA_VISIBLE_DEVICES its one
    device (read in the job: jobs.jsonl), and a device's second job only after its first ended. (On this CPU machine
    the jobs train on the CPU; the assignment is what a GPU machine gets.)"""
    sweep = tmp_path / "sweep"
    result = cli(
        "-m", "hydra/launcher=local", "hydra.launcher.devices=[0,1]", "+experiment=demo", "trainer.max_steps=40",
        "loss=sds,ours", "seed=0,1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "running 4 jobs on this machine, GPUs [0, 1]" in result.stderr
    jobs = [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    assert [(j["num"], j["status"], j["state"]) for j in jobs] == [(n, "finished", "COMPLETED") for n in range(4)]
    assert all(j["cuda_visible_devices"] == str(j["device"]) for j in jobs), jobs
    by_device = {d: sorted((j["started"], j["ended"]) for j in jobs if j["device"] == d) for d in (0, 1)}
    assert [len(runs) for runs in by_device.values()] == [2, 2]
    assert all(first[1] <= second[0] for first, second in by_device.values())  # one at a time on a device
    (a_start, a_end), (b_start, b_end) = by_device[0][0], by_device[1][0]
    assert a_start < b_end and b_start < a_end  # the two devices' first jobs ran at once
