"""The prompt strings of the paper's code, and what one batch row is conditioned on.

SRC_SUFFIX, TGT_SUFFIX and NFSD_NEGATIVE are the exact strings of the public code (design.md §1); losses and configs
take them from here.

A `Prompt` is one row's condition: the caption, an optional view phrase (", front view") and, for NeRF renders, the
camera. Losses compose the text the model sees with `Prompt.text(suffix)`, which puts a loss's suffix *before* the view
phrase — "a hamburger, <suffix>, front view" — as threestudio's prompt processor (and so the paper's 3D code) does.
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


def with_caption(prompts: Sequence[Prompt | str], caption: str) -> list[Prompt | str]:
    """The same rows (views, cameras) conditioned on another caption; plain strings become the caption itself."""
    return [replace(p, caption=caption) if isinstance(p, Prompt) else caption for p in prompts]


def texts(prompts: Sequence[Prompt | str], suffix: str = "") -> list[str]:
    """Model strings of a batch of rows with `suffix` inserted before each view phrase. Plain strings (rows without a
    view, as tests and scripts pass them) get the suffix appended."""
    return [p.text(suffix) if isinstance(p, Prompt) else p + suffix for p in prompts]
