"""3D Gaussian splatting for text-to-3D (DreamGaussian's setting): N anisotropic Gaussians rendered from random orbit
cameras, each render carrying its view phrase, as the NeRF's.

A Gaussian k has a centre μ_k, log-scales, a rotation quaternion (w, x, y, z), an opacity sigmoid(logit_k) and a colour
as spherical harmonics of degree 0 (RGB = 0.2821 · f_dc + 0.5, 3DGS's convention) or 1 (view-dependent). Images come
from one of two rasterisers of the same model (`backend`):

- gsplat (CUDA; `pip install gsplat`, compiled on first use), its `rasterization` with every camera of the step in one
  call;
- torch (scoredist.renderers.splatting): the same projection, cut-offs and compositing in pure PyTorch, on any device
  — the CPU path, and the fallback of a machine whose gsplat build fails.

`auto` takes gsplat on CUDA when it imports, else torch. The image is clamped to [0, 1] (DreamGaussian) and resized to
the model's own size (bilinear, as the NeRF's).

Density control (scoredist.renderers.densify) runs after each optimizer step (`after_update`): view-space gradient
statistics every step, clone/split/prune every `densify_every` steps inside [densify_from, densify_until], opacity reset
every `opacity_reset_every` steps; the centres' learning rate decays exponentially (3DGS's get_expon_lr_func, without
its delay) from position_lr to position_lr_final over position_lr_steps. A checkpoint holds however many Gaussians
there are, their optimizer moments and statistics, and a resume continues bit for bit.

Defaults are DreamGaussian's text-to-3D settings (dreamgaussian/dreamgaussian configs/text.yaml, gs_renderer.py) with
our scene frame (y up, cameras at distance 2.5 looking at the origin); where they differ it is said in
conf/renderer/gaussians.yaml.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scoredist.renderers.base import ModelSpace, Render
from scoredist.renderers.cameras import (
    Cameras,
    camera_axes,
)
from scoredist.renderers.densify import DensityStats, edit_parameters, plan, reset_state_rows, split_children
from scoredist.renderers.gaussian_ply import read_ply, sh_to_rgb, write_ply
from scoredist.renderers.mesh import FORMATS, Setting, export_flag, extract_mesh
from scoredist.renderers.scene import SceneRenderer, weighted_sum
from scoredist.renderers.shading import Background
from scoredist.renderers.sketch import resolve_sketch_path
from scoredist.renderers.splatting import composite, covariances, footprint_radii, project, visible

SH_C1 = 0.4886025119029199  # the degree-1 real spherical harmonics' constant (3DGS's sh_utils)
PARAMETERS = ("means", "log_scales", "quats", "logit_opacities", "sh_dc", "sh_rest")
BACKENDS = ("auto", "torch", "gsplat")


def gsplat_available() -> bool:
    """gsplat imports (it compiles its CUDA kernels only on first use: see `gsplat_builds`)."""
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def gsplat_builds() -> bool:
    """gsplat's CUDA kernels load (built on first use from its sources, which needs nvcc; cached afterwards). Only
    asked on a CUDA machine: elsewhere there is nothing to build."""
    if not gsplat_available():
        return False
    try:
        from gsplat.cuda._backend import _C
    except Exception:  # a failed build raises from the import
        return False
    return _C is not None


def camera_matrices(cams: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera matrices (B, 4, 4) in OpenCV axes (x right, y down, z forward) and pixel intrinsics (B, 3, 3)
    of the same pinhole `camera_rays` traces: f = (H / 2) / tan(fovy / 2) on both axes, principal point at the
    centre, so a Gaussian lands on the pixel whose ray passes through it. float32."""
    eye, right, up, forward = camera_axes(cams)
    rot = torch.stack([right, -up, forward], dim=1)  # rows: the camera's axes in world coordinates
    view = torch.eye(4, dtype=torch.float64).repeat(len(cams), 1, 1)
    view[:, :3, :3] = rot
    view[:, :3, 3] = -(rot @ eye[..., None])[..., 0]
    focal = (height / 2) / torch.tan(torch.deg2rad(cams.fovy.double()) / 2)
    K = torch.zeros(len(cams), 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = focal, focal, width / 2, height / 2, 1.0
    return view.float(), K.float()


def expon_lr(step: int, start: float, end: float, steps: int) -> float:
    """3DGS's get_expon_lr_func without the delay (DreamGaussian calls it without one): log-linear from `start` at
    step 0 to `end` at `steps`, constant after."""
    t = min(max(step / max(steps, 1), 0.0), 1.0)
    if start <= 0 or end <= 0:
        return start if t < 1 else end
    return math.exp(math.log(start) * (1 - t) + math.log(end) * t)


def ball_points(n: int, radius: float) -> torch.Tensor:
    """n points uniform in the ball of this radius (DreamGaussian's initialisation: r = radius · ∛u), from torch's
    global RNG."""
    phi = torch.rand(n) * 2 * math.pi
    cos_theta = torch.rand(n) * 2 - 1
    r = radius * torch.rand(n).pow(1 / 3)
    sin_theta = (1 - cos_theta**2).clamp_min(0).sqrt()
    return torch.stack([r * sin_theta * phi.cos(), r * sin_theta * phi.sin(), r * cos_theta], dim=1)


def surface_points(path: str, n: int) -> torch.Tensor:
    """n points of a shape file: area-weighted samples of a mesh's surface, or (a point cloud) n of its points drawn
    with replacement; from torch's global RNG."""
    import trimesh

    loaded = trimesh.load(resolve_sketch_path(path), force=None)
    if isinstance(loaded, trimesh.Scene):
        loaded = loaded.to_geometry() if hasattr(loaded, "to_geometry") else loaded.dump(concatenate=True)
    vertices = torch.as_tensor(loaded.vertices, dtype=torch.float32)
    faces = getattr(loaded, "faces", None)
    if faces is None or len(faces) == 0:
        if len(vertices) == 0:
            raise ValueError(f"renderer.init_shape: {path} has no points")
        return vertices[torch.randint(len(vertices), (n,))]
    tri = vertices[torch.as_tensor(faces, dtype=torch.long)]  # (F, 3, 3)
    areas = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    pick = torch.multinomial(areas / areas.sum(), n, replacement=True)
    u, v = torch.rand(n, 1), torch.rand(n, 1)
    flip = (u + v) > 1  # fold the square onto the triangle
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    t = tri[pick]
    return t[:, 0] + u * (t[:, 1] - t[:, 0]) + v * (t[:, 2] - t[:, 0])


def neighbour_scales(points: torch.Tensor, k: int = 3, chunk: int = 4096) -> torch.Tensor:
    """(N,) the root mean squared distance of each point to its k nearest others (3DGS's distCUDA2, at least 1e-7
    squared), the initial scale of a Gaussian there."""
    out = []
    for part in points.split(chunk):
        d2 = torch.cdist(part, points).pow(2)
        d2 = d2.topk(min(k + 1, points.shape[0]), largest=False).values[:, 1:]  # without the point itself
        out.append(d2.mean(-1).clamp_min(1e-7).sqrt() if d2.shape[1] else torch.ones(part.shape[0]))
    return torch.cat(out)


class GaussianRenderer(SceneRenderer):
    """3D Gaussians rendered from `batch_size` random cameras per step: x (B, 3, H, W) in [0, 1] at the model's size.

    Args:
        height, width, batch_size, stages: the render size schedule, as the NeRF's (DreamGaussian: 128², 256² from
            30 % and 512² from 60 % of the run).
        backend: auto | torch | gsplat (module docstring).
        num_points, init_radius: the initial Gaussians, uniform in a ball (DreamGaussian: 5000 in radius 0.5).
        init_shape: a mesh (surface samples), a point cloud, or a 3DGS .ply (its Gaussians as they are) to start
            from instead (a path, or a name in assets/sketches/).
        init_opacity: initial opacity (3DGS: 0.1). sh_degree: 0 (RGB) or 1.
        background, background_aug: a solid RGB colour behind the Gaussians; the probability of a random solid colour
            per training step instead.
        azimuth_range, elevation_range, distance_range, fovy_range, view_dependent_prompt, front_threshold,
            back_threshold, overhead_threshold, views_per_group, relative_distance: cameras and view phrases, as the
            NeRF's.
        position_lr, position_lr_final, position_lr_steps: the centres' exponential rate schedule (DreamGaussian:
            0.001 × spatial_lr_scale 10 = 0.01 → 0.0002 over 300 steps).
        feature_lr, opacity_lr, scaling_lr, rotation_lr: the other groups' constant rates (f_rest at feature_lr / 20).
        densify_from, densify_until, densify_every: steps (1-based, as 3DGS counts them) of density control;
        densify_grad_threshold, percent_dense, scene_extent, split_into, min_opacity, max_world_size,
            max_screen_fraction: its rule (scoredist.renderers.densify); max_gaussians: no densification beyond this.
        opacity_reset_every: every this many steps inside the window, opacities above 0.01 become 0.01 (null: never).
        reference_image, reference_camera, reference_rgb_weight, reference_mask_weight: image-to-3D's reference view,
            as the NeRF's (its colour against the image on the background, its alpha against the mask).
        eval_views, eval_distance, eval_fovy, turntable_views, turntable_elevation, turntable_size: the end of run
            views, as the NeRF's.
        export_ply: write gaussians.ply (3DGS layout) at the end of a run.
        export_mesh, mesh_resolution, mesh_threshold, mesh_min_part, mesh_bound: a mesh of the density field
            Σ_k o_k exp(−½ dᵀΣ_k⁻¹d) by marching cubes over [−mesh_bound, mesh_bound]³ (DreamGaussian's threshold 1).
    """

    def __init__(
        self,
        height: int = 128,
        width: int = 128,
        batch_size: int = 1,
        stages: Sequence[Mapping] = (),
        backend: str = "auto",
        num_points: int = 5000,
        init_radius: float = 0.5,
        init_shape: str | None = None,
        init_opacity: float = 0.1,
        sh_degree: int = 0,
        background: Sequence[float] = (1.0, 1.0, 1.0),
        background_aug: float = 0.0,
        azimuth_range: Sequence[float] = (-180.0, 180.0),
        elevation_range: Sequence[float] = (-30.0, 30.0),
        distance_range: Sequence[float] = (2.5, 2.5),
        fovy_range: Sequence[float] = (49.1, 49.1),
        views_per_group: int = 1,
        relative_distance: bool = False,
        view_dependent_prompt: bool = True,
        front_threshold: float = 45.0,
        back_threshold: float = 45.0,
        overhead_threshold: float = 60.0,
        position_lr: float = 0.01,
        position_lr_final: float = 0.0002,
        position_lr_steps: int = 300,
        feature_lr: float = 0.01,
        opacity_lr: float = 0.05,
        scaling_lr: float = 0.005,
        rotation_lr: float = 0.005,
        densify_from: int = 0,
        densify_until: int = 3000,
        densify_every: int = 50,
        densify_grad_threshold: float = 0.01,
        percent_dense: float = 0.01,
        scene_extent: float = 4.0,
        split_into: int = 2,
        min_opacity: float = 0.01,
        max_world_size: float | None = 0.4,
        max_screen_fraction: float | None = None,
        max_gaussians: int = 500_000,
        opacity_reset_every: int | None = 700,
        reference_image: str | None = None,
        reference_camera: Sequence[float] = (0.0, 0.0, 2.5, 49.1),
        reference_rgb_weight=0.0,
        reference_mask_weight=0.0,
        eval_views: int = 8,
        eval_distance: float | None = None,
        eval_fovy: float | None = None,
        turntable_views: int = 24,
        turntable_elevation: float = 15.0,
        turntable_size: int | None = None,
        export_ply: bool = True,
        export_mesh: str | None = "obj",
        mesh_resolution: int = 128,
        mesh_threshold: float = 1.0,
        mesh_min_part: float = 0.01,
        mesh_bound: float = 1.0,
    ):
        super().__init__()
        self.init_scene(
            height,
            width,
            batch_size,
            stages,
            dict(
                azimuth_range=azimuth_range,
                elevation_range=elevation_range,
                distance_range=distance_range,
                fovy_range=fovy_range,
                views_per_group=views_per_group,
                relative_distance=relative_distance,
            ),
            view_dependent_prompt,
            (front_threshold, back_threshold, overhead_threshold),
            eval_views,
            eval_distance,
            eval_fovy,
            turntable_views,
            turntable_elevation,
            turntable_size,
            export_mesh,
        )
        if backend not in BACKENDS:
            raise ValueError(f"renderer.backend must be one of {BACKENDS}, got {backend!r}")
        if int(sh_degree) not in (0, 1):
            raise ValueError(f"renderer.sh_degree must be 0 or 1, got {sh_degree}")
        if isinstance(background, str):
            raise ValueError(f"renderer.background must be an RGB triple for Gaussians, got {background!r}")
        if export_mesh is not None and export_mesh not in FORMATS:
            raise ValueError(f"renderer.export_mesh must be one of {FORMATS} or null, got {export_mesh!r}")
        for name, value in (("num_points", num_points), ("densify_every", densify_every)):
            if int(value) <= 0:
                raise ValueError(f"renderer.{name} must be positive, got {value}")
        if int(split_into) < 2:
            raise ValueError(f"renderer.split_into must be at least 2, got {split_into}")
        self.backend_choice, self.backend = backend, "gsplat" if backend == "gsplat" else "torch"
        self.num_points, self.init_radius, self.init_shape = int(num_points), float(init_radius), init_shape
        self.init_opacity, self.sh_degree = float(init_opacity), int(sh_degree)
        self.background = Background(tuple(background), background_aug)
        self.init_reference(reference_image, reference_camera, reference_rgb_weight, reference_mask_weight)
        self.position_lrs = (float(position_lr), float(position_lr_final), int(position_lr_steps))
        self.rates = {
            "means": expon_lr(1, float(position_lr), float(position_lr_final), int(position_lr_steps)),  # iteration 1
            "sh_dc": float(feature_lr),
            "sh_rest": float(feature_lr) / 20,
            "logit_opacities": float(opacity_lr),
            "log_scales": float(scaling_lr),
            "quats": float(rotation_lr),
        }
        self.densify_window = (int(densify_from), int(densify_until), int(densify_every))
        self.rule = dict(
            grad_threshold=float(densify_grad_threshold),
            percent_dense=float(percent_dense),
            extent=float(scene_extent),
            min_opacity=float(min_opacity),
            max_world_size=None if max_world_size is None else float(max_world_size),
            max_screen_fraction=None if max_screen_fraction is None else float(max_screen_fraction),
        )
        self.split_into, self.max_gaussians = int(split_into), int(max_gaussians)
        self.opacity_reset_every = int(opacity_reset_every) if opacity_reset_every else None
        self.export_ply = bool(export_ply)
        self.mesh_resolution, self.mesh_threshold = int(mesh_resolution), float(mesh_threshold)
        self.mesh_min_part, self.mesh_bound = float(mesh_min_part), float(mesh_bound)
        rest = (self.sh_degree + 1) ** 2 - 1
        shapes = {"means": 3, "log_scales": 3, "quats": 4, "logit_opacities": None, "sh_dc": 3}
        for name, width_ in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(0, width_) if width_ else torch.zeros(0)))
        self.sh_rest = nn.Parameter(torch.zeros(0, rest, 3)) if rest else None
        self.stats = DensityStats()
        # this step's views for density control: (projected centres, their index in it or None, radii, W, H) — gsplat
        # gives one (C, N, 2) tensor for all views, whose rows have no gradient of their own
        self.last_views: list[tuple[torch.Tensor, int | None, torch.Tensor, int, int]] = []

    # ----------------------------------------------------------------------------------------------------------------
    # The Gaussians
    # ----------------------------------------------------------------------------------------------------------------

    def params(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in PARAMETERS if getattr(self, name) is not None}

    @property
    def count(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @torch.no_grad()
    def initialise(self) -> None:
        """The initial Gaussians (class docstring), from torch's global RNG."""
        if self.init_shape is not None and str(self.init_shape).endswith(".ply") and _is_gaussian_ply(self.init_shape):
            loaded = read_ply(resolve_sketch_path(self.init_shape))
            values = {k: loaded[k] for k in ("means", "log_scales", "quats", "logit_opacities", "sh_dc")}
            rest = loaded["sh_rest"]
            if self.sh_rest is not None:
                width = self.sh_rest.shape[1]
                values["sh_rest"] = torch.zeros(len(values["means"]), width, 3)
                if rest is not None:
                    values["sh_rest"][:, : min(width, rest.shape[1])] = rest[:, :width]
        else:
            n = self.num_points
            means = ball_points(n, self.init_radius) if self.init_shape is None else surface_points(self.init_shape, n)
            values = {
                "means": means,
                "log_scales": neighbour_scales(means).log()[:, None].repeat(1, 3),
                "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
                "logit_opacities": torch.full((n,), math.log(self.init_opacity / (1 - self.init_opacity))),
                "sh_dc": torch.rand(n, 3) / 255,  # DreamGaussian's colours: SH ≈ 0, a mid grey
            }
            if self.sh_rest is not None:
                values["sh_rest"] = torch.zeros(n, self.sh_rest.shape[1], 3)
        for name, value in values.items():
            getattr(self, name).data = value.float().to(self.device)
        self.stats.reset(self.count, self.device)

    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.logit_opacities)

    def colours(self, eye: torch.Tensor) -> torch.Tensor:
        """(N, 3) RGB of every Gaussian seen from the camera centre eye (3,): degree 0 is view-independent; degree 1
        adds 3DGS's −C1·y·f1 + C1·z·f2 − C1·x·f3 of the unit direction from the camera to the Gaussian."""
        rgb = sh_to_rgb(self.sh_dc)
        if self.sh_rest is not None:
            d = F.normalize(self.means - eye.to(self.means), dim=-1)
            f = self.sh_rest
            rgb = rgb + SH_C1 * (-d[:, 1:2] * f[:, 0] + d[:, 2:3] * f[:, 1] - d[:, 0:1] * f[:, 2])
        return rgb.clamp_min(0.0)  # 3DGS clamps below at 0; the image is clamped to [0, 1] after compositing

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint holds as many Gaussians as the run had when it was written: take its sizes, then its values
        for name, param in self.params().items():
            if prefix + name in state_dict:
                param.data = torch.empty_like(state_dict[prefix + name], device=param.device)
        state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> dict:
        return {"step": int(self.step)}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state["step"])
        self.stage = self.stage_at(self.step)

    # ----------------------------------------------------------------------------------------------------------------
    # The schedule and the trainer's hooks
    # ----------------------------------------------------------------------------------------------------------------

    def at_step(self, step: int) -> None:
        self.step, self.stage = step, self.stage_at(step)

    def bind(self, space: ModelSpace, seeds: Sequence[int] = (0,)) -> None:
        """The initial Gaussians come from torch's global RNG, which the trainer seeds with the run's seed; on CUDA
        backend=auto takes gsplat when its kernels build."""
        self.model_size = tuple(space.native_size)
        self.use_device(space.device)
        self.initialise()

    def use_device(self, device) -> None:
        if self.backend_choice == "auto":
            self.backend = "torch"
            if torch.device(device).type == "cuda":
                if gsplat_builds():
                    self.backend = "gsplat"
                else:
                    warnings.warn(
                        "renderer.backend=auto: gsplat is not installed or its CUDA kernels did not build; rendering "
                        "with the pure-PyTorch rasteriser (slower). pip install -e '.[gsplat]' needs nvcc matching "
                        "torch.version.cuda",
                        stacklevel=2,
                    )
        if self.backend == "gsplat" and torch.device(device).type != "cuda":
            raise ValueError("renderer.backend=gsplat needs CUDA: use renderer.backend=torch (or auto) on the CPU")

    def param_groups(self, lr: float) -> list[dict]:
        """One group per parameter at its own rate (3DGS's); `lr` is not used."""
        return [{"params": [p], "lr": self.rates[name], "name": name} for name, p in self.params().items()]

    def after_update(self, step: int, optimizer) -> None:
        """After step `step`'s optimizer update: record this step's view-space gradients, densify / prune / reset
        opacities on the schedule, and set the centres' rate for the next step."""
        views = len(self.last_views)
        for means2d, index, radii, width, height in self.last_views if self.training else ():
            if means2d.grad is not None:
                grad = means2d.grad if index is None else means2d.grad[index]
                # × views: the objective averages a sample over its cameras; undone as gsplat's strategy does, so the
                # threshold means the same whatever the cameras per step
                self.stats.add(grad * views, radii, width, height)
        self.last_views = []
        first, last, every = self.densify_window
        n = step + 1  # 3DGS and DreamGaussian count iterations from 1: this was iteration n
        if first <= n <= last and n % every == 0:
            self.densify(optimizer)
        if self.opacity_reset_every and first <= n <= last and n % self.opacity_reset_every == 0:
            self.reset_opacities(optimizer)
        for group in optimizer.param_groups:
            if group.get("name") == "means":  # the rate of iteration n + 1, as DreamGaussian sets it before a step
                group["lr"] = expon_lr(n + 1, *self.position_lrs)

    @torch.no_grad()
    def densify(self, optimizer=None) -> None:
        """One clone/split/prune (scoredist.renderers.densify); growth stops at max_gaussians."""
        max_scales = self.log_scales.exp().amax(-1)
        rule = plan(self.stats.mean_grads(), max_scales, self.opacities(), self.stats.screen, **self.rule)
        grown = len(rule.clone) + (self.split_into - 1) * len(rule.split)
        if self.count + grown > self.max_gaussians:
            rule = plan(self.stats.mean_grads(), max_scales, self.opacities(), self.stats.screen, **self.rule,
                        densify=False)  # fmt: skip
        params = self.params()
        children_means, children_scales = split_children(
            self.means, self.log_scales, self.quats, rule.split, self.split_into
        )
        appended = {}
        for name, p in params.items():
            repeated = p.data[rule.split].repeat(self.split_into, *([1] * (p.dim() - 1)))
            appended[name] = torch.cat([p.data[rule.clone], repeated])
        appended["means"] = torch.cat([self.means.data[rule.clone], children_means])
        appended["log_scales"] = torch.cat([self.log_scales.data[rule.clone], children_scales])
        if self.rule["max_world_size"] is not None:  # children still too large go, as 3DGS's pruning after the split
            small = appended["log_scales"].exp().amax(-1) <= self.rule["max_world_size"]
            appended = {name: value[small] for name, value in appended.items()}
        edit_parameters(self, list(params), rule.keep, appended, optimizer)
        self.stats.reset(self.count, self.device)

    @torch.no_grad()
    def reset_opacities(self, optimizer=None) -> None:
        """3DGS's reset_opacity: opacities above 0.01 become 0.01, their Adam moments zero."""
        self.logit_opacities.data = torch.logit(self.opacities().clamp_max(0.01))
        if optimizer is not None:
            reset_state_rows(self.logit_opacities, optimizer)

    # ----------------------------------------------------------------------------------------------------------------
    # Rendering
    # ----------------------------------------------------------------------------------------------------------------

    def render(
        self, cams: Cameras, height: int, width: int, keep_stats: bool = False, background: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Cameras (B) → RGB (B, 3, H, W) in [0, 1] and alpha (B, 1, H, W). keep_stats: remember each view's
        projected centres (with their gradient) and radii for density control. background: the RGB (3,) behind the
        Gaussians (None: the renderer's, a random colour with probability background_aug while training)."""
        view, K = camera_matrices(cams, height, width)
        view, K = view.to(self.device), K.to(self.device)
        eyes = torch.linalg.inv(view)[:, :3, 3]
        if background is None:
            background = self.background(torch.zeros(1, 3, device=self.device))[0]
        if self.sh_rest is None:  # degree 0: the same colours from every camera
            colours = self.colours(eyes[0]).expand(len(cams), -1, -1)
        else:
            colours = torch.stack([self.colours(eye) for eye in eyes])  # (B, N, 3)
        if self.backend == "gsplat":
            rgb, alpha, means2d, radii = self._rasterize_gsplat(view, K, colours, background, height, width)
        else:
            rgb, alpha, means2d, radii = self._rasterize_torch(view, K, colours, background, height, width)
        if keep_stats:
            shared = self.backend == "gsplat"  # one (C, N, 2) tensor: its gradient is read per view at the end
            self.last_views = [
                (means2d, i, radii[i], width, height) if shared else (means2d[i], None, radii[i], width, height)
                for i in range(len(cams))
            ]
        return rgb.clamp(0, 1), alpha

    def _rasterize_torch(self, view, K, colours, background, height, width):
        scales, opacities = self.log_scales.exp(), self.opacities()
        covs = covariances(self.quats, scales)
        images, alphas, centres, radii = [], [], [], []
        for i in range(view.shape[0]):
            means2d, conics, depths, valid = project(self.means, covs, view[i], K[i], width, height)
            if means2d.requires_grad:
                means2d.retain_grad()
            r = footprint_radii(conics, opacities)  # once: composite's band selection and density control's sizes
            image, alpha = composite(
                means2d, conics, colours[i], opacities, depths, valid, width, height, background, radii=r
            )
            shown = visible(means2d, r, valid, width, height)
            images.append(image.permute(2, 0, 1))
            alphas.append(alpha[None])
            centres.append(means2d)
            radii.append(torch.where(shown, r.amax(-1), torch.zeros_like(r[:, 0])))
        return torch.stack(images), torch.stack(alphas), centres, radii

    def _rasterize_gsplat(self, view, K, colours, background, height, width):
        from gsplat import rasterization

        rgb, alpha, meta = rasterization(
            self.means,
            self.quats,
            self.log_scales.exp(),
            self.opacities(),
            colours,
            view,
            K,
            width,
            height,
            near_plane=0.01,
            eps2d=0.3,
            packed=False,
            backgrounds=background.expand(view.shape[0], 3),
        )
        means2d = meta["means2d"]  # (C, N, 2), pixels
        if means2d.requires_grad:
            means2d.retain_grad()
        radii = meta["radii"]
        if radii.dim() == 3:  # gsplat ≥ 1.5: per-axis radii, visible where both are positive (its strategy's test)
            radii = torch.where((radii > 0).all(-1), radii.amax(-1), torch.zeros_like(radii[..., 0]))
        radii = radii.float()
        return rgb.permute(0, 3, 1, 2), alpha.permute(0, 3, 1, 2), means2d, radii

    def forward(self) -> Render:
        """B random cameras → x (B, 3, H, W) at the model's size, their view phrases; in eval mode the fixed
        `eval_views` orbit from the front (as the NeRF's)."""
        cams = self.cameras()
        keep = self.training and torch.is_grad_enabled()
        rgb, alpha = self.render(cams, *self.render_size, keep_stats=keep)
        logs = {
            "gaussians/count": float(self.count),
            "gaussians/mean_opacity": self.opacities().mean().detach() if self.count else 0.0,
            "gaussians/coverage": alpha.mean().detach(),
        }
        terms, reference_logs = self.reference_regularization("gaussians")
        logs.update(reference_logs)
        return Render(
            x=self.to_model_size(rgb),
            samples=[0] * len(cams),
            views=self.suffixes(cams),
            cameras=cams.as_tensor(),
            regularization=weighted_sum(terms, self.step),
            logs=logs,
        )

    def render_reference(self, height: int, width: int) -> tuple[torch.Tensor, ...]:
        background = self.background(torch.zeros(1, 3, device=self.device))[0]
        rgb, alpha = self.render(self.reference_cameras(), height, width, background=background)
        return rgb, alpha, background.view(1, 3, 1, 1)

    # ----------------------------------------------------------------------------------------------------------------
    # End of run
    # ----------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def turntable(self, views: int | None = None, size: int | None = None) -> torch.Tensor:
        size = size or self.turntable_size or self.render_size[0]
        cams = self.orbit(views or self.turntable_views)
        rows = cams.as_tensor()
        frames = [self.render(Cameras.from_tensor(rows[i : i + 1]), size, size)[0] for i in range(len(cams))]
        return torch.cat(frames).cpu()

    @torch.no_grad()
    def splat_field(self, points: torch.Tensor, blocks: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """At points (M, 3): the density (M,) Σ_k w_k, w_k = o_k exp(−½ (x − μ_k)ᵀ Σ_k⁻¹ (x − μ_k)) (DreamGaussian's
        mesh field), and Σ_k w_k c_k (M, 3) with c_k the Gaussians' view-independent colours. As in DreamGaussian's
        extract_fields, space is cut into blocks³ and each block's points meet only the Gaussians whose 3σ sphere
        reaches the block (what lies beyond adds at most o·e^−4.5 each)."""
        points = points.to(self.device)
        precision = torch.linalg.inv(covariances(self.quats, self.log_scales.exp()).double()).float()
        reach = 3 * self.log_scales.exp().amax(-1)[:, None]
        opacities, colour = self.opacities(), sh_to_rgb(self.sh_dc).clamp(0, 1)
        lo, hi = points.amin(0), points.amax(0)
        cell = ((points - lo) / (hi - lo).clamp_min(1e-9) * blocks).long().clamp(0, blocks - 1)
        block_of = (cell[:, 0] * blocks + cell[:, 1]) * blocks + cell[:, 2]
        order = torch.argsort(block_of)
        _, counts = torch.unique_consecutive(block_of[order], return_counts=True)
        density = torch.zeros(points.shape[0], device=self.device)
        coloured = torch.zeros(points.shape[0], 3, device=self.device)
        for idx in order.split(counts.tolist()):
            part = points[idx]
            near = ((self.means > part.amin(0) - reach) & (self.means < part.amax(0) + reach)).all(-1)
            near = torch.nonzero(near).flatten()
            if len(near):
                w = opacities[near] * quadratic(part, self.means[near], precision[near]).mul(-0.5).exp()
                density[idx], coloured[idx] = w.sum(-1), w @ colour[near]
        return density, coloured

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.splat_field(points)[0]

    @torch.no_grad()
    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """(M, 3) colour at points: the Gaussians' colours weighted by their density there (the nearest Gaussian's
        where none reaches, found in chunks)."""
        points = points.to(self.device)
        density, coloured = self.splat_field(points)
        colour = coloured / density.clamp_min(1e-6)[:, None]
        empty = torch.nonzero(density <= 1e-6).flatten()
        for part in empty.split(4096):
            colour[part] = sh_to_rgb(self.sh_dc).clamp(0, 1)[torch.cdist(points[part], self.means).argmin(-1)]
        return colour

    def mesh(
        self,
        resolution: int | None = None,
        threshold: float | None = None,
        min_part: float | None = None,
        setting: Setting = export_flag,
    ):
        """The density field's surface as a coloured trimesh.Trimesh (as the NeRF's `mesh`)."""
        return extract_mesh(
            lambda x: self.density(x),
            self.albedo,
            self.mesh_bound,
            resolution or self.mesh_resolution,
            self.mesh_threshold if threshold is None else threshold,
            self.device,
            self.mesh_min_part if min_part is None else min_part,
            setting,
        )

    def write_ply(self, path: Path) -> Path:
        return write_ply(path, self.means, self.sh_dc, self.logit_opacities, self.log_scales, self.quats, self.sh_rest)

    def write_artifacts(self, run_dir: Path, decode=None, captions=None) -> list[Path]:
        """turntable.mp4, views.png (8 views side by side), gaussians.ply (3DGS layout) and model.<export_mesh>."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        written = self.write_views(run_dir)
        if self.export_ply:
            written.append(self.write_ply(run_dir / "gaussians.ply"))
        return written + self.write_mesh(run_dir)


def quadratic(points: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(m, n) the Mahalanobis forms dᵀ P d of every point (m, 3) to every Gaussian (means (n, 3), P (n, 3, 3))."""
    d = points[:, None, :] - means[None]
    p = precision
    x, y, z = d.unbind(-1)
    return (
        p[:, 0, 0] * x * x + p[:, 1, 1] * y * y + p[:, 2, 2] * z * z
        + 2 * (p[:, 0, 1] * x * y + p[:, 0, 2] * x * z + p[:, 1, 2] * y * z)
    )  # fmt: skip


def _is_gaussian_ply(path: str) -> bool:
    """A .ply with 3DGS's properties (opacity, scales, rotations), not a plain mesh or point cloud."""
    with open(resolve_sketch_path(path), "rb") as f:
        header = f.read(4096).split(b"end_header")[0]
    return all(b"property float " + name in header for name in (b"opacity", b"scale_0", b"rot_0"))
