"""Export a 3D run as a mesh (marching cubes on its density, vertex colours) for any standard 3D viewer, or a Gaussians
run's splats as the standard 3DGS .ply (splat viewers).

python scripts/export.py outputs/2026-11-29/14-30-38-ours                      # RUN_DIR/model.obj
python scripts/export.py RUN_DIR --format glb --resolution 256 --threshold 10  # RUN_DIR/model.glb
python scripts/export.py RUN_DIR/checkpoints/last.pt --output cube.ply
python scripts/export.py RUN_DIR --format ply                                  # a Gaussians run: RUN_DIR/gaussians.ply
python scripts/export.py RUN_DIR --format obj                                  # any 3D run: RUN_DIR/model.obj

For a NeRF run every format is a mesh; for a renderer=gaussians run, ply is the Gaussians themselves (3DGS's layout)
and obj/glb the mesh of their density field Σ opacity · Gaussian.

Defaults come from the run's config (renderer.mesh_resolution, renderer.mesh_threshold). An empty mesh is an error
that gives the density range and a threshold to try.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scoredist.checkpoint import run_folder_of
from scoredist.errors import cli_errors
from scoredist.renderers.gaussians import GaussianRenderer
from scoredist.renderers.loading import renderer_from_run
from scoredist.renderers.mesh import FORMATS, export_flag, write_mesh


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder of renderer=nerf or gaussians (or a checkpoints/*.pt)")
    parser.add_argument(
        "--format", choices=FORMATS, default="obj", help="obj | glb | ply (default obj); ply of Gaussians: splats"
    )
    parser.add_argument("--resolution", type=int, default=None, help="marching-cubes grid per side (run's default)")
    parser.add_argument("--threshold", type=float, default=None, help="density of the surface (run's default)")
    parser.add_argument(
        "--min-part", type=float, default=None, help="drop pieces under this fraction of the faces (run's default)"
    )
    parser.add_argument("--output", type=Path, default=None, help="file to write (default RUN_DIR/model.<format>)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    args = parser.parse_args(argv)
    with cli_errors():  # a user error (also one Hydra's instantiate wraps) ends the script with its one-line message
        renderer, step = renderer_from_run(args.run, args.device)
        if isinstance(renderer, GaussianRenderer) and args.format == "ply":
            path = renderer.write_ply(args.output or run_folder_of(args.run) / "gaussians.ply")
            print(f"{path}: {renderer.count} Gaussians (3DGS layout, SH degree {renderer.sh_degree}), step {step}")
            return path
        mesh = renderer.mesh(args.resolution, args.threshold, args.min_part, setting=export_flag)  # advice: our flags
        path = write_mesh(mesh, args.output or run_folder_of(args.run) / f"model.{args.format}")
    lo, hi = mesh.bounds
    print(
        f"{path}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, step {step}, bounds {lo.round(3)} to "
        f"{hi.round(3)}, watertight {mesh.is_watertight}"
    )
    return path


if __name__ == "__main__":
    main()
