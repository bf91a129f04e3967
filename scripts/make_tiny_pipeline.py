"""Write a tiny random-weight Stable-Diffusion-style folder (for tests and offline smoke runs of guidance=sd).

Example:
    python scripts/make_tiny_pipeline.py tiny-sd
    python train.py guidance=sd guidance.pretrained=tiny-sd ...

The weights are random: the folder exercises the real loading and batching code, not image quality.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument("--pixel-space", action="store_true", help="no VAE: the UNet works on 3x16x16 RGB in [-1, 1]")
    parser.add_argument(
        "--prediction-type",
        default="epsilon",
        choices=["epsilon", "v_prediction", "sample"],
        help="what the UNet predicts (written to scheduler/scheduler_config.json)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--architecture",
        default="tiny",
        choices=["tiny", "sd21-base"],
        help="sd21-base: a UNet with SD 2.1-base's architecture (865M parameters, ~3.5 GB) for speed measurements",
    )
    args = parser.parse_args(argv)
    from scoredist.guidance.tiny_pipeline import build_tiny_pipeline  # after parsing: --help needs no torch import

    start = time.perf_counter()
    path = build_tiny_pipeline(args.out_dir, args.pixel_space, args.prediction_type, args.seed, args.architecture)
    print(f"wrote {path} in {time.perf_counter() - start:.2f} s; use guidance=sd guidance.pretrained={path}")


if __name__ == "__main__":
    main()
