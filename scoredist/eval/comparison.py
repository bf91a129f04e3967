"""A comparison of methods on the exact shapes prior that is evidence: every number with a 95 % bootstrap interval,
the paired difference "ours − method" for every method, cost counted beside time, diversity, and per-seed values.

The samples of a method are pooled over its run folders (one per seed) and laid out as captions × positions, where
position j of a caption is the same (seed, sample index) in every method: sample i of seed s starts from the same
noise under every method, so differences between methods are paired (what a caption or a seed does to all of them
cancels). One resampling plan (`Plan`: B draws of captions with replacement and, within each drawn caption, positions
with replacement) is shared by every metric and method, so a paired difference is the same draw seen by both methods.

Metrics are of three kinds:
- per sample (fidelity, artifact, log-density, RMS to the nearest component): the mean over the drawn samples;
- per caption (Fréchet distance in pixels to the caption's exact mixture, view coverage, view KL, mean pairwise
  distance): computed once per caption on all its samples, then averaged over the drawn captions — these resample
  captions only (a caption's Fréchet distance of a resampled set with repeated samples is not the same estimator);
- pooled (KID, FD and FD∞ in Inception space, against exact samples of the same captions): recomputed on the drawn
  samples (KID from precomputed kernel matrices; the Fréchet distances on fewer draws, `pooled_resamples`), their
  intervals bias-corrected (`interval`).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from scoredist.eval.exact import log_density, on_caption
from scoredist.eval.features import features
from scoredist.eval.folders import quantise
from scoredist.eval.frechet import MixtureMoments, SampleMoments, frechet_distance
from scoredist.eval.stats import fd_infinity, mean_pairwise_distance, view_coverage, view_kl
from scoredist.prompts import TGT_SUFFIX

# key, header, format, direction (↓ lower is better, ↑ higher is better, "" neither), kind
METRICS = (
    ("fidelity", "prompt fidelity", "{:.0%}", "↑", "sample"),
    ("artifact_rate", "artifact rate", "{:.0%}", "↓", "sample"),
    ("fd_pixels", "FD pixels", "{:.0f}", "↓", "caption"),
    ("kid", "KID ×10³", "{:.1f}", "↓", "pooled"),
    ("fd_features", "FD Inception", "{:.0f}", "↓", "pooled"),
    ("fd_infinity", "FD∞ Inception", "{:.0f}", "↓", "pooled"),
    ("log_density", "log p clean (nats/dim)", "{:.2f}", "↑", "sample"),
    ("nearest_rms", "RMS to nearest", "{:.3f}", "↓", "sample"),
    ("view_coverage", "view coverage", "{:.0%}", "", "caption"),
    ("view_kl", "view KL", "{:.2f}", "↓", "caption"),
    ("pairwise", "pairwise dist.", "{:.1f}", "", "caption"),
)
CURVE_METRICS = ("fidelity", "artifact_rate", "fd_pixels", "log_density", "nearest_rms")
KID_SCALE = 1e3  # KID values are ~1e-3: the table shows them ×10³


@dataclass
class MethodSamples:
    """One method's samples at one step, pooled over its run folders, in the comparison's layout.

    captions: per sample; keys: (seed, index) per sample; x: model-space samples (n, 3, R, R), read back from the
    8-bit images a person sees; guidance_rows and seconds: per sample, means over the samples (None when unknown)."""

    method: str
    label: str
    captions: list[str]
    keys: list[tuple[int, int]]
    x: torch.Tensor
    guidance_rows: float | None = None
    seconds: float | None = None
    seeds: list[int] = field(default_factory=list)
    source_rows: float | None = None

    def positions(self, caption_order: list[str]) -> list[np.ndarray]:
        """Per caption (in `caption_order`), the indices of its samples sorted by (seed, index)."""
        by_caption: dict[str, list[int]] = {}
        for i, c in enumerate(self.captions):
            by_caption.setdefault(c, []).append(i)
        return [
            np.array(sorted(by_caption.get(c, []), key=lambda i: self.keys[i]), dtype=np.int64) for c in caption_order
        ]


class Plan:
    """B resampling draws over a design of G captions with n_g samples each: draw[b] is a list of (caption slot,
    positions within the caption) pairs. Shared by every method and metric (module docstring)."""

    def __init__(self, sizes: list[int], resamples: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.sizes = list(sizes)
        self.draws = []
        for _ in range(resamples):
            slots = rng.integers(0, len(sizes), size=len(sizes))
            self.draws.append([(int(g), rng.integers(0, sizes[g], size=sizes[g])) for g in slots])

    @property
    def whole(self) -> list[tuple[int, np.ndarray]]:
        """The data itself: every caption once, every position once."""
        return [(g, np.arange(n)) for g, n in enumerate(self.sizes)]


@dataclass
class Evidence:
    """What a method's samples are, computed once: per-sample values and per-caption values (in caption order), and
    Inception features (or None)."""

    per_sample: dict[str, np.ndarray]
    per_caption: dict[str, np.ndarray]
    positions: list[np.ndarray]  # caption slot → sample indices (aligned across methods)
    features: torch.Tensor | None
    nearest_variant: list[str]


class ShapesEvidence:
    """Computes `Evidence` of samples against the shapes prior, and the exact references (cached across methods)."""

    def __init__(self, prior, feature_net=None, log_density_t: int = 20, reference_seed: int = 0):
        self.prior, self.feature_net = prior, feature_net
        self.log_density_t, self.reference_seed = int(log_density_t), int(reference_seed)
        self._reference: dict = {}
        self._view_index = {v: i for i, v in enumerate(prior.bank_views)}

    def view_weights(self, caption: str) -> np.ndarray:
        """The caption's mixture weight on each of the bank's views (summed over the variants it selects; cached)."""
        key = ("views", caption)
        if key not in self._reference:
            self._reference[key] = self._view_weights(caption)
        return self._reference[key]

    def _view_weights(self, caption: str) -> np.ndarray:
        mixture = self.prior.mixture_for(caption)
        _, labels = self.prior.components(caption)
        weights = np.zeros(len(self.prior.bank_views))
        probs = torch.softmax(mixture.log_weights, 0).numpy()
        for p, label in zip(probs, labels):
            weights[self._view_index[(label.azimuth, label.elevation)]] += p
        return weights

    def reference_samples(self, caption: str, n: int) -> torch.Tensor:
        """n exact samples of p(x | caption), seeded by the caption, 8-bit quantised like the methods' samples."""
        key = ("x", caption, n)
        if key not in self._reference:
            generator = torch.Generator().manual_seed(zlib.crc32(caption.encode()) + self.reference_seed)
            x = self.prior.mixture_for(caption).sample(n, generator).float().reshape(n, *self.prior.sample_shape())
            self._reference[key] = self.prior.encode(quantise(self.prior.decode(x)))
        return self._reference[key]

    def reference_features(self, captions: list[str], sizes: list[int]) -> torch.Tensor | None:
        if self.feature_net is None:
            return None
        key = ("features", tuple(captions), tuple(sizes))
        if key not in self._reference:
            x = torch.cat([self.reference_samples(c, n) for c, n in zip(captions, sizes)])
            self._reference[key] = features(self.feature_net, self.prior.decode(x))
        return self._reference[key]

    def reference_pairwise(self, caption: str, n: int) -> float:
        return mean_pairwise_distance(self.reference_samples(caption, n)) if n >= 2 else math.nan

    @torch.no_grad()
    def of(self, samples: MethodSamples, captions: list[str], with_features: bool = True) -> Evidence:
        prior = self.prior
        positions = samples.positions(captions)
        n = samples.x.shape[0]
        fidelity, artifact, density, rms = (np.zeros(n) for _ in range(4))
        variants = [""] * n
        fd, coverage, kl, pairwise = (np.full(len(captions), math.nan) for _ in range(4))
        abar = float(prior.alphas_cumprod[self.log_density_t])
        for g, caption in enumerate(captions):
            idx = positions[g]
            if idx.size == 0:
                continue
            x = samples.x[torch.from_numpy(idx)]
            labels, distances = prior._nearest(x, "")  # the whole world: what each sample became
            own, _ = prior._nearest(x, caption)  # within the caption's components: which view it took
            clean = prior.mixture_for(caption + TGT_SUFFIX)
            density[idx] = (log_density(clean, x, abar) / x[0].numel()).numpy()
            rms[idx] = (distances / math.sqrt(x[0].numel())).numpy()
            for j, label in zip(idx, labels):
                fidelity[j] = on_caption(label.caption, caption)
                artifact[j] = label.variant != "clean"
                variants[j] = label.variant
            views = [self._view_index[(lab.azimuth, lab.elevation)] for lab in own]
            coverage[g] = view_coverage(views, len(prior.bank_views))
            kl[g] = view_kl(views, self.view_weights(caption))
            if idx.size >= 2:
                fd[g] = frechet_distance(SampleMoments.of(x), MixtureMoments.of(prior.mixture_for(caption)))
                pairwise[g] = mean_pairwise_distance(x)
        feats = None
        if with_features and self.feature_net is not None:
            order = np.concatenate(positions)
            computed = features(self.feature_net, prior.decode(samples.x[torch.from_numpy(order)]))
            feats = torch.empty(n, computed.shape[1], dtype=torch.float64)
            feats[torch.from_numpy(order)] = computed
        return Evidence(
            per_sample={"fidelity": fidelity, "artifact_rate": artifact, "log_density": density, "nearest_rms": rms},
            per_caption={"fd_pixels": fd, "view_coverage": coverage, "view_kl": kl, "pairwise": pairwise},
            positions=positions,
            features=feats,
            nearest_variant=variants,
        )


