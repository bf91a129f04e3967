"""Timestep schedules and step-dependent values, as plain functions of the training step.

A schedule decides which diffusion times t a step may draw. Times are fractions of the T training timesteps
(0.02 = 2 %); `sample` turns them into integer indices, optionally snapped to a coarse DDIM grid as the paper's 2D
code does.
"""

from __future__ import annotations

import math

import torch

# Values derived from trainer.max_steps (a decay's length, a stage switch) are fixed when a run starts and saved in its
# checkpoint, so a run resumed with a larger max_steps continues the schedule it started with instead of jumping back.


def linear_ramp(step: int, start_step: int, end_step: int, start: float, end: float) -> float:
    """start before start_step, end after end_step, linear in between (a generic value schedule)."""
    if step <= start_step or end_step <= start_step:
        return start if step <= start_step else end
    frac = min(1.0, (step - start_step) / (end_step - start_step))
    return start + frac * (end - start)


class Ramp:
    """A value that moves from `start` to `end` between `start_step` and `end_step` (linear, or cosine-eased), for
    guidance scales and loss weights: `guidance_scale: {_target_: scoredist.schedules.Ramp, start: 100, end: 7.5}`."""

    def __init__(self, start: float, end: float, start_step: int = 0, end_step: int = 1000, mode: str = "linear"):
        if mode not in ("linear", "cosine"):
            raise ValueError(f"Ramp mode must be 'linear' or 'cosine', got {mode!r}")
        self.start, self.end, self.start_step, self.end_step, self.mode = start, end, start_step, end_step, mode

    def __call__(self, step: int) -> float:
        if self.mode == "linear":
            return linear_ramp(step, self.start_step, self.end_step, self.start, self.end)
        frac = linear_ramp(step, self.start_step, self.end_step, 0.0, 1.0)
        return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * frac))


def value_at(value, step: int) -> float:
    """A constant, or a schedule (any callable of the step) evaluated at this step."""
    return value(step) if callable(value) else value


def stage_switched(step: int, switch_step: int | None) -> bool:
    """True once the run is in its second stage. `>=`, not `==`: a run resumed past the switch must still switch."""
    return switch_step is not None and step >= switch_step


def resolve_switch_step(max_steps: int, fraction: float | None = None, step: int | None = None) -> int | None:
    """The step at which a two-stage loss switches: an explicit step wins, else a fraction of max_steps, else never."""
    if step is not None:
        return int(step)
    if fraction is not None:
        return int(round(fraction * max_steps))
    return None


