"""What a guidance model receives per row (scoredist/prompts.py `Condition`): the text every model read before, with the
row's camera riding along for camera-conditioned priors — on every row of a loss's batched call, ∅ and negative rows
included — while every loss's direction stays bit-identical to the plain-string path."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from scoredist.prompts import Condition, Prompt, cameras_of, conditions, texts
from tests.stubs import StubGuidance
from tests.test_gaussians import CONF

CAMS = [(10.0, 20.0, 2.5, 40.0), (190.0, 35.0, 2.6, 45.0)]
ROWS = [Prompt("a red cube", ", front view", CAMS[0]), Prompt("a red cube", ", back view", CAMS[1])]


def test_a_condition_is_its_text_with_the_camera_riding_along():
    c = Condition("a red cube, front view", CAMS[0])
    assert c == "a red cube, front view" and hash(c) == hash("a red cube, front view") and isinstance(c, str)
    assert c.camera == CAMS[0] and {c: 1}["a red cube, front view"] == 1  # a prompt cache finds it
    assert type(str(c)) is str and str(c) == c  # what is kept beyond the step: the text
    assert texts(ROWS, ", sharp") == ["a red cube, sharp, front view", "a red cube, sharp, back view"]
    assert cameras_of(texts(ROWS)) == CAMS and cameras_of(["plain"]) == [None]


def test_empty_and_negative_rows_carry_the_camera_of_the_render_row_beside_them():
    rows = conditions([ROWS, ["", ""], ["neg", "neg"]])
    assert rows == [*texts(ROWS), "", "", "neg", "neg"]
    assert cameras_of(rows) == CAMS * 3
    assert cameras_of(conditions([["a", "b"], ["", ""]])) == [None] * 4  # 2D rows have no camera


class RecordingGuidance(StubGuidance):
    """The stub prior, recording the rows it was asked about; `plain` turns them into plain strings first."""

    def __init__(self, plain: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.plain, self.seen, self.calls_seen = plain, [], []

    def predict_noise(self, x_t, t, prompts):
        self.seen.extend(prompts)
        self.calls_seen.append(list(prompts))
        return super().predict_noise(x_t, t, [str(p) for p in prompts] if self.plain else prompts)


# dds is left out: it refuses rows with cameras unless given a reference image (tests/test_losses.py covers its text)
LOSSES = ["sds", "nfsd", "csd", "ours", "bridge", "ism", "sdi", "asd"]


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_gives_the_same_direction_and_hands_every_row_its_camera(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"loss={name}", "trainer.max_steps=10"])
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    noise, t = torch.randn(2, 3, 8, 8), torch.tensor([300, 600])
    results = {}
    for plain in (False, True):
        guidance = RecordingGuidance(plain=plain, table={"": (0.4, 0.1)}, t_coefficient=2.0)
        loss = instantiate(cfg.loss)
        loss.attach(guidance, x)
        torch.manual_seed(1)  # the losses' own draws (SDI's η, ASD's Δt) alike in both
        direction, _ = loss.direction(guidance, x, t, noise, ROWS, 0)
        results[plain] = direction
        if not plain:
            assert guidance.seen and all(cam in CAMS for cam in cameras_of(guidance.seen)), (name, guidance.seen)
            for row in guidance.seen:  # a prompt row has its own row's camera (∅ rows: the one beside them, above)
                if "view" in row:
                    assert row.camera == CAMS["back view" in row], (name, row, row.camera)
    assert torch.equal(results[False], results[True]), name
