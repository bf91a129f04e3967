"""Render a NeRF or Gaussians run's checkpoint without training (threestudio's test mode): fixed views and a turntable.

python scripts/render.py outputs/2026-11-29/14-30-38-ours                 # RUN_DIR/render/
python scripts/render.py RUN_DIR --views 120 --size 256 --elevation 20 --out turntable/

Writes NNN.png per view (azimuth 0° = front first), views.png (8 of them side by side) and turntable.mp4.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scoredist.checkpoint import run_folder_of
from scoredist.errors import cli_errors
from scoredist.images import grid, save_png, save_strip, save_video
from scoredist.renderers.loading import renderer_from_run


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder of renderer=nerf or gaussians (or a checkpoints/*.pt)")
    parser.add_argument("--views", type=int, default=None, help="views around the object (run's turntable_views)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (run's render size)")
    parser.add_argument("--elevation", type=float, default=None, help="degrees (run's turntable_elevation)")
    parser.add_argument("--out", type=Path, default=None, help="folder to write into (default RUN_DIR/render)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    args = parser.parse_args(argv)
    with cli_errors():  # a user error (also one Hydra's instantiate wraps) ends the script with its one-line message
        if args.views is not None and args.views < 1 or args.size is not None and args.size < 1:
            raise ValueError("--views and --size must be positive")
        renderer, step = renderer_from_run(args.run, args.device)
        if args.elevation is not None:
            renderer.turntable_elevation = args.elevation
        frames = renderer.turntable(args.views, args.size)  # (V, 3, S, S)
    out = args.out or run_folder_of(args.run) / "render"
    for i, frame in enumerate(frames):
        save_png(frame[None], out / f"{i:03d}.png", min_size=0)
    images = [grid(frame[None]) for frame in frames]
    save_strip(images[:: max(1, len(images) // 8)][:8], out / "views.png", max_frames=8)
    video = save_video(images, out / "turntable.mp4", fps=24)
    print(f"{out}: {len(frames)} views of step {step}" + (", turntable.mp4" if video else ""))
    return out


if __name__ == "__main__":
    main()
