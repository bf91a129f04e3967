"""3D sketches: coarse shapes made of a few primitives, the starting point of sketch-to-real (the paper's application).

A sketch is a triangle mesh (any file trimesh reads). Its occupancy on a grid over the scene box comes from the
generalised winding number w(p) = Σ_triangles Ω(p) / 4π (Ω the triangle's signed solid angle seen from p; Van
Oosterom & Strackee's formula), which is 1 inside a closed surface and 0 outside, and simply adds up over
overlapping primitives, so a union of closed primitives needs no boolean operation: inside = w > 0.5.

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
def winding_number(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Generalised winding number of a triangle mesh at points (N, 3) → (N,), in float64 for the atan2."""
    tri = vertices.double()[faces]  # (F, 3, 3)
    out = []
    step = max(1, 2**22 // max(len(faces), 1))  # bounds the (points × triangles) temporaries
    for part in points.double().split(step):
        a, b, c = (tri[None, :, k] - part[:, None] for k in range(3))  # (n, F, 3) each
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        det = (a * torch.linalg.cross(b, c, dim=-1)).sum(-1)
        denominator = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out.append((2 * torch.atan2(det, denominator)).sum(-1) / (4 * math.pi))
    return torch.cat(out).float()


def occupancy_grid(vertices: torch.Tensor, faces: torch.Tensor, bound: float, resolution: int = 64) -> torch.Tensor:
    """Occupancy in [0, 1] at the (R, R, R) vertices of a grid over [−bound, bound]³ (indexed [x, y, z]), softened by
    a 3×3×3 box filter so that its trilinear interpolation has a smooth edge one cell wide."""
    axis = torch.linspace(-bound, bound, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    inside = (winding_number(points, vertices, faces) > 0.5).float().view(1, 1, *[resolution] * 3)
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
