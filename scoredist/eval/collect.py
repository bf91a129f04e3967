"""Finished run folders as the rows of a comparison: which method a folder ran, and its samples.

A run folder (`scoredist.train.train`, or `scripts/sample.py` for the DDIM lower bound) holds `config.yaml`,
`samples.jsonl` (one record per finished sample: index, prompt, seed, seconds, image) and `samples/NNNNN.png`. A
benchmark folder, a Hydra multirun folder or any folder above them is searched for run folders; one that has not
finished every sample its config asks for is skipped with a warning naming it.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from scoredist.runs import _json_lines  # one reader of JSON-lines files (torn lines skipped)

# Rows in the paper's order, the methods since it, then the rest; labels as the papers' tables write them.
METHOD_ORDER = ("exact", "ddim", "sds", "nfsd", "csd", "vsd", "vsd_exact", "ours", "bridge")
METHOD_ORDER += ("ism", "sdi", "esd", "asd", "dds", "sds_flow", "ours_flow", "rfds")
TUNED = "_tuned"  # the suffix of a row in a benchmark's tuned setting (scoredist.eval.tuning)
METHOD_LABELS = {
    "exact": "Exact samples (floor)",
    "ddim": "DDIM (lower bound)",
    "sds": "SDS",
    "nfsd": "NFSD",
    "csd": "CSD",
    "vsd": "VSD",
    "vsd_exact": "VSD, exact source",
    "ours": "Ours",
    "bridge": "Bridge",
    "ism": "ISM",
    "sdi": "SDI",
    "esd": "ESD",
    "asd": "ASD",
    "dds": "DDS",
    "sds_flow": "SDS, flow prior",
    "ours_flow": "Ours, flow prior",
    "rfds": "RFDS, flow prior",
}


@dataclass
class RunFolder:
    """One finished run: its folder, config, method and sample records (sorted by index)."""

    path: Path
    config: DictConfig
    records: list[dict] = field(default_factory=list)
    parts: list[Path] = field(default_factory=list)  # the shards' folders of a run trained in shards (`merge_shards`)

    def part_records(self, name: str) -> list[dict]:
        """The records of a JSON-lines file of the run (snapshots.jsonl, ...), over its shards' folders where it
        was trained in shards, with file names ("image", "tensor") relative to `path` as in `records`."""
        records = []
        for part in self.parts or [self.path]:
            for _, r in _json_lines(part / name) if (part / name).exists() else []:
                if r is not None:
                    records.append(relative_files(r, part, self.path))
        return records

    @property
    def method(self) -> str:
        return method_of(self.config)

    @property
    def label(self) -> str:
        """The method as a table row names it, e.g. "Bridge (k = 4)" or "DDIM (lower bound)"."""
        method = self.method.removesuffix(TUNED)
        label = METHOD_LABELS.get(method, method)
        if method == "bridge":
            label += f" (k = {self.config.loss.num_steps})"
        return label + (", tuned" if self.method.endswith(TUNED) else "")

    def prompts(self) -> list[str]:
        """Distinct prompts in sample order."""
        return list(dict.fromkeys(r["prompt"] for r in self.records))

    def images_of(self, prompt: str) -> list[Path]:
        return [self.path / r["image"] for r in self.records if r["prompt"] == prompt]

    def seconds_per_sample(self) -> float:
        return sum(float(r["seconds"]) for r in self.records) / len(self.records)


def method_of(config) -> str | None:
    """What a run ran, the one name for it everywhere (table rows, wandb names and tags, sample.py's folders): a
    lower-bound folder's sampler ("ddim", or "exact"; its config has a `sampler` node), else the loss's module name
    ("ours"); a benchmark row's own name where its preset set one (`benchmark.row`: "vsd_exact" is VSD's loss with
    another source model). Takes a DictConfig or a plain dict; None when the config names neither."""
    bench = config.get("benchmark")
    row = bench.get("row") if hasattr(bench, "get") else None  # a tracker run's config may name a benchmark by title
    if row:
        return str(row)
    sampler = config.get("sampler")
    if sampler is not None:
        return str(sampler.get("name") or "ddim")
    return component_name((config.get("loss") or {}).get("_target_"))


def component_name(target: str | None) -> str | None:
    """The config file a component comes from, by its class's module: scoredist.losses.ours.Ours → "ours"."""
    return str(target).rsplit(".", 2)[-2] if target and str(target).count(".") >= 2 else target


def expected_samples(config: DictConfig) -> int | None:
    """prompts × samples_per_prompt as the run's config asks, or its shard's share of them (trainer.shard of
    trainer.shards); None if its prompt file is gone."""
    from scoredist.samples import read_prompts, shard_sample_indices

    try:
        captions = read_prompts(config.prompt, config.get("prompt_file"))
    except (FileNotFoundError, ValueError):
        return None
    total = len(captions) * int(config.get("samples_per_prompt", 1))
    shards, shard = shard_of(config)
    if shards == 1:
        return total
    return len(shard_sample_indices(total, min(int(config.trainer.batch_size), total), shard, shards))


