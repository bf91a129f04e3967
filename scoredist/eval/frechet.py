"""Fréchet distances between a set of samples and a distribution summarised by its first two moments (design.md §5).

    FD(N(μ1, Σ1), N(μ2, Σ2)) = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½

Every summary here can say `trace()` and `sandwich(A) = A Σ Aᵀ`; one side also gives a factor F with Σ = Fᵀ F
(r × D). Then Σ1^½ Σ2 Σ1^½ is similar to Σ2 Σ1 = Σ2 Fᵀ F, whose non-zero eigenvalues are those of the r × r
symmetric matrix F Σ2 Fᵀ (AB and BA share them), so

    tr (Σ1^½ Σ2 Σ1^½)^½ = Σ_i sqrt(λ_i(F Σ2 Fᵀ)).

For n samples F = (X − x̄) / sqrt(n − 1) has n rows: the distance of 100 samples to an exact mixture in 3,072 pixel
dimensions is a 100 × 100 symmetric eigenproblem, not a 3,072² matrix square root, and the exact reference's
covariance is never formed. Why not a library here: they take two explicit D × D covariances (a 3,072² non-symmetric
eigenproblem per prompt; 40 s for D = 2,048 on this project's CPU); zero-shot FID over many images
(`scoredist.eval.fid`) does go through torchmetrics. Tests check this form against the closed form and scipy's sqrtm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MIN_SAMPLES = 2  # a covariance needs two samples


def too_few_samples(n: int, per: str) -> str | None:
    """Why a Fréchet distance of n samples (`per`: "per prompt", "per run") cannot be computed and what to do, for a
    table's footnote; None when it can. Each run folder is its own row, so only more samples of that run help."""
    if n >= MIN_SAMPLES:
        return None
    return (
        f"a Fréchet distance needs at least {MIN_SAMPLES} samples {per}, got {n}: rerun with "
        f"samples_per_prompt={MIN_SAMPLES} or more (the runs of a seed sweep are separate rows, not pooled)"
    )


@dataclass(frozen=True)
class Moments:
    """An explicit Gaussian summary N(mean, cov): mean (D,), cov (D, D), float64."""

    mean: torch.Tensor
    cov: torch.Tensor

    def trace(self) -> float:
        return float(self.cov.diagonal().sum())

    def sandwich(self, a: torch.Tensor) -> torch.Tensor:
        return a @ self.cov @ a.T

    def factor(self) -> torch.Tensor:
        """F with Fᵀ F = cov, from the eigendecomposition (cov may be singular)."""
        evals, evecs = torch.linalg.eigh(self.cov)
        return evals.clamp_min(0).sqrt()[:, None] * evecs.T


@dataclass(frozen=True)
class SampleMoments:
    """Mean and unbiased covariance of n samples (n, D), the covariance kept as its factor (X − x̄) / sqrt(n − 1)."""

    mean: torch.Tensor
    scaled_centred: torch.Tensor  # (n, D)

    @classmethod
    def of(cls, samples: torch.Tensor) -> SampleMoments:
        x = samples.detach().reshape(samples.shape[0], -1).double().cpu()
        if x.shape[0] < MIN_SAMPLES:
            raise ValueError(f"a Fréchet distance needs at least {MIN_SAMPLES} samples per set, got {x.shape[0]}")
        mean = x.mean(0)
        return cls(mean, (x - mean) / math.sqrt(x.shape[0] - 1))

    def trace(self) -> float:
        return float(self.scaled_centred.pow(2).sum())

    def sandwich(self, a: torch.Tensor) -> torch.Tensor:
        g = a @ self.scaled_centred.T
        return g @ g.T

    def factor(self) -> torch.Tensor:
        return self.scaled_centred


@dataclass(frozen=True)
class MixtureMoments:
    """Exact moments of the mixture Σ_k π_k N(μ_k, σ_k² I) (no sampling noise on this side):

        μ = Σ_k π_k μ_k,    Σ = Σ_k π_k (σ_k² I + μ_k μ_kᵀ) − μ μᵀ

    means (K, D), weights (K,) summing to 1, variances (K,). Σ is never formed: `sandwich` and `trace` use the means.
    """

    means: torch.Tensor
    weights: torch.Tensor
    variances: torch.Tensor

    @classmethod
    def of(cls, mixture) -> MixtureMoments:
        """From a `GaussianMixture` (its log-weights normalised here)."""
        weights = torch.softmax(mixture.log_weights.double().cpu(), dim=0)
        return cls(mixture.means.double().cpu(), weights, mixture.variances.double().cpu())

    @property
    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def trace(self) -> float:
        dim = self.means.shape[1]
        second = (self.weights * (dim * self.variances + self.means.pow(2).sum(1))).sum()
        return float(second - self.mean.pow(2).sum())

    def sandwich(self, a: torch.Tensor) -> torch.Tensor:
        am = a @ self.means.T  # (n, K)
        am_mean = a @ self.mean  # (n,)
        iso = (self.weights * self.variances).sum()
        return iso * (a @ a.T) + (am * self.weights) @ am.T - am_mean[:, None] * am_mean[None, :]

    def covariance(self) -> torch.Tensor:
        """Σ as a (D, D) matrix: only for small D (tests, 2D points)."""
        return self.sandwich(torch.eye(self.means.shape[1], dtype=torch.float64))


def frechet_distance(p, q) -> float:
    """FD between two summaries (`Moments`, `SampleMoments`, `MixtureMoments`); p or q must have a factor
    (samples or explicit moments)."""
    if not hasattr(p, "factor"):
        p, q = q, p
    if not hasattr(p, "factor"):
        raise ValueError("frechet_distance needs samples or explicit moments on at least one side")
    f = p.factor()
    if f.shape[0] > f.shape[1]:
        # more rows than dimensions (many samples): the D × D root of Fᵀ F is the same covariance without the
        # r − D zero eigenvalues, whose rounding noise the square root would magnify
        f = Moments(p.mean, f.T @ f).factor()
    m = q.sandwich(f)
    cross = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0).sqrt().sum()
    return float((p.mean - q.mean).pow(2).sum() + p.trace() + q.trace() - 2 * cross)
