"""The 3DGS .ply layout: the header's property order, and a round trip of every parameter."""

from __future__ import annotations

import numpy as np
import torch

from scoredist.renderers.gaussian_ply import SH_C0, read_ply, rgb_to_sh, sh_to_rgb, write_ply


def test_the_header_has_the_3dgs_property_order_and_values_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 7
    params = {
        "means": torch.randn(n, 3, generator=g),
        "sh_dc": torch.randn(n, 3, generator=g),
        "logit_opacities": torch.randn(n, generator=g),
        "log_scales": torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "sh_rest": torch.randn(n, 3, 3, generator=g),  # degree 1: 3 coefficients per channel
    }
    path = write_ply(tmp_path / "splats.ply", **params)
    header = path.read_bytes().split(b"end_header\n")[0].decode().splitlines()
    props = [line.split()[-1] for line in header if line.startswith("property")]
    assert props[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert props[9:18] == [f"f_rest_{i}" for i in range(9)]
    assert props[18:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert "element vertex 7" in header and "format binary_little_endian 1.0" in header
    back = read_ply(path)
    for name, value in params.items():
        torch.testing.assert_close(back[name], value)
    # channel-major f_rest, read from the file's own columns: f_rest_0..2 are the red channel's three coefficients
    data = np.frombuffer(path.read_bytes().split(b"end_header\n", 1)[1], dtype="<f4").reshape(7, len(props))
    torch.testing.assert_close(torch.from_numpy(data[:, 9:12].copy()), params["sh_rest"][:, :, 0])
    torch.testing.assert_close(torch.from_numpy(data[:, 12:15].copy()), params["sh_rest"][:, :, 1])


def test_degree_zero_colours_convert_through_the_dc_coefficient():
    rgb = torch.tensor([[0.0, 0.5, 1.0]])
    torch.testing.assert_close(rgb_to_sh(rgb), torch.tensor([[-0.5, 0.0, 0.5]]) / SH_C0)
    torch.testing.assert_close(sh_to_rgb(rgb_to_sh(rgb)), rgb)
