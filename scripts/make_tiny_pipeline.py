"""Write a tiny random-weight diffusers folder (for tests and offline smoke runs of guidance=sd and its successors).

Example:
    python scripts/make_tiny_pipeline.py tiny-sd
    python train.py guidance=sd guidance.pretrained=tiny-sd ...

--family sdxl, sd3 or flux writes the layout of SDXL-base-1.0, SD3-medium or FLUX.1-dev instead
(scoredist.guidance.tiny_families), loadable with diffusers' StableDiffusionXLPipeline, StableDiffusion3Pipeline or
FluxPipeline.from_pretrained(folder); --family zero123 (or stable_zero123) and mvdream the layout of the folders
scripts/convert_checkpoint.py writes (scoredist.guidance.tiny_camera_families):
    python scripts/make_tiny_pipeline.py tiny-zero123 --family zero123
The weights are random: the folder exercises the real loading and batching code, not image quality.
"""

from __future__ import annotations

import argparse
import time

from scoredist.guidance.converted import CONVERTED  # no torch import: --help stays quick

DTYPES = ("float32", "bfloat16", "float16")
CAMERA_FAMILIES = CONVERTED  # the folders scripts/convert_checkpoint.py writes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument(
        "--family",
        default="sd",
        choices=["sd", "sdxl", "sd3", "flux", *CONVERTED],
        help="layout of which hub repository: sd (SD 1/2), sdxl (SDXL-base-1.0), sd3 (SD3-medium), flux (FLUX.1-dev); "
        "or of the folder scripts/convert_checkpoint.py writes: zero123 / stable_zero123 (one layout), mvdream",
    )
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
        choices=["tiny", "sd21-base", "real"],
        help="sd21-base (family sd): a UNet with SD 2.1-base's architecture (865M parameters, ~3.5 GB); real (families "
        "sdxl, sd3, flux): the published backbone and VAE sizes (SDXL 2.57B, SD3-medium 2.03B, FLUX.1-dev 11.9B "
        "parameters: 48 GB in float32) for speed measurements",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=DTYPES, help="dtype of the saved weights (families sdxl, sd3, flux)"
    )
    args = parser.parse_args(argv)
    _check_options(parser, args)

    start = time.perf_counter()
    if args.family == "sd":
        from scoredist.guidance.tiny_pipeline import build_tiny_pipeline  # after parsing: --help needs no torch import

        path = build_tiny_pipeline(args.out_dir, args.pixel_space, args.prediction_type, args.seed, args.architecture)
        print(f"wrote {path} in {time.perf_counter() - start:.2f} s; use guidance=sd guidance.pretrained={path}")
        return
    if args.family in CAMERA_FAMILIES:
        from scoredist.guidance.tiny_camera_families import MAKERS as CAMERA_MAKERS

        path = CAMERA_MAKERS[args.family](args.out_dir, args.seed)
        print(f"wrote {path} ({args.family}, tiny) in {time.perf_counter() - start:.2f} s")
        return
    import torch

    from scoredist.guidance.tiny_families import MAKERS

    path = MAKERS[args.family](args.out_dir, args.seed, args.architecture, getattr(torch, args.dtype))
    print(f"wrote {path} ({args.family}, {args.architecture}) in {time.perf_counter() - start:.2f} s")


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that the chosen family does not have, rather than ignore them silently."""
    if args.family == "sd":
        if args.architecture == "real":
            parser.error("--architecture real is for --family sdxl/sd3/flux; family sd has sd21-base")
        if args.dtype != "float32":
            parser.error("--dtype is for --family sdxl/sd3/flux; family sd writes float32")
        return
    if args.family in CAMERA_FAMILIES and (args.architecture != "tiny" or args.dtype != "float32"):
        parser.error(f"--family {args.family} has only the tiny float32 layout")
    if args.architecture == "sd21-base":
        parser.error("--architecture sd21-base is for --family sd; use real")
    if args.pixel_space or args.prediction_type != "epsilon":
        parser.error("--pixel-space and --prediction-type are for --family sd")


if __name__ == "__main__":
    main()
