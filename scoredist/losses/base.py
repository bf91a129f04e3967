"""The shared machinery of every score-distillation loss.

A loss maps (guidance, x, t, ε, prompts, step) to a direction g with the shape of x; the parameters then receive
∇θ = w(t) · g · ∂x/∂θ. CFG convention, used by every loss here (the diffusers form):

    ε_cfg(x_t; y) = ε(x_t; ∅) + s · (ε(x_t; y) − ε(x_t; ∅))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scoredist.guidance.base import add_noise
from scoredist.prompts import Prompt, texts
from scoredist.prompts import conditions as row_conditions

# w(t) as a function of ᾱ_t. "1-abar" is DreamFusion's and the paper's 2D choice; "sqrt((1-abar)/abar)" is ISM's and
# SDI's (an x0-space loss written in ε units: x − x̂0 = sqrt((1 − ᾱ)/ᾱ) · (ε̂ − ε)).
WEIGHTINGS = {
    "1-abar": lambda abar: 1 - abar,
    "uniform": lambda abar: torch.ones_like(abar),
    "sqrt(abar)(1-abar)": lambda abar: abar.sqrt() * (1 - abar),
    "sqrt((1-abar)/abar)": lambda abar: ((1 - abar) / abar).sqrt(),
}
# How a loss's gradient is reduced over the entries of one row: "sum", the gradient of an entry is w·g (DreamFusion's
# SpecifyGradient, every loss here by default); "mean", w·g divided by the row's number of entries (an F.mse_loss with
# reduction="mean", as SDI's code). The rows of one sample are averaged in both (the trainer's row weights).
REDUCTIONS = ("sum", "mean")


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {sorted(WEIGHTINGS)}")


def weight(weighting: str, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """w(t) per batch element, (B,)."""
    check_weighting(weighting)
    return WEIGHTINGS[weighting](alphas_cumprod.to(t.device)[t].float())


def predict_conditions(
    guidance, x_t: torch.Tensor | Sequence[torch.Tensor], t: torch.Tensor, conditions: Sequence[Sequence[str]]
) -> list[torch.Tensor]:
    """ε̂ for several conditions in ONE batched guidance call.

    x_t: (B, ...) shared by all conditions, or one (B, ...) tensor per condition (DDS noises two images).
    conditions: C lists of B prompts (`Prompt` rows or plain strings), aligned by row: a plain string (∅, a negative)
    carries the camera of the render row beside it (`prompts.conditions`). Returns C tensors of shape (B, ...).
    """
    xs = list(x_t) if isinstance(x_t, (list, tuple)) else [x_t] * len(conditions)
    eps = guidance.predict_noise(torch.cat(xs), t.repeat(len(conditions)), row_conditions(conditions))
    return list(eps.chunk(len(conditions)))


def noised(guidance, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t of the detached render: the score is a constant in every SDS-family gradient, never differentiated."""
    return add_noise(x.detach(), noise, t, guidance.alphas_cumprod)


class LazyNorm:
    """The mean per-sample L2 norm of a term, computed only when read with float() — on a logging step. Most steps are
    not logged, and computing a norm there would be wasted kernels."""

    def __init__(self, x: torch.Tensor):
        self.x = x.detach()

    def __float__(self) -> float:
        return float(self.x.flatten(1).norm(dim=1).mean())


class LazyMean(LazyNorm):
    """The mean of a tensor's entries, read like LazyNorm (on a logging step: no host sync on the others)."""

    def __float__(self) -> float:
        return float(self.x.float().mean())


def norm(x: torch.Tensor) -> LazyNorm:
    """A term's size for the logs (see LazyNorm)."""
    return LazyNorm(x)


class LazyRMS(LazyNorm):
    """The root mean square of every entry of a tensor, read like LazyNorm: a size per pixel value (or coordinate),
    the same whatever the resolution and the number of rows."""

    def __float__(self) -> float:
        return float(self.x.float().pow(2).mean().sqrt())


