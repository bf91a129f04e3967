"""The exact noise prediction of a mixture of isotropic Gaussians (design.md §3).

For components k with means μ_k (D,), weights π_k and variances σ_k², under x_t = a x + b ε
(a = sqrt(ᾱ), b = sqrt(1 − ᾱ)):

    x_t | k  ~  N(a μ_k, (a² σ_k² + b²) I)
    r_k      ∝  π_k N(x_t; a μ_k, (a² σ_k² + b²) I)                          (responsibilities, in log space)
    E[x|x_t] =  Σ_k r_k (μ_k + a σ_k² (x_t − a μ_k) / (a² σ_k² + b²))
    ε̂        =  (x_t − a E[x|x_t]) / b                                       (= E[ε | x_t], the MMSE denoiser)

A prompt selects a subset of components; rows of `log_weights` carry −inf for excluded ones, so one call serves every
condition of a step.
"""

from __future__ import annotations

import math

import torch


class GaussianMixture:
    """Means (K, D), log-weights (K,), per-component variances (K,). Float64 internally: the distances are differences
    of large sums, and exactness is the point of this prior."""

    def __init__(self, means: torch.Tensor, log_weights: torch.Tensor | None = None, variances=1e-2):
        self.means = means.double()
        k = self.means.shape[0]
        self.log_weights = (
            torch.full((k,), -math.log(k), dtype=torch.float64) if log_weights is None else log_weights.double()
        )
        self.variances = torch.as_tensor(variances, dtype=torch.float64).expand(k).clone()
        self.sq_norms = (self.means**2).sum(dim=1)

    def to(self, device) -> GaussianMixture:
        for name in ("means", "log_weights", "variances", "sq_norms"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def log_posterior(self, x_t: torch.Tensor, abar: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        """Unnormalised log r_k: x_t (N, D), abar (N,), log_weights (N, K) (−inf = excluded) → (N, K)."""
        a = abar.sqrt()[:, None]
        var = a**2 * self.variances[None, :] + (1 - abar)[:, None]  # (N, K)
        # ‖x_t − a μ_k‖² expanded so that it is one (N, D) × (D, K) matmul.
        sq_dist = (x_t**2).sum(1, keepdim=True) - 2 * a * (x_t @ self.means.T) + a**2 * self.sq_norms[None, :]
        return log_weights - 0.5 * sq_dist.clamp_min(0) / var - 0.5 * self.dim * torch.log(2 * math.pi * var)

    def predict_noise(self, x_t: torch.Tensor, abar: torch.Tensor, log_weights: torch.Tensor | None = None):
        """Exact ε̂ = E[ε | x_t]: x_t (N, D), abar (N,) in (0, 1), log_weights (N, K) or None (all components)."""
        dtype = x_t.dtype
        x_t = x_t.double()
        abar = abar.double()
        if log_weights is None:
            log_weights = self.log_weights.expand(x_t.shape[0], -1)
        r = torch.softmax(self.log_posterior(x_t, abar, log_weights), dim=1)  # (N, K)
        a = abar.sqrt()[:, None]
        b2 = (1 - abar)[:, None]
        shrink = a * self.variances[None, :] / (a**2 * self.variances[None, :] + b2)  # (N, K)
        # E[x|x_t] = Σ r_k (1 − a·shrink_k) μ_k + (Σ r_k shrink_k) x_t
        mean_x0 = (r * (1 - a * shrink)) @ self.means + (r * shrink).sum(1, keepdim=True) * x_t
        eps = (x_t - a * mean_x0) / b2.sqrt()
        return eps.to(dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples x ~ Σ π_k N(μ_k, σ_k² I), (n, D) float64."""
        k = torch.multinomial(self.log_weights.exp().cpu(), n, replacement=True, generator=generator)
        k = k.to(self.means.device)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator).to(self.means.device)
        return self.means[k] + self.variances[k].sqrt()[:, None] * noise
