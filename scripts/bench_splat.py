"""The Gaussian rasterisers side by side, in one process (speeds as ratios, design.md §4):

    python scripts/bench_splat.py                      # random Gaussians, CPU: the pure-PyTorch rasteriser alone
    python scripts/bench_splat.py --device cuda        # PyTorch on CUDA against gsplat (when it imports)
    python scripts/bench_splat.py --run RUN_DIR        # a trained renderer=gaussians run's Gaussians

For each backend the device has: the time of one training render + backward (the renderer's part of a step) of
`--cameras` views at `--size`², the median over `--rounds` rounds in which the backends take turns on the same
cameras (so a drifting load slows all alike), its ratio to the first backend, and the work done: Gaussians, and the
pixel-Gaussian pairs the PyTorch rasteriser evaluates (each image band against the Gaussians whose box reaches it).
Quality: the largest and the mean |Δ| of the images against the first backend's, and the relative difference of the
centres' gradients.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scoredist.devices import pick_device
from scoredist.errors import cli_errors
from scoredist.renderers.base import ModelSpace
from scoredist.renderers.cameras import sample_cameras
from scoredist.renderers.gaussians import GaussianRenderer, camera_matrices, gsplat_available
from scoredist.renderers.loading import renderer_from_run
from scoredist.renderers.splatting import bands, covariances, footprint_radii, project, visible


def random_renderer(count: int, size: int, device: torch.device) -> GaussianRenderer:
    """`count` Gaussians in DreamGaussian's initial ball, grown to a visible size (scales ×2, opacity 0.5)."""
    torch.manual_seed(0)
    renderer = GaussianRenderer(height=size, width=size, num_points=count, distance_range=(2.5, 2.5))
    renderer.bind(ModelSpace(3, 1, (size, size), lambda x: x, device), [0])
    with torch.no_grad():
        renderer.log_scales += 0.7
        renderer.logit_opacities.zero_()
    return renderer.to(device)


def pairs_evaluated(renderer: GaussianRenderer, cams, size: int, rows_per_band: int = 16) -> int:
    """Pixel-Gaussian pairs the PyTorch rasteriser evaluates for these cameras (its work, whatever the backend)."""
    view, K = camera_matrices(cams, size, size)
    covs = covariances(renderer.quats, renderer.log_scales.exp())
    total = 0
    with torch.no_grad():
        for i in range(len(cams)):
            means2d, conics, _, valid = project(
                renderer.means, covs, view[i].to(renderer.device), K[i].to(renderer.device), size, size
            )
            radii = footprint_radii(conics, renderer.opacities())
            seen = visible(means2d, radii, valid, size, size)
            top, bottom = means2d[:, 1] - radii[:, 1], means2d[:, 1] + radii[:, 1]
            for start, stop, reach in bands(top, bottom, size, rows_per_band):
                total += int((seen & reach).sum()) * (stop - start) * size
    return total


def step(renderer: GaussianRenderer, backend: str, cams, size: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One render + backward: seconds, the images and the centres' gradient."""
    renderer.backend = backend
    renderer.means.grad = None
    sync = torch.cuda.synchronize if renderer.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    rgb, _ = renderer.render(cams, size, size)
    (rgb - 0.5).square().sum().backward()
    sync()
    return time.perf_counter() - start, rgb.detach(), renderer.means.grad.detach().clone()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a renderer=gaussians run folder (default: random Gaussians)")
    parser.add_argument("--count", type=int, default=5000, help="random Gaussians (default 5000, DreamGaussian's)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--cameras", type=int, default=4, help="views per step (default 4)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, backends taking turns (default 5)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    args = parser.parse_args(argv)
    with cli_errors():
        device = pick_device(args.device)
        if args.run:
            renderer, _ = renderer_from_run(args.run, str(device))
            renderer.train()
            renderer.background.aug_prob = 0.0  # the same background for every backend: |Δ| compares rasterisers
        else:
            renderer = random_renderer(args.count, args.size, device)
        backends = ["torch"] + (["gsplat"] if device.type == "cuda" and gsplat_available() else [])
        torch.manual_seed(1)
        cams = sample_cameras(args.cameras, distance_range=renderer.camera_sampling["distance_range"],
                              fovy_range=renderer.camera_sampling["fovy_range"])  # fmt: skip
        for backend in backends:  # warm-up: kernels compiled and caches filled outside the timed rounds
            step(renderer, backend, cams, args.size)
        times = {b: [] for b in backends}
        for _ in range(args.rounds):
            for backend in backends:
                times[backend].append(step(renderer, backend, cams, args.size)[0])
        _, ref_rgb, ref_grad = step(renderer, backends[0], cams, args.size)
        pairs = pairs_evaluated(renderer, cams, args.size)
    rows = []
    base = statistics.median(times[backends[0]])
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"{renderer.count} Gaussians, {args.cameras} cameras at {args.size}², {device} ({where}), {args.rounds} "
        f"rounds; the PyTorch rasteriser evaluates {pairs / 1e6:.1f} M pixel-Gaussian pairs a step"
    )
    print("| backend | s / step (median) | min | max | vs torch | max \\|Δ\\| | mean \\|Δ\\| | grad rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for backend in backends:
        _, rgb, grad = step(renderer, backend, cams, args.size)
        diff = (rgb - ref_rgb).abs()
        row = dict(
            backend=backend,
            median=statistics.median(times[backend]),
            min=min(times[backend]),
            max=max(times[backend]),
            max_diff=float(diff.max()),
            mean_diff=float(diff.mean()),
            grad_diff=float((grad - ref_grad).norm() / ref_grad.norm().clamp_min(1e-12)),
        )
        rows.append(row)
        print(
            f"| {backend} | {row['median']:.4f} | {row['min']:.4f} | {row['max']:.4f} | {row['median'] / base:.2f} | "
            f"{row['max_diff']:.1e} | {row['mean_diff']:.1e} | {row['grad_diff']:.1e} |"
        )
    return rows


if __name__ == "__main__":
    main()
