"""A NeRF's density as a triangle mesh: marching cubes (PyMCubes) on a grid over the scene box, vertex colours from
the colour field, written with trimesh (.obj, .glb, .ply open in any standard viewer).

The grid is padded with one layer of empty cells, so a surface that reaches the box is closed there: the mesh is
always watertight. A mesh with no triangles (threshold above every density, or below all of them) and a density with
NaNs are errors that give the density range and a threshold to try, never an empty file. The setting to try is
written as the caller takes it (`setting`): scripts/export.py's flag (`export_flag`, the default) or, at the end of a
training run, train.py's key (`scoredist.renderers.scene.run_setting`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

FORMATS = ("obj", "glb", "ply")
# (setting, value) → how the caller's command line sets it, for the advice in an error: "threshold", "12.5" → ...
Setting = Callable[[str, str], str]


def export_flag(key: str, value: str) -> str:
    """A mesh setting as scripts/export.py takes it: --threshold 12.5."""
    return f"--{key} {value}"


@torch.no_grad()
def density_grid(
    density_fn: Callable[[torch.Tensor], torch.Tensor], bound: float, resolution: int, device, chunk: int = 2**18
) -> torch.Tensor:
    """σ at the (N, N, N) vertices of a regular grid over [−bound, bound]³, indexed [x, y, z], float32 on the CPU."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    sigma = torch.cat([density_fn(part).float() for part in points.split(chunk)])
    return sigma.view(resolution, resolution, resolution).cpu()


def suggest_threshold(sigma: torch.Tensor) -> float:
    """A threshold that cuts the field somewhere: halfway between its median and its maximum."""
    return float((sigma.median() + sigma.max()) / 2)


def check_density(sigma: torch.Tensor, threshold: float, setting: Setting = export_flag) -> None:
    """Raise ValueError for a field with NaNs or with nothing on one side of the threshold."""
    nan = torch.isnan(sigma)
    if nan.any():
        raise ValueError(
            f"the density field is NaN at {int(nan.sum())} of {sigma.numel()} grid points (a diverged run?); no mesh "
            "written: export an earlier checkpoint or rerun with a lower learning rate"
        )
    lo, hi = float(sigma.min()), float(sigma.max())
    if not lo < threshold < hi:
        raise ValueError(
            f"no surface at density threshold {threshold:g}: the densities range from {lo:.4g} to {hi:.4g}; no mesh "
            f"written. Try {setting('threshold', f'{suggest_threshold(sigma):.4g}')}"
        )


def extract_mesh(
    density_fn: Callable[[torch.Tensor], torch.Tensor],
    colour_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    bound: float,
    resolution: int = 128,
    threshold: float = 25.0,
    device="cpu",
    min_part: float = 0.0,
    setting: Setting = export_flag,
):
    """The surface σ = threshold as a trimesh.Trimesh in scene units, outward-facing, with vertex colours from
    `colour_fn` ((M, 3) → (M, 3) in [0, 1]) when given. Connected pieces with fewer than `min_part` of all faces are
    dropped: the floaters a NeRF leaves in empty space (threestudio drops pieces under 1 % the same way). An error
    names the settings to try as `setting` writes them (scripts/export.py's flags by default)."""
    import mcubes  # imported here: only exports need them
    import trimesh

    if resolution < 2:
        raise ValueError(f"mesh resolution must be at least 2, got {resolution}")
    sigma = density_grid(density_fn, bound, resolution, device)
    check_density(sigma, threshold, setting)
    empty = min(float(sigma.min()), threshold) - 1.0  # the padding: below the threshold, so outside
    padded = np.pad(sigma.numpy().astype(np.float64), 1, constant_values=empty)
    vertices, faces = mcubes.marching_cubes(padded, threshold)
    if len(faces) == 0:
        raise ValueError(
            f"marching cubes found no triangles at threshold {threshold:g} and resolution {resolution}: the object is "
            f"smaller than a grid cell. Try {setting('resolution', str(2 * resolution))} or "
            f"{setting('threshold', f'{suggest_threshold(sigma):.4g}')}"
        )
    vertices = (vertices - 1.0) * (2 * bound / (resolution - 1)) - bound  # padded index → scene coordinates
    colours = None
    if colour_fn is not None:
        with torch.no_grad():
            rgb = colour_fn(torch.as_tensor(vertices, dtype=torch.float32, device=device)).float().clamp(0, 1)
        alpha = np.full((len(vertices), 1), 255, dtype=np.uint8)
        colours = np.concatenate([(rgb.cpu().numpy() * 255).round().astype(np.uint8), alpha], axis=1)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=colours, process=True)
    if min_part > 0:
        pieces = mesh.split(only_watertight=False)
        kept = [piece for piece in pieces if len(piece.faces) >= min_part * len(mesh.faces)]
        mesh = trimesh.util.concatenate(kept) if len(kept) > 1 else kept[0]
    if mesh.volume < 0:  # marching cubes' winding depends on which side is "inside"; make normals point outward
        mesh.invert()
    return mesh


def write_mesh(mesh, path: str | Path) -> Path:
    """Write a mesh; the format follows the file's suffix (.obj, .glb or .ply)."""
    path = Path(path)
    if path.suffix.lstrip(".") not in FORMATS:
        raise ValueError(f"mesh format must be one of {FORMATS}, got {path.suffix!r} ({path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path
