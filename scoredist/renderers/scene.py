"""What the 3D renderers (a NeRF, 3D Gaussians) share: one scene seen from random orbit cameras on a schedule of render
sizes, each render with its view phrase, resized to the model's own size; fixed views, a turntable and a mesh at the
end of a run.

A subclass sets, in its __init__, `stages` (`stage_table`), `camera_sampling`, `view_dependent_prompt`, `thresholds`,
`eval_distance`, `eval_fovy`, `turntable_elevation`, `export_mesh` (through `init_scene`) and the reference view
(`init_reference`), and implements `turntable`, `mesh` and `render_reference`.
"""

from __future__ import annotations

import bisect
import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from scoredist.images import grid, save_strip, save_video
from scoredist.renderers.base import Renderer
from scoredist.renderers.cameras import Cameras, orbit_cameras, reachable_view_suffixes, sample_cameras, view_suffix
from scoredist.renderers.mesh import Setting, write_mesh
from scoredist.schedules import value_at


def stage_table(height: int, width: int, batch_size: int, stages: Sequence[Mapping]) -> list[tuple[int, ...]]:
    """(start step, height, width, batch size) of every stage: the first from step 0, then one per `stages` entry
    ({step, height, width, and optionally batch_size, else the previous stage's}), in ascending step order."""
    table = [(0, int(height), int(width), int(batch_size))]
    for stage in stages:
        unknown = set(stage) - {"step", "height", "width", "batch_size"}
        if unknown or not {"step", "height", "width"} <= set(stage):
            raise ValueError(
                f"renderer.stages entries need step, height, width (and optionally batch_size), got {dict(stage)}"
            )
        table.append(
            (int(stage["step"]), int(stage["height"]), int(stage["width"]), int(stage.get("batch_size", table[-1][3])))
        )
    steps = [row[0] for row in table]
    if steps != sorted(set(steps)):
        raise ValueError(f"renderer.stages must start at increasing steps after 0, got {steps[1:]}")
    if any(v <= 0 for row in table for v in row[1:]):
        raise ValueError(f"renderer sizes and batch sizes must be positive, got {[row[1:] for row in table]}")
    return table


def weighted_sum(terms: Sequence[tuple], step: int) -> torch.Tensor | None:
    """Σ w(step)·term over [(weight: a number or a schedule of the step, term)], leaving out the terms weighted 0 at
    this step; None when none is left (nothing to add to the objective)."""
    weighted = [value_at(w, step) * term for w, term in terms if value_at(w, step) != 0]
    return sum(weighted) if weighted else None


def run_setting(run_dir: Path) -> Setting:
    """A mesh setting as the end of a training run advises it: the train.py key for the next run, and scripts/export.py
    for the run just finished (its checkpoint holds the scene, so no retraining is needed)."""
    return lambda key, value: (
        f"renderer.mesh_{key}={value} (or, for this run: python scripts/export.py {run_dir} --{key} {value})"
    )


