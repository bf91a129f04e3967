"""Render a shapes-world caption to a PNG, e.g. a reference image for DDS.

python scripts/render_shape.py "a red cube" ref.png --azimuth 30 --elevation 20 --resolution 32
python scripts/render_shape.py "a red cube, blurry" blurry.png      # descriptors apply their corruptions
python scripts/render_shape.py "a yellow torus" torus_rgba.png --alpha --elevation 5 --resolution 256   # Zero123 input

--alpha writes RGBA with the object's mask as alpha (every pixel that differs from the world's plain background), the
input image-to-3D pipelines such as Zero123's expect (background removed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import torch

from scoredist.guidance.exact.shapes import render_caption
from scoredist.guidance.exact.world import BACKGROUND_RGB


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caption", help='e.g. "a red cube"; one colour and one shape, optional descriptors')
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--azimuth", type=float, default=0.0, help="degrees; 0 = front view (default 0)")
    parser.add_argument("--elevation", type=float, default=20.0, help="degrees above the horizon (default 20)")
    parser.add_argument("--distance", type=float, default=2.6, help="camera distance to the object (default 2.6)")
    parser.add_argument("--resolution", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--alpha", action="store_true", help="RGBA: alpha = the object's mask (not the background)")
    args = parser.parse_args(argv)

    try:
        img = render_caption(args.caption, args.azimuth, args.elevation, args.resolution, args.distance)  # (3, H, W)
    except ValueError as err:  # unknown word, or not exactly one colour and one shape: show the vocabulary
        parser.error(str(err))
    if args.alpha:
        background = torch.tensor(BACKGROUND_RGB).view(3, 1, 1)
        mask = ((img - background).abs().amax(0, keepdim=True) > 1 / 255).float()
        img = torch.cat([img, mask])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.output, (img.permute(1, 2, 0) * 255).round().byte().numpy())
    print(f"wrote {args.output} ({args.resolution}x{args.resolution}) for {args.caption!r}")
    return args.output


if __name__ == "__main__":
    main()
