"""Cameras of the text-to-3D setting: random orbit cameras looking at the origin, their rays, and their view phrase.

Scene frame (the same as the shapes world's): y is up; a camera at (azimuth, elevation, distance) sits at
distance · (cos el · sin az, sin el, cos el · cos az), so azimuth 0 looks from +z, the "front". Angles in degrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Cameras:
    """B orbit cameras: azimuth, elevation, fovy in degrees, distance in scene units; each (B,) float32 on the CPU."""

    azimuth: torch.Tensor
    elevation: torch.Tensor
    distance: torch.Tensor
    fovy: torch.Tensor

    def __len__(self) -> int:
        return self.azimuth.shape[0]

    def as_tensor(self) -> torch.Tensor:
        """(B, 4): azimuth, elevation, distance, fovy per camera (the per-row camera of a `Render`)."""
        return torch.stack([self.azimuth, self.elevation, self.distance, self.fovy], dim=1).float()


def _uniform(n: int, bounds: Sequence[float]) -> torch.Tensor:
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo + (hi - lo) * torch.rand(n)


def sample_cameras(
    n: int,
    azimuth_range: Sequence[float] = (-180.0, 180.0),
    elevation_range: Sequence[float] = (-10.0, 45.0),
    distance_range: Sequence[float] = (1.0, 1.5),
    fovy_range: Sequence[float] = (40.0, 70.0),
) -> Cameras:
    """n cameras, every quantity uniform in its range, drawn from torch's global CPU RNG (which the trainer seeds and
    checkpoints, so a resumed run draws the same cameras)."""
    return Cameras(
        azimuth=_uniform(n, azimuth_range),
        elevation=_uniform(n, elevation_range),
        distance=_uniform(n, distance_range),
        fovy=_uniform(n, fovy_range),
    )


def orbit_cameras(n: int, elevation: float, distance: float, fovy: float) -> Cameras:
    """A turntable: n azimuths evenly spaced from 0° (front), one elevation, distance and fovy."""
    full = lambda value: torch.full((n,), float(value))
    return Cameras(torch.arange(n) * (360.0 / n), full(elevation), full(distance), full(fovy))


def camera_rays(cams: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole rays through pixel centres: → origins (B, 3) and unit directions (B, H·W, 3), row-major, row 0 on top.

    The image plane spans ±tan(fovy / 2) vertically and ±tan(fovy / 2) · W / H horizontally at unit depth.
    """
    az, el = torch.deg2rad(cams.azimuth.double()), torch.deg2rad(cams.elevation.double())
    eye = cams.distance.double()[:, None] * torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], dim=-1)
    forward = -eye / eye.norm(dim=-1, keepdim=True)
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = torch.linalg.cross(forward, world_up)
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-9)  # straight up/down (±90°) is degenerate
    up = torch.linalg.cross(right, forward)
    half = torch.tan(torch.deg2rad(cams.fovy.double()) / 2)[:, None, None]  # (B, 1, 1)
    rows = 1 - (torch.arange(height, dtype=torch.float64) + 0.5) / height * 2  # +1 at the top
    cols = (torch.arange(width, dtype=torch.float64) + 0.5) / width * 2 - 1
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    u = u.reshape(1, -1, 1) * half * (width / height)
    v = v.reshape(1, -1, 1) * half
    dirs = forward[:, None] + u * right[:, None] + v * up[:, None]  # (B, H·W, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return eye.float(), dirs.float()


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, bound: float, min_near: float = 0.01):
    """Entry and exit distances of rays in the box [−bound, bound]³ (slab method): origins (R, 3), dirs (R, 3) →
    near, far (R,), with near ≥ min_near (a camera inside the box starts there) and far = near for rays that miss."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)  # a ray parallel to a slab never exits it
    t0, t1 = (-bound - origins) / safe, (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp_min(min_near)
    far = torch.maximum(t0, t1).amin(-1)
    return near, torch.maximum(far, near)


def view_suffix(
    azimuth: float,
    elevation: float,
    front_threshold: float = 45.0,
    back_threshold: float = 45.0,
    overhead_threshold: float = 60.0,
) -> str:
    """The prompt suffix of a camera (threestudio-style): ", overhead view" above `overhead_threshold` elevation, else
    by azimuth wrapped to (−180, 180]: front if |az| ≤ front_threshold, back if |az| ≥ 180 − back_threshold, side."""
    if elevation >= overhead_threshold:
        return ", overhead view"
    az = math.remainder(azimuth, 360.0)  # [−180, 180]
    if abs(az) <= front_threshold:
        return ", front view"
    if abs(az) >= 180.0 - back_threshold:
        return ", back view"
    return ", side view"
