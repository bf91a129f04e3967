"""Classifier Score Distillation (Yu et al.): only the classifier terms, no noise residual.

    g = w1 · (ε(x_t; y) − ε(x_t; ∅)) + w2 · (ε(x_t; ∅) − ε(x_t; y_neg))

With `w2_end` set, w2 moves linearly from w2 to w2_end over `max_steps` (the negative-weight annealing option of the
official CSD code); w1 and w2 may also be any schedule of the step (`scoredist.schedules.Ramp`). w2 = 0 needs no
negative prompt, and then only two conditions are evaluated.
"""

from __future__ import annotations

from scoredist.losses.base import ScoreLoss, noised, norm, predict_conditions
from scoredist.prompts import NFSD_NEGATIVE
from scoredist.schedules import linear_ramp, value_at


class CSD(ScoreLoss):
    def __init__(
        self,
        w1=40.0,
        w2=40.0,
        negative_prompt: str = NFSD_NEGATIVE,
        w2_end: float | None = None,
        max_steps: int = 1000,
        weighting: str = "1-abar",
    ):
        super().__init__(weighting)
        self.w1, self.w2, self.w2_end, self.max_steps = w1, w2, w2_end, max_steps
        self.negative_prompt = negative_prompt

    def w2_at(self, step: int) -> float:
        w2 = value_at(self.w2, step)
        return w2 if self.w2_end is None else linear_ramp(step, 0, self.max_steps, w2, self.w2_end)

    def state_dict(self):
        return {"max_steps": self.max_steps}  # the annealing length the run started with

    def load_state_dict(self, state):
        self.max_steps = state.get("max_steps", self.max_steps)

    def conditioning_texts(self, prompts):
        negative = [("loss.negative_prompt", self.negative_prompt)] if self.w2 != 0 or self.w2_end else []
        return super().conditioning_texts(prompts) + negative

    def direction(self, guidance, x, t, noise, prompts, step):
        b, w2 = len(prompts), self.w2_at(step)
        conditions = [prompts, [""] * b] + ([[self.negative_prompt] * b] if w2 != 0 else [])
        eps = predict_conditions(guidance, noised(guidance, x, t, noise), t, conditions)
        classifier = value_at(self.w1, step) * (eps[0] - eps[1])
        g = classifier + (w2 * (eps[1] - eps[2]) if w2 != 0 else 0)
        return g, {"norm/classifier": norm(classifier), "norm/negative": norm(g - classifier), "csd/w2": w2}
