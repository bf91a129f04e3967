"""A plain image as the parameters: the text-to-image setting of the paper.

mode="latent": the parameters are the model's own input (SD latents (B, 4, H/8, W/8); pixels in [−1, 1] for pixel-space
models such as the exact shapes prior), returned as is (`outputs_rgb = False`). This is the paper's 2D setting.
mode="rgb": the parameters are RGB logits (B, 3, H, W); the render is sigmoid(logits) in [0, 1], which the trainer
encodes into the model's space with gradient (through the VAE for latent models).
"""

from __future__ import annotations

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
        batch_size: int = 1,
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
        self.batch_size, self.init, self.init_std = batch_size, init, init_std
        self.outputs_rgb = mode == "rgb"
        self.image = None  # nn.Parameter, created in bind() once the model's space is known

    def bind(self, space: ModelSpace) -> None:
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
        self.image = nn.Parameter(self.initial_value(space))

    def initial_value(self, space: ModelSpace) -> torch.Tensor:
        b = self.batch_size
        if self.mode == "latent":
            shape = (b, space.channels, self.height // space.downscale, self.width // space.downscale)
        else:
            shape = (b, 3, self.height, self.width)
        if self.init == "randn":
            return torch.randn(shape) * self.init_std
        rgb = read_image(self.init, self.height, self.width).expand(b, -1, -1, -1)
        if self.mode == "rgb":
            return torch.logit(rgb.clamp(1e-3, 1 - 1e-3))
        with torch.no_grad():
            return space.encode(rgb).float().cpu()

    def forward(self) -> Render:
        """All images of the batch: (B, C, h, w) model-space latents, or (B, 3, H, W) RGB in [0, 1]."""
        x = torch.sigmoid(self.image) if self.mode == "rgb" else self.image
        return Render(x=x, prompt_suffixes=[""] * x.shape[0])
