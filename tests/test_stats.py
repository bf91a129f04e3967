"""scoredist.eval.stats: bootstrap coverage at the nominal rate, the two-level resample, paired differences, KID
against closed forms and torchmetrics, FD∞ on Gaussians with a known distance, view coverage / KL by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

from scoredist.eval.frechet import Moments, SampleMoments, frechet_distance
from scoredist.eval.stats import (
    bootstrap_interval,
    bootstrap_set_statistic,
    fd_infinity,
    kernel_inception_distance,
    linear_kernel,
    mean_pairwise_distance,
    mmd2_unbiased,
    paired_difference_interval,
    view_coverage,
    view_kl,
)

RESAMPLES = 1000  # enough for a 95 % interval's ends, and keeps the 100-repetition tests at a few seconds


def grouped_values(rng, groups=12, per_group=8, between=1.0, within=0.3):
    """(values (G·n,), captions (G·n,)): each caption's mean drawn from N(0, between²), its samples around it."""
    means = rng.normal(0.0, between, groups)
    values = np.repeat(means, per_group) + rng.normal(0.0, within, groups * per_group)
    return values, np.repeat([f"caption {g}" for g in range(groups)], per_group)


# --------------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_covers_the_true_mean_at_the_nominal_rate_and_has_the_normal_width():
    rng = np.random.default_rng(0)
    mu, sigma, n = 3.0, 2.0, 100
    covered, widths = 0, []
    # 200 repetitions, not 100: at a true 95 % a run of 100 falls below 90 about 3 % of the time (measured at 949 of
    # 1,000 repetitions with these settings; the first 100 of this seed cover 89, the textbook z-interval 92)
    for rep in range(200):
        x = rng.normal(mu, sigma, n)
        ci = bootstrap_interval(x, resamples=RESAMPLES, seed=rep)
        assert ci.estimate == pytest.approx(x.mean()) and ci.n_samples == n and ci.n_groups == 1
        covered += ci.low <= mu <= ci.high
        widths.append(ci.high - ci.low)
    assert 180 <= covered < 200
    # the normal interval's width 2·1.96·σ/√n = 0.784: an interval that covers by being wide fails here
    assert np.mean(widths) == pytest.approx(2 * 1.96 * sigma / math.sqrt(n), rel=0.2)


def test_two_level_resample_draws_groups_then_samples_within_each():
    # caption A has one sample (0), caption B three (10, 10, 10): a resample draws {A, A}, {A, B} or {B, B} with
    # probabilities 1/4, 1/2, 1/4, i.e. 2, 4 or 6 values with means 0, 30/4 = 7.5, 10
    seen = []
    values, groups = [0.0, 10.0, 10.0, 10.0], ["A", "B", "B", "B"]
    ci = bootstrap_interval(values, groups, statistic=lambda v: seen.append(v.copy()) or v.mean(), resamples=4000)
    draws = seen[:-1]  # the last call is the estimate on the data
    outcomes = {(len(v), float(v.mean())) for v in draws}
    assert outcomes == {(2, 0.0), (4, 7.5), (6, 10.0)}
    assert np.mean([len(v) == 4 for v in draws]) == pytest.approx(0.5, abs=0.03)
    assert np.mean([len(v) == 2 for v in draws]) == pytest.approx(0.25, abs=0.03)
    assert (ci.low, ci.high, ci.n_samples, ci.n_groups) == (0.0, 10.0, 4, 2)


