"""The prompt strings of the paper's code, and what one batch row is conditioned on.

SRC_SUFFIX, TGT_SUFFIX and NFSD_NEGATIVE are the exact strings of the public code (design.md §1); losses and configs
take them from here.

A `Prompt` is one row's condition: the caption, an optional view phrase (", front view") and, for NeRF renders, the
camera. Losses compose the text the model sees with `Prompt.text(suffix)`, which puts a loss's suffix *before* the view
phrase — "a hamburger, <suffix>, front view" — as threestudio's prompt processor (and so the paper's 3D code) does.

What reaches a guidance model for one row is a `Condition`: the composed text — a `str`, so every text-only model,
prompt cache and test treats it exactly as before — with the row's camera riding along (`Condition.camera`, the
renderer's (azimuth, elevation, distance, fovy) in degrees and scene units, scoredist/cameras.py's convention, or None).
Camera-conditioned models read it with `cameras_of`. A loss's ∅ / negative / source rows are plain strings in the
loss; `conditions` gives each of them the camera of the render row it stands beside, so no loss changes for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

SRC_SUFFIX = ", oversaturated, smooth, pixelated, cartoon, foggy, hazy, blurry, bad structure, noisy, malformed"
TGT_SUFFIX = ", detailed high resolution, high quality, sharp"
NFSD_NEGATIVE = "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy"


@dataclass(frozen=True)
class Prompt:
    """The condition of one batch row.

    caption: what the sample should show ("a red cube").
    view: the view phrase of the row's camera (", front view"), or "".
    camera: the row's camera as a flat tuple of floats (a NeRF render), or None; camera-conditioned source models
        (VSD) read it.
    """

    caption: str
    view: str = ""
    camera: tuple[float, ...] | None = None

    def text(self, suffix: str = "") -> str:
        """The string the model is conditioned on: caption + suffix + view phrase."""
        return self.caption + suffix + self.view

    def __str__(self) -> str:
        return self.text()


class Condition(str):
    """One row's condition as a guidance model receives it: the text (this string) and the row's camera, or None.
    What is kept beyond the step (a source model's prompt slots in a checkpoint) keeps `str(condition)`, the text as a
    plain string, which torch.load(weights_only=True) reads."""

    camera: tuple[float, ...] | None

    def __new__(cls, text: str, camera: Sequence[float] | None = None) -> Condition:
        self = super().__new__(cls, text)
        self.camera = tuple(float(c) for c in camera) if camera is not None else None
        return self


def conditions(groups: Sequence[Sequence[Prompt | str]], suffix: str = "") -> list[Condition]:
    """The rows of C aligned groups of B rows each (a loss's conditions: y, ∅, negative, ..., one row per render row)
    flattened into C·B `Condition`s, group after group. A `Prompt` row gives its text (with `suffix` before its view
    phrase) and its own camera, a `Condition` its own; a plain-string row gets the camera of the render row it stands
    beside: the first camera at the same index in any group."""
    width = max((len(group) for group in groups), default=0)
    cameras: list[tuple[float, ...] | None] = [None] * width
    for group in groups:
        for i, row in enumerate(group):
            if cameras[i] is None:
                cameras[i] = getattr(row, "camera", None)  # a Prompt's or a Condition's
    return [
        Condition(
            row.text(suffix) if isinstance(row, Prompt) else row + suffix, getattr(row, "camera", None) or cameras[i]
        )
        for group in groups
        for i, row in enumerate(group)
    ]


def beside(text: str, rows: Sequence[Prompt | str]) -> list[Condition]:
    """`text` once per row, each with that row's camera (a loss's ∅ or negative rows for a subset of its rows)."""
    return [Condition(text, getattr(row, "camera", None)) for row in rows]


def cameras_of(rows: Sequence[str]) -> list[tuple[float, ...] | None]:
    """Each row's camera (a `Condition`'s), None for a row without one or a plain string."""
    return [getattr(row, "camera", None) for row in rows]


def require_cameras(rows: Sequence[str], guidance: str) -> list[tuple[float, ...]]:
    """Each row's camera, or a ValueError naming the 3D renderers when a row has none (a camera-conditioned guidance
    model fed rows of an image renderer, or plain strings)."""
    cameras = cameras_of(rows)
    if any(c is None for c in cameras):
        raise ValueError(
            f"guidance {guidance} needs the camera of every row: use it with a 3D renderer (renderer=nerf or "
            "renderer=gaussians), whose rows carry their cameras"
        )
    return cameras


def with_caption(prompts: Sequence[Prompt | str], caption: str) -> list[Prompt | str]:
    """The same rows (views, cameras) conditioned on another caption; plain strings become the caption itself."""
    return [replace(p, caption=caption) if isinstance(p, Prompt) else caption for p in prompts]


def texts(prompts: Sequence[Prompt | str], suffix: str = "") -> list[Condition]:
    """Model strings of a batch of rows with `suffix` inserted before each view phrase, as `Condition`s (each with its
    row's camera). Plain strings (rows without a view, as tests and scripts pass them) get the suffix appended."""
    return conditions([prompts], suffix)
