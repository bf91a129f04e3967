"""Where a NeRF evaluates its field along a ray: every interval between box entry and exit (`DenseSampler`), or only
where an occupancy grid says something is (`OccupancyGrid`, empty-space skipping as in Instant-NGP and nerfacc).

Both answer nerfacc's `OccGridEstimator` interface — `sampling(...)` → packed (ray_indices, t_starts, t_ends) and
`update_every_n_steps(...)` — so the renderer has one code path whichever it holds: on CUDA nerfacc's own estimator
(its ray traversal is a CUDA kernel), elsewhere `OccupancyGrid`, the same rule in pure PyTorch (`make_estimator`).

The occupancy rule (nerfacc 0.5's, which threestudio's NeRF renderer uses with a 32³ grid):
- every n-th training step, evaluate occ(x) = σ(x) · step_size at one uniformly random point of each cell (all cells
  during the first `warmup_steps` steps; afterwards a random quarter of the cells plus up to as many occupied ones),
  and keep an exponential moving maximum: occs ← max(ema_decay · occs, occ);
- a cell is occupied when occs > min(mean(occs), occ_thre);
- sampling marches each ray with a fixed step and keeps the intervals whose midpoint lies in an occupied cell; with a
  density function it then drops samples that cannot matter, T_i < early_stop_eps (hidden behind opaque matter) or
  α_i < min(alpha_thre, mean(occs)) (nearly empty), using a density pass without gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from scoredist.renderers.volume import march, nerfacc_available, pack, visible


class DenseSampler(nn.Module):
    """No skipping (estimator=dense; the reference the grid is measured against): `num_samples` equal intervals
    between each ray's entry and exit of the box."""

    def __init__(self, num_samples: int):
        super().__init__()
        self.num_samples = int(num_samples)

    @torch.no_grad()
    def sampling(self, rays_o, rays_d, sigma_fn=None, t_min=None, t_max=None, stratified=False, **_):
        step = (t_max - t_min) / self.num_samples
        t_starts, t_ends, exists = march(t_min, t_max, step, self.num_samples, stratified)
        return pack(t_starts, t_ends, exists & (t_max > t_min)[:, None])

    def update_every_n_steps(self, step: int, occ_eval_fn: Callable, **_) -> None:
        """Nothing to update: a dense sampler skips nothing."""


