"""The camera convention every layer shares (design.md §2: renderers fill in cameras, guidance reads them, neither
imports the other): a row's camera as (azimuth, elevation, distance, fovy) and the geometry it means.

Scene frame (the same as the shapes world's): y is up; a camera at (azimuth, elevation, distance) sits at
distance · (cos el · sin az, sin el, cos el · cos az), so azimuth 0 looks from +z, the "front". Angles in degrees.
"""

from __future__ import annotations

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

    @classmethod
    def from_tensor(cls, rows: torch.Tensor) -> Cameras:
        """The inverse of `as_tensor`: (B, 4) azimuth, elevation, distance, fovy → Cameras."""
        if rows.dim() != 2 or rows.shape[1] != 4:
            raise ValueError(f"cameras are rows of (azimuth, elevation, distance, fovy), got shape {tuple(rows.shape)}")
        rows = rows.detach().float().cpu()
        return cls(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])


def eye_positions(cams: Cameras) -> torch.Tensor:
    """Camera centres (B, 3) float64: distance · (cos el · sin az, sin el, cos el · cos az)."""
    az, el = torch.deg2rad(cams.azimuth.double()), torch.deg2rad(cams.elevation.double())
    return cams.distance.double()[:, None] * torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], dim=-1)


def camera_axes(cams: Cameras) -> tuple[torch.Tensor, ...]:
    """eye, right, up, forward (B, 3) each, float64: the camera looks from eye towards the origin, with y up on
    screen. Straight up or down (±90° elevation) has no defined right; it is then (0, 0, 0)."""
    eye = eye_positions(cams)
    forward = -eye / eye.norm(dim=-1, keepdim=True)
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = torch.linalg.cross(forward, world_up)
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    up = torch.linalg.cross(right, forward)
    return eye, right, up, forward


def camera_to_world(cams: Cameras) -> torch.Tensor:
    """(B, 4, 4) float32 camera-to-world matrices in the OpenGL convention threestudio's cameras use: columns right,
    up, backward (−forward) and the eye position, last row (0, 0, 0, 1). fovy is not part of it. This is the camera
    a camera-conditioned VSD source model sees (flattened to 16 numbers, as ProlificDreamer's)."""
    eye, right, up, forward = camera_axes(cams)
    c2w = torch.zeros(len(cams), 4, 4, dtype=torch.float64)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -forward, eye
    c2w[:, 3, 3] = 1.0
    return c2w.float()
