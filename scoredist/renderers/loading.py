"""A finished (or interrupted) 3D run's renderer (a NeRF or Gaussians), rebuilt from its folder: config.yaml +
checkpoints/last.pt.

Used by scripts/export.py (a mesh) and scripts/render.py (views and a turntable without training).
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from scoredist.checkpoint import checkpoint_path, load_checkpoint, run_folder_of
from scoredist.devices import pick_device
from scoredist.renderers.gaussians import GaussianRenderer
from scoredist.renderers.nerf import NeRFRenderer

SCENE_RENDERERS = ("NeRFRenderer", "GaussianRenderer")


def renderer_from_run(run: str | Path, device: str = "auto") -> tuple[NeRFRenderer | GaussianRenderer, int]:
    """The run's NeRF or Gaussians renderer in eval mode with its last checkpoint loaded, and the step it was saved at.

    `run` is a run folder or one of its .pt files."""
    folder = run_folder_of(run)
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} is not a run folder (no config.yaml); give the folder a train.py run wrote")
    cfg = OmegaConf.load(config_file)
    target = str(cfg.renderer.get("_target_", ""))
    if not target.endswith(SCENE_RENDERERS):
        raise ValueError(
            f"{folder} is not a 3D run (renderer {target or 'unknown'}); run it with renderer=nerf or gaussians"
        )
    state = load_checkpoint(checkpoint_path(run))
    settings = OmegaConf.to_container(cfg.renderer, resolve=True)
    settings["reference_image"] = None  # a training input only: export and render work without the file
    if target.endswith("GaussianRenderer"):
        settings["backend"] = "auto"  # gsplat where it runs (CUDA), else the PyTorch rasteriser: the same Gaussians
    renderer = instantiate(OmegaConf.create(settings))
    where = pick_device(device)
    renderer.use_device(where)
    if any(key.startswith("encoding.encoding.") for key in state["renderer"]) and where.type != "cuda":
        raise ValueError(f"{folder} was trained with tiny-cuda-nn's hash grid: export or render it with --device cuda")
    renderer.load_state_dict(state["renderer"])
    renderer.to(where).eval()
    if "_extra_state" not in state["renderer"]:  # saved before the renderer kept its step: the last step trained
        renderer.at_step(max(int(state["step"]) - 1, 0))
    return renderer, int(state["step"])
