"""Ours (McAllister et al.): describe the source distribution with text, after an SDS first stage.

    stage 1 (step < switch):  the `stage_one` loss (SDS, s = 40 in the paper's 2D setting)
    stage 2 (step ≥ switch):  g = s · (ε(x_t; y + tgt_suffix) − ε(x_t; y + src_suffix))

`source_prompt` replaces y + src_suffix by a whole description of the source (painting-to-real: "an oil painting of a
harbour" against the target "a photo of a harbour"); a view phrase still ends it.

Stage one produces SDS's characteristic artifacts, which the source suffix then describes. The switch is tested with
`>=`, so a run resumed past it is in stage two at once (the reference 3D code tested `==` and never switched on resume).
"""

from __future__ import annotations

from scoredist.losses.base import ScoreLoss, noised, norm, predict_conditions
from scoredist.prompts import SRC_SUFFIX, TGT_SUFFIX, texts, with_caption
from scoredist.schedules import resolve_switch_step, stage_switched, value_at


class Ours(ScoreLoss):
    def __init__(
        self,
        guidance_scale=40.0,
        src_suffix: str = SRC_SUFFIX,
        tgt_suffix: str = TGT_SUFFIX,
        source_prompt: str | None = None,
        stage_one: ScoreLoss | None = None,
        switch_fraction: float | None = 0.5,
        switch_step: int | None = None,
        max_steps: int = 1000,
        weighting: str = "1-abar",
    ):
        super().__init__(weighting)
        self.guidance_scale, self.src_suffix, self.tgt_suffix = guidance_scale, src_suffix, tgt_suffix
        self.source_prompt = source_prompt
        self.stage_one = stage_one
        self.switch = resolve_switch_step(max_steps, switch_fraction, switch_step) if stage_one is not None else 0

    def in_stage_two(self, step: int) -> bool:
        return stage_switched(step, self.switch)

    def weighting_at(self, step: int) -> str:
        return self.weighting if self.in_stage_two(step) else self.stage_one.weighting_at(step)

    def conditioning_texts(self, prompts):
        stage_one = self.stage_one.conditioning_texts(prompts) if self.stage_one is not None else []
        return (
            stage_one
            + [("the target prompt (prompt + loss.tgt_suffix)", text) for text in texts(prompts, self.tgt_suffix)]
            + [(self.source_label, text) for text in self.source_texts(prompts)]
        )

    @property
    def source_label(self) -> str:
        described = self.source_prompt is not None
        return "loss.source_prompt" if described else "the source prompt (prompt + loss.src_suffix)"

    def source_texts(self, prompts) -> list[str]:
        """y_src of every row: caption + src_suffix, or source_prompt in place of both; the row's view phrase last."""
        if self.source_prompt is None:
            return texts(prompts, self.src_suffix)
        return texts(with_caption(prompts, self.source_prompt))

    def direction(self, guidance, x, t, noise, prompts, step):
        if not self.in_stage_two(step):
            g, logs = self.stage_one.direction(guidance, x, t, noise, prompts, step)
            return g, {**logs, "ours/stage": 1}
        tgt, src = texts(prompts, self.tgt_suffix), self.source_texts(prompts)
        x_t = self.start_point(guidance, x, t, noise, src)
        g = value_at(self.guidance_scale, step) * self.bridge(guidance, x_t, t, src, tgt)
        return g, {"norm/bridge": norm(g), "ours/stage": 2}

    def start_point(self, guidance, x, t, noise, src):
        """Where both branches start: the render noised with ε, as in SDS."""
        return noised(guidance, x, t, noise)

    def state_dict(self):
        # the switch step was resolved from the max_steps the run started with; keep it when a resume changes that
        return {"switch": self.switch, "stage_one": self.stage_one.state_dict() if self.stage_one else {}}

    def load_state_dict(self, state):
        self.switch = state.get("switch", self.switch)
        if self.stage_one is not None:
            self.stage_one.load_state_dict(state.get("stage_one", {}))

    def bridge(self, guidance, x_t, t, src, tgt):
        """The single-step bridge ε(x_t; y_tgt) − ε(x_t; y_src), both conditions in one call."""
        eps_tgt, eps_src = predict_conditions(guidance, x_t, t, [tgt, src])
        return eps_tgt - eps_src
