"""Cameras of the text-to-3D setting: random orbit cameras looking at the origin, their rays, and their view phrase.

Scene frame (the same as the shapes world's): y is up; a camera at (azimuth, elevation, distance) sits at
distance · (cos el · sin az, sin el, cos el · cos az), so azimuth 0 looks from +z, the "front". Angles in degrees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# the shared convention and its geometry (scoredist/cameras.py), re-exported: the renderers' camera module as before
from scoredist.cameras import Cameras, camera_axes, camera_to_world, eye_positions  # noqa: F401


def _uniform(n: int, bounds: Sequence[float]) -> torch.Tensor:
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo + (hi - lo) * torch.rand(n)


def sample_cameras(
    n: int,
    azimuth_range: Sequence[float] = (-180.0, 180.0),
    elevation_range: Sequence[float] = (-10.0, 45.0),
    distance_range: Sequence[float] = (1.0, 1.5),
    fovy_range: Sequence[float] = (40.0, 70.0),
    views_per_group: int = 1,
    relative_distance: bool = False,
) -> Cameras:
    """n cameras, every quantity uniform in its range, drawn from torch's global CPU RNG (which the trainer seeds and
    checkpoints, so a resumed run draws the same cameras).

    views_per_group V > 1: MVDream-threestudio's multi-view cameras — n / V groups of V views of the object, each group
    with one elevation, distance and fovy, its azimuths spread evenly over azimuth_range from one random offset:
    lo + (u + k)/V · (hi − lo), k = 0 … V−1, u ~ U[0, 1) (90° apart for the full circle).
    relative_distance: the distance drawn is × 1 / tan(fovy / 2) (MVDream-threestudio's relative_radius), so the
    object fills the same share of the view whatever the fovy.
    """
    views = int(views_per_group)
    if views < 1 or n % views:
        raise ValueError(f"renderer.views_per_group={views_per_group} must divide the cameras per step ({n})")
    if views == 1:
        azimuth, elevation = _uniform(n, azimuth_range), _uniform(n, elevation_range)
        distance, fovy = _uniform(n, distance_range), _uniform(n, fovy_range)
    else:
        groups = n // views
        offset = torch.rand(groups, 1)
        lo, hi = float(azimuth_range[0]), float(azimuth_range[1])
        azimuth = ((offset + torch.arange(views)) / views * (hi - lo) + lo).reshape(-1)
        each = lambda bounds: _uniform(groups, bounds).repeat_interleave(views)
        elevation, distance, fovy = each(elevation_range), each(distance_range), each(fovy_range)
    if relative_distance:
        distance = distance / torch.tan(torch.deg2rad(fovy) / 2)
    return Cameras(azimuth=azimuth, elevation=elevation, distance=distance, fovy=fovy)


def orbit_cameras(n: int, elevation: float, distance: float, fovy: float) -> Cameras:
    """A turntable: n azimuths evenly spaced from 0° (front), one elevation, distance and fovy."""
    full = lambda value: torch.full((n,), float(value))
    return Cameras(torch.arange(n) * (360.0 / n), full(elevation), full(distance), full(fovy))


def sample_lights(
    eyes: torch.Tensor, distance_range: Sequence[float] = (0.8, 1.5), perturb: float = 1.0
) -> torch.Tensor:
    """DreamFusion's random point light, as threestudio samples it: the direction of the camera plus N(0, perturb²)
    noise per axis, normalised, at a distance uniform in `distance_range`. eyes: camera centres (B, 3) float32
    (`eye_positions`, or a render's ray origins) → (B, 3) float32 on their device, drawn there from torch's global
    RNG of that device (no host-to-device copy in a step; on the CPU the same draws as before)."""
    direction = eyes + torch.randn_like(eyes) * perturb
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    lo, hi = float(distance_range[0]), float(distance_range[1])
    return direction * (lo + (hi - lo) * torch.rand(eyes.shape[0], device=eyes.device, dtype=eyes.dtype))[:, None]


def camera_rays(cams: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole rays through pixel centres: → origins (B, 3) and unit directions (B, H·W, 3), row-major, row 0 on top.

    The image plane spans ±tan(fovy / 2) vertically and ±tan(fovy / 2) · W / H horizontally at unit depth.
    """
    eye, right, up, forward = camera_axes(cams)
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


def shift_azimuth(azimuth: float) -> float:
    """An azimuth in degrees wrapped to [−180, 180), as threestudio's prompt processor wraps it."""
    return (azimuth + 180.0) % 360.0 - 180.0


def view_suffix(
    azimuth: float,
    elevation: float,
    front_threshold: float = 45.0,
    back_threshold: float = 45.0,
    overhead_threshold: float = 60.0,
) -> str:
    """The view phrase of a camera, exactly as threestudio's prompt processor (and so the paper's 3D code) decides it:
    side by default; front if −front < az < front; back if az > 180 − back or az < −180 + back; overhead if
    elevation > overhead; a later rule wins over an earlier one (so overhead wins over all). The comparisons are
    strict, as there: a camera at exactly the threshold is a side view. az is wrapped to [−180, 180) first."""
    az = shift_azimuth(azimuth)
    if elevation > overhead_threshold:
        return ", overhead view"
    if az > 180.0 - back_threshold or az < -180.0 + back_threshold:
        return ", back view"
    if -front_threshold < az < front_threshold:
        return ", front view"
    return ", side view"


def reachable_view_suffixes(
    azimuth_range: Sequence[float] = (-180.0, 180.0),
    elevation_range: Sequence[float] = (-10.0, 45.0),
    front_threshold: float = 45.0,
    back_threshold: float = 45.0,
    overhead_threshold: float = 60.0,
) -> list[str]:
    """The view phrases cameras drawn from these ranges can get (sorted): what a trainer must check a guidance model
    knows before training (no ", overhead view" when every elevation stays at or below the overhead threshold).
    Overhead depends on the elevation alone and the others on the azimuth alone (on a 0.25° grid and its ends)."""
    (az_lo, az_hi), (el_lo, el_hi) = (map(float, azimuth_range)), (map(float, elevation_range))
    phrases = {", overhead view"} if el_hi > overhead_threshold else set()
    if el_lo <= overhead_threshold:
        azimuths = [*torch.arange(az_lo, az_hi, 0.25).tolist(), az_hi]
        phrases |= {view_suffix(a, el_lo, front_threshold, back_threshold, overhead_threshold) for a in azimuths}
    return sorted(phrases)