def test_hierarchical_interval_is_wider_than_flat_when_captions_differ_and_only_it_covers():
    # planted caption effect (sd 1) ≫ sample noise (sd 0.3): the flat interval treats 96 samples as independent
    # (sd of the mean ≈ √(1.09/96) = 0.107); with 12 captions it is ≈ √(1/12 + 0.09/96) = 0.290
    rng = np.random.default_rng(1)
    values, groups = grouped_values(rng)
    flat = bootstrap_interval(values, resamples=RESAMPLES)
    hier = bootstrap_interval(values, groups, resamples=RESAMPLES)
    assert hier.n_groups == 12 and hier.n_samples == 96
    assert hier.high - hier.low > 2.0 * (flat.high - flat.low)
    # coverage of the population mean 0 over 100 repetitions (measured over 600: flat 45 %, two-level 90 %)
    flat_cover = hier_cover = 0
    for rep in range(100):
        values, groups = grouped_values(rng)
        f, h = bootstrap_interval(values, resamples=500, seed=rep), bootstrap_interval(values, groups, resamples=500)
        flat_cover += f.low <= 0 <= f.high
        hier_cover += h.low <= 0 <= h.high
    assert flat_cover <= 60 and hier_cover >= 84  # nominal 95 %; 12 groups run a little short


def test_two_level_resample_is_conservative_without_a_group_effect_and_groups_only_is_not():
    # no caption effect, unit noise, 96 samples: the right width is 2·1.96/√96 = 0.400 (what flat gives). Drawing
    # samples again inside the drawn captions adds their variance a second time: √2·√(11/12) ≈ 1.35 × wider
    rng = np.random.default_rng(12)
    widths = []
    for rep in range(20):
        values, groups = grouped_values(rng, between=0.0, within=1.0)
        intervals = (
            bootstrap_interval(values, resamples=RESAMPLES, seed=rep),
            bootstrap_interval(values, groups, resamples=RESAMPLES, seed=rep),
            bootstrap_interval(values, groups, resamples=RESAMPLES, seed=rep, resample_within=False),
        )
        widths.append([i.high - i.low for i in intervals])
    flat, both, groups_only = np.mean(widths, 0)
    assert flat == pytest.approx(2 * 1.96 / math.sqrt(96), rel=0.1)
    assert both / flat == pytest.approx(math.sqrt(2 * 11 / 12), rel=0.1)
    assert groups_only / flat == pytest.approx(1.0, rel=0.1)


def test_set_statistic_bootstrap_matches_the_value_bootstrap_for_a_pooled_mean_and_keeps_keys():
    rng = np.random.default_rng(2)
    values, groups = grouped_values(rng)
    sets = {g: torch.from_numpy(values[groups == g]) for g in np.unique(groups)}
    keys_seen = set()

    def pooled_mean(draw):
        keys_seen.update(k for k, _ in draw)
        assert len(draw) == 12  # a group drawn twice appears twice
        return float(torch.cat([s for _, s in draw]).mean())

    by_sets = bootstrap_set_statistic(sets, pooled_mean, resamples=RESAMPLES)
    by_values = bootstrap_interval(values, groups, resamples=RESAMPLES)
    assert keys_seen == set(sets)
    assert by_sets.estimate == pytest.approx(values.mean(), abs=1e-12)
    assert (by_sets.n_samples, by_sets.n_groups) == (96, 12)
    width = by_values.high - by_values.low
    assert by_sets.low == pytest.approx(by_values.low, abs=0.1 * width)
    assert by_sets.high == pytest.approx(by_values.high, abs=0.1 * width)


def test_set_statistic_bootstrap_of_a_per_caption_frechet_distance():
    # two captions, each with its reference N(μ_c, I) in 3 dims; samples from N(μ_c + 1, I): FD per caption = 3
    g = torch.Generator().manual_seed(3)
    refs = {c: Moments(torch.full((3,), float(c)).double(), torch.eye(3).double()) for c in (0, 5)}
    sets = {c: torch.randn(200, 3, generator=g, dtype=torch.float64) + c + 1 for c in refs}

    def mean_fd(draw):
        return float(np.mean([frechet_distance(SampleMoments.of(s), refs[c]) for c, s in draw]))

    ci = bootstrap_set_statistic(sets, mean_fd, resamples=300)
    assert ci.low <= ci.estimate <= ci.high
    assert ci.low < 3.3 and ci.high > 2.9 and ci.high - ci.low < 1.5


