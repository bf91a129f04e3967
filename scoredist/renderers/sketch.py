"""3D sketches: coarse shapes made of a few primitives, the starting point of sketch-to-real (the paper's application).

A sketch is a triangle mesh (any file trimesh reads). Its occupancy on a grid over the scene box comes from the winding
number along rays (`column_winding`), which is 1 inside a closed surface and 0 outside and simply adds up over
overlapping primitives, so a union of closed primitives needs no boolean operation: inside = winding > 0.5.

`python -m scoredist.renderers.sketch assets/sketches` writes the example sketches (a flower: a stem, a centre and
petals; a rough box for the shapes world's "a red cube") as .obj files.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_sketch_path(path: str | Path) -> Path:
    """The file as given, or relative to the repository (so `assets/sketches/...` works from any directory)."""
    candidates = [Path(path)] + ([REPO_ROOT / path] if not Path(path).is_absolute() else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"renderer.init_shape: no mesh file {path} (looked in the current directory and in {REPO_ROOT}); give an "
        ".obj/.ply/.glb/.stl path, or write the examples with: python -m scoredist.renderers.sketch assets/sketches"
    )


def load_mesh(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A mesh file → vertices (V, 3) float32 and faces (F, 3) long (a scene's meshes are merged)."""
    import trimesh

    mesh = trimesh.load(resolve_sketch_path(path), force="mesh")
    if len(mesh.faces) == 0:
        raise ValueError(f"renderer.init_shape: {path} has no triangles")
    return torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32), torch.as_tensor(
        np.asarray(mesh.faces), dtype=torch.long
    )


