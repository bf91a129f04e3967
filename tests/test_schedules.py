"""Timestep schedules, value ramps and the LR decay, against their closed forms."""

import math

import pytest
import torch

from scoredist.schedules import (
    AnnealedSchedule,
    CosineDecay,
    DecaySchedule,
    Ramp,
    TimestepSchedule,
    linear_ramp,
    resolve_switch_step,
    stage_switched,
    value_at,
)


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
    with pytest.raises(
        ValueError, match=r"no timestep of the DDIM grid \(stride 2\) lies in \[0.291, 0.2915\] at step 0"
    ):
        TimestepSchedule(0.291, 0.2915, grid=500).sample(0, 1, 1000, "cpu")
    with pytest.raises(ValueError, match=r"no timestep of the schedule lies in \[0.2905, 0.2909\] at step 0; widen"):
        TimestepSchedule(0.2905, 0.2909).sample(0, 1, 1000, "cpu")


def test_timesteps_come_from_the_generator_given_not_the_global_rng():
    torch.manual_seed(0)
    drawn = TimestepSchedule(0.02, 0.98, grid=500).sample(0, 6, 1000, "cpu", torch.Generator().manual_seed(7))
    k = torch.randint(0, 481, (6,), generator=torch.Generator().manual_seed(7))  # grid points 20, 22, ..., 980
    assert drawn.tolist() == (20 + 2 * k).tolist()


def cosine_factor(k: int, total: int, final: float) -> float:
    """The closed form the LR schedule must follow: f + (1 − f)·½(1 + cos(π·min(k, T)/T)) after k steps."""
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(k, total) / total))


def test_cosine_lr_follows_its_closed_form_and_stays_at_the_end():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": params[:1], "lr": 0.02}, {"params": params[1:], "lr": 0.001}])
    scheduler = CosineDecay(optimizer, total_steps=8, final_fraction=0.1)
    for k in range(12):
        rates = [group["lr"] for group in optimizer.param_groups]
        assert rates == pytest.approx([0.02 * cosine_factor(k, 8, 0.1), 0.001 * cosine_factor(k, 8, 0.1)], rel=1e-12)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.002, rel=1e-12)  # f · lr from step 8 on, never rising
    one_step = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = CosineDecay(one_step, total_steps=1, final_fraction=0.25)
    one_step.step()
    scheduler.step()
    assert one_step.param_groups[0]["lr"] == pytest.approx(0.25, rel=1e-12)  # a one-step decay ends after one step


def test_cosine_lr_state_keeps_its_length_and_stretch_changes_it():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = CosineDecay(optimizer, total_steps=6)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.0
    state = scheduler.state_dict()
    resumed = CosineDecay(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0), total_steps=10)
    resumed.load_state_dict(state)
    assert resumed.total_steps == 6 and resumed.last_epoch == 6
    resumed.stretch(10)  # a resume that asks for a new length: the rate jumps onto the new curve at this step
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(cosine_factor(6, 10, 0.0), rel=1e-12)
    resumed.step()
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(cosine_factor(7, 10, 0.0), rel=1e-12)
    assert resumed.get_last_lr() == [resumed.optimizer.param_groups[0]["lr"]]