def test_paired_difference_recovers_a_planted_shift_and_finds_none_where_there_is_none():
    rng = np.random.default_rng(4)

    def paired(shift):
        base, groups = grouped_values(rng, within=0.5)  # shared by both methods: caption and sample difficulty
        return base + shift + rng.normal(0, 0.2, base.shape), base + rng.normal(0, 0.2, base.shape), groups

    a, b, groups = paired(0.3)
    diff = paired_difference_interval(a, b, groups, resamples=RESAMPLES)
    assert diff.low < 0.3 < diff.high and diff.significant
    assert diff.estimate == pytest.approx(0.3, abs=0.1)
    # unpaired, the caption effect hides the shift: the two methods' intervals overlap
    ia, ib = bootstrap_interval(a, groups, resamples=RESAMPLES), bootstrap_interval(b, groups, resamples=RESAMPLES)
    assert ia.low < ib.high
    false_alarms = sum(
        paired_difference_interval(*paired(0.0), resamples=500, seed=rep).significant for rep in range(50)
    )
    assert false_alarms <= 7  # nominal 5 % of 50 = 2.5


def test_paired_difference_refuses_unpaired_lengths():
    with pytest.raises(ValueError, match="one to one"):
        paired_difference_interval([1.0, 2.0, 3.0], [1.0, 2.0])


# ---------------------------------------------------------------------------------------------------------------- KID


def test_unbiased_mmd_with_a_linear_kernel_is_the_closed_form():
    # Σ_{i≠j} x_iᵀx_j = N²‖x̄‖² − Σ‖x_i‖², so the within-x term is ‖x̄‖² − tr S_x / N (S_x the unbiased covariance):
    #   MMD²_u = ‖x̄ − ȳ‖² − tr S_x / N − tr S_y / M
    g = torch.Generator().manual_seed(5)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = torch.randn(80, 5, generator=g, dtype=torch.float64) * 1.5 + 0.7

    def tr_cov(z):
        return float(torch.cov(z.T).trace())

    closed = float((x.mean(0) - y.mean(0)).pow(2).sum()) - tr_cov(x) / 60 - tr_cov(y) / 80
    assert mmd2_unbiased(x, y, linear_kernel) == pytest.approx(closed, abs=1e-9)
    # a shifted copy of x: ‖δ‖² − 2 tr S_x / N, positive for a shift well above the noise
    delta = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    shifted = mmd2_unbiased(x, x + delta, linear_kernel)
    assert shifted == pytest.approx(5.25 - 2 * tr_cov(x) / 60, abs=1e-9)
    assert shifted > 5.0


def test_kid_is_torchmetrics_statistic_and_subsets():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(120, 16, generator=g, dtype=torch.float64)
    b = torch.randn(120, 16, generator=g, dtype=torch.float64) + 0.3
    # the plain estimator on all samples = torchmetrics' poly_mmd when N = M
    assert mmd2_unbiased(a, b) == pytest.approx(float(poly_mmd(a, b)), rel=1e-12)
    # the subsets: the same numbers as torchmetrics' metric fed the features through an identity network
    ours = kernel_inception_distance(a, b, subset_size=50, subsets=10, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features in buffer"
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=10, subset_size=50)
    metric.update(a, real=True)
    metric.update(b, real=False)
    torch.manual_seed(3)
    mean, std = metric.compute()
    assert ours.mean == pytest.approx(float(mean), rel=1e-12) and ours.std == pytest.approx(float(std), rel=1e-12)
    assert ours.std > 0 and (ours.subset_size, ours.subsets) == (50, 10)


def test_kid_of_two_halves_of_one_distribution_is_near_zero_and_of_a_shifted_pair_is_not():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(600, 32, generator=g, dtype=torch.float64)
    shifted = torch.randn(300, 32, generator=g, dtype=torch.float64) + 0.5
    same = kernel_inception_distance(x[:300], x[300:], subset_size=100, subsets=50)
    apart = kernel_inception_distance(x[:300], shifted, subset_size=100, subsets=50)
    assert apart.mean > 0.5
    assert abs(same.mean) < 0.02 * apart.mean
    # unbiased: the subsets' values straddle 0 (a biased estimator would sit above it)
    assert abs(same.mean) < same.std