class PooledFeatures:
    """KID and Fréchet distances of a method's Inception features against the exact reference's, on any draw."""

    def __init__(self, ours: torch.Tensor, reference: torch.Tensor):
        from torchmetrics.image.kid import poly_kernel

        self.x, self.y = ours.double(), reference.double()
        self.k_xx, self.k_xy = poly_kernel(self.x, self.x), poly_kernel(self.x, self.y)
        k_yy = poly_kernel(self.y, self.y)
        m = self.y.shape[0]
        self.within_y = float((k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1)))
        self.reference = SampleMoments.of(self.y)

    def kid(self, idx: np.ndarray) -> float:
        """Unbiased MMD² (KID's polynomial kernel) of the samples idx (with repeats) against the whole reference;
        pairs of one sample with itself at two positions are left out, as the diagonal is."""
        i = torch.from_numpy(idx)
        k = self.k_xx[i][:, i]
        same = torch.from_numpy(idx[:, None] == idx[None, :])
        n_pairs = int((~same).sum())
        within_x = float(k[~same].sum() / n_pairs) if n_pairs else math.nan
        return within_x + self.within_y - 2 * float(self.k_xy[i].mean())

    def fd(self, idx: np.ndarray) -> float:
        return frechet_distance(SampleMoments.of(self.x[torch.from_numpy(idx)]), self.reference)

    def fd_infinity(self, idx: np.ndarray, seed: int = 0) -> float:
        return fd_infinity(self.x[torch.from_numpy(idx)], self.reference, seed=seed).fd_infinity


