"""A guidance model with known outputs, for checking loss formulas by hand."""

from __future__ import annotations

import torch

from scoredist.guidance.base import Guidance, SourceModel, scaled_linear_alphas_cumprod


class StubGuidance(Guidance):
    """ε(x_t; y, t) = a_y · x_t + b_y, with (a_y, b_y) from a table (unknown prompts: (0.5, 0.0)).

    Counts calls and rows, so tests can check that a loss batches every condition into one call.
    """

    channels, downscale = 3, 1

    def __init__(self, table: dict[str, tuple[float, float]] | None = None, device="cpu", precision="fp32"):
        super().__init__(scaled_linear_alphas_cumprod())
        self.table = dict(table or {})
        self.calls, self.rows = 0, 0

    def coefficients(self, prompt: str) -> tuple[float, float]:
        return self.table.get(prompt, (0.5, 0.0))

    def predict_noise(self, x_t, t, prompts):
        assert x_t.shape[0] == t.shape[0] == len(prompts)
        self.calls += 1
        self.rows += len(prompts)
        shape = (-1, *([1] * (x_t.dim() - 1)))
        a = torch.tensor([self.coefficients(p)[0] for p in prompts], dtype=x_t.dtype).view(shape)
        b = torch.tensor([self.coefficients(p)[1] for p in prompts], dtype=x_t.dtype).view(shape)
        return (a * x_t + b).float()

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
