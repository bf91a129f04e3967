"""Gaussians to and from the standard 3DGS `.ply` layout, which common splat viewers open.

One binary little-endian `vertex` element of float32 properties, in the order of 3DGS's `save_ply`:
x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3. The values are the raw parameters: spherical-harmonic
coefficients (f_dc the degree-0 one per channel; f_rest channel-major, all R coefficients then G then B), the logit
opacity, log scales and the unnormalised quaternion, w first. Normals are zeros.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SH_C0 = 0.28209479177387814  # the degree-0 real spherical harmonic: rgb = SH_C0 · f_dc + 0.5


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh_dc: torch.Tensor) -> torch.Tensor:
    return sh_dc * SH_C0 + 0.5


def property_names(num_rest: int) -> list[str]:
    """num_rest: f_rest coefficients per Gaussian (3 · ((degree + 1)² − 1))."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(num_rest)]
    return names + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def write_ply(
    path: str | Path,
    means: torch.Tensor,
    sh_dc: torch.Tensor,
    logit_opacities: torch.Tensor,
    log_scales: torch.Tensor,
    quats: torch.Tensor,
    sh_rest: torch.Tensor | None = None,
) -> Path:
    """means (N, 3), sh_dc (N, 3), logit_opacities (N,), log_scales (N, 3), quats (N, 4) wxyz, sh_rest (N, K − 1, 3)
    or None (degree 0) → the file."""
    n = means.shape[0]
    rest = torch.zeros(n, 0) if sh_rest is None else sh_rest.transpose(1, 2).reshape(n, -1)  # channel-major
    columns = [means, torch.zeros(n, 3), sh_dc, rest, logit_opacities[:, None], log_scales, quats]
    data = torch.cat([c.detach().float().cpu() for c in columns], dim=1).numpy().astype("<f4")
    names = property_names(rest.shape[1])
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names] + ["end_header"]
    path = Path(path)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(data).tobytes())
    return path


def read_ply(path: str | Path) -> dict[str, torch.Tensor]:
    """The inverse of write_ply (any float32 vertex layout with these names): {means, sh_dc, sh_rest, logit_opacities,
    log_scales, quats} as float32 tensors, f_rest read back channel-major into (N, K − 1, 3)."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: only binary little-endian .ply files are read")
    n = next(int(line.split()[-1]) for line in lines if line.startswith("element vertex"))
    names = [line.split()[-1] for line in lines if line.startswith("property float")]
    table = torch.from_numpy(np.frombuffer(raw[end:], dtype="<f4", count=n * len(names)).reshape(n, len(names)).copy())
    col = {name: table[:, i] for i, name in enumerate(names)}

    def stack(prefix: str, count: int) -> torch.Tensor:
        return torch.stack([col[f"{prefix}{i}"] for i in range(count)], dim=1)

    num_rest = sum(name.startswith("f_rest_") for name in names)
    rest = stack("f_rest_", num_rest).view(n, 3, num_rest // 3).transpose(1, 2) if num_rest else None
    return {
        "means": torch.stack([col["x"], col["y"], col["z"]], dim=1),
        "sh_dc": stack("f_dc_", 3),
        "sh_rest": rest,
        "logit_opacities": col["opacity"],
        "log_scales": stack("scale_", 3),
        "quats": stack("rot_", 4),
    }
