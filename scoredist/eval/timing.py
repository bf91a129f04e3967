"""Cost of a benchmark's rows, counted and timed fairly: guidance rows per sample per step (counted, the NFE a GPU
pays) and seconds per step from interleaved rounds — every method's trainer is set up once, then each runs a short
slice of steps in turn, round after round, and the median over rounds is reported, so that a change in machine load
hits every row alike (timing each row while it trains, minutes apart, does not: a rerun moved ours ÷ SDS from 0.67 to
0.25). The same slices calibrate `--dry-run`'s cost preview.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate


@dataclass
class Slice:
    seconds_per_step: float
    rows_per_sample_step: float


class StepTimer:
    """One method's trainer at the benchmark's real batch (its first chunk), set up once and stepped in slices.
    Nothing is written: the run folder is never created."""

    def __init__(self, cfg, guidance=None):
        from scoredist.devices import pick_device
        from scoredist.samples import make_samples, read_prompts
        from scoredist.train import Chunk, Run, plan_chunks

        device = pick_device(cfg.trainer.device)
        guidance = guidance or instantiate(cfg.guidance, device=str(device), precision=cfg.trainer.precision)
        run = Run(
            cfg, Path(cfg.trainer.run_dir or "."), device, guidance, instantiate(cfg.loss), instantiate(cfg.schedule)
        )
        samples = make_samples(
            read_prompts(cfg.prompt, cfg.get("prompt_file")), cfg.get("samples_per_prompt", 1), cfg.seed
        )
        self.run = run
        self.chunk = Chunk(run, 0, plan_chunks(cfg, samples)[0])

    def slice(self, steps: int) -> Slice:
        self.run.rows.take()
        start = time.perf_counter()
        for _ in range(steps):
            self.chunk.train_step()
        if self.run.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        rows = self.run.rows.take() / steps / len(self.chunk.samples)
        return Slice(seconds, rows)


def interleaved(configs: dict, steps: int = 3, rounds: int = 3, warmup: int = 1, guidance=None) -> dict[str, Slice]:
    """{method: Slice} with the median seconds per step over `rounds` rounds of `steps` steps per method in turn,
    after `warmup` untimed steps each. `guidance`: one frozen model shared by every method (the exact prior's tables
    once in memory, not once per method)."""
    timers = {m: StepTimer(cfg, guidance) for m, cfg in configs.items()}
    for timer in timers.values():
        if warmup:
            timer.slice(warmup)
    per_round: dict[str, list[Slice]] = {m: [] for m in timers}
    for _ in range(rounds):
        for method, timer in timers.items():
            per_round[method].append(timer.slice(steps))
    return {
        m: Slice(statistics.median(s.seconds_per_step for s in slices), slices[-1].rows_per_sample_step)
        for m, slices in per_round.items()
    }
