"""Finished run folders as the rows of a comparison: which method a folder ran, and its samples.

A run folder (`scoredist.train.train`, or `scripts/sample.py` for the DDIM lower bound) holds `config.yaml`,
`samples.jsonl` (one record per finished sample: index, prompt, seed, seconds, image) and `samples/NNNNN.png`. A
benchmark folder, a Hydra multirun folder or any folder above them is searched for run folders; one that has not
finished every sample its config asks for is skipped with a warning naming it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from scoredist.runs import _json_lines  # one reader of JSON-lines files (torn lines skipped)

# Rows in the paper's order, then the rest; labels as the paper's table writes them.
METHOD_ORDER = ("exact", "ddim", "sds", "nfsd", "csd", "vsd", "vsd_exact", "ours", "bridge", "dds")
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
    "dds": "DDS",
}


@dataclass
class RunFolder:
    """One finished run: its folder, config, method and sample records (sorted by index)."""

    path: Path
    config: DictConfig
    records: list[dict] = field(default_factory=list)

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
    """prompts × samples_per_prompt as the run's config asks (None if its prompt file is gone)."""
    from scoredist.samples import read_prompts

    try:
        captions = read_prompts(config.prompt, config.get("prompt_file"))
    except (FileNotFoundError, ValueError):
        return None
    return len(captions) * int(config.get("samples_per_prompt", 1))


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


def collect_runs(roots, methods: list[str] | None = None) -> list[RunFolder]:
    """The finished runs under one or several folders, in the paper's row order (only `methods`, if given); a
    method listed in `methods` with no finished folder is warned about."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    dirs = sorted({d.resolve(): d for root in roots for d in find_run_dirs(root)}.values())
    runs = [r for r in (read_run(d) for d in dirs) if r is not None]
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
