"""3D Gaussian splatting in pure PyTorch: the CPU (and fallback) rasteriser of renderer=gaussians.

The same image model as gsplat's `rasterization` (the CUDA path), so that the two agree to a stated tolerance:

- a Gaussian k has a mean μ_k, a rotation (quaternion w, x, y, z, normalised here) and scales s_k: Σ_k = R S Sᵀ Rᵀ;
- camera: world-to-camera `viewmat` (4×4), OpenCV axes (+z forward, +y down), pixel intrinsics K; pixel (i, j) is
  sampled at its centre (j + 0.5, i + 0.5);
- EWA projection: t = R_c μ + t_c, J = [[f_x/t_z, 0, −f_x t_x/t_z²], [0, f_y/t_z, −f_y t_y/t_z²]] with t_x/t_z, t_y/t_z
  clamped to ±1.3 tan(fov/2) inside J (as 3DGS and gsplat do), Σ' = J R_c Σ R_cᵀ Jᵀ + 0.3 I (the low-pass dilation);
  Gaussians with t_z ≤ near are dropped;
- front-to-back alpha compositing in depth order: α_k = min(0.999, o_k exp(−½ dᵀ Σ'⁻¹ d)), α_k < 1/255 contributes
  nothing, and compositing stops before the first Gaussian after which the transmittance would be ≤ 1e-4 (gsplat's
  cut-offs; 3DGS clamps α at 0.99);
- C = Σ_k c_k α_k T_k + T_final · background, T_k = Π_{j<k} (1 − α_j) over the Gaussians composited.

Tile-free in the CUDA sense: bands of rows, every pixel of a band against every Gaussian whose 3σ box overlaps the
band, differentiable end to end. Because T only falls along the depth order, "stopped" is simply T_k (1 − α_k) ≤ 1e-4,
so the whole composite is a few tensor operations.
"""

from __future__ import annotations

import math

import torch

ALPHA_MIN = 1.0 / 255.0  # a Gaussian below this alpha at a pixel contributes nothing there
ALPHA_MAX = 0.999  # gsplat's clamp (3DGS: 0.99)
TRANSMITTANCE_MIN = 1e-4  # compositing stops before the Gaussian that would take T to or below this
EPS_2D = 0.3  # the low-pass dilation added to both diagonals of every 2D covariance, in pixels²