def test_linear_ramp_and_ramp_values():
    assert [linear_ramp(s, 10, 20, 1.0, 3.0) for s in (0, 10, 11, 15, 20, 25)] == pytest.approx([1, 1, 1.2, 2, 3, 3])
    assert [linear_ramp(s, 10, 10, 1.0, 3.0) for s in (9, 10, 11)] == [1.0, 1.0, 3.0]  # zero length: a step
    cosine = Ramp(start=5.0, end=1.0, start_step=10, end_step=30, mode="cosine")
    expected = [5.0, 5.0, 1 + 2 * (1 + math.cos(math.pi * 0.25)), 3.0, 1.0, 1.0]
    assert [cosine(s) for s in (0, 10, 15, 20, 30, 99)] == pytest.approx(expected)
    assert value_at(cosine, 20) == pytest.approx(3.0) and value_at(7.5, 20) == 7.5
    linear = Ramp(start=5.0, end=1.0, start_step=10, end_step=30)  # off the midpoint, linear ≠ cosine
    assert [linear(s) for s in (0, 15, 20, 25, 40)] == pytest.approx([5.0, 4.0, 3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="Ramp mode"):
        Ramp(0.0, 1.0, mode="exp")


def test_index_range_of_bounds_and_grids():
    assert TimestepSchedule(0.02, 0.98).index_range(0, 1000) == (20, 980, 1)
    assert TimestepSchedule(0.02, 0.98, grid=500).index_range(0, 1000) == (20, 980, 2)
    assert TimestepSchedule(0.021, 0.979, grid=500).index_range(0, 1000) == (22, 978, 2)  # inward to the grid
    assert TimestepSchedule(0.0, 1.0, grid=3).index_range(0, 1000) == (0, 999, 333)
    assert TimestepSchedule(0.5, 0.5).index_range(0, 1000) == (500, 500, 1)
    torch.manual_seed(0)
    draws = TimestepSchedule(0.0, 1.0, grid=3).sample(0, 3000, 1000, "cpu")
    assert sorted(draws.unique().tolist()) == [0, 333, 666, 999]


def test_decay_schedule_keeps_its_length_through_its_state():
    schedule = DecaySchedule(0.1, 0.9, t_min_end=0.1, t_max_end=0.5, max_steps=100)
    assert schedule.bounds(0) == pytest.approx((0.1, 0.9)) and schedule.bounds(100) == pytest.approx((0.1, 0.5))
    resumed = DecaySchedule(0.1, 0.9, t_min_end=0.1, t_max_end=0.5, max_steps=400)  # resumed with max_steps=400
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.max_steps == 100 and resumed.bounds(50) == pytest.approx((0.1, 0.7))
    both = DecaySchedule(0.8, 0.8, t_min_end=0.2, t_max_end=0.2, max_steps=10)  # t itself decays
    assert both.bounds(5) == pytest.approx((0.5, 0.5))
    assert TimestepSchedule().state_dict() == {} and AnnealedSchedule().state_dict() == {}


def test_resolve_switch_step_rounds_a_fraction_of_the_run():
    assert resolve_switch_step(10, fraction=0.3) == 3 and resolve_switch_step(999, fraction=0.5) == 500
    assert resolve_switch_step(10, fraction=None, step=0) == 0 and stage_switched(0, 0)
    assert not stage_switched(10**6, None)


def test_default_lengths_and_the_grid_reach_every_schedule():
    assert Ramp(0.0, 10.0)(500) == pytest.approx(5.0)  # over 1000 steps by default
    annealed = AnnealedSchedule()  # the paper's NeRF setting: t_max 0.98 → 0.5 at step 5000
    assert annealed.bounds(4999) == (0.02, 0.98) and annealed.bounds(5000) == (0.02, 0.5)
    assert AnnealedSchedule(grid=500).index_range(0, 1000) == (20, 980, 2)
    assert DecaySchedule(grid=500).index_range(0, 1000) == (20, 980, 2)


def test_decay_defaults_a_one_step_run_and_a_state_without_a_length():
    assert DecaySchedule().bounds(500) == pytest.approx((0.02, 0.74)) and DecaySchedule().bounds(1000) == (0.02, 0.5)
    assert DecaySchedule(0.8, 0.8, 0.2, 0.2, max_steps=1).bounds(1) == pytest.approx((0.2, 0.2))  # decayed after one
    schedule = DecaySchedule(max_steps=9)
    schedule.load_state_dict({})
    assert schedule.max_steps == 9


@pytest.mark.parametrize("t_min, t_max", [(-0.1, 0.5), (0.6, 0.5), (0.1, 1.5)])
def test_timestep_bounds_outside_zero_to_one_are_refused(t_min, t_max):
    with pytest.raises(ValueError, match=f"schedule needs 0 <= t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}"):
        TimestepSchedule(t_min, t_max)
