"""A plain image as the parameters: the text-to-image setting of the paper.

mode="latent": the parameters are the model's own input (SD latents (B, 4, H/8, W/8); pixels in [−1, 1] for pixel-space
models such as the exact shapes prior), returned as is (`outputs_rgb = False`). This is the paper's 2D setting.
mode="rgb": the parameters are RGB logits (B, 3, H, W); the render is sigmoid(logits) in [0, 1], which the trainer
encodes into the model's space with gradient (through the VAE for latent models).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scoredist.images import read_image
from scoredist.renderers.base import ModelSpace, Render, Renderer


class ImageRenderer(Renderer):
    def __init__(
        self,
        mode: str = "latent",
        height: int | None = None,
        width: int | None = None,
        init: str = "randn",
        init_std: float = 1.0,
    ):
        super().__init__()
        if mode not in ("latent", "rgb"):
            raise ValueError(f"renderer.mode must be 'latent' or 'rgb', got {mode!r}")
        for name, value in (("height", height), ("width", width)):
            if value is not None and value <= 0:
                raise ValueError(f"renderer.{name} must be positive, got {value}")
        self.mode, self.height, self.width = mode, height, width
        self.init, self.init_std = init, init_std
        self.outputs_rgb = mode == "rgb"
        self.image = None  # nn.Parameter, created in bind() once the model's space is known

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
        self.image = nn.Parameter(self.initial_value(space, seeds))

    def initial_value(self, space: ModelSpace, seeds: Sequence[int]) -> torch.Tensor:
        """(S, ...) for S = len(seeds) samples: N(0, init_std²) from each sample's own generator, or the init image."""
        if self.mode == "latent":
            shape = (space.channels, self.height // space.downscale, self.width // space.downscale)
        else:
            shape = (3, self.height, self.width)
        if self.init == "randn":
            draws = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
            return torch.stack(draws) * self.init_std
        rgb = read_image(self.init, self.height, self.width).expand(len(seeds), -1, -1, -1)
        if self.mode == "rgb":
            return torch.logit(rgb.clamp(1e-3, 1 - 1e-3))
        with torch.no_grad():
            return space.encode(rgb).float().cpu()

    def forward(self) -> Render:
        """One row per sample: (S, C, h, w) model-space latents, or (S, 3, H, W) RGB in [0, 1]."""
        x = torch.sigmoid(self.image) if self.mode == "rgb" else self.image
        return Render(x=x, samples=list(range(x.shape[0])))
