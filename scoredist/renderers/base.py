"""What every renderer is: an nn.Module whose parameters are optimised, and whose forward pass makes a batch of x.

A renderer never imports a guidance model. It produces either RGB images (B, 3, H, W) in [0, 1] (`outputs_rgb = True`;
the trainer encodes them into the model's space, e.g. through the SD VAE, with gradient) or tensors already in the
model's space (SD latents, 2D points; `outputs_rgb = False`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class Render:
    """One forward pass: `x` (B, ...) and, per batch element, a prompt suffix (", front view") or "".

    `regularization`: a scalar the renderer wants added to the objective (a NeRF's sparsity/opacity terms), or None.
    `logs`: scalars to log with the step (e.g. the regularizers' values).
    """

    x: torch.Tensor
    prompt_suffixes: list[str] = field(default_factory=list)
    regularization: torch.Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelSpace:
    """What a renderer may know of the guidance model, handed over by the trainer (so no renderer imports a model).

    channels, downscale: a render of H×W pixels is a model input of channels×(H/downscale)×(W/downscale).
    native_size: the model's own image size in pixels (512×512 for SD 2.1-base), or None for non-image models.
    encode: RGB (B, 3, H, W) in [0, 1] → model space, used to initialise model-space parameters from an image.
    device: where the run computes (a renderer may choose CUDA-only pieces, such as tiny-cuda-nn, from it).
    """

    channels: int
    downscale: int
    native_size: tuple[int, int] | None
    encode: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device = torch.device("cpu")


class Renderer(nn.Module):
    outputs_rgb: bool = True
    height: int | None = None  # render size in pixels; None for renderers that make no images (points)
    width: int | None = None

    def bind(self, space: ModelSpace) -> None:
        """Called by the trainer once, before the optimizer is built: create parameters that depend on the model."""

    def forward(self) -> Render:
        """One batch of renders. The batch size is the renderer's own config (interpolated from trainer.batch_size),
        because the parameters' shape may depend on it."""
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups; override to give parts their own learning rates (hash grid vs MLP)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def write_artifacts(self, run_dir: Path, decode) -> list[Path]:
        """Write renderer-specific outputs at the end of a run (a particle figure, a video, a mesh); returns the paths.

        `decode` maps model-space tensors to RGB previews. Default: nothing extra.
        """
        return []
