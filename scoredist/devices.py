"""Where a run computes: one place that turns "auto" / "cpu" / "cuda[:n]" into a torch.device."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """ "auto" is CUDA when it is available, else the CPU; asking for CUDA where there is none is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use cpu (or auto)")
    return torch.device(name)
