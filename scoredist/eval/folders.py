"""Images on disk as tensors: any folder of images, or the samples of a run folder.

Metrics work on what a person sees, the saved images, so that they apply to any folder (a run's samples/, a set of
reference photos, another project's outputs). Run folders save each sample upscaled by an integer factor with
nearest-neighbour (`scoredist.images.grid`); averaging each block undoes that exactly, so a 32×32 render saved as a
128×128 PNG reads back as the render, up to 8-bit quantisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from scoredist.images import decode_image, resize_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly inside a folder, sorted by name; FileNotFoundError if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (give a folder of PNG or JPG files)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"image folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_rgb(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """One image as (3, H, W) float in [0, 1] (8-bit files only: `scoredist.images.decode_image`). With `size`, a saved
    image that is an integer multiple of it is block-averaged back (exact for the trainer's nearest-neighbour
    upscaling); any other size is resized with antialiasing."""
    img = decode_image(path)
    if size is None:
        return img
    height, width = size
    h, w = img.shape[-2:]
    if h % height == 0 and w % width == 0 and h // height == w // width:
        return F.avg_pool2d(img[None], h // height)[0] if h != height else img
    return resize_image(img[None], height, width)[0]


def read_images(paths: Sequence[str | Path], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Several images as (N, 3, H, W) in [0, 1]; without `size` they must all have the same size."""
    images = [read_rgb(p, size) for p in paths]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {sorted(shapes)}; pass size=(H, W) to resize them")
    return torch.stack(images)


def quantise(rgb: torch.Tensor) -> torch.Tensor:
    """What saving as an 8-bit image does to (N, 3, H, W) values in [0, 1]: clip and round to 1/255 steps (applied
    to exact reference samples so that both sides of a comparison went through the same rounding)."""
    return (rgb.clamp(0, 1) * 255).round() / 255
