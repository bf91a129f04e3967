"""Convert the authors' checkpoint of Zero123, Stable-Zero123 or MVDream into the diffusers folder its guidance loads.

Examples (SD_IMAGE_VARIATIONS, SD21_FOLDER: the base folders below):
    python scripts/convert_checkpoint.py zero123 zero123-xl.ckpt zero123-xl-diffusers --base SD_IMAGE_VARIATIONS
    python scripts/convert_checkpoint.py mvdream sd-v2.1-base-4view.pt mvdream-sd21-diffusers --base SD21_FOLDER
    python train.py +experiment=i23d_zero123 image=path/to/object_rgba.png

--base is a local diffusers folder with what stayed frozen in the authors' training: for Zero123 the model it was
fine-tuned from, lambdalabs/sd-image-variations-diffusers (its image_encoder/ and vae/), for MVDream Stable
Diffusion 2.1-base (its text_encoder/, tokenizer/, vae/). The checkpoint is read as weights only (.safetensors, or
.ckpt/.pt with torch.load(weights_only=True)). Key mapping: scoredist/guidance/convert.py.
"""

from __future__ import annotations

import argparse
import time

from scoredist.guidance.converted import CONVERTED  # no torch import: --help stays quick


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=CONVERTED, help="whose checkpoint it is")
    parser.add_argument("checkpoint", help="the authors' .ckpt / .pt / .safetensors file")
    parser.add_argument("out_dir", help="the diffusers folder to write (guidance.pretrained=OUT_DIR)")
    parser.add_argument("--base", required=True, help="local folder with the frozen parts (see above)")
    args = parser.parse_args(argv)

    from scoredist.guidance.convert import convert  # after parsing: --help needs no torch import

    start = time.perf_counter()
    out = convert(args.family, args.checkpoint, args.out_dir, args.base)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s; use guidance={args.family} guidance.pretrained={out}")


if __name__ == "__main__":
    main()