def _drawn_samples(evidence: Evidence, draw) -> np.ndarray:
    return np.concatenate([evidence.positions[g][pos] for g, pos in draw])


def statistic(key: str, evidence: Evidence, pooled: PooledFeatures | None, draw) -> float:
    """One metric of one method on one draw (`Plan.draws[b]` or `Plan.whole`)."""
    kind = kind_of(key)
    if kind == "sample":
        return float(evidence.per_sample[key][_drawn_samples(evidence, draw)].mean())
    if kind == "caption":
        values = evidence.per_caption[key][[g for g, _ in draw]]
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else math.nan
    if pooled is None:
        return math.nan
    idx = _drawn_samples(evidence, draw)
    if key == "kid":
        return pooled.kid(idx) * KID_SCALE
    if key == "fd_features":
        return pooled.fd(idx)
    return pooled.fd_infinity(idx)


def interval(values: list[float], estimate: float, level: float = 0.95, bias_corrected: bool = False) -> dict:
    """{estimate, low, high} from bootstrap values (percentile interval; non-finite draws dropped).

    bias_corrected: shift the draws by their mean's offset from the estimate first. For statistics of a whole sample
    set (Fréchet distances, KID) a resample with repeated samples is not a sample of the same kind: repeats shrink
    the covariance, so every draw's FD is larger than the data's (measured: the percentile interval of 96 exact
    samples' Inception FD was [88, 132] around an estimate of 70). The shift keeps the draws' spread and removes that
    offset."""
    v = np.asarray([x for x in values if math.isfinite(x)])
    if v.size < 2 or not math.isfinite(estimate):
        return {"estimate": estimate if math.isfinite(estimate) else None, "low": None, "high": None}
    if bias_corrected:
        v = v - (v.mean() - estimate)
    low, high = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": estimate, "low": float(low), "high": float(high)}


