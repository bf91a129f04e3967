"""What the application scripts (scripts/illusion_figure.py, scripts/painting2real.py, the benchmark) share: a train
config composed from conf/ outside a Hydra app, a run trained into a folder with its final sample read back, and
their figure and --out files.

A mistake on the command line (an unknown experiment, an override Hydra cannot apply) is a ValueError with Hydra's
one-line message, so `scoredist.errors.cli_errors` prints it without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_train(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with `overrides` (as train.py would compose it, without the hydra node)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, OverrideParseException

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    except (ConfigCompositionException, OverrideParseException) as e:
        raise ValueError(f"cannot compose the config with {list(overrides)}: {str(e).splitlines()[0]}") from e


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_experiment(experiment: str, overrides: list[str]) -> DictConfig:
    """The train config of `+experiment=<experiment>` with `overrides`, no tracker (logger=none)."""
    if experiment not in experiments():
        raise ValueError(f"unknown experiment {experiment!r}; experiments: {', '.join(experiments())}")
    return compose_train([f"+experiment={experiment}", "logger=none", *overrides])


def train_and_load(cfg: DictConfig, run_dir: Path) -> torch.Tensor:
    """Train `cfg` into run_dir and return sample 0's final rows in model space (samples/00000.pt), e.g. (V, 3, R, R)
    for V views. A run stopped by Ctrl-C / SIGTERM ends the script with exit status 130 (not a missing-file error)."""
    from scoredist.train import train

    cfg.trainer.run_dir = str(run_dir)
    if train(cfg).interrupted:
        print(f"interrupted while training {run_dir.name}: nothing written", file=sys.stderr)
        raise SystemExit(130)
    return torch.load(Path(run_dir) / "samples" / "00000.pt", weights_only=True)


def write_figure(path: Path, image: np.ndarray) -> None:
    """A figure (H, W, 3) uint8 as an image file, its folder created; says where."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)
    print(f"wrote {path}")


def write_json(path: Path, data) -> None:
    """A script's numbers (--out) as strict JSON: a non-finite value is null (`scoredist.runs.finite_or_none`)."""
    from scoredist.runs import finite_or_none, json_text

    path.write_text(json_text(finite_or_none(data), indent=2) + "\n")
