"""Statistics of a benchmark table as plain functions of arrays (design.md §2, §5): bootstrap intervals, paired
differences, KID, FD extrapolated to infinite samples, and diversity. Nothing here runs a method or reads a folder.

Bootstrap (percentile). A table's samples come as captions × samples per caption, and captions differ from one
another more than samples of one caption do, so the interval resamples both levels: draw G captions with replacement
from the G, then within each drawn caption draw its n_g samples with replacement, and recompute the statistic. The
interval is the (1 − level)/2 and (1 + level)/2 quantiles of the B recomputed values. Without groups this is the plain
one-level bootstrap. Seeds are not a level here: the table reports them separately.

Resampling both levels counts the within-group spread twice (once through the drawn groups' means, once through the
drawn samples), so the interval is conservative: up to √2 wider than needed when groups do not differ at all (e.g. a
paired difference whose caption effect cancels), about right when they differ a lot (Davison & Hinkley 1997, §3.8).
`resample_within=False` draws the groups only, which is close to nominal when there are many groups.

KID (Bińkowski et al. 2018) is the unbiased MMD² with the kernel k(x, y) = (xᵀy / d + 1)³:

    MMD²_u = 1/(N(N−1)) Σ_{i≠j} k(x_i, x_j) + 1/(M(M−1)) Σ_{i≠j} k(y_i, y_j) − 2/(NM) Σ_{i,j} k(x_i, y_j)

with no small-sample bias (its expectation is the population MMD² at every N), unlike FD. The subset statistic is
torchmetrics' (`poly_mmd`, what its KernelInceptionDistance computes per subset); the subsets are drawn here with
our own generator, in the same order as torchmetrics does with the global one, so a seed gives its exact numbers.

FD∞ (Chong & Forsyth 2020): FD of N samples is biased upward by about c/N, so FD on random subsets of several sizes
is fitted by least squares to FD(N) = FD∞ + c/N and the intercept reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.image.kid import poly_kernel, poly_mmd

from scoredist.eval.frechet import SampleMoments, frechet_distance

RESAMPLES = 2000  # bootstrap draws: the 2.5 % quantile then rests on ~50 draws


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval at `level` (e.g. 0.95), over n_samples samples in n_groups groups."""

    estimate: float
    low: float
    high: float
    n_samples: int
    n_groups: int
    level: float

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0: the question asked of a difference ("ours − method")."""
        return not (self.low <= 0.0 <= self.high)


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _group_layout(groups, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples sorted by group: (order (n,), starts (G,), sizes (G,)) so group g is order[starts[g] : + sizes[g]].
    No groups = one group of all samples."""
    if groups is None:
        return np.arange(n), np.zeros(1, dtype=np.int64), np.array([n])
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups must give one label per value: {labels.shape} for {n} values")
    _, codes = np.unique(labels, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    return order, np.cumsum(sizes) - sizes, sizes


def _hierarchical_indices(
    rng: np.random.Generator, layout, resamples: int, resample_within: bool = True
) -> list[np.ndarray]:
    """One index array per resample: G groups drawn with replacement, then each drawn group's n_g samples drawn with
    replacement from it (or taken whole). All draws are made at once (the lengths differ when group sizes do)."""
    order, starts, sizes = layout
    chosen = rng.integers(0, len(sizes), size=(resamples, len(sizes)))
    slot_sizes = sizes[chosen].ravel()  # (B·G,)
    slot_starts = np.repeat(starts[chosen].ravel(), slot_sizes)
    if resample_within:
        offsets = rng.integers(0, np.repeat(slot_sizes, slot_sizes))
    else:  # 0, 1, …, n_g − 1 in every slot
        offsets = np.arange(slot_sizes.sum()) - np.repeat(np.cumsum(slot_sizes) - slot_sizes, slot_sizes)
    flat = order[slot_starts + offsets]
    lengths = sizes[chosen].sum(1)
    return np.split(flat, np.cumsum(lengths)[:-1])


def bootstrap_interval(
    values,
    groups=None,
    statistic: Callable[[np.ndarray], float] = np.mean,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
    resample_within: bool = True,
) -> Interval:
    """Percentile bootstrap interval of statistic(values).

    Args:
        values: (n,) one number per sample (e.g. its RMS to the nearest component).
        groups: (n,) the group of each sample (e.g. its caption) for the two-level resample, or None for one level.
        statistic: (k,) array → float; called once per resample.
        resample_within: also resample the samples inside each drawn group (False: take each drawn group whole).
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.shape[0] < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 values, got {x.shape[0]}")
    layout = _group_layout(groups, x.shape[0])
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(x[i]) for i in _hierarchical_indices(rng, layout, resamples, resample_within)])
    low, high = _percentiles(draws, level)
    return Interval(float(statistic(x)), low, high, x.shape[0], len(layout[2]), level)


def bootstrap_set_statistic(
    sets_by_group: Mapping[Hashable, object],
    statistic: Callable[[list[tuple[Hashable, object]]], float],
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
    resample_within: bool = True,
) -> Interval:
    """Percentile bootstrap interval of a statistic of whole sample sets (e.g. the mean over captions of each
    caption's Fréchet distance to its reference), resampled at both levels like `bootstrap_interval`.

    Args:
        sets_by_group: group → its samples, an array or tensor (n_g, ...) indexed along the first axis.
        statistic: [(group, samples (k, ...)), ...] → float. A list, not a dict: a group drawn twice must appear
            twice (and count twice), and its key is kept so the statistic can look up that group's reference.
        resample_within: as in `bootstrap_interval`.
    """
    items = list(sets_by_group.items())
    if not items:
        raise ValueError("bootstrap_set_statistic needs at least one group")
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for b in range(resamples):
        draw = []
        for g in rng.integers(0, len(items), size=len(items)):
            key, samples = items[g]
            n = len(samples)
            draw.append((key, samples[_as_index(rng.integers(0, n, size=n), samples)] if resample_within else samples))
        draws[b] = statistic(draw)
    low, high = _percentiles(draws, level)
    n_samples = sum(len(s) for _, s in items)
    return Interval(float(statistic(items)), low, high, n_samples, len(items), level)


def _as_index(idx: np.ndarray, samples) -> np.ndarray | torch.Tensor:
    """Numpy indices for numpy arrays, a tensor of them for tensors (torch does not take every numpy index type)."""
    return torch.from_numpy(idx) if isinstance(samples, torch.Tensor) else idx


def paired_difference_interval(
    a,
    b,
    groups=None,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
    resample_within: bool = True,
) -> Interval:
    """Interval of mean(a − b) for paired values (a_i and b_i: the same caption, seed and sample index under two
    methods). Resampling the differences keeps each pair together, so what the two share (a hard caption, a lucky
    seed) cancels; `.significant` says whether the interval excludes 0.

    a, b: (n,); groups: (n,) or None, as in `bootstrap_interval`.
    """
    x, y = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired values must match one to one: {x.shape} vs {y.shape}")
    return bootstrap_interval(x - y, groups, np.mean, level, resamples, seed, resample_within)


# ---------------------------------------------------------------------------------------------------------------- KID


def linear_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = xᵀy: (N, d), (M, d) → (N, M). With it MMD²_u has a closed form (tests)."""
    return x @ y.T


def mmd2_unbiased(
    x: torch.Tensor, y: torch.Tensor, kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = poly_kernel
) -> float:
    """The unbiased MMD² of x (N, d) and y (M, d) on all samples (formula in the module docstring), N and M may
    differ (torchmetrics' `maximum_mean_discrepancy` assumes N = M). Default kernel: torchmetrics' KID kernel
    (xᵀy / d + 1)³. Computed in float64."""
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"an unbiased MMD² needs at least 2 samples per set, got {n} and {m}")
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


@dataclass(frozen=True)
class KID:
    """KID as torchmetrics reports it: mean and (population) std over `subsets` random subsets of `subset_size`."""

    mean: float
    std: float
    subset_size: int
    subsets: int


def kernel_inception_distance(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    subset_size: int | None = None,
    subsets: int = 100,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> KID:
    """KID of two feature sets (N, d), (M, d) (e.g. Inception pool features), torchmetrics' statistic and subsets.

    subset_size: samples per subset from each side; None takes the smaller set's size (with N = M every subset is
    then the whole of both sets, and std is 0). torchmetrics' default is 1,000, more than a small table has.
    The numbers equal `KernelInceptionDistance(feature=<identity>, subsets, subset_size)` after
    `torch.manual_seed(seed)`: the same permutations, drawn from our generator instead of the global one.
    """
    a, b = features_a.detach().double().cpu(), features_b.detach().double().cpu()
    size = min(a.shape[0], b.shape[0]) if subset_size is None else int(subset_size)
    if not 2 <= size <= min(a.shape[0], b.shape[0]):
        raise ValueError(
            f"KID subset_size={size} needs 2 ≤ subset_size ≤ the smaller set ({a.shape[0]} and {b.shape[0]} samples)"
        )
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        # the order of torchmetrics' compute(): one permutation of the first set, then one of the second
        sub_a = a[torch.randperm(a.shape[0], generator=g)[:size]]
        sub_b = b[torch.randperm(b.shape[0], generator=g)[:size]]
        scores.append(poly_mmd(sub_a, sub_b, degree, gamma, coef))
    s = torch.stack(scores)
    return KID(float(s.mean()), float(s.std(unbiased=False)), size, subsets)


# ------------------------------------------------------------------------------------------------------------ FD∞


@dataclass(frozen=True)
class FDInfinity:
    """FD∞ and its fit FD(N) = fd_infinity + slope / N over the subsets measured (sizes[i], values[i])."""

    fd_infinity: float
    slope: float
    sizes: tuple[int, ...]
    values: tuple[float, ...]


def default_fd_sizes(n: int, count: int = 10) -> list[int]:
    """`count` subset sizes from n // 5 to n, evenly spaced in 1/N (the fit's variable), so the intercept has
    leverage from both ends."""
    smallest = max(n // 5, 2)
    return sorted({round(1 / u) for u in np.linspace(1 / smallest, 1 / n, count)})


def fd_infinity(
    features: torch.Tensor, reference, sizes: Sequence[int] | None = None, repeats: int = 1, seed: int = 0
) -> FDInfinity:
    """FD extrapolated to infinitely many samples: FD of random subsets (without replacement) of `features` (n, D)
    against `reference`, fitted by least squares to FD∞ + c/N.

    reference: features (M, D) (then used whole: its own finite-sample bias is not extrapolated away) or any summary
        of `scoredist.eval.frechet` (`Moments`, `MixtureMoments`: exact, no bias on that side).
    sizes: subset sizes (default `default_fd_sizes(n)`). 1/N is the first term of the bias's expansion in D/N: use
        sizes well above the feature dimension D, or the fit follows the higher terms.
    repeats: subsets drawn per size; each is one point of the fit.
    """
    x = features.detach().reshape(features.shape[0], -1).double().cpu()
    ref = SampleMoments.of(reference) if isinstance(reference, torch.Tensor) else reference
    sizes = default_fd_sizes(x.shape[0]) if sizes is None else sorted(int(s) for s in sizes)
    if len(set(sizes)) < 2 or sizes[0] < 2 or sizes[-1] > x.shape[0]:
        raise ValueError(f"fd_infinity needs two or more distinct sizes in [2, {x.shape[0]}], got {sizes}")
    g = torch.Generator().manual_seed(seed)
    points = []
    for n in sizes:
        for _ in range(repeats):
            subset = x[torch.randperm(x.shape[0], generator=g)[:n]]
            points.append((n, frechet_distance(SampleMoments.of(subset), ref)))
    ns, fds = np.array([p[0] for p in points], dtype=np.float64), np.array([p[1] for p in points])
    design = np.stack([np.ones_like(ns), 1 / ns], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, fds, rcond=None)
    return FDInfinity(float(intercept), float(slope), tuple(int(n) for n in ns), tuple(float(v) for v in fds))


# ------------------------------------------------------------------------------------------------------ diversity


def _view_histogram(view_ids, num_views: int) -> np.ndarray:
    """(n,) integer view ids in [0, num_views) → (num_views,) counts."""
    ids = np.asarray(view_ids).reshape(-1)
    if ids.size == 0:
        raise ValueError("a view histogram needs at least one sample")
    if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= num_views:
        raise ValueError(f"view ids must be integers in [0, {num_views}), got {ids.tolist()}")
    return np.bincount(ids, minlength=num_views)


def view_coverage(view_ids, num_views: int = 16) -> float:
    """Fraction of the prompt's num_views views that at least one sample lands on (its nearest component's view).
    view_ids: (n,) integers in [0, num_views)."""
    return float((_view_histogram(view_ids, num_views) > 0).sum() / num_views)


def view_kl(view_ids, view_weights) -> float:
    """KL(h ‖ w) = Σ_v h_v log(h_v / w_v) in nats, h the samples' view histogram (normalised), w the mixture's view
    weights (normalised here).

    This direction because h has empty bins whenever there are fewer samples than views (or a method mode-seeks):
    those bins contribute 0 (0 log 0 = 0), and the sum is finite as long as w > 0 wherever a sample lands. It is
    0 only when the samples spread exactly as the mixture does; a method that puts every sample on one view v
    scores log(1 / w_v). The other direction, KL(w ‖ h), is infinite as soon as one view gets no sample.

    view_ids: (n,) integers in [0, V); view_weights: (V,) non-negative.
    """
    w = np.asarray(view_weights, dtype=np.float64).reshape(-1)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"view weights must be non-negative with a positive sum, got {w.tolist()}")
    w = w / w.sum()
    h = _view_histogram(view_ids, w.shape[0]).astype(np.float64)
    h /= h.sum()
    hit = h > 0
    if (w[hit] == 0).any():
        return math.inf  # a sample on a view the mixture never produces
    return float((h[hit] * np.log(h[hit] / w[hit])).sum())


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean Euclidean distance ‖x_i − x_j‖ over the N(N−1)/2 pairs i < j of x (N, D) (images are flattened), in
    float64."""
    flat = x.detach().reshape(x.shape[0], -1).double().cpu()
    if flat.shape[0] < 2:
        raise ValueError(f"a pairwise distance needs at least 2 samples, got {flat.shape[0]}")
    return float(torch.pdist(flat).mean())
