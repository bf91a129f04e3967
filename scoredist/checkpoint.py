"""Run checkpoints: written atomically, read safely (weights_only), and refused with a clear message when foreign."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

FORMAT = "scoredist-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the file and says what to do."""


def run_folder_of(run_or_file: str | Path) -> Path:
    """The run folder of a resume target: the folder itself, or the run holding a checkpoints/*.pt file."""
    path = Path(run_or_file)
    return path.parent.parent if path.suffix == ".pt" else path


def checkpoint_path(run_or_file: str | Path) -> Path:
    """A run folder's last checkpoint, or the file itself if a .pt file was given."""
    path = Path(run_or_file)
    return path if path.suffix == ".pt" else path / "checkpoints" / "last.pt"


def temporary_path(path: Path) -> Path:
    """Where a file is written before it is renamed over `path` (a hidden name in the same folder, one per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete what killed writes left behind (`temporary_path` files) in a folder and its subfolders. Only call it
    while holding the run's lock: a live process's temporary file is not stale."""
    stale = [p for p in folder.rglob(".*.tmp-*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; when the block ends without an error, rename it over `path`.
    A kill at any moment leaves the previous file or the new one, never a torn one (and what a kill leaves at the
    temporary path is removed by `remove_temporaries` at the next start)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp = tmp.with_name(tmp.name + path.suffix)  # writers that pick a format by the suffix (ffmpeg) still find it
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over the old one: a kill at any moment leaves
    either the previous checkpoint or the new one, never a torn file."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: trainer.resume takes a run folder (holding checkpoints/last.pt) or a .pt file"
        )
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes): it was never written completely. Resume from another run folder or .pt "
            "file, or start a new run."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle of foreign classes, not a torch file at all
        reason = (str(e).splitlines() or [""])[0][:200]  # some errors (EOFError) have an empty message
        raise CheckpointError(
            f"{path} is not a readable scoredist checkpoint ({type(e).__name__}{': ' + reason if reason else ''}); "
            "it may be truncated or from another program. Resume from another run folder or start a new run."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a scoredist checkpoint (no '{FORMAT}' marker)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, this scoredist reads {VERSION}")
    return state