class TimestepSchedule:
    """Uniform t in [t_min, t_max] (fractions of T); subclasses move the bounds with the step.

    grid: if set, t is drawn uniformly from a `grid`-step DDIM grid (multiples of T // grid) inside the bounds, as the
    paper's text-to-image code does with grid=500; if None, from every integer timestep inside the bounds.
    shared_t: one t for all the rows a sample renders in a step (MVDream's four views share one timestep; its
    threestudio guidance draws one t per batch); False: one t per row.
    """

    def __init__(self, t_min: float = 0.02, t_max: float = 0.98, grid: int | None = None, shared_t: bool = False):
        if not 0.0 <= t_min <= t_max <= 1.0:
            raise ValueError(f"schedule needs 0 <= t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self.t_min, self.t_max, self.grid, self.shared_t = t_min, t_max, grid, bool(shared_t)

    def bounds(self, step: int) -> tuple[float, float]:
        return self.t_min, self.t_max

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def index_range(self, step: int, num_train_timesteps: int) -> tuple[int, int, int]:
        """(first, last, stride) of the allowed integer timesteps at this step."""
        lo, hi = self.bounds(step)
        stride = num_train_timesteps // self.grid if self.grid else 1
        top = (num_train_timesteps - 1) // stride * stride  # the last allowed timestep on the grid
        first = min(math.ceil(lo * num_train_timesteps / stride) * stride, top)
        last = min(math.floor(hi * num_train_timesteps / stride) * stride, top)
        if lo == hi:  # one t (a decaying t, SDI's): truncated, as threestudio's int(T · fraction)
            first = last
        if last < first:
            raise ValueError(
                f"no timestep of the {'DDIM grid (stride ' + str(stride) + ')' if self.grid else 'schedule'} lies in "
                f"[{lo}, {hi}] at step {step}; widen schedule.t_min/t_max or set schedule.grid=null"
            )
        return first, last, stride

    def sample(self, step: int, batch_size: int, num_train_timesteps: int, device, generator=None) -> torch.Tensor:
        """(batch_size,) long timesteps, drawn from `generator` (the trainer gives each sample its own, on `device`),
        or from torch's global RNG when None."""
        first, last, stride = self.index_range(step, num_train_timesteps)
        draws = 1 if self.shared_t else batch_size
        k = torch.randint(0, (last - first) // stride + 1, (draws,), device=device, generator=generator)
        return (first + stride * k).expand(batch_size).clone()


class AnnealedSchedule(TimestepSchedule):
    """t_max drops from `t_max` to `t_max_after` at `anneal_step`.

    The paper's NeRF setting: 0.98 → 0.5 at step 5000."""

    def __init__(self, t_min=0.02, t_max=0.98, t_max_after=0.5, anneal_step=5000, grid=None, shared_t=False):
        super().__init__(t_min, t_max, grid, shared_t)
        self.t_max_after, self.anneal_step = t_max_after, anneal_step

    def bounds(self, step: int) -> tuple[float, float]:
        return self.t_min, self.t_max_after if step >= self.anneal_step else self.t_max


class DecaySchedule(TimestepSchedule):
    """Both bounds (or t itself, when t_min == t_max) decay from their start values to `t_min_end`/`t_max_end`
    between `decay_start` and `decay_fraction` of `max_steps` (before: the start values; after: the end values),
    linearly or as sqrt (fast early, as in DreamTime-style schedules). ISM's warm-up: t_max 0.98 → 0.5 over 0.3 of
    the run; SDI's t: 0.98 → 0.25 over all of it; Stable-Zero123's: from step 50 to 200 of 600."""

    def __init__(
        self,
        t_min=0.02,
        t_max=0.98,
        t_min_end=0.02,
        t_max_end=0.5,
        max_steps=1000,
        mode="linear",
        grid=None,
        decay_fraction: float = 1.0,
        decay_start: float = 0.0,
        shared_t: bool = False,
    ):
        super().__init__(t_min, t_max, grid, shared_t)
        if mode not in ("linear", "sqrt"):
            raise ValueError(f"DecaySchedule mode must be 'linear' or 'sqrt', got {mode!r}")
        if not 0 <= decay_start < decay_fraction <= 1:
            raise ValueError(
                f"DecaySchedule needs 0 <= decay_start < decay_fraction <= 1, got {decay_start} and {decay_fraction}"
            )
        self.t_min_end, self.t_max_end, self.max_steps, self.mode = t_min_end, t_max_end, max_steps, mode
        self.decay_fraction, self.decay_start = decay_fraction, decay_start

    def state_dict(self) -> dict:
        return {"max_steps": self.max_steps}

    def load_state_dict(self, state: dict) -> None:
        self.max_steps = state.get("max_steps", self.max_steps)

    def bounds(self, step: int) -> tuple[float, float]:
        start, end = self.decay_start * self.max_steps, self.decay_fraction * self.max_steps
        frac = min(1.0, max(0.0, step - start) / max(1.0, end - start))
        if self.mode == "sqrt":
            frac = math.sqrt(frac)
        lerp = lambda a, b: (1 - frac) * a + frac * b  # exactly b at the end (a + frac·(b − a) is not)
        return lerp(self.t_min, self.t_min_end), lerp(self.t_max, self.t_max_end)


class CosineDecay(torch.optim.lr_scheduler.LRScheduler):
    """Learning rate × (f + (1 − f)·½(1 + cos(π·min(step, total)/total))), f = final_fraction, then constant.

    Unlike torch's CosineAnnealingLR it never rises again past `total_steps`, and `total_steps` is part of its state,
    so a run resumed with a larger trainer.max_steps stays at the final rate instead of restarting the cosine.
    """

    def __init__(self, optimizer, total_steps: int, final_fraction: float = 0.0, last_epoch: int = -1):
        self.total_steps, self.final_fraction = total_steps, final_fraction
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        frac = min(self.last_epoch, self.total_steps) / max(1, self.total_steps)
        factor = self.final_fraction + (1 - self.final_fraction) * 0.5 * (1 + math.cos(math.pi * frac))
        return [base_lr * factor for base_lr in self.base_lrs]

    def stretch(self, total_steps: int) -> None:
        """Decay over a new length from the current step on (a resume that asks for it explicitly): the optimizer's
        rates jump to the new curve's value at this step."""
        self.total_steps = total_steps
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr
