"""The pure-PyTorch Gaussian rasteriser (scoredist/renderers/splatting.py) against pixels computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from scoredist.renderers.splatting import covariances, project, quaternion_to_rotation, rasterize

W = H = 16
F = 20.0
K = torch.tensor([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]], dtype=torch.float64)
EYE = torch.eye(4, dtype=torch.float64)  # camera at the origin looking down +z (OpenCV axes)
IDENTITY_Q = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64)


def hand_alpha(opacity, dx, dy, var):
    """One isotropic splat of 2D variance var (pixels², the 0.3 dilation included) at offset (dx, dy)."""
    return min(0.999, opacity * math.exp(-0.5 * (dx * dx + dy * dy) / var))


def test_one_gaussian_on_the_axis_gives_the_hand_computed_pixel():
    z, s, o = 4.0, 0.1, 0.8
    means = torch.tensor([[0.0, 0.0, z]], dtype=torch.float64)
    color, bg = (
        torch.tensor([[1.0, 0.5, 0.25]], dtype=torch.float64),
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
    )
    image, alpha = rasterize(
        means, IDENTITY_Q, torch.full((1, 3), s, dtype=torch.float64), torch.tensor([o], dtype=torch.float64), color,
        EYE, K, W, H, background=bg,
    )  # fmt: skip
    var = (F / z) ** 2 * s**2 + 0.3  # J Σ Jᵀ on the axis: (f/z)² s², plus the dilation
    for i, j in [(8, 8), (7, 8), (8, 10), (5, 11)]:
        a = hand_alpha(o, j + 0.5 - W / 2, i + 0.5 - H / 2, var)
        a = a if a >= 1 / 255 else 0.0
        torch.testing.assert_close(image[i, j], a * color[0] + (1 - a) * bg)
        assert alpha[i, j].item() == pytest.approx(a, rel=1e-12, abs=1e-15)


def test_two_gaussians_composite_front_to_back_whatever_their_order():
    means = torch.tensor([[0.0, 0.0, 6.0], [0.0, 0.0, 3.0]], dtype=torch.float64)  # the second is in front
    scales = torch.full((2, 3), 0.15, dtype=torch.float64)
    opac = torch.tensor([0.9, 0.6], dtype=torch.float64)
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    q = IDENTITY_Q.repeat(2, 1)
    image, _ = rasterize(means, q, scales, opac, colors, EYE, K, W, H)
    flipped, _ = rasterize(means.flip(0), q, scales, opac.flip(0), colors.flip(0), EYE, K, W, H)
    torch.testing.assert_close(image, flipped)
    i = j = 8
    dx = dy = 0.5
    a_front = hand_alpha(0.6, dx, dy, (F / 3.0) ** 2 * 0.15**2 + 0.3)
    a_back = hand_alpha(0.9, dx, dy, (F / 6.0) ** 2 * 0.15**2 + 0.3)
    expected = a_front * colors[1] + (1 - a_front) * a_back * colors[0]
    torch.testing.assert_close(image[i, j], expected)


def test_the_2d_covariance_is_j_w_sigma_wt_jt_through_a_rotated_camera():
    """An anisotropic Gaussian (scales 0.3, 0.1, 0.05) turned 90° about z, seen by a camera turned 90° about z the
    other way: in the image its long axis is along x again."""
    half = math.sqrt(0.5)
    q = torch.tensor([[half, 0, 0, half]], dtype=torch.float64)  # +90° about z
    rz = quaternion_to_rotation(q)[0]
    torch.testing.assert_close(rz @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0, 1.0, 0]).double())
    scales = torch.tensor([[0.3, 0.1, 0.05]], dtype=torch.float64)
    cov = covariances(q, scales)
    torch.testing.assert_close(cov[0], torch.diag(torch.tensor([0.01, 0.09, 0.0025], dtype=torch.float64)))
    view = torch.eye(4, dtype=torch.float64)
    view[:3, :3] = rz.T  # world → camera undoes the turn
    view[2, 3] = 5.0
    means = torch.zeros(1, 3, dtype=torch.float64)
    _, conics, depths, valid = project(means, cov, view, K, W, H)
    a, b, c = conics[0]
    cov2d = torch.linalg.inv(torch.tensor([[a, b], [b, c]]))
    expected = torch.diag(torch.tensor([(F / 5) ** 2 * 0.09 + 0.3, (F / 5) ** 2 * 0.01 + 0.3], dtype=torch.float64))
    torch.testing.assert_close(cov2d, expected)
    assert depths.item() == 5.0 and valid.item()


def test_gaussians_behind_the_camera_and_faint_ones_add_nothing():
    means = torch.tensor([[0.0, 0.0, -3.0]], dtype=torch.float64)
    image, alpha = rasterize(
        means, IDENTITY_Q, torch.full((1, 3), 0.5, dtype=torch.float64), torch.tensor([0.9], dtype=torch.float64),
        torch.ones(1, 3, dtype=torch.float64), EYE, K, W, H,
    )  # fmt: skip
    assert image.abs().sum() == 0 and alpha.abs().sum() == 0
    faint, _ = rasterize(
        torch.tensor([[0.0, 0.0, 4.0]], dtype=torch.float64), IDENTITY_Q, torch.full((1, 3), 0.1, dtype=torch.float64),
        torch.tensor([1 / 300], dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64), EYE, K, W, H,
    )  # fmt: skip
    assert faint.abs().sum() == 0  # its peak alpha 1/300 < 1/255


def test_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    means = (torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.3 + torch.tensor([0, 0, 4.0])).requires_grad_()
    quats = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    scales = (0.1 + 0.1 * torch.rand(5, 3, generator=g, dtype=torch.float64)).requires_grad_()
    opac = (0.3 + 0.5 * torch.rand(5, generator=g, dtype=torch.float64)).requires_grad_()
    colors = torch.rand(5, 3, generator=g, dtype=torch.float64).requires_grad_()
    weights = torch.randn(H, W, 3, generator=g, dtype=torch.float64)

    def loss(*params):
        return (rasterize(*params, EYE, K, W, H)[0] * weights).sum()

    torch.autograd.gradcheck(loss, (means, quats, scales, opac, colors), eps=1e-6, atol=1e-5, rtol=1e-4)
