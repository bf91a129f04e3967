"""A plain image as the parameters: the text-to-image setting of the paper, and its ambiguous images (illusions).

mode="latent": the parameters are the model's own input (SD latents (B, 4, H/8, W/8); pixels in [−1, 1] for pixel-space
models such as the exact shapes prior), returned as is (`outputs_rgb = False`). This is the paper's 2D setting.
mode="rgb": the parameters are RGB logits (B, 3, H, W); the render is sigmoid(logits) in [0, 1], which the trainer
encodes into the model's space with gradient (through the VAE for latent models).

views: an ambiguous image. Every step renders each sample under each view's transform (transforms.py: rotations,
flips, transpose of the latent grid in latent mode, of the pixels in RGB mode), one row per (sample, view) with the
view's prompt as the row's caption; the trainer conditions every row on its own prompt in one batched guidance call,
and autograd maps each row's direction back through the inverse transform. A sample's gradient is the mean over its
views (the trainer weighs a sample's rows by 1 / its number of rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from scoredist.images import labelled_row, read_image
from scoredist.renderers.base import ModelSpace, Render, Renderer
from scoredist.renderers.transforms import SWAPS_AXES, View, apply, parse_views


class ImageRenderer(Renderer):
    def __init__(
        self,
        mode: str = "latent",
        height: int | None = None,
        width: int | None = None,
        init: str | None = "randn",
        init_std: float = 1.0,
        views: Sequence | None = None,
    ):
        super().__init__()
        if mode not in ("latent", "rgb"):
            raise ValueError(f"renderer.mode must be 'latent' or 'rgb', got {mode!r}")
        for name, value in (("height", height), ("width", width)):
            if value is not None and value <= 0:
                raise ValueError(f"renderer.{name} must be positive, got {value}")
        self.mode, self.height, self.width = mode, height, width
        self.init, self.init_std = init, init_std
        self.views: list[View] | None = parse_views(views) if views is not None else None
        self.outputs_rgb = mode == "rgb"
        self.image = None  # nn.Parameter, created in bind() once the model's space is known
        self.start = None  # the initial image of a run that starts from a file (an edit), set in bind()

    @classmethod
    def row_captions(cls, cfg) -> list[tuple[str, str]]:
        """The views' own prompts (a view with prompt null uses its sample's caption), in either form of
        `parse_views`: {transform, prompt} mappings or [transform, prompt] pairs."""
        entries = config_views(cfg)
        if entries is None:
            return []
        keys = [f"renderer.views[{i}]{'.prompt' if isinstance(e, Mapping) else '[1]'}" for i, e in enumerate(entries)]
        return [(v.prompt, key) for v, key in zip(parse_views(entries), keys) if v.prompt is not None]

    @classmethod
    def render_sizes(cls, cfg) -> list[tuple[int | None, int | None, int | None]]:
        """The one size of the config (None: the model's native size); with views, one row per view of a sample."""
        entries = config_views(cfg)
        return [(cfg.get("height"), cfg.get("width"), len(parse_views(entries)) if entries is not None else None)]

    def bind(self, space: ModelSpace, seeds: Sequence[int]) -> None:
        if self.height is None or self.width is None:
            if space.native_size is None:
                raise ValueError("this guidance model has no native image size: set renderer.height and renderer.width")
            self.height, self.width = self.height or space.native_size[0], self.width or space.native_size[1]
        if self.mode == "latent" and (self.height % space.downscale or self.width % space.downscale):
            raise ValueError(
                f"image size {self.height}x{self.width} is not divisible by {space.downscale}, the model's latent "
                f"downscale factor: use multiples of {space.downscale} (e.g. renderer.height="
                f"{max(space.downscale, self.height // space.downscale * space.downscale)})."
            )
        swapping = sorted({v.transform for v in self.views or []} & SWAPS_AXES)
        if swapping and self.height != self.width:
            raise ValueError(
                f"renderer.views uses {', '.join(swapping)}, which turns a {self.height}x{self.width} image into "
                f"{self.width}x{self.height}; all views are batched together, so use a square image "
                f"(renderer.height = renderer.width) or only identity, rot180, flip_h and flip_v"
            )
        self.image = nn.Parameter(self.initial_value(space, seeds))
        # an edit's starting point, for edit.png (not state: a resumed run reads the same file again in bind)
        self.start = self.image.detach().clone() if self.init != "randn" else None

    def initial_value(self, space: ModelSpace, seeds: Sequence[int]) -> torch.Tensor:
        """(S, ...) for S = len(seeds) samples: N(0, init_std²) from each sample's own generator, or the init image."""
        if self.mode == "latent":
            shape = (space.channels, self.height // space.downscale, self.width // space.downscale)
        else:
            shape = (3, self.height, self.width)
        if self.init is None:
            raise ValueError(
                "renderer.init is not set: give 'randn' or the path of an image to start from "
                "(with +experiment=painting2real: input=PATH)"
            )
        if self.init == "randn":
            draws = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
            return torch.stack(draws) * self.init_std
        rgb = read_image(self.init, self.height, self.width).expand(len(seeds), -1, -1, -1)
        if self.mode == "rgb":
            return torch.logit(rgb.clamp(1e-3, 1 - 1e-3))
        with torch.no_grad():
            return space.encode(rgb).float().cpu()

    def forward(self) -> Render:
        """One row per sample, or with views one row per (sample, view), sample-major: (R, C, h, w) model-space
        latents, or (R, 3, H, W) RGB in [0, 1]."""
        x = torch.sigmoid(self.image) if self.mode == "rgb" else self.image
        samples = list(range(x.shape[0]))
        if self.views is None:
            return Render(x=x, samples=samples)
        rows = torch.stack([apply(v.transform, x) for v in self.views], dim=1)  # (S, V, C, h, w)
        return Render(
            x=rows.flatten(0, 1),
            samples=[s for s in samples for _ in self.views],
            captions=[v.prompt for _ in samples for v in self.views],
        )

    def write_artifacts(self, run_dir: Path, decode, captions: Sequence[str] | None = None) -> list[Path]:
        """views.png with views: one row per sample, each view as the model saw it, labelled with the prompt its rows
        are conditioned on (a view with prompt null: the sample's caption, from `captions`, one per sample).
        edit.png when the run started from an image: per sample, the input and the result side by side."""
        written = []
        if self.views is not None:
            with torch.no_grad():
                rows = self().x.detach()
            rgb = rows if self.outputs_rgb else decode(rows)
            per_sample = rgb.reshape(-1, len(self.views), *rgb.shape[1:])
            captions = list(captions) if captions is not None else [None] * len(per_sample)
            labelled = [labelled_row(images, self.view_labels(c)) for images, c in zip(per_sample, captions)]
            written.append(save_figure(labelled, run_dir, "views.png"))
        if self.start is not None:
            start, result = self.as_rgb(self.start, decode), self.as_rgb(self.image.detach(), decode)
            pairs = [labelled_row(torch.stack(pair), ["input", "result"]) for pair in zip(start, result)]
            written.append(save_figure(pairs, run_dir, "edit.png"))
        return written

    def view_labels(self, caption: str | None) -> list[str]:
        return [v.label(caption) for v in self.views]

    def as_rgb(self, image: torch.Tensor, decode) -> torch.Tensor:
        """Parameters (S, ...) → what they look like, RGB (S, 3, H, W) in [0, 1]."""
        with torch.no_grad():
            return torch.sigmoid(image) if self.mode == "rgb" else decode(image.to(self.image.device))


def config_views(cfg) -> list | None:
    """renderer.views of a config as plain lists and dicts (a ListConfig's entries would be ListConfig/DictConfig,
    which index and `.get` differently), or None."""
    views = cfg.get("views")
    return OmegaConf.to_container(views, resolve=True) if OmegaConf.is_config(views) else views


def save_figure(rows: Sequence[np.ndarray], run_dir: Path, name: str) -> Path:
    path = Path(run_dir) / name
    iio.imwrite(path, np.concatenate(rows, axis=0))
    return path
