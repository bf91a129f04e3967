"""Empty-space skipping against dense sampling on a trained NeRF, in one process (speeds as ratios, design.md §4):

    python -m scoredist.renderers.benchmark RUN_DIR [--rounds 5] [--steps 4]

For each sampler: field evaluations per ray and the time of one training render + backward (the renderer's part of
a step) at the run's render size and cameras, as a ratio to dense sampling (48 samples per ray: estimator=dense, the
sampler before the occupancy grid), and the quality: mean |Δ| of the fixed eval views against a dense render with 512
samples per ray. The samplers take turns, `steps` steps each per round on the same cameras, and each one's time is the
median over rounds, so that a shared machine whose load drifts during the run slows all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scoredist.errors import cli_errors
from scoredist.renderers.loading import renderer_from_run
from scoredist.renderers.occupancy import make_estimator

SAMPLERS = [
    ("dense, 48 samples (before)", "dense", 48),
    ("occupancy, step 2√3/96", "occupancy", 96),
    ("occupancy, step 2√3/48", "occupancy", 48),
]


def use_sampler(renderer, kind: str, num_samples: int, grid_state: dict) -> None:
    renderer.num_samples, renderer.render_step_size = num_samples, 1.732 * 2 * renderer.bound / num_samples
    renderer.estimator = make_estimator(kind, renderer.bound, num_samples, renderer.grid_resolution, renderer.device)
    if kind == "occupancy":
        renderer.estimator.load_state_dict(grid_state)


def timed_steps(renderer, steps: int, seed: int) -> tuple[float, float]:
    """Seconds per training render + backward and samples per ray, over `steps` steps from torch seed `seed`."""
    renderer.train()
    torch.manual_seed(seed)
    samples, start = 0.0, time.perf_counter()
    for _ in range(steps):
        render = renderer()
        (render.x.sum() + (render.regularization or 0)).backward()
        samples += render.logs["nerf/samples_per_ray"]
    seconds = (time.perf_counter() - start) / steps
    renderer.eval()
    return seconds, samples / steps


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished renderer=nerf run folder")
    parser.add_argument("--rounds", type=int, default=5, help="turns each sampler takes (default 5)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per sampler and round (default 4)")
    parser.add_argument(
        "--reference-samples", type=int, default=512, help="dense samples per ray of the quality reference (512)"
    )
    args = parser.parse_args(argv)
    with cli_errors():  # a user error (no run folder, not a NeRF run, ...) ends with its one-line message
        if min(args.rounds, args.steps, args.reference_samples) < 1:
            raise ValueError("--rounds, --steps and --reference-samples must be positive")
        return compare_samplers(args)


def compare_samplers(args) -> list[dict]:
    renderer, _ = renderer_from_run(args.run, "cpu")
    grid_state = {k: v.clone() for k, v in renderer.estimator.state_dict().items()}
    cams = renderer.orbit(renderer.eval_views)
    use_sampler(renderer, "dense", args.reference_samples, grid_state)
    with torch.no_grad():
        reference = renderer.render(cams, *renderer.render_size, stratified=False).rgb
    rows = []
    for name, kind, n in SAMPLERS:
        use_sampler(renderer, kind, n, grid_state)
        with torch.no_grad():
            quality = (renderer.render(cams, *renderer.render_size, stratified=False).rgb - reference).abs().mean()
        rows.append({"sampler": name, "mean_abs_diff": float(quality), "times": [], "samples": []})
    for round_ in range(args.rounds):
        for row, (_, kind, n) in zip(rows, SAMPLERS):
            use_sampler(renderer, kind, n, grid_state)
            seconds, samples = timed_steps(renderer, args.steps, seed=round_)
            row["times"].append(seconds)
            row["samples"].append(samples)
    for row in rows:
        row["seconds"] = statistics.median(row.pop("times"))
        row["samples_per_ray"] = statistics.fmean(row.pop("samples"))
    base = rows[0]["seconds"]
    header = f"|Δ| vs {args.reference_samples} dense"
    print(f"{'sampler':<30} {'samples/ray':>11} {'s / step':>9} {'step / dense':>12} {header:>17}")
    for r in rows:
        print(
            f"{r['sampler']:<30} {r['samples_per_ray']:>11.1f} {r['seconds']:>9.3f} {r['seconds'] / base:>12.2f} "
            f"{r['mean_abs_diff']:>17.4f}"
        )
    return rows


if __name__ == "__main__":
    main()
