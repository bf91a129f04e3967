"""Run folders and what they record: where a run writes, its metrics and samples files, signals, RNG state.

A run folder holds config.yaml, metrics.jsonl, samples.jsonl and samples/, progress/, final.png, checkpoints/ and the
renderer's own artifacts. Everything here is about not losing or mixing up work; the loop itself is in train.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from scoredist.checkpoint import run_folder_of


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


@contextmanager
def stop_requests():
    """SIGINT / SIGTERM set a flag instead of killing the loop, so the step in flight finishes and a checkpoint is
    written. A second Ctrl-C interrupts at once."""
    requested = {"signal": None}

    def handler(signum, frame):
        if requested["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested["signal"] = signal.Signals(signum).name
        print(f"\n{requested['signal']} received: finishing this step and writing a checkpoint (Ctrl-C again to abort)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
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
    """Replace a JSON-lines file by writing a new one and renaming it over the old: a kill at any moment leaves one
    of the two whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


class MetricsFile:
    """metrics.jsonl, one JSON object per logged step ("chunk", "step" = steps completed in that chunk). On resume,
    lines past the checkpoint's (chunk, step) are dropped: they belong to steps that will be run again."""

    def __init__(self, path: Path, resume_at: tuple[int, int] | None):
        self.path = path
        if resume_at is not None and path.exists():
            kept = [line for line, r in _json_lines(path) if r is not None and _position(r) <= resume_at]
            rewrite_lines(path, kept)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _position(record: dict) -> tuple[int, int]:
    return int(record.get("chunk", 0)), int(record.get("step", 0))


class SamplesFile:
    """samples.jsonl: one line per finished sample (index, chunk, prompt, seed, steps, time, metrics).

    A chunk counts as finished when all its samples have a line. Lines of unfinished chunks (a kill while a chunk's
    lines were being written) and of chunks about to be run again are dropped when the run starts, so nothing is
    ever recorded twice."""

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
            kept = sorted(self.records.values(), key=lambda r: r["index"])
            rewrite_lines(path, [json.dumps(r) for r in kept])

    def finished_chunks(self) -> set[int]:
        return {int(r["chunk"]) for r in self.records.values()}

    def write_chunk(self, records: list[dict]) -> None:
        """All lines of a chunk in one write."""
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.records.update({int(r["index"]): r for r in records})


def warn_if_config_changed(saved: Path, cfg: DictConfig) -> None:
    """Resuming with a different method or prompt is allowed but almost always a mistake: say so."""
    if not saved.exists():
        return
    old = OmegaConf.load(saved)
    if old.trainer.max_steps != cfg.trainer.max_steps:
        print(
            f"trainer.max_steps {old.trainer.max_steps} -> {cfg.trainer.max_steps}: the run continues the schedules it "
            "started with (stage switch, t decay, LR decay keep the lengths saved in the checkpoint)"
        )
    for key in ("prompt", "prompt_file", "samples_per_prompt", "seed", "loss", "renderer", "guidance", "schedule"):
        # unresolved, so that `${trainer.max_steps}` inside a loss is not a difference when only max_steps changed
        before, now = (OmegaConf.to_container(c, resolve=False).get(key) for c in (old, cfg))
        if before != now:
            warnings.warn(f"resuming with a different `{key}` than the run was started with ({saved})", stacklevel=1)
