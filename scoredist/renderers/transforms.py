"""The views of an ambiguous image (optical illusion): symmetries of the square that the image is seen under.

Every transform permutes the cells of the last two dimensions (..., H, W), so it means the same thing for RGB pixels
and for the cells of an SD latent. Permuting latent cells commutes with the VAE's 8× downscale (the latent of a
rotated image is the rotated latent, up to the VAE's approximate equivariance), which is why a latent-mode illusion
transforms the latent and an RGB-mode one the pixels. Because each transform is a permutation, autograd maps a
direction computed on a transformed view back to the image through the inverse permutation, exactly.

    identity   the image as it is
    rot90      rotated 90° counter-clockwise (torch.rot90 with k = 1 over (H, W))
    rot180     upside down
    rot270     rotated 90° clockwise
    flip_h     mirrored left ↔ right
    flip_v     mirrored top ↔ bottom
    transpose  mirrored about the main diagonal (row i becomes column i)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "rot90": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
    "rot180": lambda x: torch.rot90(x, 2, dims=(-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, dims=(-2, -1)),
    "flip_h": lambda x: x.flip(-1),
    "flip_v": lambda x: x.flip(-2),
    "transpose": lambda x: x.transpose(-2, -1),
}
INVERSES: dict[str, str] = {name: name for name in TRANSFORMS} | {"rot90": "rot270", "rot270": "rot90"}
SWAPS_AXES = frozenset({"rot90", "rot270", "transpose"})  # an H×W grid becomes W×H: these need a square image


def check_transform(name: str) -> str:
    if name not in TRANSFORMS:
        raise ValueError(f"unknown view transform {name!r}; choose one of {', '.join(TRANSFORMS)}")
    return name


def apply(name: str, x: torch.Tensor) -> torch.Tensor:
    """The transform `name` of x (..., H, W)."""
    return TRANSFORMS[check_transform(name)](x)


def invert(name: str, x: torch.Tensor) -> torch.Tensor:
    """Undo the transform `name`: invert(name, apply(name, x)) == x."""
    return TRANSFORMS[INVERSES[check_transform(name)]](x)


@dataclass(frozen=True)
class View:
    """One reading of an ambiguous image: the image under `transform`, conditioned on `prompt` (None: the sample's
    own caption)."""

    transform: str
    prompt: str | None = None

    def label(self, caption: str | None = None) -> str:
        """ "rot180: a blue cone": the transform and the text its rows are conditioned on, `caption` (the sample's)
        for a view without a prompt of its own."""
        prompt = self.prompt if self.prompt is not None else caption
        return f"{self.transform}: {prompt if prompt is not None else '(the sample prompt)'}"


def parse_views(views) -> list[View]:
    """Views from a config: a list of {transform, prompt} mappings or [transform, prompt] pairs (prompt optional)."""
    if isinstance(views, (str, Mapping)) or not isinstance(views, Sequence) or len(views) == 0:
        raise ValueError(
            f"renderer.views must be a non-empty list of {{transform, prompt}} entries, got {views!r}; e.g. "
            "renderer.views='[{transform: identity, prompt: a red cube}, {transform: rot180, prompt: a blue cone}]'"
        )
    parsed = []
    for i, entry in enumerate(views):
        if isinstance(entry, Mapping):
            unknown = set(entry) - {"transform", "prompt"}
            if unknown or "transform" not in entry:
                raise ValueError(f"renderer.views[{i}] needs a 'transform' and optionally a 'prompt', got {entry!r}")
            transform, prompt = entry["transform"], entry.get("prompt")
        elif isinstance(entry, Sequence) and not isinstance(entry, str) and 1 <= len(entry) <= 2:
            transform, prompt = entry[0], entry[1] if len(entry) == 2 else None
        else:
            raise ValueError(f"renderer.views[{i}] must be {{transform, prompt}} or [transform, prompt], got {entry!r}")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"renderer.views[{i}].prompt must be a string or null, got {prompt!r}")
        parsed.append(View(check_transform(str(transform)), prompt))
    return parsed