class OccupancyGrid(nn.Module):
    """nerfacc's `OccGridEstimator` (one level) in pure PyTorch; same buffers, same update and sampling rules.

    roi_aabb: (xmin, ymin, zmin, xmax, ymax, zmax) of the grid; resolution: cells per side.
    Unlike nerfacc's, a grid that was never updated marks every cell occupied (a render before the first update, as
    the trainer makes for the loss's `attach`, sees the whole box rather than nothing).
    """

    def __init__(self, roi_aabb, resolution: int = 32):
        super().__init__()
        res = int(resolution)
        self.register_buffer("resolution", torch.tensor([res] * 3, dtype=torch.int32))
        self.register_buffer("aabbs", torch.as_tensor(roi_aabb, dtype=torch.float32).view(1, 6))
        self.register_buffer("occs", torch.zeros(res**3))
        self.register_buffer("binaries", torch.ones(1, res, res, res, dtype=torch.bool))
        coords = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
        self.register_buffer("grid_coords", coords, persistent=False)  # (res³, 3), cell index = x·res² + y·res + z
        self.cells = res**3

    # ---- update ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def update_every_n_steps(
        self,
        step: int,
        occ_eval_fn: Callable[[torch.Tensor], torch.Tensor],
        occ_thre: float = 1e-2,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n: int = 16,
    ) -> None:
        """The update of the module docstring (an exponential moving maximum, which nerfacc calls an EMA, hence
        `ema_decay`), on steps that are multiples of n."""
        if step % n:
            return
        cells = self.cells_to_update(step < warmup_steps)
        lo, hi = self.aabbs[0, :3], self.aabbs[0, 3:]
        unit = (self.grid_coords[cells] + torch.rand(len(cells), 3, device=lo.device)) / self.resolution
        occ = occ_eval_fn(lo + unit * (hi - lo)).reshape(-1)
        self.occs[cells] = torch.maximum(self.occs[cells] * ema_decay, occ)
        threshold = self.occs[self.occs >= 0].mean().clamp(max=occ_thre)
        self.binaries = (self.occs > threshold).view(self.binaries.shape)

    def cells_to_update(self, warmup: bool) -> torch.Tensor:
        """All cells while warming up, else a random quarter plus up to as many occupied cells (nerfacc's choice)."""
        device = self.occs.device
        if warmup:
            return torch.arange(self.cells, device=device)
        n = self.cells // 4
        uniform = torch.randint(self.cells, (n,), device=device)
        occupied = self.binaries.flatten().nonzero()[:, 0]
        if n < len(occupied):
            occupied = occupied[torch.randint(len(occupied), (n,), device=device)]
        return torch.cat([uniform, occupied])

    # ---- sampling ----------------------------------------------------------------------------------------------

    def occupied(self, points: torch.Tensor) -> torch.Tensor:
        """Is the cell of each point (..., 3) occupied? Points outside the grid are not."""
        lo, hi = self.aabbs[0, :3], self.aabbs[0, 3:]
        unit = (points - lo) / (hi - lo)
        inside = ((unit >= 0) & (unit <= 1)).all(-1)
        res = int(self.resolution[0])
        idx = (unit * res).long().clamp(0, res - 1)
        return inside & self.binaries[0, idx[..., 0], idx[..., 1], idx[..., 2]]

    @torch.no_grad()
    def sampling(
        self,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        sigma_fn: Callable | None = None,
        t_min: torch.Tensor | None = None,
        t_max: torch.Tensor | None = None,
        render_step_size: float = 1e-3,
        early_stop_eps: float = 1e-4,
        alpha_thre: float = 0.0,
        stratified: bool = False,
        **_,
    ):
        """Packed samples (ray_indices, t_starts, t_ends) of rays (R, 3) between t_min and t_max (R,)."""
        n_rays = rays_o.shape[0]
        longest = float((t_max - t_min).max()) if n_rays else 0.0
        steps = max(1, math.ceil(longest / render_step_size) + 1)
        step = torch.full_like(t_min, render_step_size)
        t_starts, t_ends, exists = march(t_min, t_max, step, steps, stratified)
        middle = rays_o[:, None] + rays_d[:, None] * ((t_starts + t_ends) / 2)[..., None]
        ray_indices, t_starts, t_ends = pack(t_starts, t_ends, exists & self.occupied(middle))
        if sigma_fn is None or not (alpha_thre > 0 or early_stop_eps > 0) or ray_indices.numel() == 0:
            return ray_indices, t_starts, t_ends
        alpha_thre = min(alpha_thre, float(self.occs.mean()))
        sigmas = sigma_fn(t_starts, t_ends, ray_indices)
        keep = visible(t_starts, t_ends, sigmas, ray_indices, n_rays, early_stop_eps, alpha_thre)
        return ray_indices[keep], t_starts[keep], t_ends[keep]


def make_estimator(kind: str, bound: float, num_samples: int, resolution: int, device: torch.device) -> nn.Module:
    """kind dense → DenseSampler; occupancy → nerfacc's OccGridEstimator on CUDA (when nerfacc imports), else the
    pure-PyTorch OccupancyGrid. Both grids start with every cell occupied."""
    if kind == "dense":
        return DenseSampler(num_samples)
    if kind != "occupancy":
        raise ValueError(f"renderer.estimator must be occupancy or dense, got {kind!r}")
    aabb = [-bound, -bound, -bound, bound, bound, bound]
    if torch.device(device).type == "cuda" and nerfacc_available():
        import nerfacc

        grid = nerfacc.OccGridEstimator(roi_aabb=aabb, resolution=resolution, levels=1)
        grid.binaries.fill_(True)
        return grid
    return OccupancyGrid(aabb, resolution)