class SceneRenderer(Renderer):
    outputs_rgb = True
    has_cameras = True
    max_samples = 1  # one scene per run: a prompt list is a sweep (python train.py -m prompt=...,...)

    def init_scene(
        self,
        height: int,
        width: int,
        batch_size: int,
        stages: Sequence[Mapping],
        camera_sampling: dict,
        view_dependent_prompt: bool,
        thresholds: Sequence[float],
        eval_views: int,
        eval_distance: float | None,
        eval_fovy: float | None,
        turntable_views: int,
        turntable_elevation: float,
        turntable_size: int | None,
        export_mesh: str | None,
    ) -> None:
        """The settings every scene renderer has (see NeRFRenderer's Args)."""
        self.stages = stage_table(height, width, batch_size, stages)
        views = int(camera_sampling.get("views_per_group", 1))
        if views < 1 or any(row[3] % views for row in self.stages):
            raise ValueError(
                f"renderer.views_per_group={views} must divide the cameras per step of every stage "
                f"({[row[3] for row in self.stages]})"
            )
        if int(eval_views) <= 0:
            raise ValueError(f"renderer.eval_views must be positive, got {eval_views}")
        self.stage, self.step = 0, 0
        self.model_size: tuple[int, int] | None = None  # set by bind: what the guidance model takes
        self.camera_sampling = {
            key: tuple(value) if key.endswith("_range") else value for key, value in camera_sampling.items()
        }
        self.view_dependent_prompt = bool(view_dependent_prompt)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.eval_views = int(eval_views)
        self.eval_distance, self.eval_fovy = eval_distance, eval_fovy
        self.turntable_views, self.turntable_elevation = int(turntable_views), float(turntable_elevation)
        self.turntable_size = int(turntable_size) if turntable_size else None
        self.export_mesh = export_mesh

    def init_reference(self, image: str | None, camera: Sequence[float], rgb_weight, mask_weight) -> None:
        """Image-to-3D's reference view (Zero123's setting): an RGBA image (alpha: the object's mask) seen from `camera`
        (azimuth, elevation, distance, fovy), which the scene must reproduce there, weighted by rgb_weight and
        mask_weight (numbers or schedules of the step)."""
        self.reference_image = str(image) if image else None
        if len(camera) != 4:
            raise ValueError(f"renderer.reference_camera is (azimuth, elevation, distance, fovy), got {list(camera)}")
        self.reference_camera = tuple(float(c) for c in camera)
        self.reference_rgb_weight, self.reference_mask_weight = rgb_weight, mask_weight
        self._reference_targets: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        if self.reference_image is not None:
            self._reference_on_cpu(8, 8)  # a missing or unreadable file stops the run now, not at its first step

    def reference_cameras(self) -> Cameras:
        return Cameras.from_tensor(torch.tensor([self.reference_camera]))

    def reference_regularization(self, prefix: str) -> tuple[list[tuple], dict]:
        """The reference view's [(weight, term)] and their logs ("<prefix>/reference_rgb", ".../reference_mask") while
        training; nothing in eval mode, without a reference image, or when both weights are 0 at this step (no
        render then)."""
        weights = (self.reference_rgb_weight, self.reference_mask_weight)
        if not self.training or self.reference_image is None or not any(value_at(w, self.step) for w in weights):
            return [], {}
        rgb_term, mask_term = self.reference_terms()
        logs = {f"{prefix}/reference_rgb": rgb_term.detach(), f"{prefix}/reference_mask": mask_term.detach()}
        return list(zip(weights, (rgb_term, mask_term))), logs

    def reference_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """threestudio's zero123 reference view: the render at the reference camera, at this stage's size, against the
        input image on the render's own background (gt = rgb·mask + background·(1 − mask)), and its opacity against
        the mask; both mean squared errors."""
        height, width = self.render_size
        rgb, mask = self.reference_target(height, width)
        render, opacity, background = self.render_reference(height, width)
        return F.mse_loss(render, rgb * mask + background * (1 - mask)), F.mse_loss(opacity, mask)

    def render_reference(self, height: int, width: int) -> tuple[torch.Tensor, ...]:
        """The training render at the reference camera: rgb (1, 3, H, W), opacity (1, 1, H, W) and the background
        behind it (broadcastable to the rgb)."""
        raise NotImplementedError

    def reference_target(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's rgb (1, 3, H, W) and binary mask (alpha > 0.5, threestudio's) at a render size."""
        rgb, mask = self._reference_on_cpu(height, width)
        return rgb.to(self.device), mask.to(self.device)

    def _reference_on_cpu(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        from scoredist.images import read_rgba

        if (height, width) not in self._reference_targets:  # read once per render size
            rgb, alpha = read_rgba(self.reference_image, height, width)
            self._reference_targets[(height, width)] = (rgb, (alpha > 0.5).float())
        return self._reference_targets[(height, width)]

    # ----------------------------------------------------------------------------------------------------------------
    # The schedule
    # ----------------------------------------------------------------------------------------------------------------

    @property
    def render_size(self) -> tuple[int, int]:
        """This stage's render size (H, W)."""
        return self.stages[self.stage][1], self.stages[self.stage][2]

    @property
    def height(self) -> int:  # what the model receives: its own size once bound, else the render size
        return self.model_size[0] if self.model_size else self.render_size[0]

    @property
    def width(self) -> int:
        return self.model_size[1] if self.model_size else self.render_size[1]

    @property
    def batch_size(self) -> int:
        return self.stages[self.stage][3]

    def stage_at(self, step: int) -> int:
        """The stage a step is in; a stage's own start step is in it (threestudio's bisect_right on its milestones)."""
        return bisect.bisect_right([row[0] for row in self.stages], step) - 1

    @classmethod
    def render_sizes(cls, cfg) -> list[tuple[int | None, int | None, int | None]]:
        """Every stage of the resolution schedule: (height, width, cameras per step), the cameras being the rows of
        the one sample (scene) the renderer holds."""
        table = stage_table(cfg.height, cfg.width, cfg.batch_size, cfg.get("stages") or [])
        return [(h, w, b) for _, h, w, b in table]

    # ----------------------------------------------------------------------------------------------------------------
    # Cameras and what the model sees
    # ----------------------------------------------------------------------------------------------------------------

    def to_model_size(self, rgb: torch.Tensor) -> torch.Tensor:
        """Renders resized to the model's own size: bilinear as the paper's code upsamples 64² → 512² for the VAE;
        antialiased when shrinking (a 64² render for the 32² shapes prior)."""
        if self.model_size is None or tuple(rgb.shape[-2:]) == self.model_size:
            return rgb
        shrink = rgb.shape[-2] > self.model_size[0]
        return F.interpolate(rgb, size=self.model_size, mode="bilinear", align_corners=False, antialias=shrink)

    def suffixes(self, cams: Cameras) -> list[str]:
        if not self.view_dependent_prompt:
            return [""] * len(cams)
        return [view_suffix(a, e, *self.thresholds) for a, e in zip(cams.azimuth.tolist(), cams.elevation.tolist())]

    @classmethod
    def view_phrases(cls, cfg) -> list[str]:
        """The view phrases the cameras of this config can get (cameras.reachable_view_suffixes, decided as
        `suffixes` decides them), or [""] without view-dependent prompts. Keys the config leaves out take this
        class's defaults."""
        defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()}
        get = lambda key: cfg.get(key, defaults[key])
        if not get("view_dependent_prompt"):
            return [""]
        keys = ("azimuth_range", "elevation_range", "front_threshold", "back_threshold", "overhead_threshold")
        return reachable_view_suffixes(*(get(key) for key in keys))

    def cameras(self) -> Cameras:
        """This step's cameras: `batch_size` random ones while training; in eval mode the fixed `eval_views` orbit
        from the front (so final images are repeatable)."""
        return sample_cameras(self.batch_size, **self.camera_sampling) if self.training else self.orbit(self.eval_views)

    def orbit(self, views: int) -> Cameras:
        """`views` cameras evenly spaced in azimuth from 0° (front), at turntable_elevation, eval distance and fovy."""
        mid = lambda key: sum(self.camera_sampling[key]) / 2
        fovy = mid("fovy_range") if self.eval_fovy is None else self.eval_fovy
        distance = mid("distance_range") if self.eval_distance is None else self.eval_distance
        if self.eval_distance is None and self.camera_sampling.get("relative_distance"):
            distance = distance / math.tan(math.radians(fovy) / 2)
        return orbit_cameras(views, self.turntable_elevation, distance, fovy)

    # ----------------------------------------------------------------------------------------------------------------
    # End of run
    # ----------------------------------------------------------------------------------------------------------------

    def turntable(self, views: int | None = None, size: int | None = None) -> torch.Tensor:
        """`views` renders (V, 3, S, S) around the object at turntable_elevation, mid-range distance and fovy."""
        raise NotImplementedError

    def mesh(self, resolution=None, threshold=None, min_part=None, setting: Setting | None = None):
        raise NotImplementedError

    def write_views(self, run_dir: Path) -> list[Path]:
        """turntable.mp4 (turntable_views frames, azimuth 0° = front first) and views.png (8 of them side by side)."""
        frames = [grid(view[None]) for view in self.turntable()]  # uint8 (h, w, 3), upsampled to ≥ 128 px
        every = max(1, len(frames) // 8)  # evenly spaced azimuths (every 45° for 24 views)
        written = [save_strip(frames[::every][:8], run_dir / "views.png", max_frames=8)]
        video = save_video(frames, run_dir / "turntable.mp4", fps=8)
        return written + ([video] if video is not None else [])

    def write_mesh(self, run_dir: Path) -> list[Path]:
        """model.<export_mesh>, or nothing (with a warning that says why) when there is no surface to cut."""
        if self.export_mesh is None:
            return []
        try:
            mesh = self.mesh(setting=run_setting(run_dir))
        except ValueError as err:  # a finished run must not fail on its mesh; say why there is none
            warnings.warn(f"no mesh written: {err}", stacklevel=2)
            return []
        return [write_mesh(mesh, run_dir / f"model.{self.export_mesh}")]
