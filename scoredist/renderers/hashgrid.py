"""Multiresolution hash-grid encoding (Instant-NGP): a pure-PyTorch version and the same encoding through tiny-cuda-nn.

Level l has a grid of resolution R_l = floor(base · b^l), b = exp(ln(max / base) / (L − 1)), so the finest level has
`max_resolution` cells per side. A point x ∈ [0, 1]³ is scaled to p = x · R_l; the 8 corners of its cell are
c = floor(p) + {0, 1}³, and its feature at level l is the trilinear blend

    f_l(x) = Σ_c  Π_d (frac_d if c_d is the upper corner else 1 − frac_d) · table_l[index(c)],   frac = p − floor(p).

index(c) is c_x + c_y (R_l + 1) + c_z (R_l + 1)² when the level's (R_l + 1)³ vertices fit in its table (coarse
levels, no collisions), else the spatial hash (c_x · 1 ⊕ c_y · 2654435761 ⊕ c_z · 805459861) mod T. The encoding is
the concatenation of f_0 … f_{L−1}: (N, L · F). tiny-cuda-nn computes the same thing with fused CUDA kernels (its
vertex placement differs by half a cell, so its tables are not interchangeable with these; the function is the same).
"""

from __future__ import annotations

import math

import torch
from torch import nn

PRIMES = (1, 2654435761, 805459861)  # Instant-NGP's per-axis hash primes


def level_growth(num_levels: int, base_resolution: int, max_resolution: int) -> float:
    """b, the per-level scale, chosen so that base · b^(L−1) = max_resolution (tiny-cuda-nn's per_level_scale)."""
    return math.exp(math.log(max_resolution / base_resolution) / max(num_levels - 1, 1))


def level_resolutions(num_levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """R_l = floor(base · b^l) with b from `level_growth`, so that R_{L−1} = max_resolution."""
    if num_levels == 1:
        return [int(base_resolution)]
    growth = level_growth(num_levels, base_resolution, max_resolution)
    return [int(math.floor(base_resolution * growth**level + 1e-6)) for level in range(num_levels)]


class HashGrid(nn.Module):
    """The pure-PyTorch encoding: positions (N, 3) in [0, 1] → features (N, num_levels · features_per_level).

    All levels share one flat table (like tiny-cuda-nn): level l owns rows offsets[l] … offsets[l + 1] − 1.
    """

    def __init__(
        self,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 4096,
        init_scale: float = 1e-4,
    ):
        super().__init__()
        self.num_levels, self.features_per_level = int(num_levels), int(features_per_level)
        self.resolutions = level_resolutions(num_levels, base_resolution, max_resolution)
        hash_size = 2 ** int(log2_hashmap_size)
        sizes = [min(hash_size, (r + 1) ** 3) for r in self.resolutions]
        self.hashed = [(r + 1) ** 3 > hash_size for r in self.resolutions]
        self.register_buffer("offsets", torch.tensor([0, *sizes]).cumsum(0), persistent=False)
        # tiny-cuda-nn's init: features start near zero, so the MLP first sees a constant input and the density is
        # the blob bias alone.
        self.table = nn.Parameter(torch.empty(sum(sizes), self.features_per_level).uniform_(-init_scale, init_scale))

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def corner_index(self, cell: torch.Tensor, level: int) -> torch.Tensor:
        """Integer cell origins (N, 3) at one level → table rows of the cell's 8 corners (N, 2, 2, 2), indexed [dx, dy,
        dz]. Each axis's two terms are computed on (N, 2) and combined by broadcasting, never as (N, 8, 3)."""
        r, size = self.resolutions[level], int(self.offsets[level + 1] - self.offsets[level])
        step = torch.arange(2, device=cell.device)
        cx, cy, cz = (cell[:, d : d + 1] + step for d in range(3))  # (N, 2) each
        if self.hashed[level]:
            hx, hy, hz = cx * PRIMES[0], cy * PRIMES[1], cz * PRIMES[2]
            # size is a power of two on hashed levels, so `& (size − 1)` is the modulo
            index = (hx[:, :, None, None] ^ hy[:, None, :, None] ^ hz[:, None, None, :]) & (size - 1)
        else:
            index = cx[:, :, None, None] + cy[:, None, :, None] * (r + 1) + cz[:, None, None, :] * (r + 1) ** 2
        return index + self.offsets[level]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3) in [0, 1] (clamped) → (N, L · F), level-major like tiny-cuda-nn."""
        x = x.float().clamp(0.0, 1.0)
        n = x.shape[0]
        features = []
        for level, r in enumerate(self.resolutions):
            p = x * r
            # floor clamped to R − 1 so that x = 1 sits at frac = 1 of the last cell instead of off the grid
            cell = p.floor().clamp(max=r - 1)
            frac = p - cell  # (N, 3), in [0, 1]
            w = torch.stack([1.0 - frac, frac], dim=-1)  # (N, 3, 2): weight of the lower and the upper corner per axis
            weights = w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]  # (N, 2, 2, 2)
            index = self.corner_index(cell.long(), level).reshape(-1)  # (N · 8,)
            # index_select, not F.embedding: its backward (index_add) is ~6× faster on CPU than embedding's
            values = self.table.index_select(0, index).view(n, 8, -1)  # (N, 8, F)
            features.append(torch.einsum("nk,nkf->nf", weights.reshape(n, 8), values))
        return torch.cat(features, dim=-1)


class TcnnHashGrid(nn.Module):
    """The same encoding through tiny-cuda-nn (CUDA only): (N, 3) in [0, 1] → (N, L · F) float32."""

    def __init__(
        self,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 4096,
    ):
        super().__init__()
        import tinycudann as tcnn  # optional, CUDA only: imported here so CPU machines never need it

        growth = level_growth(num_levels, base_resolution, max_resolution)
        self.num_levels, self.features_per_level = int(num_levels), int(features_per_level)
        self.encoding = tcnn.Encoding(
            n_input_dims=3,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": int(num_levels),
                "n_features_per_level": int(features_per_level),
                "log2_hashmap_size": int(log2_hashmap_size),
                "base_resolution": int(base_resolution),
                "per_level_scale": growth,
            },
            dtype=torch.float32,
        )

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            raise RuntimeError(
                "the tiny-cuda-nn hash grid runs on CUDA only, but got CPU positions: set "
                "renderer.encoding_backend=torch (or run with trainer.device=cuda)"
            )
        return self.encoding(x.float().clamp(0.0, 1.0)).float()


def tcnn_available() -> bool:
    """True when tiny-cuda-nn imports and a CUDA device is present (both are needed to build its modules)."""
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return True


def make_hash_grid(backend: str = "auto", **kwargs) -> nn.Module:
    """backend: torch | tcnn | auto (tcnn when `tcnn_available()`, else torch); kwargs as `HashGrid`'s."""
    if backend not in ("auto", "torch", "tcnn"):
        raise ValueError(f"encoding_backend must be auto, torch or tcnn, got {backend!r}")
    if backend == "tcnn" or (backend == "auto" and tcnn_available()):
        if backend == "tcnn" and not tcnn_available():
            raise ValueError(
                "encoding_backend=tcnn needs tiny-cuda-nn and a CUDA device; install it (README, 'Optional CUDA "
                "extras') or use encoding_backend=torch"
            )
        kwargs.pop("init_scale", None)
        return TcnnHashGrid(**kwargs)
    return HashGrid(**kwargs)
