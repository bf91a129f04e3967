"""What a run distils: N = prompts × samples_per_prompt samples, each with its own seed, in chunks of
trainer.batch_size.

Batch invariance: sample i draws its initial value, its timesteps and its noise from generators seeded by
(run seed, i) alone, so its result does not depend on the batch size or on the chunk it runs in. Two exceptions:
VSD's source model is shared by the samples of a chunk (as ProlificDreamer's particles share theirs), and a step in
which one sample's direction or gradient is not finite is skipped for the whole chunk (a chunk's parameters are one
tensor under one optimizer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

# Purposes of the streams derived from a sample's seed: its initial value, and its per-step draws (t, ε).
INIT, STEPS = 0, 1


@dataclass(frozen=True)
class Sample:
    """One sample of the run: its index in the run, its caption, where the caption came from, and its seed."""

    index: int
    caption: str
    seed: int
    source: str = "prompt"  # "prompt", "prompt[2]" or "captions.txt:12", for error messages

    def stream_seed(self, purpose: int) -> int:
        """The seed of one of this sample's random streams (INIT or STEPS)."""
        return derive_seed(self.seed, purpose)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (numpy's SeedSequence hashing: nearby keys give unrelated streams)."""
    state = np.random.SeedSequence([int(k) % 2**64 for k in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed the global RNG starts a chunk with (a key no sample seed uses: two keys, not one)."""
    return derive_seed(seed, 2**63, chunk)


def read_prompts(prompt, prompt_file: str | None) -> list[tuple[str, str]]:
    """The run's captions as (caption, source) pairs: from `prompt_file` (one per line, UTF-8; blank lines and lines
    starting with # skipped) when set, else `prompt`, a string or a list of strings."""
    if prompt_file:
        path = Path(prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt_file {path} does not exist (one caption per line, UTF-8)")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"prompt_file {path} is not UTF-8 text ({e})") from None
        found = [(line.strip(), f"{path}:{n}") for n, line in enumerate(lines, 1)]
        found = [(c, s) for c, s in found if c and not c.startswith("#")]
        if not found:
            raise ValueError(f"prompt_file {path} has no captions (blank lines and # lines are skipped)")
        return found
    if isinstance(prompt, str):
        return [(prompt, "prompt")]
    if isinstance(prompt, Sequence) and len(prompt) > 0:
        for i, p in enumerate(prompt):
            if not isinstance(p, str):
                raise ValueError(f"prompt[{i}] must be a string, got {type(p).__name__} {p!r}")
        return [(p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    raise ValueError(
        f"prompt must be a string or a non-empty list of strings (or set prompt_file=PATH), got {prompt!r}"
    )


def make_samples(captions: Sequence[tuple[str, str]], samples_per_prompt: int, seed: int) -> list[Sample]:
    """Prompt-major order: samples 0 … k−1 are the first caption's, k … 2k−1 the second's, and so on."""
    if not isinstance(samples_per_prompt, int) or isinstance(samples_per_prompt, bool) or samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be a positive integer, got {samples_per_prompt!r}")
    samples = []
    for caption, source in captions:
        for _ in range(samples_per_prompt):
            i = len(samples)
            samples.append(Sample(i, caption, derive_seed(seed, i), source))
    return samples


def split_chunks(samples: Sequence[Sample], size: int) -> list[list[Sample]]:
    return [list(samples[i : i + size]) for i in range(0, len(samples), size)]


def shard_chunks(num_chunks: int, shard: int, shards: int) -> range:
    """The chunks that shard `shard` of `shards` trains (trainer.shard / trainer.shards): a contiguous share, the
    shares' lengths differing by at most one. Chunks seed their own streams, so a shard's samples are bitwise those
    of the same chunks in an unsharded run."""
    return range(shard * num_chunks // shards, (shard + 1) * num_chunks // shards)


def shard_sample_indices(num_samples: int, chunk_size: int, shard: int, shards: int) -> range:
    """The sample indices of one shard of a run of `num_samples` samples in chunks of `chunk_size`."""
    chunks = shard_chunks(-(-num_samples // chunk_size), shard, shards)
    return range(chunks.start * chunk_size, min(chunks.stop * chunk_size, num_samples))


class SampleStreams:
    """The per-step random draws of a chunk's samples: one generator per sample, on the run's device.

    `draw(samples_of_rows, ...)` gives every row its timestep and noise from the generator of the sample the row
    belongs to, in row order within each sample, so the draws of sample i are the same whatever else is in the batch.
    """

    def __init__(self, samples: Sequence[Sample], device: torch.device):
        self.device = device
        self.generators = []
        for s in samples:
            g = torch.Generator(device=device)
            g.manual_seed(s.stream_seed(STEPS))
            self.generators.append(g)

    def draw(self, rows: RowGroups, schedule, step: int, num_train_timesteps: int, shape: tuple[int, ...]):
        """(t (R,) long, noise (R, *shape)) for the R rows of a render."""
        ts, noises = [], []
        for sample, count in rows.counts:
            g = self.generators[sample]
            ts.append(schedule.sample(step, count, num_train_timesteps, self.device, generator=g))
            noises.append(torch.randn((count, *shape), generator=g, device=self.device))
        return rows.to_row_order(torch.cat(ts)), rows.to_row_order(torch.cat(noises))

    def state_dict(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        for g, s in zip(self.generators, state):
            g.set_state(s)


class RowGroups:
    """Which rows of a render belong to which sample of the chunk: `counts` [(sample, number of rows)] in sample
    order, and the permutation back from sample-grouped order to the render's row order (None if already grouped)."""

    def __init__(self, samples_of_rows: Sequence[int]):
        self.samples_of_rows = list(samples_of_rows)
        order = sorted(range(len(self.samples_of_rows)), key=lambda r: self.samples_of_rows[r])  # stable
        self.rows_of: dict[int, list[int]] = {}
        for row, s in enumerate(self.samples_of_rows):
            self.rows_of.setdefault(s, []).append(row)
        self.counts = sorted((s, len(rows)) for s, rows in self.rows_of.items())
        self._inverse = None
        self._cache: dict[tuple[str, str], torch.Tensor] = {}
        if order != list(range(len(order))):
            inverse = [0] * len(order)
            for grouped_position, row in enumerate(order):
                inverse[row] = grouped_position
            self._inverse = torch.tensor(inverse)

    def to_row_order(self, grouped: torch.Tensor) -> torch.Tensor:
        return grouped if self._inverse is None else grouped[self._on(grouped.device, "inverse", lambda: self._inverse)]

    def row_weights(self, device) -> torch.Tensor:
        """(R,) 1 / (rows of the row's sample): each sample's gradient is the mean over its own rows (a NeRF's cameras,
        a cloud's particles) and never depends on how many other samples share the batch."""
        sizes = dict(self.counts)
        return self._on(device, "weights", lambda: torch.tensor([1.0 / sizes[s] for s in self.samples_of_rows]))

    def _on(self, device, name: str, make) -> torch.Tensor:
        """A small index/weight tensor, made and copied to `device` once: no host-to-device copy inside a step."""
        key = (name, str(device))
        if key not in self._cache:
            self._cache[key] = make().to(device)
        return self._cache[key]


@lru_cache(maxsize=16)
def row_groups(samples_of_rows: tuple[int, ...]) -> RowGroups:
    """The RowGroups of a render's rows, built once per layout (a chunk renders the same layout every step)."""
    return RowGroups(samples_of_rows)
