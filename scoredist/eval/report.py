"""The benchmark's results on the exact shapes prior as evidence: results.md / results.json with intervals, paired
differences, cost, diversity and per-seed values, convergence curves (curves/*.png) and grids/, from finished run
folders (one per method and seed). The statistics are `scoredist.eval.comparison`'s; this module reads the folders and
writes the files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scoredist.eval.collect import RunFolder
from scoredist.eval.comparison import (
    CURVE_METRICS,
    METRICS,
    MethodSamples,
    Plan,
    PooledFeatures,
    ShapesEvidence,
    artifact_shares,
    kind_of,
    significant,
    statistic,
    summarise,
)
from scoredist.eval.folders import read_images
from scoredist.eval.table import method_grid, shares_text
from scoredist.runs import finite_or_none, json_text

RESAMPLES = 1000
CURVE_RESAMPLES = 300


def group_by_method(runs: list[RunFolder]) -> dict[str, list[RunFolder]]:
    """Run folders by method, in the order `collect_runs` gives (the paper's)."""
    groups: dict[str, list[RunFolder]] = {}
    for run in runs:
        groups.setdefault(run.method, []).append(run)
    return groups


def snapshot_records(run: RunFolder) -> dict[int, list[dict]]:
    """step → the snapshot records of that step (the last line per sample index: a resumed step writes again)."""
    latest = {(int(r["step"]), int(r["index"])): r for r in run.part_records("snapshots.jsonl")}
    steps: dict[int, list[dict]] = {}
    for (step, _), record in sorted(latest.items()):
        steps.setdefault(step, []).append(record)
    return steps


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def method_samples(method: str, runs: list[RunFolder], prior, step: int | None = None) -> MethodSamples | None:
    """A method's samples at `step` (None: the final ones) over its run folders, or None if some folder lacks it."""
    captions, keys, paths, records_all = [], [], [], []
    for run in runs:
        records = run.records if step is None else snapshot_records(run).get(step)
        if not records or (step is not None and len(records) != len(run.records)):
            return None
        for r in records:
            captions.append(r["prompt"])
            keys.append((int(run.config.seed), int(r["index"])))
            paths.append(run.path / r["image"])
        records_all += records
    size = tuple(prior.sample_shape()[-2:])
    x = prior.encode(read_images(paths, size))
    return MethodSamples(
        method=method,
        label=runs[0].label,
        captions=captions,
        keys=keys,
        x=x,
        guidance_rows=_mean(r.get("guidance_rows") for r in records_all),
        seconds=_mean(r.get("seconds") for r in records_all),
        seeds=sorted({int(run.config.seed) for run in runs}),
        source_rows=source_updates(runs[0].config),
    )


def source_updates(config) -> float | None:
    """Gradient steps of VSD's learned source model per sample and row (source_steps each step), from the config:
    the cost VSD pays beside its guidance rows. None for other methods."""
    loss = config.get("loss") or {}
    if not str(loss.get("_target_", "")).endswith(".VSD") or loss.get("source", "learned") != "learned":
        return None
    return float(loss.get("source_steps", 1)) * float(config.trainer.max_steps)


def caption_layout(samples: dict[str, MethodSamples]) -> tuple[list[str], list[int]]:
    """The captions (first method's order) and samples per caption, which every method must share to be paired."""
    first = next(iter(samples.values()))
    captions = list(dict.fromkeys(first.captions))
    sizes = [first.captions.count(c) for c in captions]
    for s in samples.values():
        theirs = [s.captions.count(c) for c in captions]
        if theirs != sizes or len(s.captions) != len(first.captions):
            raise ValueError(
                f"{s.method}'s samples are not laid out as {first.method}'s ({dict(zip(captions, sizes))} per "
                "caption): a paired comparison needs the same captions, samples per caption and seeds for every method"
            )
    return captions, sizes


def compare_runs(
    out_dir: Path,
    runs: list[RunFolder],
    shapes_metrics,
    title: str = "",
    timing: dict | None = None,
    resamples: int = RESAMPLES,
    curve_resamples: int = CURVE_RESAMPLES,
    baseline: str = "ours",
) -> dict:
    """Evaluate and write everything (module docstring). Returns the results dict (also results.json)."""
    groups = group_by_method(runs)
    prior = shapes_metrics.prior_of(runs[0].config)
    judge = ShapesEvidence(
        prior, shapes_metrics.feature_net, shapes_metrics.log_density_t, shapes_metrics.reference_seed
    )
    finals = {m: method_samples(m, rs, prior) for m, rs in groups.items()}
    captions, sizes = caption_layout(finals)
    plan = Plan(sizes, resamples)
    evidence = {m: judge.of(s, captions) for m, s in finals.items()}
    reference = judge.reference_features(captions, sizes)
    pooled = {m: PooledFeatures(e.features, reference) if reference is not None else None for m, e in evidence.items()}
    keys = tuple(k for k, *_ in METRICS if reference is not None or k not in ("kid", "fd_features", "fd_infinity"))
    summary = summarise(evidence, pooled, plan, keys, baseline if baseline in evidence else None)
    results = {
        "title": title,
        "design": {
            "captions": captions,
            "samples_per_caption": sizes,
            "seeds": finals[next(iter(finals))].seeds,
            "samples_per_method": sum(sizes),
            "resamples": resamples,
            "level": 0.95,
        },
        "rows": [
            {
                "method": m,
                "label": finals[m].label,
                "runs": [str(r.path) for r in groups[m]],
                "guidance_rows_per_sample": finals[m].guidance_rows,
                "source_updates_per_sample": finals[m].source_rows,
                "seconds_per_sample": finals[m].seconds,
                "seconds_per_step_interleaved": (timing or {}).get(m),
                "metrics": summary["methods"][m],
                **({"difference_vs_" + baseline: summary["differences"].get(m)} if baseline in evidence else {}),
                "artifacts": artifact_shares(evidence[m]),
                "per_seed": per_seed(evidence[m], pooled[m], finals[m], keys),
            }
            for m in finals
        ],
        "keys": list(keys),
        "baseline": baseline if baseline in evidence else None,
    }
    results["curves"] = curves(groups, finals, evidence, prior, judge, captions, curve_resamples)
    results["curve_plots"] = [str(p.relative_to(out_dir)) for p in plot_curves(results["curves"], out_dir / "curves")]
    results["grids"] = {
        m: str(method_grid(rs[0], out_dir / "grids" / f"{m}.png").relative_to(out_dir)) for m, rs in groups.items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json_text(finite_or_none(results), indent=2) + "\n")
    text = markdown_report(results)
    (out_dir / "results.md").write_text(text)
    results["markdown"], results["table"] = text, main_table(results) + "\n"
    return results


def per_seed(evidence, pooled, samples: MethodSamples, keys) -> dict:
    """Point estimates of the per-sample and pooled metrics on each seed's samples alone (the per-caption metrics
    need every sample of a caption, so they are pooled over seeds only)."""
    out = {}
    for seed in samples.seeds:
        draw = [
            (g, np.array([j for j, i in enumerate(pos) if samples.keys[i][0] == seed], dtype=np.int64))
            for g, pos in enumerate(evidence.positions)
        ]
        out[str(seed)] = {k: statistic(k, evidence, pooled, draw) for k in keys if kind_of(k) == "sample" or k == "kid"}
    return out


def curves(groups, finals, final_evidence, prior, judge, captions, resamples) -> dict:
    """Per method, the curve metrics at every snapshot step and at the end (its evidence already computed), against
    guidance rows per sample."""
    out = {}
    sizes = [finals[next(iter(finals))].captions.count(c) for c in captions]
    plan = Plan(sizes, resamples, seed=1)
    for method, runs in groups.items():
        steps = sorted(set.intersection(*(set(snapshot_records(r)) for r in runs))) if runs else []
        points = []
        for step in [*steps, None]:
            samples = finals[method] if step is None else method_samples(method, runs, prior, step)
            if samples is None:
                continue
            evidence = final_evidence[method] if step is None else judge.of(samples, captions, with_features=False)
            summary = summarise({method: evidence}, {}, plan, CURVE_METRICS, baseline=None)["methods"][method]
            final_step = max(int(r.config.trainer.max_steps) for r in runs) if "trainer" in runs[0].config else None
            points.append(
                {"step": step if step is not None else final_step, "guidance_rows": samples.guidance_rows, **summary}
            )
        out[method] = {"label": finals[method].label, "points": points}
    return out


def plot_curves(curves_by_method: dict, folder: Path) -> list[Path]:
    """One PNG per curve metric: the metric against guidance rows per sample, a line per method with its shaded 95 %
    interval; rows without a cost (exact samples) are a dashed horizontal line at their value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in CURVE_METRICS:
        header, direction = next((m[1], m[3]) for m in METRICS if m[0] == key)
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for method, curve in curves_by_method.items():
            pts = [p for p in curve["points"] if p[key]["estimate"] is not None]
            if not pts:
                continue
            if len(pts) == 1 or all(p["guidance_rows"] is None for p in pts):  # no snapshots: exact, DDIM samples
                ax.axhline(
                    pts[-1][key]["estimate"],
                    linestyle="--",
                    linewidth=1,
                    label=curve["label"],
                    color="grey" if method == "exact" else "black",  # not a colour a trained row's line takes
                )
                continue
            pts = [p for p in pts if p["guidance_rows"] is not None]
            xs = [p["guidance_rows"] for p in pts]
            line = ax.plot(xs, [p[key]["estimate"] for p in pts], marker="o", markersize=3, label=curve["label"])[0]
            if all(p[key]["low"] is not None for p in pts):
                ax.fill_between(
                    xs,
                    [p[key]["low"] for p in pts],
                    [p[key]["high"] for p in pts],
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
        ax.set_xlabel("guidance rows per sample (NFE)")
        ax.set_ylabel(f"{header} {direction}".strip())
        ax.set_title(f"{header}: 95 % bootstrap intervals")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------------- markdown


def _fmt(key: str, value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    fmt = next(m[2] for m in METRICS if m[0] == key)
    text = fmt.format(value)
    return ("+" + text if signed and value > 0 else text).replace("%", " %")


def cell_text(key: str, cell: dict | None, signed: bool = False) -> str:
    if not cell or cell["estimate"] is None:
        return "–"
    if cell["low"] is None:
        return _fmt(key, cell["estimate"], signed)
    mark = "*" if signed and significant(cell) else ""
    low, high = _fmt(key, cell["low"], signed), _fmt(key, cell["high"], signed)
    return f"{_fmt(key, cell['estimate'], signed)} [{low}, {high}]{mark}"


def _header(key: str) -> str:
    m = next(m for m in METRICS if m[0] == key)
    return f"{m[1]} {m[3]}".strip()


def markdown_report(results: dict) -> str:
    d, keys, base = results["design"], results["keys"], results["baseline"]
    lines = [f"# {results['title']}", ""] if results["title"] else []
    lines += [
        f"{len(d['captions'])} captions × {per_caption(d['samples_per_caption'])} samples per caption (seeds "
        f"{', '.join(map(str, d['seeds']))}): {d['samples_per_method']} samples per method. "
        f"Cells: estimate [95 % percentile bootstrap interval], {d['resamples']} draws of captions with replacement "
        "and samples within each drawn caption; per-caption metrics (FD pixels, view coverage/KL, pairwise distance) "
        "resample captions only; KID, FD and FD∞ Inception are bias-corrected (a resample with repeated samples "
        "inflates a Fréchet distance), FD and FD∞ on the first draws only (costly). NFE: rows of the frozen model "
        "evaluated per sample (counted by the trainer; VSD: also its source model's gradient steps); s / step: one "
        "training step of the whole batch, median of interleaved rounds (absent: not trained).",
        "",
    ]
    lines.append(main_table(results))
    if base:
        label = next(r["label"] for r in results["rows"] if r["method"] == base)
        lines += [
            "",
            f"## {label} − method (paired: same captions, seeds and sample indices; * = interval excludes 0)",
            "",
        ]
        lines += ["| method | " + " | ".join(_header(k) for k in keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for row in results["rows"]:
            diff = row.get(f"difference_vs_{base}")
            if diff:
                lines.append(
                    f"| {row['label']} | " + " | ".join(cell_text(k, diff[k], signed=True) for k in keys) + " |"
                )
        lines += ["", "### What is significant", ""] + [f"- {s}" for s in verdicts(results)]
    seed_keys = [k for k in keys if any(k in s for r in results["rows"] for s in r["per_seed"].values())]
    lines += ["", "## Per seed (point estimates)", ""]
    lines += [
        "| method | seed | " + " | ".join(_header(k) for k in seed_keys) + " |",
        "|" + "---|" * (len(seed_keys) + 2),
    ]
    for row in results["rows"]:
        for seed, values in row["per_seed"].items():
            lines.append(f"| {row['label']} | {seed} | " + " | ".join(_fmt(k, values.get(k)) for k in seed_keys) + " |")
    lines += ["", "## Main artifacts (nearest component's variant)", ""]
    lines += [f"- {row['label']}: {shares_text(row['artifacts'], top=3)}" for row in results["rows"]]
    if results.get("curve_plots"):
        lines += ["", "## Convergence curves", ""] + [f"![{Path(p).stem}]({p})" for p in results["curve_plots"]]
    return "\n".join(lines) + "\n"


def per_caption(sizes: list[int]) -> str:
    return str(sizes[0]) if min(sizes) == max(sizes) else f"{min(sizes)}–{max(sizes)}"


def main_table(results: dict) -> str:
    """The table itself: one row per method, cost then every metric with its interval."""
    keys = results["keys"]
    headers = ["method", "NFE / sample", "s / step"] + [_header(k) for k in keys]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in results["rows"]:
        nfe, step = row["guidance_rows_per_sample"], row["seconds_per_step_interleaved"]
        nfe_text = "–" if nfe is None else f"{nfe:.0f}"
        if row.get("source_updates_per_sample"):
            nfe_text += f" + {row['source_updates_per_sample']:.0f} ψ updates"
        cells = [row["label"], nfe_text, f"{step:.3f}" if step else "–"]
        lines.append("| " + " | ".join(cells + [cell_text(k, row["metrics"][k]) for k in keys]) + " |")
    return "\n".join(lines)


def verdicts(results: dict) -> list[str]:
    """One line per compared method: where the baseline is significantly better, worse, or not distinguishable."""
    base = results["baseline"]
    base_label = next(r["label"] for r in results["rows"] if r["method"] == base)
    out = []
    for row in results["rows"]:
        diff = row.get(f"difference_vs_{base}")
        if not diff:
            continue
        better, worse, same, other = [], [], [], []
        for key in results["keys"]:
            cell = diff[key]
            if cell["estimate"] is None:
                continue
            direction = next(m[3] for m in METRICS if m[0] == key)
            text = f"{next(m[1] for m in METRICS if m[0] == key)} {cell_text(key, cell, signed=True).rstrip('*')}"
            if not significant(cell):
                same.append(next(m[1] for m in METRICS if m[0] == key))
            elif not direction:
                other.append(text)
            elif (cell["estimate"] > 0) == (direction == "↑"):
                better.append(text)
            else:
                worse.append(text)
        parts = []
        if better:
            parts.append("better on " + "; ".join(better))
        if worse:
            parts.append("worse on " + "; ".join(worse))
        if other:
            parts.append("differs on " + "; ".join(other))
        if same:
            parts.append("no significant difference on " + ", ".join(same))
        out.append(f"{base_label} vs {row['label']}: " + ". ".join(parts) + ".")
    return out
