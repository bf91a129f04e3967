"""The exact shapes prior's speed: pruned ε against the float64 all-components reference, side by side in one process.

    python scripts/bench_prior.py                      # the tables (about a minute on 2 cores)
    python scripts/bench_prior.py --train              # + a short train.py run before/after (two subprocesses each)
    python scripts/bench_prior.py --train --train-benchmark   # ... one seed of a benchmark row instead
    python scripts/bench_prior.py --out table.md       # also write the markdown there

Prints, as markdown: the machine and its float64/float32 matmul throughput on the table's own size (the floor of the
reference: two (N, D) × (D, K) float64 matmuls per call); the process start cost (rendering all 30 caption banks vs
loading them from the disk cache); then per batch composition, batch size N and t: ε time per row of the reference
(`ShapesPrior.predict_noise_reference`: one call over the union of the batch's selections, every component in
float64 — what predict_noise was before) and of `predict_noise`, the fraction of its mixture each row kept (mean over
rows) and max |ε − ε_ref| over every entry. x_t = a·μ_k + b·ε for world components μ_k drawn at random (a sample near
the end of a distillation run); "mixed" t is uniform in [20, 980] per row, as the trainer draws it.

`--train` times `train.py guidance=shapes loss=... ` end to end in fresh processes: "before" = the reference ε, the
per-row nearest-component loop of before and banks rendered in the process (no disk cache); "after" = this code with a
warm disk cache. Medians of `--train-repeats` runs, alternated. `--train-benchmark` runs one seed of a benchmark row
instead (`+benchmark=shapes loss=...`: the preset's captions, samples, batch and steps unless --train-steps is given).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoredist.guidance.base import add_noise  # noqa: E402
from scoredist.guidance.exact.shapes import ComponentLabel, ShapesPrior  # noqa: E402
from scoredist.prompts import SRC_SUFFIX, TGT_SUFFIX  # noqa: E402

COMPOSITIONS = {
    # loss=ours: y + tgt suffix and y + src suffix for two captions (conditional rows only)
    "ours": lambda n: [f"a {c}{s}" for s in (TGT_SUFFIX, SRC_SUFFIX) for c in ("red cube", "blue sphere")] * (n // 4),
    # SDS / CFG: half the rows the caption, half the empty prompt (the whole world)
    "sds": lambda n: ["a red cube", "a blue sphere"] * (n // 4) + [""] * (n // 2),
    "world": lambda n: [""] * n,
}


def timed(fn, repeats: int) -> float:
    fn()  # warm (and first-use tables built)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(n: int, d: int, k: int, dtype, repeats: int = 3) -> float:
    a = torch.randn(n, d, dtype=dtype)
    b = torch.randn(k, d, dtype=dtype)
    return 2 * n * d * k / timed(lambda: a @ b.T, repeats) / 1e9


def start_costs() -> tuple[float, float]:
    """(s to render every bank in a process with no disk cache, s to load them all from a warm cache)."""
    saved = os.environ.get("SCOREDIST_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            os.environ["SCOREDIST_CACHE_DIR"] = ""
            start = time.perf_counter()
            prior = ShapesPrior()
            for c in prior.captions:
                prior.bank(*c)
            build = time.perf_counter() - start
            os.environ["SCOREDIST_CACHE_DIR"] = tmp
            warm = ShapesPrior()
            for c in warm.captions:
                warm.bank(*c)  # writes the cache
            start = time.perf_counter()
            prior = ShapesPrior()
            for c in prior.captions:
                prior.bank(*c)
            load = time.perf_counter() - start
        finally:
            if saved is None:
                os.environ.pop("SCOREDIST_CACHE_DIR", None)
            else:
                os.environ["SCOREDIST_CACHE_DIR"] = saved
    return build, load


def eps_table(prior: ShapesPrior, rows: list[int], times: list[str], repeats: int, seed: int = 0) -> list[str]:
    world = torch.cat([prior.bank(*c) for c in prior.captions]).float()
    gen = torch.Generator().manual_seed(seed)
    lines = [
        "| batch | N | t | reference ms/row | pruned ms/row | speed-up | kept fraction | max abs(ε − ε_ref) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    worst = 0.0
    for name, make in COMPOSITIONS.items():
        for n in rows:
            prompts = make(n)
            for t_name in times:
                if t_name == "mixed":
                    t = torch.randint(20, 981, (n,), generator=gen)
                else:
                    t = torch.full((n,), int(t_name))
                x0 = world[torch.randint(0, len(world), (n,), generator=gen)].reshape(n, *prior.sample_shape())
                x_t = add_noise(x0, torch.randn(x0.shape, generator=gen), t, prior.alphas_cumprod)
                ref_s = timed(lambda x_t=x_t, t=t, p=prompts: prior.predict_noise_reference(x_t, t, p), repeats)
                new_s = timed(lambda x_t=x_t, t=t, p=prompts: prior.predict_noise(x_t, t, p), repeats)
                err = (prior.predict_noise(x_t, t, prompts) - prior.predict_noise_reference(x_t, t, prompts)).abs()
                info = prior.last_info
                kept = float((info["kept"] / info["total"]).mean())
                worst = max(worst, float(err.max()))
                lines.append(
                    f"| {name} | {n} | {t_name} | {ref_s / n * 1e3:.2f} | {new_s / n * 1e3:.2f} | "
                    f"{ref_s / new_s:.1f}× | {kept:.4f} | {float(err.max()):.1e} |"
                )
                print(lines[-1], flush=True)
    lines.append("")
    lines.append(
        f"Largest abs(ε − ε_ref) over every entry of every row above: {worst:.1e} (the bound: 1e-7 + float32 cast)."
    )
    return lines


# ---------------------------------------------------------------------------------------------------------------------
# The "before" of a train run: what the prior did before this change, patched in (for --train only)
# ---------------------------------------------------------------------------------------------------------------------


def _nearest_before(self, x, prompt):
    """The nearest-component search as it was: one cdist per caption bank and a Python loop over improved rows."""
    captions, mask = self._selection(prompt)
    flat = x.detach().reshape(x.shape[0], -1).double().cpu()
    best = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    best_label: list[ComponentLabel | None] = [None] * x.shape[0]
    for c in captions:
        d = torch.cdist(flat, self.bank(*c)).masked_fill(~mask, math.inf)
        dmin, kmin = d.min(dim=1)
        for i in (dmin < best).nonzero().squeeze(1).tolist():
            best[i] = dmin[i]
            best_label[i] = self._label(c, int(kmin[i]))
    return best_label, best


def patch_before() -> None:
    ShapesPrior.predict_noise = ShapesPrior.predict_noise_reference
    ShapesPrior._nearest = _nearest_before
    os.environ["SCOREDIST_CACHE_DIR"] = ""  # every process renders its banks, as before


def train_runs(args) -> list[str]:
    if args.train_benchmark:
        steps = [] if args.train_steps is None else [f"trainer.max_steps={args.train_steps}"]
        command = ["+benchmark=shapes", f"loss={args.train_loss}", *steps, "logger=none"]
    else:
        command = [
            "guidance=shapes",
            f"loss={args.train_loss}",
            "prompt=[a red cube,a blue sphere]",
            "samples_per_prompt=3",
            "trainer.batch_size=6",
            f"trainer.max_steps={args.train_steps or 30}",
            "logger=none",
        ]
    results: dict[str, list[float]] = {"before": [], "after": []}
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.train_repeats):
            for mode in ("before", "after"):
                folder = Path(out) / f"{mode}-{i}"
                code = (
                    "import runpy, sys; sys.path.insert(0, 'scripts'); import bench_prior\n"
                    + ("bench_prior.patch_before()\n" if mode == "before" else "")
                    + "sys.argv = ['train.py', *sys.argv[1:]]; runpy.run_path('train.py', run_name='__main__')"
                )
                start = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-c", code, *command, f"hydra.run.dir={folder}"],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                results[mode].append(time.perf_counter() - start)
    before, after = statistics.median(results["before"]), statistics.median(results["after"])
    return [
        f"`python train.py {' '.join(repr(c) if ' ' in c else c for c in command)}`, wall time of the whole process "
        f"(median of {args.train_repeats}, alternated): before {before:.1f} s, after {after:.1f} s "
        f"({before / after:.2f}× faster); all runs: before {[round(s, 1) for s in results['before']]}, "
        f"after {[round(s, 1) for s in results['after']]}.",
    ]


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[12, 36], help="batch sizes N (multiples of 4)")
    parser.add_argument("--t", nargs="+", default=["20", "100", "300", "600", "900", "mixed"], help="timesteps")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (median)")
    parser.add_argument("--train", action="store_true", help="also time a short train.py run before/after")
    parser.add_argument("--train-loss", default="sds")
    parser.add_argument(
        "--train-steps", type=int, default=None, help="default: 30; the preset's with --train-benchmark"
    )
    parser.add_argument("--train-benchmark", action="store_true", help="time one seed of a +benchmark=shapes row")
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    random.seed(0)
    torch.manual_seed(0)

    prior = ShapesPrior()
    for c in prior.captions:
        prior.bank(*c)
    k, d = 30 * prior.components_per_caption, 3 * prior.resolution**2
    lines = [
        f"Machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s). Table: K = {k} components × D = {d}.",
        "",
        "| matmul (N=36) × (D, K) | GFLOP/s | one call's floor (2 matmuls), ms/row |",
        "|---|---|---|",
    ]
    for dtype in (torch.float64, torch.float32):
        gflops = matmul_gflops(36, d, k, dtype)
        lines.append(
            f"| {str(dtype).removeprefix('torch.')} | {gflops:.1f} | {2 * 2 * d * k / gflops / 1e9 * 1e3:.2f} |"
        )
    build, load = start_costs()
    lines += [
        "",
        f"Start cost, all 30 caption banks: rendered {build:.2f} s, loaded from the disk cache {load:.2f} s.",
        "",
    ]
    print("\n".join(lines), flush=True)
    lines += eps_table(prior, args.rows, args.t, args.repeats)
    if args.train:
        lines += ["", *train_runs(args)]
        print(lines[-1])
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
