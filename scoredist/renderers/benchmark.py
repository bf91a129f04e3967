"""Empty-space skipping against dense sampling on a trained NeRF, in one process (speeds as ratios, design.md §4):

    python -m scoredist.renderers.benchmark RUN_DIR [--steps 20]

For each sampler: field evaluations per ray and the time of one training render + backward (the renderer's part of
a step) at the run's render size and cameras, as a ratio to today's dense sampling (48 samples per ray), and the
quality: mean |Δ| of the fixed eval views against a dense render with 512 samples per ray.
"""

from __future__ import annotations

import argparse
import time

import torch

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


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished renderer=nerf run folder")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per sampler (default 20)")
    args = parser.parse_args(argv)
    renderer, _ = renderer_from_run(args.run, "cpu")
    grid_state = {k: v.clone() for k, v in renderer.estimator.state_dict().items()}
    cams = renderer.orbit(renderer.eval_views)
    use_sampler(renderer, "dense", 512, grid_state)
    with torch.no_grad():
        reference = renderer.render(cams, *renderer.render_size, stratified=False).rgb
    rows = []
    for name, kind, n in SAMPLERS:
        use_sampler(renderer, kind, n, grid_state)
        with torch.no_grad():
            quality = (renderer.render(cams, *renderer.render_size, stratified=False).rgb - reference).abs().mean()
        renderer.train()
        torch.manual_seed(0)
        samples, start = 0.0, time.perf_counter()
        for _ in range(args.steps):
            render = renderer()
            (render.x.sum() + (render.regularization or 0)).backward()
            samples += render.logs["nerf/samples_per_ray"]
        seconds = (time.perf_counter() - start) / args.steps
        renderer.eval()
        rows.append(
            {
                "sampler": name,
                "samples_per_ray": samples / args.steps,
                "seconds": seconds,
                "mean_abs_diff": float(quality),
            }
        )
    base = rows[0]["seconds"]
    print(f"{'sampler':<30} {'samples/ray':>11} {'step / dense':>12} {'|Δ| vs 512 dense':>17}")
    for r in rows:
        print(
            f"{r['sampler']:<30} {r['samples_per_ray']:>11.1f} {r['seconds'] / base:>12.2f} {r['mean_abs_diff']:>17.4f}"
        )
    return rows


if __name__ == "__main__":
    main()