def shard_of(config) -> tuple[int, int]:
    """(trainer.shards, trainer.shard) of a run's config; (1, 0) for a whole run."""
    trainer = config.get("trainer") or {}
    return int(trainer.get("shards", 1)), int(trainer.get("shard", 0))


def read_records(path: Path) -> list[dict]:
    """samples.jsonl records sorted by index (a torn last line of a killed run is ignored)."""
    records = {int(r["index"]): r for _, r in _json_lines(path) if r is not None and "index" in r}
    return [records[i] for i in sorted(records)]


def read_run(run_dir: Path) -> RunFolder | None:
    """A run folder if it finished every sample, else None with a warning that names it and says why."""
    config = OmegaConf.load(run_dir / "config.yaml")
    samples = run_dir / "samples.jsonl"
    records = read_records(samples) if samples.exists() else []
    expected = expected_samples(config)
    if not records or (expected is not None and len(records) < expected):
        done = f"{len(records)} of {expected}" if expected is not None else "none"
        warnings.warn(f"skipping unfinished run {run_dir}: {done} samples finished", stacklevel=2)
        return None
    return RunFolder(run_dir, config, records)


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every run folder at or below `root`: a folder whose config.yaml is a run's (Hydra's .hydra/ and wandb's own
    folders hold config.yaml files too)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of runs (give a benchmark, multirun or run folder)")
    found = []
    for path in root.rglob("config.yaml"):
        if {".hydra", "wandb"} & set(path.relative_to(root).parts[:-1]):
            continue
        if "trainer" in OmegaConf.load(path):
            found.append(path.parent)
    return sorted(found)


def relative_files(record: dict, folder: Path, root: Path) -> dict:
    """A record whose file names are relative to `folder`, with them relative to `root` (a folder above it)."""
    moved = {k: os.path.relpath(folder / record[k], root) for k in FILE_KEYS if k in record}
    return {**record, **moved}


FILE_KEYS = ("image", "tensor")  # the keys of samples.jsonl / snapshots.jsonl records that name files


def merge_shards(runs: list[RunFolder]) -> list[RunFolder]:
    """Runs trained in shards (trainer.shards > 1; a benchmark's prompt shards, or a sweep over trainer.shard) as
    one run each: the shards of one config, every shard finished, become a RunFolder at their folders' common
    parent with every shard's records (file names relative to it). A run some of whose shards have not finished
    is left out with a warning naming them."""
    whole, groups = [], {}
    for run in runs:
        if shard_of(run.config)[0] == 1:
            whole.append(run)
        else:
            groups.setdefault(shard_key(run.config), []).append(run)
    for shards in groups.values():
        count = shard_of(shards[0].config)[0]
        have = {shard_of(r.config)[1]: r for r in shards}
        parent = Path(os.path.commonpath([str(r.path.resolve()) for r in shards]))
        if len(have) < count:
            missing = sorted(set(range(count)) - set(have))
            warnings.warn(f"skipping run {parent}: shards {missing} of {count} have not finished", stacklevel=2)
            continue
        ordered = [have[i] for i in range(count)]
        config = OmegaConf.merge(ordered[0].config, {"trainer": {"shards": 1, "shard": 0, "run_dir": str(parent)}})
        records = [relative_files(r, run.path.resolve(), parent) for run in ordered for r in run.records]
        whole.append(RunFolder(parent, config, records, parts=[r.path.resolve() for r in ordered]))
    return whole


def shard_key(config: DictConfig) -> str:
    """What the shards of one run share: the config less where each shard ran and which one it is."""
    plain = OmegaConf.to_container(config, resolve=False)
    for key in ("shard", "run_dir", "resume", "device"):
        plain.get("trainer", {}).pop(key, None)
    return json.dumps(plain, sort_keys=True, default=str)


def collect_runs(roots, methods: list[str] | None = None) -> list[RunFolder]:
    """The finished runs under one or several folders, in the paper's row order (only `methods`, if given); the
    shards of a run trained in shards merged into one; a method listed in `methods` with no finished folder is
    warned about."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    dirs = sorted({d.resolve(): d for root in roots for d in find_run_dirs(root)}.values())
    runs = merge_shards([r for r in (read_run(d) for d in dirs) if r is not None])
    if methods is not None:
        runs = [r for r in runs if r.method in methods]
        for missing in [m for m in methods if m not in {r.method for r in runs}]:
            where = ", ".join(str(r) for r in roots)
            warnings.warn(f"no finished run of method {missing!r} under {where}: its row is left out", stacklevel=2)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    # a tuned row (scripts/benchmark.py --tune) right after its paper-setting row
    base = {r.path: r.method.removesuffix(TUNED) for r in runs}
    return sorted(
        runs, key=lambda r: (order.get(base[r.path], len(order)), base[r.path], r.method.endswith(TUNED), str(r.path))
    )
