"""The comparison table: one row per finished run folder, written as results.json, results.md and one image grid per
method, printed, and logged to the experiment tracker.

Rows carry what the metrics object returns (`ShapesMetrics`, `ZeroShotFID`) plus the time per sample, also as a ratio
to SDS's measured in the same table (absolute seconds on a shared machine say little).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from scoredist.eval.collect import RunFolder
from scoredist.eval.folders import read_images
from scoredist.images import save_png
from scoredist.runs import finite_or_none, json_text

TIME_COLUMNS = (
    ("guidance_rows_per_sample", "NFE / sample", "{:.0f}", ""),
    ("seconds_per_sample", "s / sample", "{:.2f}", ""),
    ("time_vs_sds", "time ÷ SDS", "{:.2f}", ""),
)


def evaluate_runs(runs: list[RunFolder], metrics) -> list[dict]:
    """One row per run: the metrics of its samples, its size and its time per sample."""
    rows = []
    for run in tqdm(runs, desc="metrics", dynamic_ncols=True):
        rows.append(
            {
                "method": run.method,
                "label": run.label,
                "run_dir": str(run.path),
                "prompts_total": len(run.prompts()),
                "samples_total": len(run.records),
                "seconds_per_sample": run.seconds_per_sample(),
                "guidance_rows_per_sample": guidance_rows(run),
                **metrics.evaluate_run(run),
            }
        )
    labels = [r["label"] for r in rows]
    for r in rows:  # two folders of one method (a seed sweep): tell them apart by folder
        if labels.count(r["label"]) > 1:
            r["label"] += f" ({Path(r['run_dir']).name})"
    sds = next((r["seconds_per_sample"] for r in rows if r["method"] == "sds"), None)
    for r in rows:
        r["time_vs_sds"] = r["seconds_per_sample"] / sds if sds else None
    return rows


def guidance_rows(run: RunFolder) -> float | None:
    """Rows of the model one sample cost, as the trainer (or the sampler) counted them; None for older runs."""
    rows = [float(r["guidance_rows"]) for r in run.records if r.get("guidance_rows") is not None]
    return sum(rows) / len(rows) if rows else None


def shares_text(shares: dict, top: int = 2) -> str:
    """{name: fraction}, most frequent first → "blurry 40%, dull 20%" (the `top` first), "none" if empty."""
    return ", ".join(f"{k} {v:.0%}" for k, v in list(shares.items())[:top]) or "none"


def cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, dict):
        return shares_text(value)
    return fmt.format(value)


def columns_of(metrics) -> tuple:
    return (*metrics.columns, *TIME_COLUMNS)


def footnotes(rows: list[dict], columns) -> list[str]:
    """One line per column (and reason) that some rows leave empty: which rows and why, from the "missing" reasons
    the metrics give (a Fréchet distance of one sample per prompt, ...), so an empty cell is never unexplained."""
    notes = []
    for key, header, _, _ in columns:
        reasons: dict[str, list[str]] = {}
        for r in rows:
            reason = (r.get("missing") or {}).get(key)
            if reason:
                reasons.setdefault(reason, []).append(r["label"])
        for reason, labels in reasons.items():
            which = "every row" if len(labels) == len(rows) else ", ".join(labels)
            notes.append(f"{header}: – for {which}: {reason}")
    return notes


def markdown(rows: list[dict], columns) -> str:
    """The table as Markdown, one row per run; headers carry ↓/↑ (lower/higher is better)."""
    headers = ["method"] + [f"{header} {arrow}".strip() for _, header, _, arrow in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join([r["label"], *(interval_cell(r, k, fmt) for k, _, fmt, _ in columns)]) + " |")
    return "\n".join(lines) + "\n"


def interval_cell(row: dict, key: str, fmt: str) -> str:
    """The value, and its 95 % interval where the metrics gave one (`<key>_interval`: the zero-shot FIDs)."""
    text = cell(row.get(key), fmt)
    low, high = row.get(f"{key}_interval") or (None, None)
    return text if low is None or high is None else f"{text} [{fmt.format(low)}, {fmt.format(high)}]"


def method_grid(run: RunFolder, path: Path, max_prompts: int = 12, max_per_prompt: int = 8, cell_size: int = 64):
    """A grid of a run's samples: one row per prompt (first `max_prompts`), its samples side by side; runs with one
    sample per prompt are laid out 8 to a row."""
    per_prompt = [run.images_of(p)[:max_per_prompt] for p in run.prompts()]
    if max(len(p) for p in per_prompt) == 1:
        flat = [p[0] for p in per_prompt][: max_prompts * 8]
        per_prompt = [flat[i : i + 8] for i in range(0, len(flat), 8)]
    rows = per_prompt[:max_prompts]
    width = max(len(r) for r in rows)
    images = [read_images(r, (cell_size, cell_size)) for r in rows]
    images = [torch.cat([im, torch.ones(width - im.shape[0], *im.shape[1:])]) for im in images]  # pad short rows
    strips = [torch.cat(list(im), dim=-1) for im in images]  # (3, s, width·s) per row
    return save_png(torch.cat(strips, dim=-2)[None], path, min_size=1)


def write_results(out_dir: Path, rows: list[dict], runs: list[RunFolder], columns, title: str = "") -> dict:
    """results.json, results.md (the table, then a footnote per empty column) and grids/<method>.png under out_dir.
    Returns {"json", "md", "grids"} paths, the Markdown "table" and its "notes"."""
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = {}
    for row, run in zip(rows, runs):  # named by run folder: unique even for two runs of one method
        grids[row["label"]] = method_grid(run, out_dir / "grids" / f"{run.path.name}.png")
        row["grid"] = str(grids[row["label"]].relative_to(out_dir))
    (out_dir / "results.json").write_text(json_text(finite_or_none(rows), indent=2) + "\n")
    table, notes = markdown(rows, columns), footnotes(rows, columns)
    below = "\n" + "".join(f"- {note}\n" for note in notes) if notes else ""
    (out_dir / "results.md").write_text((f"# {title}\n\n" if title else "") + table + below)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md", "grids": grids}
    return {**paths, "table": table, "notes": notes}
