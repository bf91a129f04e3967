"""Run folders and what they record: where a run writes, its metrics and samples files, signals, RNG state.

A run folder holds config.yaml (the run's recipe: `trainer.resume=<folder>` composes it again), resumes.jsonl (what
each resume changed), metrics.jsonl, samples.jsonl and samples/, progress/, final.png, train.log, checkpoints/ and the
renderer's own artifacts. Everything here is about not losing or mixing up work: a new run never reuses a folder, a
folder is locked while a process trains in it, every rewrite is write-new-then-rename. The loop itself is in train.py.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from scoredist.checkpoint import checkpoint_path, run_folder_of, temporary_path
from scoredist.errors import OutputError, RunLockedError, user_error

log = logging.getLogger(__name__)

# Folders this process created for new runs: only these may be removed when the run fails before its first step.
CREATED: set[Path] = set()
# Parents it created on the way (outputs/<date>): removed too when a failed start leaves them empty.
CREATED_PARENTS: set[Path] = set()
# What a folder may hold and still count as a run that never started (Hydra's record, its log, the lock).
UNSTARTED = {".hydra", "train.log", "config.yaml", ".lock"}


def fresh_folder(path: str) -> str:
    """Create `path` exclusively, or `path-2`, `path-3`, ... when it is taken, and return the one created: two runs
    started in the same second never share a folder. Hydra's `${fresh_folder:...}` resolver (cached, so a config
    resolves it once). A folder that cannot be created ends the command with a one-line error."""
    base = Path(path)
    try:
        CREATED_PARENTS.update(p.resolve() for p in (base.parent, *base.parent.parents) if not p.exists())
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            CREATED.add(folder.resolve())
            return str(folder)
    except OSError as e:
        exit_with_error(output_error(e, base.parent))
    raise AssertionError("unreachable")


def safe_slug(text: str, max_chars: int = 64) -> str:
    """A file-name-safe short form of a sweep job's overrides that is also a plain Hydra value, so that the folder
    can be typed back as `trainer.resume=<folder>` unquoted: `=` becomes `-` and `,` becomes `_` ("loss=sds,seed=1" →
    "loss-sds_seed-1"); other characters than letters, digits and `._+-` become `_` (so no `/`, no `..` escapes), and
    a long or otherwise altered text is cut and tagged with a hash of the original. The slug only describes: a sweep's
    job folders are told apart by the job number before it ("a=b" and "a-b" give the same slug). The full overrides
    are in the job's .hydra/overrides.yaml."""
    readable = text.replace("=", "-").replace(",", "_")
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", readable).strip("._") or "job"
    if slug == readable and len(slug) <= max_chars:
        return slug
    return f"{slug[:max_chars].rstrip('._')}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def resume_hint(folder) -> str:
    """`trainer.resume=<folder>` as a shell takes it and Hydra parses it: plain where the path is a plain Hydra value,
    else in Hydra's double quotes (a folder made before job names were plain values, "0-loss=sds,seed=1", or one with
    spaces), the whole argument shell-quoted."""
    text = str(folder)
    if re.fullmatch(r"[A-Za-z0-9._+/-]+", text):
        return f"trainer.resume={text}"
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return shlex.quote(f'trainer.resume="{escaped}"')


