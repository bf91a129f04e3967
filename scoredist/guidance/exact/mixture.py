"""The exact noise prediction of a mixture of isotropic Gaussians (design.md §3).

For components k with means μ_k (D,), weights π_k and variances σ_k², under x_t = a x + b ε
(a = sqrt(ᾱ), b = sqrt(1 − ᾱ)):

    x_t | k  ~  N(a μ_k, (a² σ_k² + b²) I)
    r_k      ∝  π_k N(x_t; a μ_k, (a² σ_k² + b²) I)                          (responsibilities, in log space)
    E[x|x_t] =  Σ_k r_k (μ_k + a σ_k² (x_t − a μ_k) / (a² σ_k² + b²))
    ε̂        =  (x_t − a E[x|x_t]) / b                                       (= E[ε | x_t], the MMSE denoiser)

A prompt selects a subset of components; rows of `log_weights` carry −inf for excluded ones, so one call serves every
condition of a step.

`predict_noise` is the reference: every component, float64. `predict_noise_pruned` gives the same ε̂ to a stated
tolerance `tol` per entry while evaluating in float64 only the components that can matter, for mixtures with one shared
variance σ². Per row, v = a²σ² + b² and l_k = log π_k − ½ d_k²/v with d_k² = ‖x_t − a μ_k‖² (the constant
−D/2 log 2πv is shared by every k and dropped); Z = Σ_k e^{l_k}.

Screen (float32, with a proven error bound). d_k² = ‖x_t‖² − 2a⟨x_t, μ_k⟩ + a²‖μ_k‖²; the inner products come from one
float32 matmul. Rounding x_t and μ_k to float32 and summing D products in any order (blocked, FMA or not) errs by at
most γ Σ_i |x_i μ_ki| ≤ γ ‖x_t‖ ‖μ_k‖ with γ = (D+2)u / (1 − (D+2)u), u = 2⁻²⁴ (Higham, Accuracy and Stability of
Numerical Algorithms, §3.1); with e_k = 2aγ ‖x_t‖ ‖μ_k‖ (+ 1e-12 (‖x_t‖² + a²‖μ_k‖²) for the float64 terms around it),
the float32 value s_k satisfies s_k − e_k ≤ d_k² ≤ s_k + e_k, so

    l_k ≤ u_k := log π_k − ½ (s_k − e_k)₊ / v,        log Z ≥ L := logsumexp_k (log π_k − ½ (s_k + e_k) / v).

A component is skipped iff u_k < L − margin, margin = log(n) + log(κ / tol) (n: the row's allowed components, κ
below). The skipped set T then has posterior mass m = Z_T / Z ≤ Σ_T e^{u_k} / e^L ≤ n e^{−margin} = tol / κ. After the
kept set S is evaluated exactly in float64, the code reports the certificate m̂ = Σ_T e^{u_k} / max(Z_S, e^L) ≥ m (Z is
at least both), also ≤ tol / κ. The screen is refused (every component evaluated) where float32 matmuls may not be IEEE
float32: TF32 on CUDA or torch.set_float32_matmul_precision("high"/"medium").

Error of skipping. With m_k = μ_k + aσ²(x_t − a μ_k)/v = (b²/v) μ_k + (aσ²/v) x_t the per-component posterior mean,
E[x|x_t] = (1 − m) M_S + m M_T where M_S, M_T are the means over S and T with the posterior renormalised within each;
the pruned estimate is M_S, so ΔE = m (M_T − M_S) = m (b²/v)(μ̄_T − μ̄_S) (μ̄: r-weighted means of the μ_k). Per entry
j, |μ̄_T,j − μ̄_S,j| ≤ W := max_j (max_k μ_kj − min_k μ_kj) (both are convex combinations of the means), and
Δε = −(a/b) ΔE, so

    |Δε_j| ≤ m · (a b / v) · W ≤ m̂ κ ≤ tol,      κ := (a b / v) W      (and a b / v ≤ 1 / (2σ) for every t).

So the returned ε̂ is within `tol` of the all-component ε̂ per entry, in float64, before the float32 cast of the callers
(each cast adds at most half an ulp: 1.2e-7 for |ε| < 4). The kept components are evaluated exactly in float64 with
the same expanded distance as the reference (round-off: ~1e-11 in ε at t = 1, as in the reference itself).

Where it skips: at low noise almost everything (0.06–0.5 % of the shapes world kept at t ≤ 300); at high noise nothing,
because the posterior really spreads over the world (measured in docs/results/speed.md). Worst-case geometric bounds
(groups with a centre and radius, pivots with the triangle inequality) were tried first and skip nearly nothing even at
t = 1: the noise in x_t (norm ≈ b√D) is nearly orthogonal to every μ_k − μ_c but counts in full in them.
"""

