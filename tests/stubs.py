"""Guidance and source models with known outputs, for checking loss formulas by hand."""

from __future__ import annotations

import torch

from scoredist.guidance.base import Guidance, SourceModel, scaled_linear_alphas_cumprod


class StubGuidance(Guidance):
    """ε(x_t; y, t) = a_y · x_t + b_y + c · ᾱ_t, with (a_y, b_y) from a table (unknown prompts: (0.5, 0.0)).

    The c · ᾱ_t term makes the answer depend on the timestep of each row, so a loss that gives a row another row's t,
    or evaluates a DDIM step at the wrong end, gets a different number. Counts calls and rows, so tests can check that a
    loss batches every condition into one call, and records every prompt it was asked about.
    """

    channels, downscale = 3, 1

    def __init__(self, table: dict[str, tuple[float, float]] | None = None, t_coefficient: float = 0.0, **_):
        super().__init__(scaled_linear_alphas_cumprod())
        self.table = dict(table or {})
        self.t_coefficient = t_coefficient
        self.calls, self.rows = 0, 0
        self.prompts_seen: set[str] = set()

    def coefficients(self, prompt: str) -> tuple[float, float]:
        return self.table.get(prompt, (0.5, 0.0))

    def predict_noise(self, x_t, t, prompts):
        assert x_t.shape[0] == t.shape[0] == len(prompts)
        self.calls += 1
        self.rows += len(prompts)
        self.prompts_seen.update(prompts)
        shape = (-1, *([1] * (x_t.dim() - 1)))
        a = torch.tensor([self.coefficients(p)[0] for p in prompts], dtype=x_t.dtype).view(shape)
        b = torch.tensor([self.coefficients(p)[1] for p in prompts], dtype=x_t.dtype).view(shape)
        abar = self.alphas_cumprod[t].to(x_t.dtype).view(shape)
        return (a * x_t + b + self.t_coefficient * abar).float()

    def make_source_model(self) -> SourceModel:
        return LinearSource()

    def sample_shape(self):
        return (3, 8, 8)


class FixedSource(SourceModel):
    """A 'trained' source model that predicts a given tensor, whatever it is asked."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def predict_noise(self, x_t, t, prompts):
        return self.output + 0 * self.dummy


class LinearSource(SourceModel):
    """ε_ψ(x_t; y, t) = w · x_t + v with two trainable scalars; records what every call was given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))
        self.v = torch.nn.Parameter(torch.tensor(-0.2))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []

    def predict_noise(self, x_t, t, prompts):
        self.calls.append((x_t.detach().clone(), t.clone(), list(prompts)))
        return self.w * x_t + self.v