def test_kid_refuses_a_subset_larger_than_the_sets():
    x = torch.zeros(10, 4)
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(x, x, subset_size=20)


# ---------------------------------------------------------------------------------------------------------------- FD∞


def test_fd_infinity_recovers_a_planted_distance_that_small_samples_overstate():
    # N(0, I) samples against N(δ, I) with ‖δ‖² = 9: FD∞ = 9 exactly; the covariance and mean noise of N samples add
    # about (D + D(D+1)/4) / N = 84 / N in D = 16 dimensions
    g = torch.Generator().manual_seed(8)
    dim = 16
    delta = torch.zeros(dim, dtype=torch.float64)
    delta[:9] = 1.0
    x = torch.randn(4000, dim, generator=g, dtype=torch.float64)
    exact = Moments(delta, torch.eye(dim, dtype=torch.float64))
    fit = fd_infinity(x, exact, repeats=2)
    assert fit.fd_infinity == pytest.approx(9.0, rel=0.03)
    assert fit.slope > 0 and len(fit.sizes) == len(fit.values) == 20 and max(fit.sizes) == 4000
    small = np.mean([frechet_distance(SampleMoments.of(x[i : i + 50]), exact) for i in range(0, 500, 50)])
    assert small > 1.1 * 9.0
    # against reference features (4,000 samples of N(δ, I)) rather than exact moments
    y = torch.randn(4000, dim, generator=g, dtype=torch.float64) + delta
    assert fd_infinity(x, y, seed=1).fd_infinity == pytest.approx(9.0, rel=0.05)


def test_fd_infinity_refuses_a_single_size():
    x = torch.randn(20, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="two or more"):
        fd_infinity(x, x, sizes=[10, 10])


# ------------------------------------------------------------------------------------------------------- diversity


def test_view_coverage_and_kl_by_hand():
    # three of 16 views hit
    assert view_coverage([0, 0, 3, 3, 3, 15]) == 3 / 16
    assert view_coverage(np.arange(16)) == 1.0
    # uniform weights over 4 views, h = (3/4, 1/4, 0, 0): 3/4 ln 3 + 1/4 ln 1 = 0.8239592165 (empty bins add 0)
    assert view_kl([0, 0, 0, 1], [1, 1, 1, 1]) == pytest.approx(0.75 * math.log(3), abs=1e-12)
    assert view_kl([0, 0, 0, 1], [1, 1, 1, 1]) == pytest.approx(0.8239592165, abs=1e-9)
    # w = (1/2, 1/4, 1/8, 1/8), one sample per view: 1/4 (ln 1/2 + ln 1 + 2 ln 2) = 1/4 ln 2 = 0.1732867951
    weights = [0.5, 0.25, 0.125, 0.125]
    assert view_kl([0, 1, 2, 3], weights) == pytest.approx(0.1732867951, abs=1e-9)
    # samples spread as the mixture: 0; all on one view v: ln(1 / w_v)
    assert view_kl([0, 0, 0, 0, 1, 1, 2, 3], weights) == pytest.approx(0.0, abs=1e-12)
    assert view_kl([3, 3, 3], weights) == pytest.approx(math.log(8), abs=1e-12)
    assert view_kl([2], [1, 1, 0, 1]) == math.inf  # a view the mixture never produces
    with pytest.raises(ValueError, match="view ids"):
        view_coverage([0, 16])


def test_mean_pairwise_distance_by_hand():
    # (0,0), (3,4), (6,8): distances 5, 10, 5
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert mean_pairwise_distance(pts) == pytest.approx(20 / 3, abs=1e-12)
    # images are flattened: two (1, 2, 2) images differing by 1 in every pixel are √4 = 2 apart
    assert mean_pairwise_distance(torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_distance(pts[:1])
