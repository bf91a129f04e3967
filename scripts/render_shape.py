"""Render a shapes-world caption to a PNG, e.g. a reference image for DDS.

python scripts/render_shape.py "a red cube" ref.png --azimuth 30 --elevation 20 --resolution 32
python scripts/render_shape.py "a red cube, blurry" blurry.png      # descriptors apply their corruptions
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio

from scoredist.guidance.exact.shapes import render_caption


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caption", help='e.g. "a red cube"; one colour and one shape, optional descriptors')
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--azimuth", type=float, default=0.0, help="degrees; 0 = front view (default 0)")
    parser.add_argument("--elevation", type=float, default=20.0, help="degrees above the horizon (default 20)")
    parser.add_argument("--distance", type=float, default=2.6, help="camera distance to the object (default 2.6)")
    parser.add_argument("--resolution", type=int, default=32, help="image side in pixels (default 32)")
    args = parser.parse_args(argv)

    try:
        img = render_caption(args.caption, args.azimuth, args.elevation, args.resolution, args.distance)  # (3, H, W)
    except ValueError as err:  # unknown word, or not exactly one colour and one shape: show the vocabulary
        parser.error(str(err))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.output, (img.permute(1, 2, 0) * 255).round().byte().numpy())
    print(f"wrote {args.output} ({args.resolution}x{args.resolution}) for {args.caption!r}")
    return args.output


if __name__ == "__main__":
    main()
