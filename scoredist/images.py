"""Reading and writing the images a person looks at: PNG files, grids, labelled figures, progress strips, MP4s."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from scoredist.checkpoint import replacing


def decode_image(path: str | Path) -> torch.Tensor:
    """An image file as (3, H, W) float in [0, 1] at its own size: alpha dropped, grey expanded. The one decoder of
    image files: a missing file is a FileNotFoundError, anything but an 8-bit still image (a 16-bit PNG, a video, a
    non-image) a ValueError naming the file, never values silently on another scale."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist (give the path of a PNG or JPG file)")
    try:
        array = np.asarray(iio.imread(path))
    except Exception as e:  # imageio raises OSError, ValueError or its own errors, depending on the plugin
        raise ValueError(
            f"{path} is not an image file that can be read ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "give a PNG or JPG (python scripts/render_shape.py writes one of the shapes world)"
        ) from None
    if array.ndim not in (2, 3) or array.dtype != np.uint8:
        raise ValueError(
            f"{path} is not an 8-bit still image (array {array.shape} {array.dtype}): give an 8-bit PNG or JPG"
        )
    img = torch.from_numpy(array).float() / 255.0
    img = img[..., None].expand(*img.shape, 3) if img.dim() == 2 else img[..., :3]
    return img.permute(2, 0, 1).contiguous()


def resize_image(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] → (N, 3, height, width), bilinear with antialiasing, clamped to [0, 1]."""
    if images.shape[-2:] == (height, width):
        return images
    out = F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0, 1)


def read_image(path: str | Path, height: int, width: int) -> torch.Tensor:
    """An image file as (1, 3, height, width) in [0, 1]: alpha dropped, grey expanded, resized with antialiasing."""
    return resize_image(decode_image(path)[None], height, width)


def read_rgba(path: str | Path, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image with an object mask (an RGBA PNG whose alpha is the mask; an RGB image is all foreground) as rgb
    (1, 3, height, width) and alpha (1, 1, height, width) in [0, 1], area-averaged to the size when shrinking (as
    cv2's INTER_AREA, with which threestudio resizes its reference images; enlarging repeats pixels)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"no image at {str(file)!r}")
    with Image.open(file) as image:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    rgba = torch.from_numpy(rgba).permute(2, 0, 1)[None]
    rgba = F.interpolate(rgba, (height, width), mode="area")
    return rgba[:, :3].contiguous(), rgba[:, 3:].contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] → (B, H, W, 3) uint8."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grid(images: torch.Tensor, min_size: int = 128) -> np.ndarray:
    """A row of the batch as one uint8 image, upsampled (nearest) to at least `min_size` pixels high so tiny renders
    stay visible."""
    scale = max(1, -(-min_size // images.shape[-2]))
    if scale > 1:
        images = F.interpolate(images.detach().float(), scale_factor=scale, mode="nearest")
    return np.concatenate(list(to_uint8(images)), axis=1)


def write_image(path: str | Path, array: np.ndarray, **kwargs) -> Path:
    """imageio's imwrite by write-and-rename (the format from `path`'s suffix): a run killed while writing its
    final.png or a sample leaves the previous file or none, never a torn one."""
    path = Path(path)
    with replacing(path) as tmp:
        iio.imwrite(tmp, array, extension=path.suffix, **kwargs)
    return path


def save_png(images: torch.Tensor, path: str | Path, min_size: int = 128) -> Path:
    return write_image(path, grid(images, min_size))


def save_strip(frames: Sequence[np.ndarray], path: str | Path, max_frames: int = 10) -> Path:
    """Progress strip: up to `max_frames` evenly spaced frames (uint8 HxWx3 each) side by side."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    return write_image(path, np.concatenate([frames[i] for i in idx], axis=1))


def save_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path | None:
    """MP4 of the progress frames through imageio-ffmpeg; None if there are too few frames or no encoder."""
    if len(frames) < 2:
        return None
    try:
        write_image(path, np.stack([pad_to_macro_block(f) for f in frames]), fps=fps)
    except Exception:  # an optional artefact: a missing encoder must never fail a finished run
        return None
    return Path(path)


def pad_to_macro_block(frame: np.ndarray, block: int = 16) -> np.ndarray:
    """H.264 players want sides that are multiples of 16; pad (edge colour) rather than let the encoder resample."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, -h % block), (0, -w % block), (0, 0)), mode="edge")


GAP = 3  # white pixels around each panel of a labelled figure


def labelled_row(images: torch.Tensor, labels: Sequence[str], min_size: int = 192) -> np.ndarray:
    """Images (N, 3, H, W) in [0, 1] side by side, each upsampled (nearest) to at least `min_size` pixels high, with
    its label written in a white band above it: (band + H' + GAP, N·(W' + 2·GAP), 3) uint8."""
    scale = max(1, -(-min_size // images.shape[-2]))
    if scale > 1:
        images = F.interpolate(images.detach().float().cpu(), scale_factor=scale, mode="nearest")
    panels = to_uint8(images)
    width = panels.shape[2]
    font = ImageFont.load_default(size=max(11, width // 14))
    wrapped = [wrap(label, font, width - 8) for label in labels]
    line_height = font.getbbox("Ag")[3] + 3
    band = 6 + line_height * max(len(lines) for lines in wrapped)
    out = []
    for panel, lines in zip(panels, wrapped):
        canvas = Image.new("RGB", (width + 2 * GAP, band + panel.shape[0] + GAP), "white")
        canvas.paste(Image.fromarray(panel), (GAP, band))
        draw = ImageDraw.Draw(canvas)
        for i, line in enumerate(lines):
            draw.text((GAP + 4, 3 + i * line_height), line, fill="black", font=font)
        out.append(np.asarray(canvas))
    return np.concatenate(out, axis=1)


def wrap(text: str, font, max_width: float) -> list[str]:
    """Greedy word wrap of `text` to lines no wider than max_width pixels in `font` (a long word gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]
