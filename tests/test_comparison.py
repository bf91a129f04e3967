"""The comparison's statistics (scoredist.eval.comparison) and its report (scoredist.eval.report) on planted data:
paired draws, per-sample / per-caption / pooled statistics against hand-computed values, and the verdict lines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scoredist.eval.comparison import (
    Evidence,
    MethodSamples,
    Plan,
    PooledFeatures,
    interval,
    significant,
    statistic,
    summarise,
)
from scoredist.eval.report import markdown_report, verdicts
from scoredist.eval.stats import mmd2_unbiased


def evidence(per_sample: dict, per_caption: dict, sizes=(3, 3), features=None) -> Evidence:
    positions, start = [], 0
    for n in sizes:
        positions.append(np.arange(start, start + n))
        start += n
    return Evidence(
        per_sample={k: np.asarray(v, dtype=float) for k, v in per_sample.items()},
        per_caption={k: np.asarray(v, dtype=float) for k, v in per_caption.items()},
        positions=positions,
        features=features,
        nearest_variant=["clean"] * start,
    )


def test_positions_pair_samples_by_seed_and_index_whatever_order_they_were_read_in():
    x = torch.zeros(4, 3, 2, 2)
    a = MethodSamples("a", "A", ["c1", "c2", "c1", "c2"], [(1, 0), (0, 1), (0, 0), (1, 1)], x)
    pos = a.positions(["c1", "c2"])
    assert [a.keys[i] for i in pos[0]] == [(0, 0), (1, 0)]
    assert [a.keys[i] for i in pos[1]] == [(0, 1), (1, 1)]


def test_a_plan_draws_captions_and_positions_within_them_and_whole_is_the_data():
    plan = Plan([2, 3], resamples=50, seed=0)
    assert plan.whole[0][0] == 0 and plan.whole[1][1].tolist() == [0, 1, 2]
    for draw in plan.draws:
        assert len(draw) == 2
        for g, pos in draw:
            assert len(pos) == [2, 3][g] and pos.max() < [2, 3][g]
    assert len({tuple(g for g, _ in d) for d in plan.draws}) > 1  # captions are resampled


def test_statistics_on_the_whole_data_equal_hand_computed_values():
    e = evidence({"fidelity": [1, 0, 1, 1, 1, 0]}, {"fd_pixels": [100.0, 300.0]})
    whole = Plan([3, 3], 1).whole
    assert statistic("fidelity", e, None, whole) == pytest.approx(4 / 6)
    assert statistic("fd_pixels", e, None, whole) == pytest.approx(200.0)
    # a draw of caption 1 twice: the per-caption mean is 300; the per-sample mean over its drawn positions
    draw = [(1, np.array([0, 0, 2])), (1, np.array([1, 1, 1]))]
    assert statistic("fd_pixels", e, None, draw) == pytest.approx(300.0)
    assert statistic("fidelity", e, None, draw) == pytest.approx((1 + 1 + 0 + 1 + 1 + 1) / 6)


def test_kid_on_a_draw_without_repeats_is_the_unbiased_mmd_of_those_samples():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=g), torch.randn(6, 5, generator=g) + 0.5
    pooled = PooledFeatures(x, y)
    idx = np.array([0, 2, 3, 6])
    assert pooled.kid(idx) == pytest.approx(mmd2_unbiased(x[torch.from_numpy(idx)], y), rel=1e-10)


def test_paired_differences_cancel_what_two_methods_share_and_find_a_planted_shift():
    rng = np.random.default_rng(0)
    base = rng.normal(size=24)  # a large spread between samples, shared by both methods
    a = evidence({"log_density": base}, {}, sizes=(6, 6, 6, 6))
    b = evidence({"log_density": base - 0.1}, {}, sizes=(6, 6, 6, 6))
    c = evidence({"log_density": base.copy()}, {}, sizes=(6, 6, 6, 6))
    out = summarise({"ours": a, "b": b, "c": c}, {}, Plan([6] * 4, 200), ("log_density",))
    shift = out["differences"]["b"]["log_density"]
    assert shift["estimate"] == pytest.approx(0.1) and shift["low"] == pytest.approx(0.1)
    assert shift["high"] == pytest.approx(0.1) and significant(shift)
    same = out["differences"]["c"]["log_density"]
    assert same["estimate"] == 0 and not significant(same)
    alone = out["methods"]["b"]["log_density"]  # unpaired, each method's own interval is wide
    assert alone["high"] - alone["low"] > 0.5


def test_an_interval_drops_non_finite_draws_and_needs_two():
    cell = interval([1.0, math.nan, 2.0, 3.0], 2.0)
    assert cell["estimate"] == 2.0 and cell["low"] >= 1.0 and cell["high"] <= 3.0
    assert interval([math.nan], 1.0) == {"estimate": 1.0, "low": None, "high": None}


def planted_results() -> dict:
    def cell(est, lo, hi):
        return {"estimate": est, "low": lo, "high": hi}

    return {
        "title": "planted",
        "design": {
            "captions": ["a", "b"],
            "samples_per_caption": [4, 4],
            "seeds": [0, 1],
            "samples_per_method": 8,
            "resamples": 10,
            "level": 0.95,
        },
        "keys": ["fidelity", "fd_pixels", "pairwise"],
        "baseline": "ours",
        "rows": [
            {
                "method": "sds",
                "label": "SDS",
                "guidance_rows_per_sample": 300.0,
                "seconds_per_step_interleaved": 0.2,
                "metrics": {
                    "fidelity": cell(0.5, 0.3, 0.7),
                    "fd_pixels": cell(900, 800, 1000),
                    "pairwise": cell(3.0, 2.0, 4.0),
                },
                "difference_vs_ours": {
                    "fidelity": cell(0.25, 0.1, 0.4),
                    "fd_pixels": cell(100, 20, 180),
                    "pairwise": cell(-1.0, -2.0, 0.5),
                },
                "artifacts": {"blurry": 0.5},
                "per_seed": {"0": {"fidelity": 0.5}, "1": {"fidelity": 0.5}},
            },
            {
                "method": "ours",
                "label": "Ours",
                "guidance_rows_per_sample": 300.0,
                "seconds_per_step_interleaved": None,
                "metrics": {
                    "fidelity": cell(0.75, 0.6, 0.9),
                    "fd_pixels": cell(1000, 900, 1100),
                    "pairwise": cell(2.0, 1.0, 3.0),
                },
                "difference_vs_ours": None,
                "artifacts": {},
                "per_seed": {"0": {"fidelity": 0.75}},
            },
        ],
    }


def test_verdicts_say_where_ours_wins_loses_and_cannot_be_told_apart():
    (line,) = verdicts(planted_results())
    assert line == (
        "Ours vs SDS: better on prompt fidelity +25 % [+10 %, +40 %]. worse on FD pixels +100 [+20, +180]. "
        "no significant difference on pairwise dist.."
    )


def test_the_report_has_the_table_the_differences_and_the_seeds():
    md = markdown_report(planted_results())
    assert "| SDS | 300 | 0.200 | 50 % [30 %, 70 %] | 900 [800, 1000] | 3.0 [2.0, 4.0] |" in md
    assert "| Ours | 300 | – | 75 % [60 %, 90 %] | 1000 [900, 1100] | 2.0 [1.0, 3.0] |" in md
    assert "| SDS | +25 % [+10 %, +40 %]* | +100 [+20, +180]* | -1.0 [-2.0, +0.5] |" in md
    assert "| SDS | 1 | 50 % |" in md


def test_a_bias_corrected_interval_keeps_the_spread_of_the_draws_around_the_estimate():
    draws = [10.0, 11.0, 12.0, 13.0, 14.0]  # every resample larger than the data's value, as for a Fréchet distance
    plain = interval(draws, 5.0, level=0.5)
    assert not plain["low"] <= 5.0 <= plain["high"]
    fixed = interval(draws, 5.0, level=0.5, bias_corrected=True)
    assert fixed == {"estimate": 5.0, "low": 4.0, "high": 6.0}


def test_the_pooled_fd_interval_of_samples_against_their_own_distribution_holds_the_estimate():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g)
    e = evidence({}, {}, sizes=(10, 10, 10, 10), features=x)
    out = summarise({"a": e}, {"a": PooledFeatures(x, y)}, Plan([10] * 4, 200), ("fd_features", "kid"), None)
    for key in ("fd_features", "kid"):
        cell = out["methods"]["a"][key]
        assert cell["low"] <= cell["estimate"] <= cell["high"], (key, cell)