def surrogate_loss(
    x: torch.Tensor, weighted_direction: torch.Tensor, row_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_r c_r · 0.5 ‖x_r − sg(x_r − w·g_r)‖²: its gradient w.r.t. row x_r is exactly c_r · w·g_r.

    row_weights c (R,): the trainer passes 1 / (rows of the row's sample), so that a sample's gradient is the mean of
    w·g over its own rows (a NeRF's cameras) whatever the batch holds; None means 1 / R, the plain batch mean."""
    target = (x - weighted_direction).detach()
    per_row = 0.5 * ((x - target) ** 2).flatten(1).sum(1)
    if row_weights is None:
        return per_row.mean()
    return (row_weights.to(per_row.dtype) * per_row).sum()


class ScoreLoss:
    """Base class. Subclasses implement `direction`; `__call__` applies w(t).

    Stateful losses (VSD's source model, DDS's reference) override `attach`, `after_step`, `state_dict` and
    `load_state_dict`; the trainer calls them and checkpoints the state with the run.
    """

    # False where the parameters are not a sample of the prompt (iRFDS optimises noise): eval.json then holds only the
    # evaluation of the loss's own outputs, not of the renders
    renders_are_samples = True
    # False where some model calls take a subset of a step's rows (DDIM inversion of the rows still on their own
    # timestep path): a multi-view prior, which needs each object's views together, refuses such a loss
    calls_whole_rows = True

    def __init__(self, weighting: str = "1-abar", reduction: str = "sum"):
        check_weighting(weighting)
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
        self.weighting, self.reduction = weighting, reduction

    def attach(self, guidance, x_init: torch.Tensor) -> None:
        """Called at the start of every chunk of samples with the renderer's initial output in model space (detached);
        resets whatever state belongs to one chunk (VSD's source model, DDS's reference)."""

    def check_rows(self, prompts: Sequence[Prompt]) -> None:
        """Called before training with the rows of the renderer's first render (`Prompt`s: caption, view, camera):
        raise a ValueError for rows this loss cannot work with (DDS: cameras without a reference). Default: any."""

    def direction(self, guidance, x, t, noise, prompts, step) -> tuple[torch.Tensor, dict[str, float]]:
        """(g with the shape of x, a dict of scalars to log)."""
        raise NotImplementedError

    def weighting_at(self, step: int) -> str:
        """The w(t) in force at this step (two-stage losses switch it)."""
        return self.weighting

    def conditioning_texts(self, prompts: Sequence[Prompt]) -> list[tuple[str, str]]:
        """Every string the model is conditioned on for these rows, as (what it is, text), so the trainer can check
        each one (a text encoder would silently cut a long one) before training. Default: the prompt and ∅."""
        return [("the prompt", text) for text in texts(prompts)] + [("the empty prompt", "")]

    def __call__(self, guidance, x, t, noise, prompts, step) -> tuple[torch.Tensor, dict[str, float]]:
        g, logs = self.direction(guidance, x, t, noise, prompts, step)
        w = weight(self.weighting_at(step), guidance.alphas_cumprod, t).view(-1, *([1] * (x.dim() - 1)))
        if self.reduction == "mean":
            w = w / x[0].numel()
        return w * g, logs

    def after_step(self, guidance, x: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        """Called after the parameter update with the detached render (VSD trains its source model here)."""
        return {}

    def measure(self, guidance, x: torch.Tensor, prompts: Sequence[str], step: int) -> dict[str, float]:
        """Diagnostics of the loss's own state on logging steps (VSD: how well its source model fits the renders),
        with the step's detached render. Not part of the method: the trainer does not count the model rows spent
        here as the run's cost. Default: nothing."""
        return {}

    def outputs(self, guidance, x: torch.Tensor, captions: Sequence[str]) -> dict:
        """Images the method makes of the final parameters besides their renders, for the run folder: {file name:
        (model-space images (R, ...), the prompt of each row)} (iRFDS: the flow sampled from the inverted noise).
        x: the first chunk's final rows, captions: each row's caption. Default: none."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
