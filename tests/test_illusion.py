"""Ambiguous images end to end: the checked illusion on the exact shapes prior (scripts/illusion_figure.py), and the
Stable Diffusion overlay on the tiny pipeline (latent and RGB views) and without weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from hydra.utils import instantiate

from scoredist.errors import user_error
from scoredist.train import train
from tests.test_train import config

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_illusion_serves_both_readings_better_than_either_single_prompt_image(tmp_path):
    """+experiment=illusion_shapes (a blue cube upright, a blue cone upside down), shortened to 100 steps of ours
    without the SDS stage (whose unconditional rows cover the whole world and cost 10× more per step; the README
    reports the full experiment): under each view's prompt, the illusion is more likely than the single-prompt image
    of the other prompt under that view."""
    script = load_script("illusion_figure")
    overrides = ["trainer.max_steps=100", "loss.stage_one=null"]
    images, views, base = script.run_set("illusion_shapes", overrides, ["ours"], tmp_path)
    assert [(v.transform, v.prompt) for v in views] == [("identity", "a blue cube"), ("rot180", "a blue cone")]
    prior = instantiate(base.guidance)
    scores = {name: script.view_scores(prior, x, views) for name, x in images.items()}
    illusion, cube, cone = scores["illusion, ours"], scores["only a blue cube, ours"], scores["only a blue cone, ours"]
    print(scores)
    assert illusion[0] > cone[0] + 1.0  # upright, read as "a blue cube": nats per pixel value
    assert illusion[1] > cube[1] + 1.0  # upside down, read as "a blue cone"
    assert script.illusion_check(scores, views, "illusion, ours")
    # the check can fail: the cube-only image does not serve the cone reading better than the cone-only image
    assert not script.illusion_check({**scores, "illusion, ours": cube}, views, "illusion, ours")


def test_log_density_is_the_mixture_density_by_hand():
    """At a component mean, the clean distribution of a one-view prompt is dominated by that Gaussian:
    log p / D = −½ log(2πσ²) + log π_k / D, with π_k the component's share of the prompt's mixture."""
    script = load_script("illusion_figure")
    prior = instantiate(config("guidance=shapes").guidance)
    means, labels = prior.components("a blue cube, sharp")  # the clean views of the caption, equal weights
    x = means[:1]
    expected = (
        -0.5 * torch.log(torch.tensor(2 * torch.pi * prior.variance)) - torch.log(torch.tensor(len(means))) / x.numel()
    )
    got = script.log_density(prior, x, "a blue cube, sharp")
    assert abs(float(got[0]) - float(expected)) < 1e-3
    assert float(script.log_density(prior, x + 0.3, "a blue cube, sharp")[0]) < float(got[0]) - 4  # −½·0.09/σ² = −4.5


def test_sd_illusion_runs_on_the_tiny_pipeline_in_latent_and_rgb_mode(tiny_sd_path, tmp_path):
    for mode in ("latent", "rgb"):
        run = tmp_path / mode
        cfg = config(
            "+experiment=illusion",
            f"guidance.pretrained={tiny_sd_path}",
            f"renderer.mode={mode}",
            "renderer.height=64",
            "renderer.width=64",
            "trainer.max_steps=2",
            run_dir=run,
        )
        result = train(cfg)
        assert result.step == 2 and not result.interrupted
        rows = torch.load(run / "samples" / "00000.pt", weights_only=True)
        assert rows.shape == (2, 4, 8, 8)  # two views of one latent
        if mode == "latent":  # the second view is the rotated latent itself
            assert torch.equal(rows[1], torch.rot90(rows[0], 2, (-2, -1)))
        figure = iio.imread(run / "views.png")
        assert figure.shape[1] > 2 * 64 and figure.std() > 0


def test_sd_illusion_without_weights_fails_clearly(tmp_path):
    cfg = config("+experiment=illusion", f"guidance.pretrained={tmp_path / 'no-such-model'}", run_dir=tmp_path / "r")
    with pytest.raises(Exception) as err:  # Hydra wraps the constructor's error; the CLI prints the inner message
        train(cfg)
    message = user_error(err.value)
    assert message is not None and "this local folder does not exist" in message and "make_tiny_pipeline" in message


def test_a_view_prompt_the_prior_does_not_know_is_refused_before_training(tmp_path):
    from scoredist.train import train
    from tests.test_train import config

    cfg = config("+experiment=illusion_shapes", "renderer.views.1.prompt=a blue dragon", run_dir=tmp_path / "x")
    with pytest.raises(ValueError, match=r"renderer.views\[1\].prompt: unknown word 'dragon'"):
        train(cfg)
    assert not (tmp_path / "x").exists()


def test_the_scripts_helpers_compose_refuse_mistakes_and_stop_on_an_interrupted_run(tmp_path, monkeypatch, capsys):
    """scoredist.scripting (illusion_figure.py, painting2real.py): a typo is a one-line ValueError; a run stopped by
    Ctrl-C ends the script with 130 instead of "samples/00000.pt not found"; a finished run gives its final rows."""
    from types import SimpleNamespace

    import scoredist.train
    from scoredist.scripting import compose_experiment, train_and_load

    cfg = compose_experiment("illusion_shapes", ["seed=3"])
    assert cfg.seed == 3 and cfg.logger._target_.endswith("NoLogger")
    with pytest.raises(ValueError, match="unknown experiment 'illusion_shape'; experiments: .*illusion_shapes"):
        compose_experiment("illusion_shape", [])
    with pytest.raises(ValueError, match=r"cannot compose the config with .*trainer.max_step"):
        compose_experiment("illusion_shapes", ["trainer.max_step=3"])

    def stopped(cfg):
        return SimpleNamespace(interrupted=True, run_dir=Path(cfg.trainer.run_dir))

    monkeypatch.setattr(scoredist.train, "train", stopped)
    with pytest.raises(SystemExit) as exit_info:
        train_and_load(cfg, tmp_path / "run")
    assert exit_info.value.code == 130 and "interrupted while training run" in capsys.readouterr().err

    def finished(cfg):
        (Path(cfg.trainer.run_dir) / "samples").mkdir(parents=True)
        torch.save(torch.ones(2, 3, 4, 4), Path(cfg.trainer.run_dir) / "samples" / "00000.pt")
        return SimpleNamespace(interrupted=False, run_dir=Path(cfg.trainer.run_dir))

    monkeypatch.setattr(scoredist.train, "train", finished)
    assert torch.equal(train_and_load(cfg, tmp_path / "done"), torch.ones(2, 3, 4, 4))
    assert cfg.trainer.run_dir == str(tmp_path / "done")
