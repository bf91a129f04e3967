"""Run folders a user can trust, in process: fresh folders, locks, the record of resumes, what a failed start leaves,
and the errors a user gets instead of tracebacks."""

from __future__ import annotations

import errno
import json
import logging
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import scoredist.runs as runs
import scoredist.train as trainer
from scoredist.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from scoredist.errors import OutputError, ResourceError, RunLockedError
from scoredist.runs import RunLock, fresh_folder, safe_slug
from scoredist.train import train
from tests.test_train import CONF, ROOT, SHAPES, config


def strict_json(text: str):
    """json.loads that rejects the NaN / Infinity tokens, as most JSON readers do."""
    return json.loads(text, parse_constant=lambda token: pytest.fail(f"invalid JSON token {token}"))


def metrics(run_dir: Path) -> list[dict]:
    return [strict_json(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def short_run(run_dir: Path, *overrides: str, steps: int = 4):
    return train(
        config(*SHAPES, "loss=sds", f"trainer.max_steps={steps}", "trainer.log_every=1", *overrides, run_dir=run_dir)
    )


# --- folders ----------------------------------------------------------------------------------------------------------


def test_fresh_folders_never_share_a_name_even_when_raced(tmp_path):
    base = str(tmp_path / "14-30-38-ours")
    made: list[str] = []
    threads = [threading.Thread(target=lambda: made.append(fresh_folder(base))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(Path(m).name for m in made)
    assert len(set(names)) == 8 and names[0] == "14-30-38-ours"
    assert set(names) == {"14-30-38-ours"} | {f"14-30-38-ours-{n}" for n in range(2, 9)}


def test_sweep_job_names_are_short_safe_and_distinct():
    assert safe_slug("loss=sds,seed=1") == "loss-sds_seed-1"  # readable, and a plain Hydra value (no = or ,)
    assert safe_slug("+benchmark=shapes,loss=ours") == "+benchmark-shapes_loss-ours"
    escape = safe_slug("prompt=../../etc/passwd")
    assert "/" not in escape and not escape.startswith(".") and escape.startswith("prompt-.._.._etc_passwd-")
    long = safe_slug("prompt=" + "a very long caption " * 40)
    assert len(long) <= 64 + 9 and long != safe_slug("prompt=" + "a very long caption " * 41)
    assert safe_slug("a b") != safe_slug("a_b")  # altered names carry a hash of the original
    assert safe_slug("") == "job-da39a3ee"


def test_a_locked_run_folder_refuses_a_second_process(tmp_path):
    first = short_run(tmp_path / "r").run_dir
    with RunLock(first):
        with pytest.raises(RunLockedError, match=r"in use by pid \d+ on .* since"):
            train(config(*SHAPES, "loss=sds", "trainer.max_steps=6", f"trainer.resume={first}"))
        with pytest.raises(RunLockedError):
            RunLock(first).__enter__()
    assert load_checkpoint(first / "checkpoints" / "last.pt")["step"] == 4  # nothing ran in the locked folder
    train(config(*SHAPES, "loss=sds", "trainer.max_steps=6", f"trainer.resume={first}"))  # free again
    assert load_checkpoint(first / "checkpoints" / "last.pt")["step"] == 6


@pytest.mark.parametrize("ending", ["finished", "RuntimeError", "KeyboardInterrupt"])
def test_a_run_that_finishes_fails_or_is_interrupted_leaves_no_lock_file(ending, tmp_path, monkeypatch):
    original = trainer.Chunk.train_step

    def ends_at_step_three(self):
        if self.step == 2 and ending != "finished":
            raise {"RuntimeError": RuntimeError, "KeyboardInterrupt": KeyboardInterrupt}[ending]("stop")
        return original(self)

    monkeypatch.setattr(trainer.Chunk, "train_step", ends_at_step_three)
    if ending == "finished":
        short_run(tmp_path / "r")
    else:
        with pytest.raises((RuntimeError, KeyboardInterrupt)):
            short_run(tmp_path / "r")
    assert [r["step"] for r in metrics(tmp_path / "r")] == [1, 2, 3, 4][: 4 if ending == "finished" else 2]
    assert not (tmp_path / "r" / ".lock").exists()  # not a file naming a pid that is gone


def test_a_lock_on_a_file_its_holder_removed_meanwhile_is_taken_on_the_file_at_the_path(tmp_path, monkeypatch):
    holder = RunLock(tmp_path).__enter__()
    real_flock = runs.fcntl.flock

    def holder_exits_between_open_and_flock(file, operation):  # the holder's exit unlinks the file we opened
        if not holder.file.closed:
            holder.__exit__(None, None, None)
        return real_flock(file, operation)

    monkeypatch.setattr(runs.fcntl, "flock", holder_exits_between_open_and_flock)
    with RunLock(tmp_path) as second:
        at_path = runs.os.stat(tmp_path / ".lock")
        assert runs.os.fstat(second.file.fileno()).st_ino == at_path.st_ino  # not the unlinked file
        assert (tmp_path / ".lock").read_text().startswith(f"pid {runs.os.getpid()} on ")
        with pytest.raises(RunLockedError, match=r"in use by pid \d+ on"):  # so a newcomer is refused
            RunLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()

    def always_replaced(file, operation):  # every file we open is unlinked before we lock it
        (tmp_path / ".lock").unlink(missing_ok=True)
        return real_flock(file, operation)

    monkeypatch.setattr(runs.fcntl, "flock", always_replaced)
    with pytest.raises(RunLockedError, match="kept taking and releasing its lock"):
        RunLock(tmp_path).__enter__()


def test_a_new_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="plaid"):
        short_run(tmp_path / "new", "prompt=a plaid cube")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made: never deleted
    with pytest.raises(ValueError, match="plaid"):
        short_run(tmp_path / "mine", "prompt=a plaid cube")
    assert (tmp_path / "mine").is_dir()


def test_resuming_a_missing_folder_creates_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(config(*SHAPES, f"trainer.resume={tmp_path / 'nope'}"))
    assert list(tmp_path.iterdir()) == []


# --- the record of a run --------------------------------------------------------------------------------------------


def test_resume_trims_metrics_past_the_checkpoint_and_logs_nothing_twice(tmp_path):
    run = short_run(tmp_path / "r", steps=4).run_dir
    at_four = (run / "checkpoints" / "last.pt").read_bytes()
    train(config(*SHAPES, "loss=sds", "trainer.max_steps=8", "trainer.log_every=1", f"trainer.resume={run}"))
    first_pass = metrics(run)
    assert [r["step"] for r in first_pass] == list(range(1, 9))
    # a kill after step 8 was logged but before its checkpoint: the checkpoint is still the one of step 4
    (run / "checkpoints" / "last.pt").write_bytes(at_four)
    train(config(*SHAPES, "loss=sds", "trainer.max_steps=8", "trainer.log_every=1", f"trainer.resume={run}"))
    second_pass = metrics(run)
    assert [r["step"] for r in second_pass] == list(range(1, 9))  # lines 5..8 were dropped, then written again
    assert [r["objective"] for r in second_pass] == pytest.approx([r["objective"] for r in first_pass], rel=1e-6)


def test_a_kill_while_metrics_are_trimmed_loses_nothing(tmp_path, monkeypatch):
    run = short_run(tmp_path / "r", steps=4).run_dir
    before = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(before + b'{"chunk": 0, "step": 9, "loss": 1.0}\n{"torn": ')

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        runs.MetricsFile(run / "metrics.jsonl").trim(lambda chunk, step: (chunk, step) <= (0, 4))
    monkeypatch.undo()
    assert (run / "metrics.jsonl").read_bytes().startswith(before)  # the old file is whole
    assert (run / f".metrics.jsonl.tmp-{runs.os.getpid()}").read_bytes() == before  # the new one was complete too
    runs.MetricsFile(run / "metrics.jsonl").trim(lambda chunk, step: (chunk, step) <= (0, 4))
    assert (run / "metrics.jsonl").read_bytes() == before
    # what a process killed mid-write leaves: its temporary files; the next start (under the lock) removes them
    (run / ".metrics.jsonl.tmp-999999").write_text("{}")
    (run / "checkpoints" / ".last.pt.tmp-999999").write_bytes(b"PK half a zip")
    train(config(*SHAPES, "loss=sds", "trainer.max_steps=5", f"trainer.resume={run}"))
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]


def test_resume_records_what_changed_and_updates_the_recipe(tmp_path):
    run = short_run(tmp_path / "r", steps=4).run_dir
    overrides = ("trainer.max_steps=6", "trainer.log_every=1", "loss.guidance_scale=20", f"trainer.resume={run}")
    train(config(*SHAPES, "loss=sds", *overrides))
    (entry,) = [strict_json(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert entry["step"] == 4 and entry["chunk"] == 0
    assert entry["changes"] == {"trainer.max_steps": [4, 6], "loss.guidance_scale": [40.0, 20.0]}
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.trainer.max_steps == 6 and saved.loss.guidance_scale == 20


def test_a_refused_resume_rewrites_nothing(tmp_path):
    run = short_run(tmp_path / "r", steps=4).run_dir
    record = lambda: {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    before = record()
    with pytest.raises(
        ValueError,
        match=rf"^{run}/checkpoints/last.pt was trained with loss SDS \(scoredist.losses.sds.SDS\).*asks for Ours",
    ):
        train(config(*SHAPES, "loss=ours", "trainer.max_steps=6", f"trainer.resume={run}"))
    with pytest.raises(CheckpointError, match="does not fit .*the run was trained without one"):
        train(config(*SHAPES, "loss=sds", "lr_scheduler=cosine", f"trainer.resume={run}"))
    with pytest.raises(ValueError, match=r"optimizer AdamW \(torch.optim.AdamW\).*asks for SGD"):
        train(config(*SHAPES, "loss=sds", "optimizer=sgd", f"trainer.resume={run}"))
    assert record() == before
    assert not (run / "resumes.jsonl").exists()


def test_a_run_trained_with_a_learning_rate_schedule_refuses_a_resume_without_one(tmp_path):
    run = short_run(tmp_path / "r", "lr_scheduler=cosine", steps=2).run_dir
    with pytest.raises(CheckpointError, match=r"\(ValueError: the run was trained with one\); resume with the run"):
        train(config(*SHAPES, "loss=sds", "~lr_scheduler", f"trainer.resume={run}"))


def test_a_checkpoint_from_before_timestep_schedules_had_state_resumes(tmp_path):
    run = short_run(tmp_path / "r", "schedule=decay", steps=2).run_dir
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state.pop("schedule") == {"max_steps": 2}  # the decay length it started with
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    assert (
        train(config(*SHAPES, "loss=sds", "schedule=decay", "trainer.max_steps=3", f"trainer.resume={run}")).step == 3
    )


def test_extending_a_run_whose_learning_rate_reached_zero_says_so(tmp_path, caplog):
    common = (*SHAPES, "loss=sds", "lr_scheduler=cosine", "trainer.log_every=1")
    run = train(config(*common, "trainer.max_steps=6", run_dir=tmp_path / "r")).run_dir
    written = (run / "samples" / "00000.png").stat().st_mtime_ns, (run / "samples.jsonl").read_text()
    with caplog.at_level(logging.WARNING, logger="scoredist"):
        assert train(config(*common, "trainer.max_steps=6", f"trainer.resume={run}")).step == 6  # nothing more asked
    assert "decayed to 0" not in caplog.text
    assert ((run / "samples" / "00000.png").stat().st_mtime_ns, (run / "samples.jsonl").read_text()) == written
    with caplog.at_level(logging.WARNING, logger="scoredist"):
        train(config(*common, "trainer.max_steps=8", f"trainer.resume={run}"))
    assert "decayed to 0 by step 6, so the 2 more steps to trainer.max_steps=8 will not change" in caplog.text
    assert "lr_scheduler.total_steps=8 too (the rate decays again" in caplog.text
    assert caplog.text.rstrip().endswith("or start a new run.")
    assert [r["lr"] for r in metrics(run)][6:] == [0.0, 0.0]
    # the suggested fix: an explicit length re-stretches the decay from the current step
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scoredist"):
        train(config(*common, "trainer.max_steps=12", "lr_scheduler.total_steps=12", f"trainer.resume={run}"))
    assert "decayed to 0" not in caplog.text and "lr_scheduler.total_steps 6 -> 12" in caplog.text
    lrs = [r["lr"] for r in metrics(run)]
    from tests.test_schedules import cosine_factor

    assert lrs[8:] == pytest.approx([0.01 * cosine_factor(k, 12, 0.0) for k in range(8, 12)], rel=1e-9)


# --- clear errors ---------------------------------------------------------------------------------------------------


def test_an_empty_checkpoint_is_refused_by_name(tmp_path):
    empty = tmp_path / "checkpoints" / "last.pt"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"last.pt is empty \(0 bytes\)"):
        load_checkpoint(empty)
    not_torch = tmp_path / "junk.pt"
    not_torch.write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match=r"junk.pt is not a readable scoredist checkpoint \(\w+"):
        load_checkpoint(not_torch)


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.guidance_scale=nan", "loss.guidance_scale is nan; it must be a finite number"),
        ("optimizer.lr=inf", "optimizer.lr is inf"),
        ("loss.stage_one.guidance_scale=-inf", "loss.stage_one.guidance_scale is -inf"),
        ("prompt=123", "prompt must be a string"),
        ("prompt=[a red cube,7]", r"prompt\[1\] must be a string"),
        ("prompt='a ${seed} cube'", "prompt 'a \\$\\{seed\\} cube' contains '\\$\\{'"),
        ("loss.src_suffix=', ${oops}'", "loss.src_suffix .* contains .*; write the text without it, escape it as"),
        ("trainer.batch_size=0", "trainer.batch_size must be a positive integer"),
        ("trainer.max_steps=2.5", "trainer.max_steps must be a positive integer, got 2.5"),
        ("trainer.log_every=true", "trainer.log_every must be a positive integer, got True"),
    ],
)
def test_bad_values_get_one_line_errors_before_anything_is_written(override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train(config(*SHAPES, "loss=ours", override, run_dir=tmp_path / "x"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("key", ["loss.reference", "renderer.init"])
def test_an_image_path_that_is_not_an_image_is_named(key, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    message = r"notes.png is not an image file that can be read \(Could not find a backend[^\n]*\); give a PNG or JPG"
    with pytest.raises(ValueError, match=message):
        short_run(tmp_path / "x", "loss=dds", f"{key}={text}")


def test_a_later_render_stage_that_cannot_fit_is_refused_before_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "available_memory", lambda device: 2**30)
    cfg = config("+experiment=nerf_demo", "renderer.stages=[{step:5,height:4096,width:4096}]", run_dir=tmp_path / "x")
    with pytest.raises(ResourceError, match=r"1 rows of 4096x4096 pixels"):
        train(cfg)
    assert not (tmp_path / "x").exists()


def test_a_render_that_cannot_fit_in_memory_is_refused_before_allocating(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "available_memory", lambda device: 2**30)
    with pytest.raises(ResourceError, match=r"needs at least 3.0 GiB \(1 rows of 8192x8192.*1.0 GiB of cpu memory"):
        short_run(tmp_path / "x", "renderer.height=8192", "renderer.width=8192")
    assert not (tmp_path / "x").exists()


def test_the_memory_estimate_covers_native_sizes_and_a_nerfs_field_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "available_memory", lambda device: 1000)
    with pytest.raises(ResourceError, match=r"needs at least 0.0 GiB \(1 rows of 32x32 pixels\)"):  # the prior's size
        short_run(tmp_path / "x")
    monkeypatch.setattr(trainer, "available_memory", lambda device: 2**30)
    nerf = ("renderer=nerf", "renderer.height=2048", "renderer.width=2048", "renderer.num_samples=64")
    # 2048² pixels × (4 copies of 3 colour floats + 64 samples × 4 floats of colour and density) × 4 bytes = 4.19 GiB
    with pytest.raises(ResourceError, match=r"needs at least 4.2 GiB \(1 rows of 2048x2048 pixels\)"):
        short_run(tmp_path / "x", *nerf)
    assert not (tmp_path / "x").exists()


def test_running_out_of_memory_mid_run_says_what_to_lower(tmp_path, monkeypatch):
    from scoredist.guidance.exact.shapes import ShapesPrior

    def exhausted(self, x_t, t, prompts):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(ShapesPrior, "predict_noise", exhausted)
    with pytest.raises(ResourceError, match=r"out of memory .*lower trainer.batch_size \(now 1\)"):
        short_run(tmp_path / "x")


def test_each_allocators_out_of_memory_message_is_recognised():
    assert trainer.out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert trainer.out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
    assert trainer.out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB"))
    assert not trainer.out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


@pytest.mark.parametrize(
    "code, message",
    [
        (errno.ENOSPC, r"cannot write .*last.pt: No space left on device; \d+ MiB free on that disk"),
        (errno.EROFS, r"cannot write .*last.pt: the file system is read-only on .*/x\. Choose another folder$"),
        (errno.EACCES, r"cannot write .*last.pt: permission denied on .*/x\. Choose another folder$"),
    ],
)
def test_a_full_read_only_or_forbidden_disk_says_which_path_and_why(code, message, tmp_path, monkeypatch):
    def refused(state, path):
        raise OSError(code, runs.os.strerror(code), str(path))

    monkeypatch.setattr(trainer, "save_checkpoint", refused)
    with pytest.raises(OutputError, match=message):
        short_run(tmp_path / "x")


def test_a_run_folder_below_a_file_is_not_a_directory_not_a_full_disk(tmp_path, capsys):
    (tmp_path / "notes").write_text("a file, not a folder")
    with pytest.raises(OutputError) as error:
        short_run(tmp_path / "notes" / "run")
    assert str(error.value) == (
        f"cannot create {tmp_path}/notes/run: {tmp_path}/notes is not a directory (a file is in the way). "
        "Choose another folder"
    )
    with pytest.raises(SystemExit) as end:  # hydra.run.dir=${fresh_folder:notes/run}
        fresh_folder(str(tmp_path / "notes" / "run"))
    assert end.value.code == 2
    assert capsys.readouterr().err == (
        f"error: cannot create {tmp_path}/notes: {tmp_path}/notes is not a directory (a file is in the way). "
        "Choose another folder\n"
    )


def test_a_run_folder_in_a_folder_without_write_permission_says_permission_denied(tmp_path, monkeypatch, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()  # chmod 555 does not stop root (tests may run as root): refuse what the kernel would refuse
    real_mkdir = runs.Path.mkdir

    def forbidden_inside_shared(self, *args, **kwargs):
        if self.parent == shared:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(runs.Path, "mkdir", forbidden_inside_shared)
    with pytest.raises(SystemExit) as end:
        fresh_folder(str(tmp_path / "shared" / "run"))
    assert end.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write {shared / 'run'}: permission denied on {shared}. Choose another folder\n"


def test_too_little_space_for_one_checkpoint_is_refused_at_the_start(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda path: runs.shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(OutputError, match=r"has 0 MiB free, but one checkpoint of this run needs about"):
        short_run(tmp_path / "x")


def test_eval_and_metrics_files_are_strict_json_with_nonfinite_values_counted(tmp_path, monkeypatch, caplog):
    from scoredist.guidance.exact.shapes import ShapesPrior
    from scoredist.losses.sds import SDS

    original = SDS.direction

    def with_a_nan_log(self, *args):
        g, logs = original(self, *args)
        return g, {**logs, "odd": float("nan")}

    monkeypatch.setattr(SDS, "direction", with_a_nan_log)
    evaluated = []
    monkeypatch.setattr(
        ShapesPrior,
        "evaluate",
        lambda self, x, prompt: evaluated.append(prompt) or {"rms": float("inf"), "lp": [1.0, float("nan")]},
    )
    with caplog.at_level(logging.INFO, logger="scoredist"):
        run = short_run(tmp_path / "r").run_dir
    assert all(r["odd"] is None and r["nonfinite_values"] == 1 for r in metrics(run))
    assert set(evaluated) == {"a red cube"}  # the run's caption, for the sample and for eval.json
    text = (run / "eval.json").read_text()
    assert strict_json(text) == {"rms": None, "lp": [1.0, None], "nonfinite_values": 2}
    assert text.startswith('{\n  "rms": null,\n')  # indented for a person to read
    assert 'eval: {"rms": null, "lp": [1.0, null], "nonfinite_values": 2}' in caplog.text
    (sample,) = [strict_json(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sample["eval"] == {"rms": None, "lp": [1.0, None]}


def test_checkpoints_name_the_classes_they_belong_to(tmp_path):
    run = short_run(tmp_path / "r", steps=2).run_dir
    assert load_checkpoint(run / "checkpoints" / "last.pt")["recipe"] == {
        "loss": "scoredist.losses.sds.SDS",
        "renderer": "scoredist.renderers.image.ImageRenderer",
        "guidance": "scoredist.guidance.exact.shapes.ShapesPrior",
        "optimizer": "torch.optim.AdamW",
    }
    save_checkpoint({"step": 1, "recipe": {"loss": "scoredist.losses.vsd.VSD"}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="loss VSD"):
        runs.check_resume_recipe(load_checkpoint(tmp_path / "other.pt"), config(*SHAPES), tmp_path / "other.pt")
    assert torch.is_tensor(load_checkpoint(run / "checkpoints" / "last.pt")["renderer"]["image"])


def test_every_text_the_model_sees_is_checked_for_length_before_training(tiny_sd_path, tmp_path):
    from scoredist.guidance.diffusers.sd import StableDiffusion
    from scoredist.losses.nfsd import NFSD
    from scoredist.losses.ours import Ours
    from scoredist.losses.sds import SDS
    from scoredist.prompts import SRC_SUFFIX

    sd = StableDiffusion(pretrained=str(tiny_sd_path))
    length = lambda text: len(sd.tokenizer(text, truncation=False).input_ids)
    limit = sd.tokenizer.model_max_length
    words = 1
    while length(" ".join(["red"] * (words + 1)) + SRC_SUFFIX) <= limit:
        words += 1
    caption = " ".join(["red"] * (words + 1))  # fits alone, not with the source suffix
    assert length(caption) <= limit < length(caption + SRC_SUFFIX)
    captions = [(caption, "prompt")]
    trainer.check_texts(sd, SDS(), captions, [""])  # SDS never adds the suffix: accepted
    with pytest.raises(ValueError, match=rf"the source prompt \(prompt \+ loss.src_suffix\): '{caption}, .* is "):
        trainer.check_texts(sd, Ours(stage_one=SDS()), captions, [""])
    with pytest.raises(ValueError, match=r"loss.negative_prompt: '.*' is \d+ tokens long"):
        trainer.check_texts(sd, NFSD(negative_prompt=caption + SRC_SUFFIX), [("a", "prompt")], [""])
    near = " ".join(["red"] * (limit - 3))  # BOS + words + EOS one short of the limit: a view phrase tips it over
    assert length(near) < limit < length(near + ", overhead view")
    with pytest.raises(ValueError, match=r"^'red red .*, overhead view' is \d+ tokens long"):  # the prompt: no prefix
        trainer.check_texts(sd, SDS(), [(near, "prompt")], ["", ", overhead view"])
    with pytest.raises(ValueError, match="the source prompt"):  # and the trainer runs the check before it starts
        train(config(f"guidance.pretrained={tiny_sd_path}", "loss=ours", f"prompt={caption}", run_dir=tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_available_host_memory_is_meminfos_memavailable(monkeypatch):
    import builtins
    import io

    real_open = builtins.open
    meminfo = "MemTotal:       25165824 kB\nMemFree:          100000 kB\nMemAvailable:   12345678 kB\n"
    monkeypatch.setattr(
        builtins,
        "open",
        lambda path, *a, **k: io.StringIO(meminfo) if path == "/proc/meminfo" else real_open(path, *a, **k),
    )
    assert (
        trainer.available_memory(torch.device("cpu")) == 12345678 * 1024
    )  # not MemFree: the page cache is reclaimable


def test_a_checkpoint_is_estimated_as_three_copies_of_the_parameters_and_the_losss_state():
    from types import SimpleNamespace

    renderer = SimpleNamespace(state_dict=lambda: {"image": torch.zeros(2, 4, 8, 8), "step": 3})
    loss = SimpleNamespace(state_dict=lambda: {"source": {"w": torch.zeros(10, dtype=torch.float64)}})
    chunk = SimpleNamespace(renderer=renderer, run=SimpleNamespace(loss=loss))
    assert trainer.checkpoint_bytes(chunk) == 3 * (2 * 4 * 8 * 8 * 4 + 10 * 8)  # parameters, Adam's two moments


def test_without_proc_meminfo_host_memory_is_the_free_pages(monkeypatch):
    import builtins

    real_open = builtins.open

    def no_proc(path, *a, **k):
        if path == "/proc/meminfo":
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(trainer.os, "sysconf", lambda name: pages[name])
    assert trainer.available_memory(torch.device("cpu")) == 1000 * 4096


@pytest.fixture
def logger_calls(monkeypatch):
    """What the run tells its logger (logger=none's class, recorded)."""
    from scoredist.loggers import NoLogger

    calls = []
    monkeypatch.setattr(
        NoLogger,
        "start",
        lambda self, config, run_dir, name, resume_id=None: calls.append(("start", config, name, resume_id)),
    )
    monkeypatch.setattr(NoLogger, "finish", lambda self, exit_code=0: calls.append(("finish", exit_code)))
    return calls


def test_a_run_starts_its_logger_with_its_resolved_config_and_its_bar_with_every_step(
    tmp_path, monkeypatch, logger_calls
):
    bars = []
    real_tqdm = trainer.tqdm
    monkeypatch.setattr(trainer, "tqdm", lambda **kw: bars.append(kw) or real_tqdm(**kw))
    monkeypatch.setattr(trainer.sys.stderr, "isatty", lambda: False)  # a log file, as under a scheduler
    short_run(tmp_path / "r", "prompt=[a red cube,a blue sphere]", "trainer.batch_size=1", "schedule=decay")
    (_, config, name, resume_id), finish = logger_calls
    assert name == "r" and resume_id is None and config["schedule"]["max_steps"] == 4  # resolved, not "${...}"
    assert finish == ("finish", 0)
    assert bars[0]["total"] == 8 and bars[0]["initial"] == 0 and bars[0]["mininterval"] == 30.0  # 2 chunks × 4 steps


def test_an_interrupted_run_says_how_to_resume_and_finishes_its_logger_cleanly(
    tmp_path, monkeypatch, caplog, logger_calls
):
    import os
    import signal

    original = trainer.Chunk.train_step

    def ctrl_c_during_step_two(self):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler lets the step finish, then checkpoints
        return original(self)

    monkeypatch.setattr(trainer.Chunk, "train_step", ctrl_c_during_step_two)
    with caplog.at_level(logging.INFO, logger="scoredist"):
        result = short_run(tmp_path / "r")
    assert result.interrupted and result.step == 2
    assert f"interrupted at chunk 0 step 2: resume with trainer.resume={result.run_dir}" in caplog.text
    assert logger_calls[-1] == ("finish", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_a_device_that_is_not_there_or_unknown_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match=r"^trainer.device=cuda but CUDA is not available here; use trainer.device=cpu"
    ):
        train(config(*SHAPES, "trainer.device=cuda", run_dir=tmp_path / "x"))
    with pytest.raises(ValueError, match=r"^trainer.device=cuda but CUDA is not available"):
        train(config(*SHAPES, "trainer.device=cuda:1", run_dir=tmp_path / "x"))
    with pytest.raises(ValueError, match=r"trainer.device must be auto, cpu or cuda, got 'tpu'"):
        train(config(*SHAPES, "trainer.device=tpu", run_dir=tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_a_reference_to_a_setting_that_does_not_exist_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"^config key loss.guidance_scale: .*trainer.nope"):
        train(config(*SHAPES, "loss=sds", "loss.guidance_scale=${trainer.nope}", run_dir=tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_a_run_folder_whose_parents_do_not_exist_yet_is_created(tmp_path):
    assert short_run(tmp_path / "outputs" / "2026-11-29" / "14-30-38", steps=1).run_dir.is_dir()


# --- the command line, checked before Hydra -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["loss=foo"], "loss=foo: loss has no option 'foo'. Available options: asd, bridge, csd, dds, esd, irfds, "),
        (["+experiment=nope"], "+experiment=nope: experiment has no option 'nope'. Available options: demo, "),
        (["-m", "seed=0,1", "loss=sds,foo"], "loss=sds,foo: loss has no option 'foo'. Available options: asd, "),
        (["loss=choice(ours,fo)"], "loss=choice(ours,fo): loss has no option 'fo'. "),
        (["experiment=demo"], "experiment=demo: experiment is not chosen by the config; add it with +experiment=demo"),
        (["+loss=sds"], "+loss=sds: loss is chosen by the config already; change it with loss=sds"),
        (["lr_scheduler=null"], "lr_scheduler=null: a group is left out with ~lr_scheduler, not lr_scheduler=null"),
        (["--config-name", "resume", "+benchmark=cocoa"], "+benchmark=cocoa: benchmark has no option 'cocoa'. "),
    ],
)
def test_an_unknown_config_choice_is_one_line_naming_the_group_and_its_options(argv, message):
    error = runs.choice_error(argv, CONF)
    assert error is not None and error.startswith(message) and "\n" not in error


@pytest.mark.parametrize(
    "argv",
    [
        ["loss=ours", "+experiment=demo", "lr_scheduler=cosine", "++benchmark=shapes", "~lr_scheduler"],
        ["-m", "loss=sds,ours", "seed=0,1", "loss=glob(*)", "hydra/launcher=joblib", "hydra/launcher=not-checked"],
        ["trainer.max_steps=3", "prompt='loss=foo'", "loss.guidance_scale=7", "logger=none", "optimizer=sgd"],
        ["--config-dir", "loss=foo", "--config-name", "resume", "loss=ours"],  # a flag's value is not an override
        ["--config-name", "resume", "loss=sds", "+experiment=demo"],  # resume.yaml chooses loss (as null)
        ["hydra.searchpath=[file://elsewhere]", "loss=mine"],  # options from another search path: Hydra checks
    ],
)
def test_valid_choices_and_what_is_not_a_conf_group_pass_the_check(argv):
    assert runs.choice_error(argv, CONF) is None


def test_an_option_in_the_config_dir_of_the_command_line_counts(tmp_path):
    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "mine.yaml").write_text("_target_: scoredist.losses.sds.SDS\n")
    assert runs.choice_error(["--config-dir", str(tmp_path), "loss=mine"], CONF) is None
    assert "Available options: asd, bridge, csd, dds, esd, irfds, ism, mine, nfsd, ours, rfds" in runs.choice_error(
        [f"-cd={tmp_path}", "loss=yours"], CONF
    )


def test_the_help_lists_every_conf_group_as_it_is_typed_and_the_launchers():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        choices = compose("train", return_hydra_config=True).hydra.runtime.choices
        loader = GlobalHydra.instance().config_loader()
        options = {g: loader.get_group_options(g) for g in [*loader.list_groups(""), "hydra/launcher"] if g != "hydra"}
    lines = runs.groups_help(options, choices).splitlines()
    folders = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
    assert sorted(line.split("=")[0].lstrip("+") for line in lines[:-1]) == folders  # a new group cannot be missed
    for line in lines[:-1]:
        group, names = line.lstrip("+").split("   ")[0].split("=")
        assert sorted(names.split("|")) == sorted(p.stem for p in (CONF / group).glob("*.yaml")), line
    assert "loss=sds|asd|bridge|csd|dds|esd|irfds|ism|nfsd|ours|rfds|sdi|vsd" in lines  # the default first
    assert (
        "guidance=sd|flux|mvdream|points2d|sd3|sdxl|shapes|shapes_flow|shapes_image|shapes_multiview|stable_zero123"
        "|zero123" in lines
    )
    assert "lr_scheduler=cosine   (none by default)" in lines
    assert any(
        line.startswith("+experiment=demo|gs_demo|i23d_shapes|i23d_stable_zero123|i23d_zero123|") for line in lines
    )
    assert "+benchmark=coco|shapes|shapes_full" in lines  # these need the +: experiment=demo is refused
    assert not any(line.startswith(("experiment=", "benchmark=")) for line in lines)
    launchers = lines[-1].split("=")[1].split("|")
    assert lines[-1].startswith("hydra/launcher=basic|") and {"local", "slurm", "joblib"} <= set(launchers)
    assert {"local.yaml", "slurm.yaml"} <= {p.name for p in (CONF / "hydra" / "launcher").iterdir()}
    assert '"hydra-joblib-launcher>=' in (ROOT / "pyproject.toml").read_text()  # joblib: a dependency, not a plugin
