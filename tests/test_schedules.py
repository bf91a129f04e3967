"""Timestep schedules: bounds, the DDIM grid, annealing and decay, as functions of the step."""

import pytest
import torch

from scoredist.schedules import AnnealedSchedule, DecaySchedule, TimestepSchedule, resolve_switch_step, stage_switched


def test_uniform_samples_stay_in_bounds_and_cover_them():
    torch.manual_seed(0)
    t = TimestepSchedule(0.02, 0.98).sample(0, 20000, 1000, "cpu")
    assert t.min().item() == 20 and t.max().item() == 980
    assert abs(t.float().mean().item() - 500) < 5  # uniform over [20, 980]: mean 500, s.e. ≈ 2


def test_ddim_grid_draws_multiples_of_its_stride():
    torch.manual_seed(0)
    t = TimestepSchedule(0.02, 0.98, grid=500).sample(0, 5000, 1000, "cpu")
    assert (t % 2 == 0).all() and t.min().item() == 20 and t.max().item() == 980
    assert len(t.unique()) == 481  # every grid point from 20 to 980 appears


def test_annealed_schedule_drops_t_max_at_its_step():
    schedule = AnnealedSchedule(0.02, 0.98, t_max_after=0.5, anneal_step=5000)
    assert schedule.bounds(4999) == (0.02, 0.98) and schedule.bounds(5000) == (0.02, 0.5)
    torch.manual_seed(0)
    assert schedule.sample(6000, 1000, 1000, "cpu").max().item() <= 500


def test_decay_schedules_linear_and_sqrt():
    linear = DecaySchedule(0.02, 0.98, t_min_end=0.02, t_max_end=0.5, max_steps=100, mode="linear")
    assert linear.bounds(50) == pytest.approx((0.02, 0.74))
    sqrt = DecaySchedule(0.02, 0.98, t_min_end=0.02, t_max_end=0.5, max_steps=100, mode="sqrt")
    assert sqrt.bounds(25) == pytest.approx((0.02, 0.98 - 0.48 * 0.5))
    assert sqrt.bounds(1000) == pytest.approx((0.02, 0.5))


def test_bad_bounds_and_modes_are_refused():
    with pytest.raises(ValueError, match="t_min <= t_max"):
        TimestepSchedule(0.9, 0.1)
    with pytest.raises(ValueError, match="mode"):
        DecaySchedule(mode="exp")


def test_stage_switch_is_a_threshold_not_an_equality():
    switch = resolve_switch_step(1000, fraction=0.5)
    assert switch == 500 and resolve_switch_step(1000, 0.5, step=300) == 300 and resolve_switch_step(10) is None
    assert [stage_switched(s, switch) for s in (499, 500, 501, 900)] == [False, True, True, True]


def test_bounds_at_the_top_and_between_grid_points():
    torch.manual_seed(0)
    assert TimestepSchedule(1.0, 1.0).sample(0, 10, 1000, "cpu").tolist() == [999] * 10
    assert TimestepSchedule(0.998, 1.0, grid=500).sample(0, 10, 1000, "cpu").max().item() == 998
    with pytest.raises(ValueError, match="no timestep of the DDIM grid"):
        TimestepSchedule(0.291, 0.2915, grid=500).sample(0, 1, 1000, "cpu")
