"""The methods since the paper, trained on the exact shapes prior through the trainer: each ends on the prompt's
component (the nearest component's caption is the prompt's), with its authors' guidance scale and t schedule."""

from __future__ import annotations

import json

import pytest

from scoredist.scripting import compose_train
from scoredist.train import train

# the 16×16 world of 4 azimuths (tests/test_readme.py's WORLD), two samples of "a red cube" from the demo's grey start
WORLD = ["guidance.resolution=16", "guidance.num_azimuths=4", "guidance.elevations=[15.0]", "guidance.supersample=1"]
SMALL = ["samples_per_prompt=2", "trainer.batch_size=2", "trainer.image_every=1000", "trainer.ckpt_every=1000"]
METHODS = {  # the shapes benchmark's rows (conf/benchmark/shapes.yaml), at the step count each needs here
    "sdi": ["loss=sdi", "loss.cfg_form=text", "schedule=decay", "schedule.t_min=0.98", "schedule.t_min_end=0.02",
            "schedule.t_max_end=0.02", "trainer.max_steps=100"],
    "esd": ["loss=esd", "trainer.max_steps=150"],
    "asd": ["loss=asd", "schedule=decay", "schedule.t_min=0.5", "schedule.t_min_end=0.02", "schedule.t_max_end=0.5",
            "trainer.max_steps=150"],
}  # fmt: skip


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_method_ends_on_the_prompts_component(method, tmp_path):
    cfg = compose_train(["+experiment=demo", *WORLD, *SMALL, *METHODS[method]])
    cfg.trainer.run_dir = str(tmp_path / method)
    result = train(cfg)
    records = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["eval"]["nearest_caption"] for r in records] == [["red cube"]] * 2, records
