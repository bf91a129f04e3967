"""Volume rendering of samples along rays: the quadrature, in nerfacc's dense (R, S) and packed (N,) layouts.

Along one ray the samples are intervals [t_i, t_i + δ_i) with densities σ_i (evaluated at the interval's middle):

    α_i = 1 − exp(−σ_i δ_i),   T_i = exp(−Σ_{j<i} σ_j δ_j) = Π_{j<i} (1 − α_j),   w_i = T_i α_i,
    C = Σ_i w_i c_i + (1 − Σ_i w_i) · background,   opacity = Σ_i w_i.

The packed layout (nerfacc's): the samples of every ray one after the other, `ray_indices` (N,) saying whose each is,
sorted by ray. Rays keep different numbers of samples once empty space is skipped. nerfacc's packed kernels are CUDA
only, so the CPU path (`composite_packed_torch`) scatters the packed samples into a zero-padded (R, S_max) table, uses
the dense formula (a zero-density pad changes nothing) and gathers the weights back.
"""

from __future__ import annotations

import torch


def composite_torch(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor):
    """Weights of the quadrature above: t_starts, t_ends, sigmas (R, S) → weights, transmittance, alphas (R, S)."""
    optical_depth = sigmas * (t_ends - t_starts)  # σ_i δ_i
    # exclusive cumulative sum: T_i sees only the intervals before i
    before = torch.cumsum(optical_depth, dim=-1) - optical_depth
    transmittance = torch.exp(-before)
    alphas = 1.0 - torch.exp(-optical_depth)
    return transmittance * alphas, transmittance, alphas


def nerfacc_available() -> bool:
    try:
        import nerfacc  # noqa: F401
    except ImportError:
        return False
    return True


def composite(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor, backend: str = "auto"):
    """`composite_torch`'s result through nerfacc (backend nerfacc, or auto when it imports) or pure PyTorch."""
    if backend == "nerfacc" or (backend == "auto" and nerfacc_available()):
        import nerfacc  # imported here: an optional dependency, and its import is slow

        # The dense (R, S) layout (no ray_indices) is plain PyTorch inside nerfacc and runs on CPU.
        return nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    return composite_torch(t_starts, t_ends, sigmas)


def slots(ray_indices: torch.Tensor, n_rays: int) -> tuple[torch.Tensor, int]:
    """Position of each packed sample within its ray (N,) and the most samples any ray has."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(ray_indices.shape[0], device=ray_indices.device) - starts[ray_indices]
    return position, int(counts.max()) if counts.numel() else 0


def composite_packed_torch(
    t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor, ray_indices: torch.Tensor, n_rays: int
):
    """The quadrature on packed samples (N,) sorted by ray → weights, transmittance, alphas (N,), differentiable."""
    position, width = slots(ray_indices, n_rays)
    depth = torch.zeros(n_rays, max(width, 1), dtype=sigmas.dtype, device=sigmas.device)
    depth = depth.index_put((ray_indices, position), sigmas * (t_ends - t_starts))  # pads stay 0: no effect on T
    before = (torch.cumsum(depth, dim=-1) - depth)[ray_indices, position]
    optical_depth = depth[ray_indices, position]
    transmittance = torch.exp(-before)
    alphas = 1.0 - torch.exp(-optical_depth)
    return transmittance * alphas, transmittance, alphas


def composite_packed(
    t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor, ray_indices: torch.Tensor, n_rays: int
):
    """Packed weights through nerfacc's CUDA kernels on CUDA tensors (when nerfacc imports), else in PyTorch."""
    if sigmas.is_cuda and nerfacc_available():
        import nerfacc

        return nerfacc.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices=ray_indices, n_rays=n_rays)
    return composite_packed_torch(t_starts, t_ends, sigmas, ray_indices, n_rays)


def accumulate(weights: torch.Tensor, values: torch.Tensor | None, ray_indices: torch.Tensor, n_rays: int):
    """Σ_i w_i v_i per ray: weights (N,), values (N, C) or None (opacity) → (n_rays, C) or (n_rays, 1)."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def march(
    near: torch.Tensor,
    far: torch.Tensor,
    step: torch.Tensor,
    max_steps: int,
    stratified: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intervals of length `step` from `near` (shifted by a uniform fraction of a step when stratified, as nerfacc
    does) while they start before `far`; the last one is cut at `far`. near, far, step (R,) → candidate
    (R, max_steps) t_starts, t_ends and a mask of the intervals that exist."""
    shift = torch.rand_like(near) if stratified else torch.zeros_like(near)
    k = torch.arange(max_steps, device=near.device, dtype=near.dtype)
    t_starts = near[:, None] + (k[None] + shift[:, None]) * step[:, None]
    t_ends = torch.minimum(t_starts + step[:, None], far[:, None])
    return t_starts, t_ends, t_starts < far[:, None]


def pack(t_starts: torch.Tensor, t_ends: torch.Tensor, keep: torch.Tensor):
    """(R, S) candidates and a mask → packed ray_indices, t_starts, t_ends (N,), sorted by ray."""
    ray_indices, _ = keep.nonzero(as_tuple=True)
    return ray_indices, t_starts[keep], t_ends[keep]


def visible(
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    sigmas: torch.Tensor,
    ray_indices: torch.Tensor,
    n_rays: int,
    early_stop_eps: float,
    alpha_thre: float,
) -> torch.Tensor:
    """nerfacc's visibility rule: keep samples with T_i ≥ early_stop_eps and (if alpha_thre > 0) α_i ≥ alpha_thre."""
    _, transmittance, alphas = composite_packed(t_starts, t_ends, sigmas, ray_indices, n_rays)
    keep = transmittance >= early_stop_eps
    return keep & (alphas >= alpha_thre) if alpha_thre > 0 else keep