from __future__ import annotations

import math

import torch


class GaussianMixture:
    """Means (K, D), log-weights (K,), per-component variances (K,). Float64 internally: the distances are differences
    of large sums, and exactness is the point of this prior."""

    def __init__(self, means: torch.Tensor, log_weights: torch.Tensor | None = None, variances=1e-2):
        self.means = means.double()
        self._screen: tuple[torch.Tensor, torch.Tensor] | None = None  # for predict_noise_pruned
        self._width: float | None = None
        k = self.means.shape[0]
        self.log_weights = (
            torch.full((k,), -math.log(k), dtype=torch.float64) if log_weights is None else log_weights.double()
        )
        self.variances = torch.as_tensor(variances, dtype=torch.float64).expand(k).clone()
        self.sq_norms = (self.means**2).sum(dim=1)

    def to(self, device) -> GaussianMixture:
        for name in ("means", "log_weights", "variances", "sq_norms"):
            setattr(self, name, getattr(self, name).to(device))
        self._screen = None
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

    # ----------------------------------------------------------------------------------------------------------------
    # Pruned evaluation (module docstring: the bound and the tolerance)
    # ----------------------------------------------------------------------------------------------------------------

    def _screen_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 copy of the means (K, D), ‖μ_k‖ (K,) float64), made on the first screened call."""
        if self._screen is None:
            self._screen = (self.means.float(), self.sq_norms.sqrt())
        return self._screen

    def width(self) -> float:
        """W = max_j (max_k μ_kj − min_k μ_kj), the ℓ∞ width of the means (the error bound's scale)."""
        if self._width is None:
            self._width = float((self.means.amax(0) - self.means.amin(0)).max()) if self.means.shape[0] else 0.0
        return self._width

    def _exact_rows(self, x, a, v, log_weights):
        """Every component in float64 for a few rows (the reference's two matmuls): x (n, D), a and v (n, 1),
        log_weights (n, K) → (log-weights (n, K) up to the shared constant, Σ_k r_k μ_k (n, D))."""
        n = x.shape[0]
        # CPU BLAS runs a call of 5–7 (or 9–11) rows as slowly as one of 8 (12) and a few rows as separate
        # table-streaming matvecs (measured with torch 2.13+cpu, docs/results/speed.md): pad with zero rows.
        padded = n if n <= 4 or x.device.type != "cpu" else max(8, -(-n // 4) * 4)
        if padded > n:
            pad = padded - n
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
            a, v = torch.cat([a, a.new_ones(pad, 1)]), torch.cat([v, v.new_ones(pad, 1)])
            log_weights = torch.cat([log_weights, log_weights.new_zeros(pad, log_weights.shape[1])])
        sq = ((x**2).sum(1, keepdim=True) - 2 * a * (x @ self.means.T) + a**2 * self.sq_norms[None]).clamp_min(0)
        log_post = log_weights - 0.5 * sq / v
        return log_post[:n], (torch.softmax(log_post, dim=1) @ self.means)[:n]

    def predict_noise_pruned(
        self,
        x_t: torch.Tensor,
        abar: torch.Tensor,
        log_weights: torch.Tensor | None = None,
        tol: float = 1e-7,
        screen_below: float = 0.8,
        chunk_rows: int = 8,
        dense_fraction: float = 0.25,
        screen: bool | None = None,
        min_components: int = 2048,
    ) -> tuple[torch.Tensor, dict]:
        """ε̂ within `tol` per entry of `predict_noise` (module docstring): x_t (N, D), abar (N,), log_weights (N, K)
        or None → (ε̂ (N, D) in x_t's dtype, info).

        Rows with v = a²σ² + b² < `screen_below` are screened in float32 when the table has `min_components` or more
        and `screen` is True, or None and the cost model (`_pass_cost`) says it pays; rows keeping more than
        `dense_fraction` of the table are evaluated over all of it; the others `chunk_rows` at a time over the union
        of what they keep.
        info, per row: "kept_mask" (N, K) bool, the components evaluated exactly; on the CPU, "kept" their number,
        "allowed" the components with a finite log-weight, "skipped_mass_bound" m̂ ≥ the posterior mass skipped,
        "error_bound" κ m̂ ≥ max_j |Δε_j|."""
        dtype = x_t.dtype
        x = x_t.double()
        abar = abar.double()
        n_rows, k = x.shape[0], self.means.shape[0]
        if log_weights is None:
            log_weights = self.log_weights.expand(n_rows, -1)
        log_weights = log_weights.double()
        allowed = torch.isfinite(log_weights)
        zeros = torch.zeros(n_rows, dtype=torch.float64)
        if not bool((self.variances == self.variances[0]).all()):  # the bound assumes one shared variance
            n_allowed = allowed.sum(1).cpu()
            eps = self.predict_noise(x_t, abar, log_weights)
            info = {"kept_mask": allowed, "kept": n_allowed, "allowed": n_allowed}
            return eps, {**info, "skipped_mass_bound": zeros, "error_bound": zeros}
        width = self.width()
        sigma2 = self.variances[0]
        a = abar.sqrt()[:, None]  # (N, 1)
        b2 = (1 - abar)[:, None]
        v = a**2 * sigma2 + b2
        x_sq = (x**2).sum(1, keepdim=True)  # (N, 1)
        kappa = a * b2.sqrt() / v * width  # (N, 1): |Δε_j| ≤ κ m
        n_allowed = allowed.sum(1, keepdim=True).clamp_min(1)
        margin = torch.log(n_allowed.double()) + torch.log(kappa.clamp_min(1e-300) / tol)

        # Which rows to screen. Above `screen_below` almost nothing can be skipped (docs/results/speed.md), so those
        # rows are evaluated over every component in float64 in any case; screening the others apart pays when the
        # float32 pass over their rows (about half the cost of a float64 one) saves more than it costs (`_pass_cost`).
        low = v.squeeze(1) < screen_below
        n_low, n_high = int(low.sum()), int((~low).sum())
        if screen is None:
            split = 0.5 * _pass_cost(n_low) + 2 * _pass_cost(n_high)
            screen = n_low > 0 and split < 2 * _pass_cost(n_low + n_high)
        screen = screen and n_low > 0 and k >= min_components and _exact_float32_matmul(x.device)
        keep = allowed.clone()
        log_z_low = torch.full((n_rows, 1), -math.inf, dtype=torch.float64, device=x.device)  # L (screened rows)
        if screen:
            upper = torch.full((n_rows, k), math.inf, dtype=torch.float64, device=x.device)  # u_k ≥ l_k
            means32, norms = self._screen_table()
            rows = low.nonzero().squeeze(1)
            xs, as_, vs, x_sq_s = x[rows], a[rows], v[rows], x_sq[rows]
            ip = (xs.float() @ means32.T).double()  # (n, K) ⟨x_t, μ_k⟩ in float32
            # |fl32(⟨x, μ⟩) − ⟨x, μ⟩| ≤ γ_{D+2} Σ_i |x_i μ_i| ≤ γ_{D+2} ‖x‖ ‖μ_k‖ (any summation order, with or
            # without FMA, the two roundings to float32 included); 1e-12 covers the float64 terms around it.
            gamma = (self.dim + 2) * 2.0**-24 / (1 - (self.dim + 2) * 2.0**-24)
            sq = x_sq_s - 2 * as_ * ip + as_**2 * self.sq_norms[None]
            err = 2 * as_ * gamma * x_sq_s.sqrt() * norms[None] + 1e-12 * (x_sq_s + as_**2 * self.sq_norms[None])
            lw = log_weights[rows]
            up = lw - 0.5 * (sq - err).clamp_min(0) / vs
            log_z_low[rows] = torch.logsumexp(lw - 0.5 * (sq + err) / vs, dim=1, keepdim=True)  # L ≤ log Z
            upper[rows] = up
            keep[rows] = allowed[rows] & (up >= log_z_low[rows] - margin[rows])
            keep[~low] = allowed[~low]

        # Exact float64 log-weights (the constant −D/2 log 2πv is shared by every k: the softmax removes it). Rows that
        # keep much go through the reference's two matmuls over the whole table; the others, a few rows at a time
        # (sorted by how many they keep), over the union of their kept components: evaluating more components than a
        # row needs is exact too, and one gathered block serves every row of the chunk.
        log_post = torch.full((n_rows, k), -math.inf, dtype=torch.float64, device=x.device)
        mean_mu = torch.zeros_like(x)
        n_keep = keep.sum(1)
        dense = n_keep > dense_fraction * k
        sparse = (~dense).nonzero().squeeze(1)
        sparse = sparse[n_keep[sparse].argsort()]
        full_rows = [dense.nonzero().squeeze(1)]
        for rows in sparse.split(chunk_rows):
            union = keep[rows].any(0)
            if union.sum() > dense_fraction * k:
                full_rows.append(rows)
                continue
            idx = union.nonzero().squeeze(1)
            mu = self.means[idx]
            sq = (x_sq[rows] - 2 * a[rows] * (x[rows] @ mu.T) + a[rows] ** 2 * self.sq_norms[idx][None]).clamp_min(0)
            lp = log_weights[rows][:, idx] - 0.5 * sq / v[rows]
            mean_mu[rows] = torch.softmax(lp, dim=1) @ mu
            log_post[rows[:, None], idx[None]] = lp
            keep[rows[:, None], idx[None]] = allowed[rows][:, idx]
        rows = torch.cat(full_rows)
        if rows.numel():
            log_post[rows], mean_mu[rows] = self._exact_rows(x[rows], a[rows], v[rows], log_weights[rows])
            keep[rows] = allowed[rows]
        # Certified bound on the skipped mass: m̂ = Σ_T e^{u_k} / max(Z_S, e^L) ≥ Z_T / Z, since Z ≥ Z_S and Z ≥ e^L.
        log_z_kept = torch.maximum(torch.logsumexp(log_post, dim=1, keepdim=True), log_z_low)
        skipped = allowed & ~keep
        if screen and bool(skipped.any()):
            m_hat = torch.where(skipped, (upper - log_z_kept).exp(), 0.0).sum(1)
        else:
            m_hat = torch.zeros(n_rows, dtype=torch.float64, device=x.device)
        # E[x|x_t] = (b²/v) μ̄ + (aσ²/v) x_t;  ε̂ = (x_t − a E[x|x_t]) / b
        mean_x0 = (b2 / v) * mean_mu + (a * sigma2 / v) * x
        eps = (x - a * mean_x0) / b2.sqrt()
        info = {
            "kept_mask": keep,
            "kept": keep.sum(1).cpu(),
            "allowed": allowed.sum(1).cpu(),
            "skipped_mass_bound": m_hat.cpu(),
            "error_bound": (m_hat * kappa.squeeze(1)).cpu(),
        }
        return eps.to(dtype), info

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples x ~ Σ π_k N(μ_k, σ_k² I), (n, D) float64."""
        k = torch.multinomial(self.log_weights.exp().cpu(), n, replacement=True, generator=generator)
        k = k.to(self.means.device)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator).to(self.means.device)
        return self.means[k] + self.variances[k].sqrt()[:, None] * noise


def _pass_cost(rows: int) -> float:
    """Time of one (rows, D) × (D, K) float64 matmul over a large table, in units of a one-row one, as measured with
    torch 2.13+cpu's BLAS (docs/results/speed.md): up to 4 rows, one table-streaming matvec per row; 5–12 rows (padded
    to 8 or 12 by `_exact_rows`) about 4.7; then 1/8 more per row. Only the choice to screen depends on it."""
    if rows <= 4:
        return float(rows)
    return 4.7 + max(0, rows - 12) / 8


def _exact_float32_matmul(device) -> bool:
    """Whether float32 matmuls on `device` are plain IEEE float32 (the screening bound's assumption): not TF32 on CUDA,
    not a reduced-precision mode chosen with torch.set_float32_matmul_precision."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    return torch.device(device).type != "cuda" or not torch.backends.cuda.matmul.allow_tf32