@torch.no_grad()
def column_winding(vertices: torch.Tensor, faces: torch.Tensor, bound: float, resolution: int) -> torch.Tensor:
    """Winding number of a closed triangle mesh at the (R, R, R) vertices of a grid over [−bound, bound]³ (indexed
    [x, y, z]), by casting one ray along +x per (y, z) column: every triangle the ray crosses adds ±1 to the points
    beyond the crossing (+1 where the surface is entered, its normal facing −x). Overlapping closed parts add up, so a
    union of primitives needs no boolean operation. Columns are nudged by a tiny irrational offset so that no ray
    runs exactly along a shared edge."""
    axis = torch.linspace(-bound, bound, resolution, dtype=torch.float64)
    nudge = 1e-5 * bound * math.sqrt(2)
    cy, cz = torch.meshgrid(axis + nudge, axis + nudge * math.sqrt(3), indexing="ij")  # (R, R) column centres
    cy, cz = cy.reshape(-1, 1), cz.reshape(-1, 1)
    increments = torch.zeros(resolution * resolution, resolution + 1, dtype=torch.float64)
    tri = vertices.double()[faces]  # (F, 3, 3)
    step = max(1, 2**22 // (resolution * resolution))
    for part in tri.split(step):
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = (part[:, k].unbind(-1) for k in range(3))
        area = (y1 - y0) * (z2 - z0) - (y2 - y0) * (z1 - z0)  # twice the signed yz area: the normal's x sign
        # barycentric weights of each column centre in each triangle's yz projection: (columns, F)
        w0 = ((y1 - cy) * (z2 - cz) - (y2 - cy) * (z1 - cz)) / area
        w1 = ((y2 - cy) * (z0 - cz) - (y0 - cy) * (z2 - cz)) / area
        w2 = 1.0 - w0 - w1
        hit = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (area != 0)
        column, face = hit.nonzero(as_tuple=True)
        x = w0[column, face] * x0[face] + w1[column, face] * x1[face] + w2[column, face] * x2[face]
        first_beyond = torch.searchsorted(axis, x, right=True)  # grid points strictly beyond the crossing
        entering = torch.where(area[face] > 0, -1.0, 1.0).double()  # normal facing −x: the ray enters
        increments.index_put_((column, first_beyond), entering, accumulate=True)
    winding = increments.cumsum(dim=1)[:, :resolution]  # (R², R): along x for every (y, z)
    return winding.view(resolution, resolution, resolution).permute(2, 0, 1).float()


def occupancy_grid(vertices: torch.Tensor, faces: torch.Tensor, bound: float, resolution: int = 64) -> torch.Tensor:
    """Occupancy in [0, 1] at the (R, R, R) vertices of a grid over [−bound, bound]³ (indexed [x, y, z]), softened by
    a 3×3×3 box filter so that its trilinear interpolation has a smooth edge one cell wide."""
    inside = (column_winding(vertices, faces, bound, resolution) > 0.5).float()[None, None]
    return F.avg_pool3d(inside, 3, stride=1, padding=1, count_include_pad=False)[0, 0]


def sample_grid(grid: torch.Tensor, points: torch.Tensor, bound: float) -> torch.Tensor:
    """Trilinear interpolation of a vertex grid (R, R, R) over [−bound, bound]³ at points (N, 3) → (N,); 0 outside."""
    # grid_sample reads its last coordinate as the first spatial axis: (x, y, z) indexing → (z, y, x) coordinates
    coords = (points / bound).flip(-1).view(1, -1, 1, 1, 3).to(grid.dtype)
    values = F.grid_sample(grid[None, None], coords, mode="bilinear", padding_mode="zeros", align_corners=True)
    return values.view(-1)


# ---------------------------------------------------------------------------------------------------------------------
# Example sketches, built from primitives
# ---------------------------------------------------------------------------------------------------------------------


def flower():
    """A flower facing the front camera (+z): a stem, two leaves, a round centre and eight petals."""
    import trimesh

    parts = [trimesh.creation.cylinder(radius=0.035, height=0.75, sections=16)]
    parts[0].apply_transform(_rotate_x(90.0))  # trimesh's cylinder runs along z; the stem runs along y
    parts[0].apply_translation((0.0, -0.35, 0.0))
    for side in (-1.0, 1.0):
        leaf = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
        leaf.apply_scale((0.16, 0.05, 0.07))
        leaf.apply_transform(_rotate_z(side * 30.0))
        leaf.apply_translation((side * 0.13, -0.45 + 0.1 * (side > 0), 0.0))
        parts.append(leaf)
    centre = trimesh.creation.icosphere(subdivisions=2, radius=0.12)
    centre.apply_translation((0.0, 0.12, 0.03))
    parts.append(centre)
    for k in range(8):
        petal = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
        petal.apply_scale((0.2, 0.085, 0.04))
        petal.apply_translation((0.27, 0.0, 0.0))
        petal.apply_transform(_rotate_z(45.0 * k))
        petal.apply_translation((0.0, 0.12, 0.0))
        parts.append(petal)
    return trimesh.util.concatenate(parts)


def rough_box():
    """A box a user might sketch for "a red cube": uneven sides, a little tilted, with a lump on one face."""
    import trimesh

    box = trimesh.creation.box(extents=(0.92, 0.76, 0.84))
    box.apply_transform(_rotate_y(9.0) @ _rotate_x(-5.0))
    lump = trimesh.creation.icosphere(subdivisions=2, radius=0.16)
    lump.apply_translation((0.3, 0.32, 0.25))
    return trimesh.util.concatenate([box, lump])


EXAMPLES = {"flower": flower, "rough_box": rough_box}


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _rotate_x(degrees: float) -> np.ndarray:
    return _rotation(0, degrees)


def _rotate_y(degrees: float) -> np.ndarray:
    return _rotation(1, -degrees)  # the right-handed rotation about +y (its sine terms have the other signs)


def _rotate_z(degrees: float) -> np.ndarray:
    return _rotation(2, degrees)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the example 3D sketches as .obj files.")
    parser.add_argument("out_dir", type=Path, help="folder to write flower.obj and rough_box.obj into")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, build in EXAMPLES.items():
        path = args.out_dir / f"{name}.obj"
        build().export(path)
        print(path)


if __name__ == "__main__":
    main()
