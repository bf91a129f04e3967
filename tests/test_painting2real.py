"""Painting-to-real: the SDEdit helper by hand, the checked shapes-world task (scripts/painting2real.py: SDEdit, DDS
and ours from the cartoon render), its committed input, and the Stable Diffusion overlays on the tiny pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from scoredist.guidance.base import sdedit
from scoredist.guidance.exact.shapes import render_caption
from scoredist.train import train
from tests.stubs import StubGuidance
from tests.test_illusion import load_script as load_named_script
from tests.test_train import config

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    return load_named_script("painting2real")


def test_sdedit_noises_to_t_start_then_takes_ddim_steps_by_hand():
    """ε(x_t; y) = a_y x_t + b_y: one DDIM step from t_start to the clean end is x0 = (z − sqrt(1 − ᾱ) ε̂) / sqrt(ᾱ),
    z = sqrt(ᾱ) x + sqrt(1 − ᾱ) n; with CFG, ε̂ = ε(∅) + s (ε(y) − ε(∅))."""
    guidance = StubGuidance({"y": (0.3, 0.1), "": (0.5, -0.2)})
    x, noise = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    abar = guidance.alphas_cumprod[400].double()
    z = abar.sqrt() * x + (1 - abar).sqrt() * noise
    for scale, eps in ((None, 0.3 * z + 0.1), (4.0, (0.5 * z - 0.2) + 4.0 * ((0.3 * z + 0.1) - (0.5 * z - 0.2)))):
        expected = (z - (1 - abar).sqrt() * eps) / abar.sqrt()
        got = sdedit(guidance, x, ["y", "y"], 400, 1, noise, scale)
        torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)
    assert guidance.rows == 2 + 4  # with CFG both conditions go in one call
    guidance.calls = 0
    sdedit(guidance, x, ["y", "y"], 3, 50, noise)  # more steps than timesteps below t_start: one per timestep
    assert guidance.calls == 4
    with pytest.raises(ValueError, match="t_start must be in"):
        sdedit(guidance, x, ["y", "y"], 1000, 10, noise)


def test_the_committed_painting_is_the_cartoon_render_of_a_bank_view():
    painting = iio.imread(ROOT / "docs" / "painting2real_shapes_input.png")
    fresh = (render_caption("a red cube, cartoon", 45, 15).permute(1, 2, 0) * 255).round().byte().numpy()
    assert np.array_equal(painting, fresh)


def test_ours_and_dds_turn_the_cartoon_into_the_clean_render_and_keep_its_caption(tmp_path):
    """python scripts/painting2real.py, seed 0: the answer is the clean component of the same view; ours and DDS end
    on it, nearer than the input, still a red cube."""
    out = load_script().main(["--figure", str(tmp_path / "row.png"), "--out", str(tmp_path / "p2r.json")])
    metrics = out["seeds"][0]["metrics"]
    print({name: (m.get("nearest_component"), m.get("rms_to_answer")) for name, m in metrics.items()})
    assert metrics["answer"]["component"].startswith("red cube (clean, front view, az 45°, el 15°")
    assert metrics["input"]["nearest_variant"] == "cartoon" and metrics["input"]["rms_to_answer"] > 0.45
    for name in ("DDS", "ours"):
        assert metrics[name]["on_answer"] and metrics[name]["nearest_caption"] == "red cube"
        assert metrics[name]["rms_to_answer"] < 0.1
    assert out["seeds"][0]["check_holds"]
    assert iio.imread(tmp_path / "row.png").shape[1] > 4 * 128  # input, SDEdit, DDS, ours side by side
    strict = lambda token: pytest.fail(f"{token} in --out")  # noqa: E731
    written = json.loads((tmp_path / "p2r.json").read_text(), parse_constant=strict)
    assert written["seeds"]["0"]["metrics"]["ours"] == metrics["ours"] and written["seeds"]["0"]["check_holds"]


def test_check_fails_when_a_row_changes_the_caption():
    script = load_script()
    row = {"nearest_caption": "red cube", "on_answer": True, "rms_to_answer": 0.05}
    metrics = {"input": {**row, "on_answer": False, "rms_to_answer": 0.5}, "DDS": row, "ours": row}
    assert script.painting2real_check(metrics)
    assert not script.painting2real_check({**metrics, "ours": {**row, "nearest_caption": "orange cube"}})
    assert not script.painting2real_check({**metrics, "DDS": {**row, "rms_to_answer": 0.6}})


def test_sd_painting2real_rows_run_on_the_tiny_pipeline(tiny_sd_path, tmp_path):
    painting = tmp_path / "painting.png"
    iio.imwrite(painting, (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    out = load_script().main(
        [
            "--experiment",
            "painting2real",
            "--sdedit-steps",
            "2",
            "--figure",
            str(tmp_path / "row.png"),
            "--",
            f"input={painting}",
            f"guidance.pretrained={tiny_sd_path}",
            "renderer.height=64",
            "renderer.width=64",
            "trainer.max_steps=2",
            "trainer.device=cpu",
        ]
    )
    assert out == {"seeds": {}}  # no exact answer on Stable Diffusion: the figure is the result
    figure = iio.imread(tmp_path / "row.png")
    assert figure.shape[1] > 4 * 64 and figure.std() > 0


def test_sd_painting2real_needs_an_input(tiny_sd_path, tmp_path):
    cfg = config(
        "+experiment=painting2real",
        f"guidance.pretrained={tiny_sd_path}",
        "renderer.height=64",
        "renderer.width=64",
        run_dir=tmp_path / "r",
    )
    with pytest.raises(ValueError, match=r"renderer.init is not set.*input=PATH"):
        train(cfg)