def kind_of(key: str) -> str:
    return next(m[4] for m in METRICS if m[0] == key)


def direction_of(key: str) -> str:
    """ "↓" (lower is better), "↑" or "" (neither) for a metric; "" for a key that is no metric."""
    return next((m[3] for m in METRICS if m[0] == key), "")


def significant(cell: dict) -> bool:
    return cell["low"] is not None and not (cell["low"] <= 0.0 <= cell["high"])


def summarise(
    methods: dict[str, Evidence],
    pooled: dict[str, PooledFeatures | None],
    plan: Plan,
    keys: tuple[str, ...],
    baseline: str | None = "ours",
    pooled_resamples: int = 200,
    level: float = 0.95,
) -> dict:
    """{"methods": {method: {key: interval}}, "differences": {method: {key: interval of baseline − method}}}: the
    whole data's value with its bootstrap interval for every method and key, and the paired differences."""
    out: dict = {"methods": {}, "differences": {}}
    values: dict[str, dict[str, list[float]]] = {}
    for method, evidence in methods.items():
        out["methods"][method], values[method] = {}, {}
        for key in keys:
            kind = kind_of(key)
            draws = plan.draws[:pooled_resamples] if kind == "pooled" and key != "kid" else plan.draws
            if key == "fd_infinity":
                draws = plan.draws[: max(pooled_resamples // 2, 2)]
            values[method][key] = [statistic(key, evidence, pooled.get(method), d) for d in draws]
            estimate = statistic(key, evidence, pooled.get(method), plan.whole)
            out["methods"][method][key] = interval(values[method][key], estimate, level, kind == "pooled")
    if baseline in methods:
        for method in methods:
            if method == baseline:
                continue
            out["differences"][method] = {}
            for key in keys:
                a, b = values[baseline][key], values[method][key]
                est_a, est_b = out["methods"][baseline][key]["estimate"], out["methods"][method][key]["estimate"]
                estimate = est_a - est_b if est_a is not None and est_b is not None else math.nan
                diffs = [x - y for x, y in zip(a, b)]
                out["differences"][method][key] = interval(diffs, estimate, level, kind_of(key) == "pooled")
    return out


def artifact_shares(evidence: Evidence) -> dict[str, float]:
    n = len(evidence.nearest_variant)
    counts = Counter(v for v in evidence.nearest_variant if v != "clean")
    return {v: c / n for v, c in counts.most_common()}
