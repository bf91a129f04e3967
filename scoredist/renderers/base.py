"""What every renderer is: an nn.Module whose parameters are optimised, and whose forward pass makes a batch of x.

A renderer never imports a guidance model. It produces either RGB images (B, 3, H, W) in [0, 1] (`outputs_rgb = True`;
the trainer encodes them into the model's space, e.g. through the SD VAE, with gradient) or tensors already in the
model's space (SD latents, 2D points; `outputs_rgb = False`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class Render:
    """One forward pass: R rows of model input and what each row is conditioned on.

    x: (R, ...) the rows.
    samples: per row, the index (within the chunk) of the sample it belongs to: one row per sample for images, the
        B cameras of the one scene for a NeRF, the particles of each cloud for points.
    views: per row, a view phrase (", front view") the prompt ends with, or None for none.
    captions: per row, a caption that replaces the sample's own (a view of an ambiguous image has its own prompt),
        or None for the sample's caption throughout.
    cameras: (R, k) per-row camera parameters on the CPU (a NeRF's), for camera-conditioned source models, or None.
    regularization: a scalar the renderer wants added to the objective (a NeRF's sparsity/opacity terms), or None.
    logs: scalars (0-d tensors or floats) to log with the step.
    """

    x: torch.Tensor
    samples: list[int]
    views: list[str] | None = None
    captions: list[str | None] | None = None
    cameras: torch.Tensor | None = None
    regularization: torch.Tensor | None = None
    logs: dict = field(default_factory=dict)


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
    makes: str = "images"  # what its rows are: "images" (RGB or a model's latent grid) or "points" (2D particles)
    outputs_rgb: bool = True
    height: int | None = None  # render size in pixels; None for renderers that make no images (points)
    width: int | None = None
    max_samples: int | None = None  # samples one renderer holds at once (a NeRF is one scene); None: any number
    has_cameras: bool = False  # its rows carry cameras (Render.cameras): what camera-conditioned guidance needs

    @classmethod
    def render_sizes(cls, cfg) -> list[tuple[int | None, int | None, int | None]]:
        """(height, width, rows per sample or None) of every render size a run with this renderer config will make,
        read from the config before anything is built (the trainer's memory check: a step of a chunk of S samples
        renders S × rows per sample images of height × width; None: one row per sample). Height or width None: the
        model's native size. Default: the one size of the config, one row per sample."""
        return [(cfg.get("height"), cfg.get("width"), None)]

    @classmethod
    def row_captions(cls, cfg) -> list[tuple[str, str]]:
        """(caption, config key) of every caption the renderer gives rows of its own (`Render.captions`), read from
        its config so the trainer can check them before training. Default: none."""
        return []

    @classmethod
    def view_phrases(cls, cfg) -> list[str]:
        """Every view phrase (`Render.views`) the rows of a run with this renderer config can end their prompts with,
        "" standing for none, read from the config so the trainer can check each suffixed prompt before training.
        Default: [""] (no view phrases)."""
        return [""]

    def bind(self, space: ModelSpace, seeds: Sequence[int]) -> None:
        """Called by the trainer once per chunk, before the optimizer is built: create the parameters of
        len(seeds) samples, sample i's initial value drawn from a generator seeded with seeds[i] (so it does not
        depend on the other samples of the chunk)."""

    def at_step(self, step: int) -> None:
        """Called by the trainer before every training forward with the chunk's step (0-based), so a renderer can
        follow a schedule of the step (a NeRF's render size). Default: nothing."""

    def after_update(self, step: int, optimizer) -> None:
        """Called by the trainer after step `step`'s optimizer update (and its LR scheduler's step), with the
        optimizer, so a renderer can change its own parameter set and their state in it (3D Gaussians' density
        control) or set its groups' rates for the next step. Default: nothing."""

    def forward(self) -> Render:
        """The rows of one step for every sample the renderer holds (see `Render`)."""
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups; override to give parts their own learning rates (hash grid vs MLP)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def write_artifacts(self, run_dir: Path, decode, captions: Sequence[str] | None = None) -> list[Path]:
        """Write renderer-specific outputs at the end of a run (a particle figure, a video, a mesh); returns the paths.

        `decode` maps model-space tensors to RGB previews; `captions` are the samples' prompts, one per sample (for
        labels). Default: nothing extra.
        """
        return []