def register_resolvers() -> None:
    """The resolvers conf/train.yaml and conf/resume.yaml use for run and sweep folders, and the help's group list."""
    OmegaConf.register_new_resolver("fresh_folder", fresh_folder, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("safe_slug", safe_slug, replace=True)
    OmegaConf.register_new_resolver("resume_dir", lambda target: str(run_folder_of(target)), replace=True)
    OmegaConf.register_new_resolver("config_groups", config_groups_help, replace=True)


def exit_with_error(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


# Why a write failed, for the errors whose cause is not the disk's free space.
WRITE_FAILURES = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def output_error(error: OSError, path: Path) -> str:
    """A failed write as one line: which path and why; the free space only when the disk is full."""
    where = Path(error.filename) if getattr(error, "filename", None) else path
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        probe = next((p for p in (where, *where.parents) if p.exists()), Path("."))
        return (
            f"cannot write {where}: {error.strerror or error}; {shutil.disk_usage(probe).free / 2**20:.0f} MiB free "
            "on that disk. Free some space or choose another folder"
        )
    if error.errno in (errno.ENOTDIR, errno.EEXIST):  # EEXIST: mkdir(exist_ok=True) on a file
        blocker = next((p for p in (where, *where.parents) if p.exists() and not p.is_dir()), where)
        return f"cannot create {where}: {blocker} is not a directory (a file is in the way). Choose another folder"
    if error.errno in WRITE_FAILURES:
        owner = next((p for p in (where, *where.parents) if p.exists()), where)  # the nearest part that is there
        return f"cannot write {where}: {WRITE_FAILURES[error.errno]} on {owner}. Choose another folder"
    return f"cannot write {where}: {error.strerror or error}. Choose another folder"


@contextmanager
def output_errors(run_dir: Path):
    """Turn a full disk, a read-only or forbidden run folder, or a run folder below a file into an OutputError saying
    which path and why (not a traceback from deep inside torch.save)."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR):
            raise
        raise OutputError(output_error(e, run_dir)) from e


def check_free_space(run_dir: Path, needed_bytes: int) -> None:
    """Refuse to start when the run folder's disk cannot hold even one checkpoint."""
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise OutputError(
            f"{run_dir} has {free / 2**20:.0f} MiB free, but one checkpoint of this run needs about "
            f"{needed_bytes / 2**20:.0f} MiB. Free some space or choose another folder (hydra.run.dir=...)"
        )


class RunLock:
    """An exclusive lock on a run folder (flock on <run>/.lock) for as long as a process trains in it, so that a
    second process (a concurrent resume, a run pointed at the same folder) is refused instead of mixing two runs'
    steps. The kernel drops the lock when the process dies, even by kill -9: a lock is never stale. The lock file is
    removed on exit (a finished, failed or interrupted run leaves no .lock naming a dead pid) while the flock is still
    held, and an acquire checks that the file it locked is still the one at the path (see `_lock`)."""

    # a holder removing the file between our open and our flock makes us try again; more than a few races in a row
    # means processes keep taking and dropping the folder, which is as much "in use" as a held lock
    attempts = 3

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.file = None

    def __enter__(self) -> RunLock:
        for _ in range(self.attempts):
            self.file = self._lock()
            if self.file is not None:
                break
        else:
            raise RunLockedError(
                f"{self.path.parent} is in use: other processes kept taking and releasing its lock. Try again."
            )
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()
        return self

    def _lock(self):
        """The locked lock file, or None when the file we locked is no longer the one at the path: its holder removed
        it (on exit) after we opened it, so our flock guards nothing and a newcomer could lock a new file alongside."""
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise RunLockedError(
                f"{self.path.parent} is in use by {holder}: a run folder is trained by one process at a time. Wait "
                "for it to finish (or stop it with Ctrl-C), then resume."
            ) from None
        if same_file(file, self.path):
            return file
        file.close()
        return None

    def __exit__(self, *exc) -> None:
        # unlink first, close (and so release the flock) second: whoever opened this file meanwhile sees on getting
        # the flock that it is no longer at the path, and locks the new one
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # a file left behind is harmless (the flock is the lock); the run's own error matters more
            pass
        self.file.close()


def same_file(file, path: Path) -> bool:
    """Whether the open `file` is the file now at `path` (same device and inode)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(file.fileno())
    return (opened.st_dev, opened.st_ino) == (at_path.st_dev, at_path.st_ino)


def remove_if_unstarted(run_dir: Path) -> bool:
    """Delete a folder this process created for a new run that failed before it trained a step (nothing in it but
    Hydra's record and the lock), so failed starts leave no empty run folders behind. Returns whether it did."""
    run_dir = run_dir.resolve()
    ours = run_dir in CREATED or run_dir.parent in CREATED  # a new run's folder, or a job folder of a new sweep
    if not ours or not run_dir.is_dir() or any(p.name not in UNSTARTED for p in run_dir.iterdir()):
        return False
    remove_created(run_dir)
    return True


def remove_created(folder: Path) -> None:
    """Delete a folder this process created, and the parents it created on the way that are left empty."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if parent not in CREATED_PARENTS or any(parent.iterdir()):
            break
        parent.rmdir()


def run_folder(cfg: DictConfig) -> Path:
    """The resumed run's folder, else Hydra's output folder, else trainer.run_dir (plain `train(cfg)` calls)."""
    if cfg.trainer.resume:
        return run_folder_of(cfg.trainer.resume)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.trainer.run_dir or f"outputs/{time.strftime('%Y-%m-%d/%H-%M-%S')}")


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# The signals that ask a run to stop cleanly: Ctrl-C; SIGTERM (kill, scancel, a requeue or preemption by SLURM);
# SIGUSR2 (submitit's warning before a SLURM time limit, and its preemption signal: scoredist.cluster requeues).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


@contextmanager
def stop_requests():
    """A stop signal sets a flag instead of killing the loop, so the step in flight finishes and a checkpoint is
    written; requested["signal"] names the first one. A second Ctrl-C interrupts at once. The handlers in place before
    (submitit's, in a cluster job) are put back on exit."""
    requested = {"signal": None}

    def handler(signum, frame):
        if requested["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested["signal"] = requested["signal"] or signal.Signals(signum).name
        print(
            f"\n{signal.Signals(signum).name} received: finishing this step and writing a checkpoint (Ctrl-C again "
            "to abort)",
            file=sys.stderr,
        )

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _json_lines(path: Path) -> Iterable[tuple[str, dict | None]]:
    """(line, record) per line; a line torn by a kill mid-write has record None."""
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        yield line, record if isinstance(record, dict) else None


def rewrite_lines(path: Path, lines: list[str]) -> None:
    """Replace a text file by writing a new one, fsyncing it and renaming it over the old: a kill at any moment leaves
    one of the two whole."""
    tmp = temporary_path(path)
    with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def finite_or_none(value, counter: list[int] | None = None):
    """JSON files hold valid JSON: a NaN or infinity becomes null (lists and dicts element by element), and each one
    replaced is counted in counter[0] when a counter is given."""
    if isinstance(value, float) and not math.isfinite(value):
        if counter is not None:
            counter[0] += 1
        return None
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v, counter) for v in value]
    if isinstance(value, dict):
        return {k: finite_or_none(v, counter) for k, v in value.items()}
    return value


def json_text(record, **kwargs) -> str:
    """Strict JSON (never the NaN / Infinity tokens other readers reject); callers pass values through
    finite_or_none first, so a non-finite value reaching here is a bug and raises."""
    return json.dumps(record, allow_nan=False, **kwargs)


class MetricsFile:
    """metrics.jsonl, one JSON object per logged step ("chunk", "step" = steps completed in that chunk)."""

    def __init__(self, path: Path):
        self.path = path

    def trim(self, keep: Callable[[int, int], bool]) -> None:
        """On resume, keep only the lines whose (chunk, step) `keep` accepts (not the steps that will be run again:
        those past the checkpoint, and every step of a chunk that starts over) and no torn line, by writing a new
        file and renaming it: a kill meanwhile loses nothing."""
        if self.path.exists():
            kept = [line for line, r in _json_lines(self.path) if r is not None and keep(*_position(r))]
            rewrite_lines(self.path, kept)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json_text(record) + "\n")


def _position(record: dict) -> tuple[int, int]:
    return int(record.get("chunk", 0)), int(record.get("step", 0))


class SamplesFile:
    """samples.jsonl: one line per finished sample (index, chunk, prompt, seed, steps, time, metrics).

    A chunk counts as finished when all its samples have a line. Lines of unfinished chunks (a kill while a chunk's
    lines were being written) and of chunks about to be run again are dropped (`tidy`, once the run has started), so
    nothing is ever recorded twice."""

    def __init__(self, path: Path, chunk_sizes: list[int], rerun: Iterable[int] = ()):
        self.path = path
        self.records: dict[int, dict] = {}
        if path.exists():
            records = [r for _, r in _json_lines(path) if r is not None and "index" in r]
            per_chunk: dict[int, list[dict]] = {}
            for r in records:
                per_chunk.setdefault(int(r["chunk"]), []).append(r)
            rerun = set(rerun)
            for chunk, rs in per_chunk.items():
                whole = chunk < len(chunk_sizes) and len({r["index"] for r in rs}) == chunk_sizes[chunk]
                if whole and chunk not in rerun:
                    self.records.update({int(r["index"]): r for r in rs})

    def tidy(self) -> None:
        """Rewrite the file with the records kept (write new, rename)."""
        if self.path.exists():
            kept = sorted(self.records.values(), key=lambda r: r["index"])
            rewrite_lines(self.path, [json_text(r) for r in kept])

    def finished_chunks(self) -> set[int]:
        return {int(r["chunk"]) for r in self.records.values()}

    def write_chunk(self, records: list[dict]) -> None:
        """All lines of a chunk in one write."""
        with open(self.path, "a") as f:
            f.write("".join(json_text(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.records.update({int(r["index"]): r for r in records})


# What a checkpoint can only be resumed with: its state dicts belong to these classes. (An LR schedule added or
# dropped on resume is refused where its state is loaded.)
RECIPE_KEYS = ("loss", "renderer", "guidance", "optimizer")


def recipe(cfg: DictConfig) -> dict[str, str | None]:
    """The classes a run's checkpoint belongs to ({"loss": "scoredist.losses.ours.Ours", ...})."""
    return {key: OmegaConf.select(cfg, f"{key}._target_") for key in RECIPE_KEYS}


def check_resume_recipe(checkpoint: dict, cfg: DictConfig, path: Path) -> None:
    """Refuse to load a checkpoint into other classes than the ones that wrote it, naming both."""
    saved, now = checkpoint.get("recipe") or {}, recipe(cfg)
    name = lambda target: target.rsplit(".", 1)[-1] if target else "none"
    for key in RECIPE_KEYS:
        if key in saved and saved[key] != now[key]:  # checkpoints older than a key do not name it: not checked
            raise ValueError(
                f"{path} was trained with {key} {name(saved[key])} ({saved[key]}), but this resume asks for "
                f"{name(now[key])} ({now[key]}): a run keeps its {key}. Resume without changing {key}, or start a new "
                "run."
            )


def config_changes(old: DictConfig, new: DictConfig) -> dict[str, list]:
    """{dotted key: [before, after]} between two configs, unresolved (so `${trainer.max_steps}` inside a loss is not a
    difference when only max_steps changed); where the run is (trainer.resume, run_dir) is not part of the recipe."""
    flat_old, flat_new = (dict(leaves(OmegaConf.to_container(c, resolve=False))) for c in (old, new))
    keys = sorted((set(flat_old) | set(flat_new)) - {"trainer.resume", "trainer.run_dir"})
    return {k: [flat_old.get(k), flat_new.get(k)] for k in keys if flat_old.get(k) != flat_new.get(k)}


def leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf of nested dicts and lists (list items as key[i])."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def report_config_changes(changes: dict[str, list], resumed_at: tuple[int, int]) -> None:
    """Say what a resume changes: a longer run continues its schedules; another prompt or seed is allowed but rarely
    what was meant."""
    for key, (before, after) in changes.items():
        log.info(f"resume at chunk {resumed_at[0]} step {resumed_at[1]}: {key} {before!r} -> {after!r}")
    if "trainer.max_steps" in changes:
        log.info(
            "the run continues the schedules it started with (stage switch, t decay, LR decay keep the lengths saved "
            "in the checkpoint)"
        )
    risky = ("prompt", "prompt_file", "samples_per_prompt", "seed", "schedule")
    for key in sorted({k.split(".")[0] for k in changes} & set(risky)):
        log.warning(f"warning: resuming with a different `{key}` than the run was started with")


def record_resume(run_dir: Path, cfg: DictConfig, changes: dict[str, list], resumed_at: tuple[int, int]) -> None:
    """Once a resume has started: the new recipe becomes config.yaml (so the next plain resume continues it), and
    what changed is appended to resumes.jsonl, the run's history."""
    entry = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "chunk": resumed_at[0],
        "step": resumed_at[1],
        "overrides": command_line_overrides(),
        "changes": finite_or_none(changes),
    }
    with open(run_dir / "resumes.jsonl", "a") as f:
        f.write(json_text(entry, default=str) + "\n")
    save_config(cfg, run_dir / "config.yaml")


def save_config(cfg: DictConfig, path: Path) -> None:
    """config.yaml, unresolved (interpolations kept, as the user wrote them), written new and renamed."""
    rewrite_lines(path, OmegaConf.to_yaml(cfg, resolve=False).splitlines())


def command_line_overrides() -> list[str]:
    """This command's overrides (Hydra runs); [] for a plain train(cfg) call."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


# --- the command line: one job, and sweeps that survive a bad job ---------------------------------------------------


def config_groups_help() -> str:
    """The groups list of `python train.py --help` (`${config_groups:}` in conf/hydra/help/scoredist.yaml), read from
    Hydra's config search path as Hydra's own $APP_CONFIG_GROUPS is, but written as they are typed: `group=` for the
    groups the config chooses (its choice first), `+group=` for the ones a command adds (experiment, benchmark), and
    the launchers a sweep (-m) can run on."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    if not GlobalHydra.instance().is_initialized():
        return ""
    loader = GlobalHydra.instance().config_loader()
    chosen = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    groups = [g for g in loader.list_groups("") if g != "hydra"]
    return groups_help({g: loader.get_group_options(g) for g in [*groups, "hydra/launcher"]}, chosen)


def groups_help(options: dict[str, list[str]], chosen: dict[str, str | None]) -> str:
    """One line per group, `group=choice|other|...`, the config's choice first (a group it leaves empty, as
    lr_scheduler, says so); `+group=...` for a group the config does not choose."""
    lines = []
    for group in sorted(options, key=lambda g: (g.startswith("hydra/"), g not in chosen, g)):
        names = sorted(options[group])
        if group not in chosen:
            lines.append(f"+{group}={'|'.join(names)}")
        elif chosen[group] is None:
            lines.append(f"{group}={'|'.join(names)}   (none by default)")
        else:
            lines.append(f"{group}={'|'.join([chosen[group], *(n for n in names if n != chosen[group])])}")
    return "\n".join(lines)


def resume_arguments(argv: list[str]) -> list[str]:
    """`python train.py trainer.resume=RUN [overrides]` rewritten to compose the run's own recipe: Hydra gets RUN as a
    config folder and conf/resume.yaml (RUN's config.yaml plus the run-folder settings) as the config, with this
    command line's overrides on top. Any other command line is returned as it is. A resume target that does not
    exist ends the command here, before Hydra creates anything."""
    targets = [
        value for key, sep, value in (a.partition("=") for a in argv) if sep and key.lstrip("+") == "trainer.resume"
    ]
    target = targets[-1].strip("'\"") if targets else None
    if target in (None, "", "null"):
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        exit_with_error("trainer.resume continues one run; resume the runs of a sweep one at a time")
    run, checkpoint = run_folder_of(target), checkpoint_path(target)
    if not run.is_dir():
        exit_with_error(
            f"no run folder {run}: trainer.resume takes a run's folder (outputs/...) or one of its .pt files"
        )
    if not checkpoint.is_file():
        exit_with_error(f"no checkpoint at {checkpoint}: this run stopped before its first checkpoint; start it again")
    if not (run / "config.yaml").is_file():
        exit_with_error(f"{run} has no config.yaml (the run's recipe), so it cannot be resumed from the command line")
    return ["--config-dir", str(run.resolve()), "--config-name", "resume", *argv]


# Flags of `python train.py` that take the next argument as their value (Hydra's own command line).
VALUE_FLAGS = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp"}


def flag_value(argv: list[str], *names: str) -> str | None:
    """The value of the last of these flags (`--config-dir X` or `--config-dir=X`), or None."""
    value = None
    for i, arg in enumerate(argv):
        key, sep, rest = arg.partition("=")
        if key in names:
            value = rest if sep else (argv[i + 1] if i + 1 < len(argv) else None)
    return value


def default_groups(config: Path) -> set[str]:
    """The groups a primary config's defaults list chooses (`loss: sds`, `override /guidance: shapes`), which the
    command line changes with `group=option`; any other group is added with `+group=option`."""
    if not config.is_file():
        return set()
    entries = OmegaConf.to_container(OmegaConf.load(config)).get("defaults") or []
    groups = set()
    for entry in entries:
        if isinstance(entry, dict):
            for key in entry:
                groups.add(key.split()[-1].lstrip("/").split("@")[0])  # "override /guidance@x" -> "guidance"
    return groups


def choice_error(argv: list[str], conf_dir: Path) -> str | None:
    """What is wrong with the command line's `group=option` / `+group=option` arguments, as one line naming the group,
    the option and the options there are; None if nothing. Hydra says it too, but with exit status 1 (a bug's) and a
    paragraph; this runs before Hydra, so every user error exits 2. Only groups that are folders of conf/ are checked:
    hydra/* (launchers, logging) and whatever Hydra's plugins add are left to Hydra, and so is an argument Hydra
    cannot parse or a glob sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(a.startswith(("hydra.searchpath", "+hydra.searchpath", "++hydra.searchpath")) for a in argv):
        return None  # options may come from anywhere then
    extra = flag_value(argv, "--config-dir", "-cd")
    dirs = [conf_dir, *([Path(extra)] if extra else [])]
    primary = f"{flag_value(argv, '--config-name', '-cn') or 'train'}.yaml"
    defaults = set().union(*(default_groups(d / primary) for d in dirs))
    parser = OverridesParser.create()
    for i, arg in enumerate(argv):
        if arg.startswith("-") or "=" not in arg or (i and argv[i - 1] in VALUE_FLAGS):
            continue
        try:
            override = parser.parse_override(arg)
            group = override.key_or_group
            if override.is_delete() or group.split("/")[0] == "hydra" or not (conf_dir / group).is_dir():
                continue
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        except HydraException:
            continue
        options = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})
        for value in values:
            if value in (None, "null"):  # Hydra's ValueError, with a traceback
                return f"{arg}: a group is left out with ~{group}, not {group}=null"
            if not any((d / group / f"{value}.yaml").is_file() for d in dirs):
                return f"{arg}: {group} has no option {value!r}. Available options: {', '.join(options)}"
        if override.is_add() and group in defaults:
            return f"{arg}: {group} is chosen by the config already; change it with {arg.lstrip('+')}"
        if not override.is_add() and not override.is_force_add() and group not in defaults:
            return f"{arg}: {group} is not chosen by the config; add it with +{arg}"
    return None


def run_job(cfg: DictConfig, train) -> dict:
    """What `python train.py` does with one composed config: train, and turn the outcome into an exit status.

    A user error prints one line (exit 2); a bug its traceback (exit 1), which the run's train.log keeps too; an
    interrupted run exits 130. (train() itself removes the folder of a new run that never trained a step.) Inside a
    sweep (-m) a failed job does not end the sweep: it is reported, recorded for the sweep's summary (RunFolderGuard)
    and the next job runs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    logging.captureWarnings(True)  # warnings go to the console and train.log like every other message
    if sweep:
        continue_requeued_run(cfg, run_dir)
    try:
        result = train(cfg)
    except Exception as e:
        message = user_error(e)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            record_traceback(e, run_dir)
            if not sweep:
                raise  # Hydra prints the traceback and exits 1
            traceback.print_exc()
            message = f"{type(e).__name__}: {e} (a bug: traceback above)"
        else:
            report_error(message, run_dir)
        if not sweep:
            raise SystemExit(2) from None
        return {"status": "failed", "error": message}
    if result.interrupted:
        from scoredist.cluster import requeue_if_warned

        requeue_if_warned(result.stopped_by)  # the scheduler's warning: back in the queue, continuing there
        raise SystemExit(130)  # Ctrl-C ends a sweep too
    return {"status": "finished", "run_dir": str(result.run_dir)}


def continue_requeued_run(cfg: DictConfig, run_dir: Path) -> None:
    """A sweep job whose folder holds a checkpoint already has run before: the scheduler stopped it (a time limit,
    a preemption, `scontrol requeue`) and started it again with the same config. It continues its run at that
    checkpoint instead of training again from step 0 over its own record (the sweep's folder was new, so nothing
    else can have written there). Stopped before its first checkpoint, it starts over: the earlier attempt's partial
    record (metrics, images) is removed first; train.log keeps both attempts."""
    if cfg.trainer.resume or not run_dir.is_dir():
        return
    if checkpoint_path(run_dir).is_file():
        log.info(f"{run_dir} holds this job's run from an earlier start (requeued): continuing it from its checkpoint")
        with open_dict(cfg):
            cfg.trainer.resume = str(run_dir)
        return
    for path in run_dir.iterdir():
        if path.name not in (".hydra", "train.log"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def report_error(message: str, run_dir: Path) -> None:
    """A user error on stderr, and in the run's train.log when the run folder is still there."""
    if run_dir.is_dir():
        log.error(f"error: {message}")
    else:
        print(f"error: {message}", file=sys.stderr)


# train.log only (conf/hydra/job_logging/scoredist.yaml): the terminal gets a bug's traceback from Hydra, or from
# run_job inside a sweep, so logging it to the console as well would print it twice.
TRACEBACKS = logging.getLogger("scoredist.tracebacks")


def record_traceback(error: BaseException, run_dir: Path) -> None:
    """A bug's traceback in the run's train.log when the run folder is still there (a new run that failed before its
    first step has none), so the run's record says how it ended."""
    if run_dir.is_dir():
        TRACEBACKS.error("error: the run stopped on an error that is not a setting's (a bug?):", exc_info=error)


def last_job_records(sweep_dir: Path) -> dict[int, dict]:
    """<sweep>/jobs.jsonl as {job number: its last record}, in job order (a job requeued by a scheduler may have
    ended more than once)."""
    path = sweep_dir / "jobs.jsonl"
    records = [r for _, r in _json_lines(path) if r is not None and "num" in r] if path.exists() else []
    return dict(sorted({int(r["num"]): r for r in records}.items()))


class RunFolderGuard(Callback):
    """Hydra callbacks that keep runs apart and sweeps honest.

    - A new run or sweep never writes into a folder that already holds something (an explicit hydra.run.dir or
      hydra.sweep.dir pointing at an old run), and a folder that cannot be created is a one-line error.
    - Each sweep job's outcome is appended to <sweep>/jobs.jsonl (with when it ran and the GPUs it saw); at the end
      the sweep prints a summary of the failed jobs and exits non-zero if there were any.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if not config.trainer.resume:
            self._claim(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if OmegaConf.select(config, "trainer.resume"):
            exit_with_error("trainer.resume continues one run; resume the runs of a sweep one at a time")
        self._claim(config, "hydra.sweep.dir")

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        self._job_started = time.time()

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        outcome = job_return._return_value
        if not isinstance(outcome, dict):  # an exception that escaped the job (not a user error)
            outcome = {"status": "failed", "error": f"{type(outcome).__name__}: {outcome}"}
        record = {"num": config.hydra.job.num, "overrides": list(config.hydra.overrides.task), **outcome}
        # when and where it ran: the job's own clock and the devices it was given (a local sweep's one GPU each)
        record.update(started=getattr(self, "_job_started", None), ended=time.time())
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            record["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
        folder = Path(config.hydra.runtime.output_dir)
        if outcome.get("status") != "finished" and folder.is_dir():  # a failed new job has none (train removed it)
            record["folder"] = str(folder)
        with open(Path(config.hydra.sweep.dir) / "jobs.jsonl", "a") as f:
            f.write(json_text(record, default=str) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from scoredist.cluster import jobs_summary

        jobs = list(last_job_records(Path(config.hydra.sweep.dir)).values())
        failed = [r for r in jobs if r.get("status") != "finished"]
        print(
            f"sweep {config.hydra.sweep.dir}: {len(jobs) - len(failed)} of {len(jobs)} jobs finished", file=sys.stderr
        )
        for line in jobs_summary(jobs):
            print(line, file=sys.stderr)
        if failed:
            raise SystemExit(1)

    @staticmethod
    def _claim(config: DictConfig, key: str) -> None:
        """Resolve the folder (creating it, for ${fresh_folder:...}) and refuse one that already holds files."""
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # ${hydra:...} in the name needs it, as in Hydra's own run_job
        folder = Path(str(OmegaConf.select(config, key))).resolve()
        if folder in CREATED:
            return
        if folder.is_dir() and any(folder.iterdir()):
            exit_with_error(
                f"{folder} already holds files (a previous run?); a new run never writes into another's folder. "
                f"Continue that run with {resume_hint(folder)}, or choose another {key}"
            )
        try:
            existed = folder.is_dir()
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            exit_with_error(output_error(e, folder.parent))
        if not existed:
            CREATED.add(folder)