def quaternion_to_rotation(quats: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions (w, x, y, z), any norm → (N, 3, 3) rotation matrices."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).view(*quats.shape[:-1], 3, 3)  # fmt: skip


def covariances(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Σ = R S Sᵀ Rᵀ: quats (N, 4), scales (N, 3) (not log) → (N, 3, 3)."""
    m = quaternion_to_rotation(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project(
    means: torch.Tensor,
    covs: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EWA projection of N Gaussians into one camera (module docstring).

    Returns means2d (N, 2) in pixels, conics (N, 3) = the inverse 2D covariance's (a, b, c) of [[a, b], [b, c]],
    depths (N,) and valid (N,) bool (in front of the near plane)."""
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    t = means @ rot.T + trans  # (N, 3) camera coordinates
    tz = t[:, 2]
    valid = tz > near
    tz_safe = torch.where(valid, tz, torch.ones_like(tz))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    means2d = torch.stack([fx * t[:, 0] / tz_safe + cx, fy * t[:, 1] / tz_safe + cy], dim=-1)
    # J is evaluated at a position clamped to 1.3× the field of view: Gaussians far outside the image would get a
    # huge, meaningless footprint from the unclamped Jacobian
    lim_x, lim_y = 1.3 * (0.5 * width / fx), 1.3 * (0.5 * height / fy)
    tx = (t[:, 0] / tz_safe).clamp(-lim_x, lim_x) * tz_safe
    ty = (t[:, 1] / tz_safe).clamp(-lim_y, lim_y) * tz_safe
    zero = torch.zeros_like(tz_safe)
    jac = torch.stack(
        [fx / tz_safe, zero, -fx * tx / tz_safe**2, zero, fy / tz_safe, -fy * ty / tz_safe**2], dim=-1
    ).view(-1, 2, 3)
    cov_cam = rot @ covs @ rot.T
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2) + EPS_2D * torch.eye(2, dtype=means.dtype, device=means.device)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = (a * c - b * b).clamp_min(1e-10)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    return means2d, conics, tz, valid


def footprint_radii(conics: torch.Tensor, opacities: torch.Tensor) -> torch.Tensor:
    """(N, 2) the half-sides in pixels of each projected Gaussian's box, gsplat's: ⌈e·√Σ'_xx⌉, ⌈e·√Σ'_yy⌉ with
    e = min(3.33, √(2 ln(255·o))), the distance beyond which its α < 1/255; 0 for o < 1/255 (never visible)."""
    a, b, c = conics.detach().unbind(-1)
    det = (a * c - b * b).clamp_min(1e-20)
    var = torch.stack([c / det, a / det], dim=-1)  # the 2D covariance's diagonal
    o = opacities.detach()
    extend = (2 * (255.0 * o).clamp_min(1.0).log()).sqrt().clamp_max(3.33)
    radii = (extend[:, None] * var.sqrt()).ceil()
    return torch.where((o >= ALPHA_MIN)[:, None], radii, torch.zeros_like(radii))


def visible(means2d: torch.Tensor, radii: torch.Tensor, valid: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(N,) bool: in front of the near plane, a box (radii (N, 2)) of positive size that overlaps the image."""
    x, y = means2d.detach().unbind(-1)
    rx, ry = radii.unbind(-1)
    inside = (x + rx > 0) & (x - rx < width) & (y + ry > 0) & (y - ry < height)
    return valid & inside & (rx > 0) & (ry > 0)


def bands(top: torch.Tensor, bottom: torch.Tensor, height: int, rows_per_band: int = 16):
    """Each band of rows of the image: (start, stop, which Gaussians' boxes, rows top..bottom (N,), reach rows
    start … stop − 1), the work unit of `composite`."""
    for start in range(0, height, rows_per_band):
        stop = min(start + rows_per_band, height)
        yield start, stop, (bottom > start) & (top < stop)


def composite(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    depths: torch.Tensor,
    valid: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor | None = None,
    rows_per_band: int = 16,
    radii: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back alpha compositing of N projected Gaussians over every pixel.

    colors (N, D), opacities (N,) in [0, 1] → image (H, W, D) and alpha (H, W) = 1 − T_final; background (D,) or None
    (zeros). The image is composited in bands of `rows_per_band` rows, each against only the Gaussians whose box
    (`footprint_radii`) overlaps it, as a tile rasteriser does; inside a band every pixel meets every such Gaussian."""
    radii = footprint_radii(conics, opacities) if radii is None else radii  # a caller that needs them passes them
    seen = visible(means2d, radii, valid, width, height)
    order = torch.argsort(torch.where(seen, depths, torch.full_like(depths, math.inf)))
    order = order[seen[order]]
    means2d, conics, colors, opacities = means2d[order], conics[order], colors[order], opacities[order]
    top, bottom = (means2d[:, 1] - radii[order, 1]).detach(), (means2d[:, 1] + radii[order, 1]).detach()
    xs = torch.arange(width, dtype=means2d.dtype, device=means2d.device) + 0.5
    images, alphas = [], []
    for start, stop, reach in bands(top, bottom, height, rows_per_band):
        here = torch.nonzero(reach).flatten()  # still in depth order
        ys = torch.arange(start, stop, dtype=means2d.dtype, device=means2d.device) + 0.5
        pixels = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1).reshape(-1, 2)  # (p, 2) as x, y
        color, t_final = composite_band(pixels, means2d[here], conics[here], colors[here], opacities[here])
        if background is not None:
            color = color + t_final[:, None] * background
        images.append(color)
        alphas.append(1 - t_final)
    return torch.cat(images).view(height, width, -1), torch.cat(alphas).view(height, width)


def composite_band(
    pixels: torch.Tensor, means2d: torch.Tensor, conics: torch.Tensor, colors: torch.Tensor, opacities: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (p, 2) against n Gaussians in depth order → colour (p, D) and final transmittance (p,)."""
    d = pixels[:, None, :] - means2d[None]  # (p, n, 2)
    sigma = 0.5 * (conics[:, 0] * d[..., 0] ** 2 + conics[:, 2] * d[..., 1] ** 2) + conics[:, 1] * d[..., 0] * d[..., 1]
    alpha = (opacities * torch.exp(-sigma)).clamp_max(ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    one_minus = 1 - alpha
    # T_k = Π_{j<k} (1 − α_j): an exclusive cumulative product along the depth order
    transmittance = torch.cumprod(torch.cat([torch.ones_like(one_minus[:, :1]), one_minus[:, :-1]], 1), 1)
    included = transmittance * one_minus > TRANSMITTANCE_MIN
    weights = torch.where(included, alpha * transmittance, torch.zeros_like(alpha))
    t_final = torch.where(included, one_minus, torch.ones_like(one_minus)).prod(1)
    return weights @ colors, t_final


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor | None = None,
    near: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One camera's image (H, W, D) and alpha (H, W) of N Gaussians: means (N, 3), quats (N, 4) wxyz, scales (N, 3),
    opacities (N,) in [0, 1], colors (N, D) (already evaluated for this camera)."""
    means2d, conics, depths, valid = project(means, covariances(quats, scales), viewmat, K, width, height, near)
    return composite(means2d, conics, colors, opacities, depths, valid, width, height, background)
