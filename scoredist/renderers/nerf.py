"""A NeRF for text-to-3D (the DreamFusion setting of design.md §1): hash grid + small MLPs, volume-rendered from random
orbit cameras, each render carrying its view phrase (", front view", ...) for the prompt.

Field: x ∈ [−bound, bound]³ → hash-grid features (scoredist.renderers.hashgrid) → two MLPs,
    σ(x) = softplus(MLP_σ(enc(x)) + bias(x)),   albedo(x) = sigmoid(MLP_c(enc(x))),
where the density bias is Magic3D's blob, blob_density · (1 − ‖x‖ / blob_radius), or, with `init_shape`, a sketch's
occupancy, blob_density · (2·occ(x) − 1) (scoredist.renderers.sketch). At initialisation (features ≈ 0) the density
is therefore the bias alone: a soft ball, or the sketch.

Rendering (scoredist.renderers.volume): an estimator (scoredist.renderers.occupancy) picks the intervals of each ray
where the field is evaluated — every one of `num_samples` between box entry and exit (estimator=dense), or steps of
2√3·bound / num_samples (threestudio's render_step_size) only through cells an occupancy grid marks occupied and only
where they can still be seen (estimator=occupancy) — and the packed samples are composited, shaded
(scoredist.renderers.shading) and put in front of the background. The image goes to the model at the model's own
size (bilinear resize, as the paper's code upsamples its 64² renders to 512² before the VAE).

The render size and the cameras per step follow a schedule of the step: `height`, `width`, `batch_size` from step 0,
then each entry of `stages` from its own step on (the paper: 64² for steps 0–4999, 512² from step 5000).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scoredist.renderers.base import ModelSpace, Render
from scoredist.renderers.cameras import (
    Cameras,
    camera_rays,
    ray_box,
    sample_lights,
)
from scoredist.renderers.hashgrid import make_hash_grid, tcnn_available
from scoredist.renderers.mesh import FORMATS, Setting, export_flag, extract_mesh
from scoredist.renderers.occupancy import make_estimator
from scoredist.renderers.scene import SceneRenderer, weighted_sum
from scoredist.renderers.shading import SHADINGS, Background, choose_shading, density_normals, orientation_loss, shade
from scoredist.renderers.sketch import load_mesh, occupancy_grid, sample_grid
from scoredist.renderers.volume import accumulate, composite_packed
from scoredist.schedules import value_at


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_hidden_layers: int) -> nn.Sequential:
    layers, width = [], in_dim
    for _ in range(num_hidden_layers):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


@dataclass
class Frame:
    """One render: rgb (B, 3, H, W), opacity (B, 1, H, W), samples evaluated per ray, orientation term (or None)."""

    rgb: torch.Tensor
    opacity: torch.Tensor
    samples_per_ray: float
    orientation: torch.Tensor | None = None
    background: torch.Tensor | None = None  # (B, 3, H, W): the colour behind the object at each pixel


class NeRFRenderer(SceneRenderer):
    """Hash-grid NeRF rendered from `batch_size` random cameras per step: x (B, 3, H, W) in [0, 1] at the model's size.

    Args:
        height, width, batch_size: render size and cameras per step of the first stage.
        stages: later stages, each {step, height, width, batch_size (optional)} starting at its step (the paper's:
            [{step: 5000, height: 512, width: 512}]).
        encoding_backend: auto (tiny-cuda-nn when it imports and CUDA is available, else PyTorch) | torch | tcnn.
        num_levels, features_per_level, log2_hashmap_size, base_resolution, max_resolution: the hash grid.
        hidden_dim, num_hidden_layers: each of the two MLPs (density, colour).
        density_activation: softplus | exp (exp with its input clamped at 15, where α is 1 anyway).
        blob_density, blob_radius: the initial ball (module docstring); blob_density 0 turns it off.
        bound: the scene box is [−bound, bound]³; nothing exists outside it.
        background: an RGB triple in [0, 1] (0.85 grey matches the shapes world) or "mlp" (a function of the ray
            direction); background_aug: probability of a random solid colour per training step (threestudio: 0.5).
        num_samples: dense: field evaluations per ray; occupancy: the marching step is 2√3·bound / num_samples.
        estimator: occupancy (empty-space skipping) | dense (every interval, no grid).
        grid_resolution, grid_update_every, grid_warmup_steps, grid_ema_decay, grid_occ_threshold: the occupancy
            grid and its update (nerfacc's defaults: 32 as threestudio, 16, 256, 0.95, 0.01); the grid keeps an
            exponential moving maximum, occs ← max(grid_ema_decay · occs, occ) (nerfacc's name: ema_decay).
        alpha_threshold, early_stop_eps: samples with α below min(alpha_threshold, mean occupancy) or transmittance
            below early_stop_eps are skipped (threestudio: 0.01, nerfacc: 1e-4); 0 and 0 keep every grid sample.
        azimuth_range, elevation_range, distance_range, fovy_range: uniform camera ranges (degrees, scene units).
        views_per_group: cameras come in groups of this many views of the object, 360°/V apart in azimuth from one
            random offset, with one elevation, distance and fovy per group (MVDream's cameras; 1: independent).
        relative_distance: distances are distance_range × 1/tan(fovy/2) (MVDream-threestudio's relative_radius).
        view_dependent_prompt: add ", front view" etc. to each render's prompt.
        front_threshold, back_threshold, overhead_threshold: the view phrase's angles (see cameras.view_suffix).
        shading: albedo | lambertian | textureless | random (DreamFusion's augmentation; see shading.py), with
            ambient_only_steps, diffuse_prob, textureless_prob, ambient, diffuse (light intensities),
            light_distance_range, light_perturb (the random point light) and normal_eps (finite differences).
        sparsity_weight: × mean √(opacity² + 0.01) (threestudio's sparsity term).
        opacity_weight: × mean binary entropy of the opacity clamped to [1e-3, 1 − 1e-3] (threestudio's opaque term).
        orient_weight: × DreamFusion's orientation term (only where normals are computed: shading ≠ albedo).
            The three weights are numbers or schedules of the step (scoredist.schedules.Ramp).
        init_shape: a mesh file (a 3D sketch) whose occupancy replaces the blob as the initial density;
            init_shape_resolution: its occupancy grid; sketch_weight: × a term keeping the density near the sketch
            (binary cross-entropy between the occupancy 1 − exp(−σ·step) at `sketch_points` random points and the
            sketch's, weighted by |2·occ − 1|, so it relaxes near the sketch's surface).
        reference_image, reference_camera, reference_rgb_weight, reference_mask_weight: image-to-3D's reference
            view (threestudio's zero123 system): an RGBA image (alpha: the mask) that the render at reference_camera
            (azimuth, elevation, distance, fovy) must match, each step, in colour and opacity (`reference_terms`).
        encoding_lr, network_lr: the parameter groups' learning rates (networks include an MLP background).
        eval_views: fixed views of the final images and eval.json (azimuths evenly spaced from 0°, the front).
        eval_distance, eval_fovy: the camera of those views and of the turntable (None: the middle of the range).
        turntable_views, turntable_elevation, turntable_size: the end-of-run turntable (size None: render height).
        export_mesh: obj | glb | ply | None: write model.<format> at the end of a run (marching cubes at
            mesh_resolution³ on σ = mesh_threshold; threestudio's threshold is 25), without the pieces smaller than
            mesh_min_part of all faces (floaters; threestudio drops pieces under 1 % too).
        chunk: field evaluations per batch when rendering without gradient (bounds the turntable's memory).
    """

    def __init__(
        self,
        height: int = 64,
        width: int = 64,
        batch_size: int = 1,
        stages: Sequence[Mapping] = (),
        encoding_backend: str = "auto",
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 4096,
        hidden_dim: int = 64,
        num_hidden_layers: int = 1,
        density_activation: str = "softplus",
        blob_density: float = 10.0,
        blob_radius: float = 0.5,
        bound: float = 1.0,
        background: Sequence[float] | str = (0.85, 0.85, 0.85),
        background_aug: float = 0.0,
        num_samples: int = 64,
        estimator: str = "occupancy",
        grid_resolution: int = 32,
        grid_update_every: int = 16,
        grid_warmup_steps: int = 256,
        grid_ema_decay: float = 0.95,
        grid_occ_threshold: float = 0.01,
        alpha_threshold: float = 0.01,
        early_stop_eps: float = 1e-4,
        azimuth_range: Sequence[float] = (-180.0, 180.0),
        elevation_range: Sequence[float] = (-10.0, 45.0),
        distance_range: Sequence[float] = (1.0, 1.5),
        fovy_range: Sequence[float] = (40.0, 70.0),
        views_per_group: int = 1,
        relative_distance: bool = False,
        view_dependent_prompt: bool = True,
        front_threshold: float = 45.0,
        back_threshold: float = 45.0,
        overhead_threshold: float = 60.0,
        shading: str = "albedo",
        ambient_only_steps: int = 1000,
        diffuse_prob: float = 0.75,
        textureless_prob: float = 0.5,
        ambient: float = 0.1,
        diffuse: float = 0.9,
        light_distance_range: Sequence[float] = (0.8, 1.5),
        light_perturb: float = 1.0,
        normal_eps: float = 0.01,
        sparsity_weight=0.0,
        opacity_weight=0.0,
        orient_weight=0.0,
        init_shape: str | None = None,
        init_shape_resolution: int = 64,
        sketch_weight=0.0,
        sketch_points: int = 4096,
        reference_image: str | None = None,
        reference_camera: Sequence[float] = (0.0, 5.0, 3.8, 20.0),
        reference_rgb_weight=0.0,
        reference_mask_weight=0.0,
        encoding_lr: float = 0.01,
        network_lr: float = 0.001,
        eval_views: int = 8,
        eval_distance: float | None = None,
        eval_fovy: float | None = None,
        turntable_views: int = 24,
        turntable_elevation: float = 15.0,
        turntable_size: int | None = None,
        export_mesh: str | None = "obj",
        mesh_resolution: int = 128,
        mesh_threshold: float = 25.0,
        mesh_min_part: float = 0.01,
        chunk: int = 2**18,
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
        if int(num_samples) <= 0:
            raise ValueError(f"renderer.num_samples must be positive, got {num_samples}")
        if density_activation not in ("softplus", "exp"):
            raise ValueError(f"renderer.density_activation must be softplus or exp, got {density_activation!r}")
        if shading not in SHADINGS:
            raise ValueError(f"renderer.shading must be one of {SHADINGS}, got {shading!r}")
        if export_mesh is not None and export_mesh not in FORMATS:
            raise ValueError(f"renderer.export_mesh must be one of {FORMATS} or null, got {export_mesh!r}")
        self.encoding_backend = encoding_backend
        self.encoding_kwargs = dict(
            num_levels=num_levels,
            features_per_level=features_per_level,
            log2_hashmap_size=log2_hashmap_size,
            base_resolution=base_resolution,
            max_resolution=max_resolution,
        )
        # "auto" starts on the PyTorch grid; bind() moves to tiny-cuda-nn once it knows the run is on CUDA.
        self.encoding = make_hash_grid(
            "torch" if encoding_backend == "auto" else encoding_backend, **self.encoding_kwargs
        )
        self.density_net = mlp(self.encoding.output_dim, hidden_dim, 1, num_hidden_layers)
        self.colour_net = mlp(self.encoding.output_dim, hidden_dim, 3, num_hidden_layers)
        self.density_activation = density_activation
        self.blob_density, self.blob_radius, self.bound = float(blob_density), float(blob_radius), float(bound)
        self.background = Background(background, background_aug)
        self.num_samples = int(num_samples)
        self.estimator_kind = estimator
        self.grid_resolution = int(grid_resolution)
        self.estimator = make_estimator(estimator, self.bound, self.num_samples, self.grid_resolution, "cpu")
        self.grid_update = dict(
            n=int(grid_update_every),
            warmup_steps=int(grid_warmup_steps),
            ema_decay=float(grid_ema_decay),
            occ_thre=float(grid_occ_threshold),
        )
        self.alpha_threshold, self.early_stop_eps = float(alpha_threshold), float(early_stop_eps)
        self.render_step_size = 1.732 * 2 * self.bound / self.num_samples  # threestudio's, for radius = bound
        self.shading = shading
        self.shading_odds = dict(
            ambient_only_steps=int(ambient_only_steps),
            diffuse_prob=float(diffuse_prob),
            textureless_prob=float(textureless_prob),
        )
        self.light = dict(ambient=float(ambient), diffuse=float(diffuse))
        self.light_distance_range, self.light_perturb = tuple(light_distance_range), float(light_perturb)
        self.normal_eps = float(normal_eps)
        self.sparsity_weight, self.opacity_weight, self.orient_weight = sparsity_weight, opacity_weight, orient_weight
        self.sketch_weight, self.sketch_points = sketch_weight, int(sketch_points)
        self.init_shape = init_shape
        self.init_reference(reference_image, reference_camera, reference_rgb_weight, reference_mask_weight)
        if init_shape is not None:
            vertices, faces = load_mesh(init_shape)
            self.register_buffer("sketch", occupancy_grid(vertices, faces, self.bound, int(init_shape_resolution)))
        else:
            self.register_buffer("sketch", None)
        self.encoding_lr, self.network_lr = float(encoding_lr), float(network_lr)
        self.mesh_resolution, self.mesh_threshold = int(mesh_resolution), mesh_threshold
        self.mesh_min_part = float(mesh_min_part)
        self.chunk = int(chunk)

    # ----------------------------------------------------------------------------------------------------------------
    # The schedule
    # ----------------------------------------------------------------------------------------------------------------

    def at_step(self, step: int) -> None:
        """Follow the schedule (render size, cameras per step) and update the occupancy grid (every n-th step)."""
        self.step, self.stage = step, self.stage_at(step)
        if self.training:
            self.estimator.update_every_n_steps(step=step, occ_eval_fn=self.occupancy_value, **self.grid_update)

    def get_extra_state(self) -> dict:
        """The step of the last `at_step` (the last step trained) and its stage travel with the checkpoint: a run
        resumed with no step left to train (stopped during its last step, or killed while writing its turntable and
        mesh), and a renderer rebuilt from a run folder, render at the size of the stage the run ended in."""
        return {"step": int(self.step), "stage": int(self.stage)}

    def set_extra_state(self, state: dict) -> None:
        # the stage is derived again from the step, with this config's stages (as `at_step` does)
        self.step = int(state["step"])
        self.stage = self.stage_at(self.step)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint written before the step was part of the state loads too, keeping this renderer's step
        state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # The field
    # ----------------------------------------------------------------------------------------------------------------

    def density_bias(self, points: torch.Tensor) -> torch.Tensor:
        """(N,) bias of points (N, 3): the blob, or the sketch's ±blob_density (see the module docstring)."""
        if self.sketch is not None:
            return self.blob_density * (2 * sample_grid(self.sketch, points, self.bound) - 1)
        return self.blob_density * (1.0 - points.norm(dim=-1) / self.blob_radius)

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        return F.softplus(raw) if self.density_activation == "softplus" else torch.exp(raw.clamp(max=15.0))

    def features(self, points: torch.Tensor) -> torch.Tensor:
        return self.encoding((points / self.bound + 1.0) / 2.0)  # the grid lives on [0, 1]³

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """Scene points (N, 3) → σ (N,) ≥ 0 (no colour: occupancy updates, pruning, normals, meshes)."""
        return self.activate(self.density_net(self.features(points))[:, 0] + self.density_bias(points))

    def field(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene points (N, 3) → density σ (N,) ≥ 0 and albedo (N, 3) in [0, 1]."""
        features = self.features(points)
        sigma = self.activate(self.density_net(features)[:, 0] + self.density_bias(points))
        return sigma, torch.sigmoid(self.colour_net(features))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.colour_net(self.features(points)))

    def occupancy_value(self, points: torch.Tensor) -> torch.Tensor:
        """The occupancy grid's occ(x) = σ(x) · step (α ≈ σδ for small σδ), in chunks."""
        return torch.cat([self.density(p) for p in points.split(self.chunk)]) * self.render_step_size

    def in_chunks(self, fn, points: torch.Tensor):
        """fn on points, in chunks when no gradient is kept (large renders, meshes), in one go otherwise."""
        if torch.is_grad_enabled() or points.shape[0] <= self.chunk:
            return fn(points)
        parts = [fn(p) for p in points.split(self.chunk)]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(ps) for ps in zip(*parts))
        return torch.cat(parts)

    # ----------------------------------------------------------------------------------------------------------------
    # Rendering
    # ----------------------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.background.colour.device

    def render(
        self,
        cams: Cameras,
        height: int,
        width: int,
        stratified: bool,
        shading: str = "albedo",
        lights: torch.Tensor | None = None,
    ) -> Frame:
        """Cameras (B) → a Frame: RGB (B, 3, H, W) in [0, 1], opacity (B, 1, H, W), samples per ray.

        stratified: jitter the samples along each ray (training). lights: (B, 3) point-light positions for every
        shading but albedo; None: `lights_at` the cameras (a random light while training, the eye otherwise).
        """
        origins, dirs = camera_rays(cams, height, width)
        b, p = dirs.shape[:2]
        origins = origins.to(self.device)
        if shading != "albedo":
            lights = self.lights_at(origins) if lights is None else lights.to(self.device)
        rays_o = origins[:, None].expand(b, p, 3).reshape(-1, 3)
        rays_d = dirs.to(self.device).reshape(-1, 3)
        n_rays = rays_o.shape[0]
        near, far = ray_box(rays_o, rays_d, self.bound)  # (R,) each; rays missing the box get empty intervals

        def sigma_fn(t_starts, t_ends, ray_indices):
            positions = rays_o[ray_indices] + rays_d[ray_indices] * ((t_starts + t_ends) / 2)[:, None]
            return torch.cat([self.density(chunk) for chunk in positions.split(self.chunk)])

        ray_indices, t_starts, t_ends = self.estimator.sampling(
            rays_o,
            rays_d,
            sigma_fn=sigma_fn,
            t_min=near,
            t_max=far,
            render_step_size=self.render_step_size,
            alpha_thre=self.alpha_threshold,
            early_stop_eps=self.early_stop_eps,
            stratified=stratified,
        )
        ray_indices = ray_indices.long()
        sample_dirs = rays_d[ray_indices]
        positions = rays_o[ray_indices] + sample_dirs * ((t_starts + t_ends) / 2)[:, None]
        sigma, albedo = self.in_chunks(self.field, positions)
        weights, _, _ = composite_packed(t_starts, t_ends, sigma, ray_indices, n_rays)
        opacity = accumulate(weights, None, ray_indices, n_rays)  # (R, 1)
        orientation = None
        if shading == "albedo":
            colour = albedo
        else:
            normals = self.in_chunks(lambda x: density_normals(self.density, x, self.normal_eps), positions)
            light_dirs = F.normalize(lights.repeat_interleave(p, 0)[ray_indices] - positions, dim=-1)
            colour = shade(albedo, normals, light_dirs, shading, **self.light)
            if torch.is_grad_enabled():
                orientation = orientation_loss(weights, normals, sample_dirs, opacity)
        background = self.background(rays_d)
        rgb = accumulate(weights, colour, ray_indices, n_rays) + (1.0 - opacity) * background
        to_image = lambda v: v.reshape(b, height, width, -1).permute(0, 3, 1, 2)
        samples = ray_indices.shape[0] / max(n_rays, 1)
        return Frame(to_image(rgb), to_image(opacity), samples, orientation, to_image(background))

    def regularizers(self, frame: Frame) -> tuple[torch.Tensor | None, dict]:
        """threestudio's sparsity √(o² + 0.01) and opaque (binary entropy) terms over pixels, DreamFusion's orientation
        term and the sketch term; their weighted sum (None when every weight is 0) and their values for the log."""
        opacity = frame.opacity
        sparsity = (opacity**2 + 0.01).sqrt().mean()
        o = opacity.clamp(1e-3, 1.0 - 1e-3)
        entropy = -(o * o.log() + (1.0 - o) * (1.0 - o).log()).mean()
        terms = [(self.sparsity_weight, sparsity), (self.opacity_weight, entropy)]
        logs = {
            "nerf/mean_opacity": opacity.mean().detach(),
            "nerf/sparsity": sparsity.detach(),
            "nerf/opacity_entropy": entropy.detach(),
            "nerf/samples_per_ray": frame.samples_per_ray,
        }
        if frame.orientation is not None:
            terms.append((self.orient_weight, frame.orientation))
            logs["nerf/orientation"] = frame.orientation.detach()
        if self.sketch is not None and value_at(self.sketch_weight, self.step) != 0:
            sketch = self.sketch_term()
            terms.append((self.sketch_weight, sketch))
            logs["nerf/sketch"] = sketch.detach()
        reference, reference_logs = self.reference_regularization("nerf")
        terms += reference
        logs.update(reference_logs)
        return weighted_sum(terms, self.step), logs

    def render_reference(self, height: int, width: int) -> tuple[torch.Tensor, ...]:
        frame = self.render(self.reference_cameras(), height, width, stratified=True)
        return frame.rgb, frame.opacity, frame.background

    def sketch_term(self) -> torch.Tensor:
        """Binary cross-entropy between the field's occupancy and the sketch's at random points of the box."""
        points = (torch.rand(self.sketch_points, 3, device=self.device) * 2 - 1) * self.bound
        target = sample_grid(self.sketch, points, self.bound)
        occupied = 1.0 - torch.exp(-self.density(points) * self.render_step_size)
        bce = F.binary_cross_entropy(occupied.clamp(1e-5, 1 - 1e-5), (target > 0.5).float(), reduction="none")
        return (bce * (2 * target - 1).abs()).mean()

    def bind(self, space: ModelSpace, seeds: Sequence[int] = (0,)) -> None:
        """The scene's initial field comes from torch's global RNG, which the trainer seeds with the run's seed."""
        self.use_device(space.device)
        self.model_size = tuple(space.native_size)

    def use_device(self, device: torch.device) -> None:
        """On CUDA, move the encoding (encoding_backend=auto) and the occupancy grid to their CUDA implementations
        when available (before the parameters are optimised or a checkpoint is loaded); then `.to(device)`."""
        if torch.device(device).type != "cuda":
            return
        if self.encoding_backend == "auto" and tcnn_available():
            self.encoding = make_hash_grid("tcnn", **self.encoding_kwargs)
        self.estimator = make_estimator(self.estimator_kind, self.bound, self.num_samples, self.grid_resolution, device)

    def forward(self) -> Render:
        """B random cameras → x (B, 3, H, W) in [0, 1] at the model's size, their view suffixes and the regularisers.

        In eval mode (`renderer.eval()`) the cameras are fixed instead: `eval_views` azimuths evenly spaced from 0°
        (front) at turntable_elevation, mid-range distance and fovy, without jitter, so final images are repeatable."""
        cams = self.cameras()
        shading = choose_shading(self.shading, self.training, self.step, **self.shading_odds)
        frame = self.render(cams, *self.render_size, stratified=self.training, shading=shading)
        regularization, logs = self.regularizers(frame)
        return Render(
            x=self.to_model_size(frame.rgb),
            samples=[0] * len(cams),
            views=self.suffixes(cams),
            cameras=cams.as_tensor(),
            regularization=regularization,
            logs=logs,
        )

    def lights_at(self, eyes: torch.Tensor) -> torch.Tensor:
        """Camera centres (B, 3) on the render's device → a point light per camera there: random while training
        (DreamFusion), the camera's own position otherwise."""
        if self.training:
            return sample_lights(eyes, self.light_distance_range, self.light_perturb)
        return eyes

    def param_groups(self, lr: float) -> list[dict]:
        """The hash grid at encoding_lr and the MLPs at network_lr (the paper's two rates); `lr` is not used."""
        encoding = list(self.encoding.parameters())
        networks = [*self.density_net.parameters(), *self.colour_net.parameters(), *self.background.parameters()]
        return [{"params": encoding, "lr": self.encoding_lr}, {"params": networks, "lr": self.network_lr}]

    # ----------------------------------------------------------------------------------------------------------------
    # End of run
    # ----------------------------------------------------------------------------------------------------------------

    def turntable(self, views: int | None = None, size: int | None = None) -> torch.Tensor:
        """`views` renders (V, 3, S, S) around the object at turntable_elevation, mid-range distance and fovy."""
        size = size or self.turntable_size or self.render_size[0]
        cams = self.orbit(views or self.turntable_views)
        shading = choose_shading(self.shading, False, self.step, **self.shading_odds)
        frames = []
        with torch.no_grad():
            for one in _split(cams):
                frames.append(self.render(one, size, size, stratified=False, shading=shading).rgb)
        return torch.cat(frames).cpu()

    def mesh(
        self,
        resolution: int | None = None,
        threshold: float | None = None,
        min_part: float | None = None,
        setting: Setting = export_flag,
    ):
        """The density's surface as a coloured trimesh.Trimesh (scoredist.renderers.mesh); an error names the settings
        to try as `setting` writes them (scripts/export.py's flags by default)."""
        return extract_mesh(
            self.density,
            self.albedo,
            self.bound,
            resolution or self.mesh_resolution,
            self.mesh_threshold if threshold is None else threshold,
            self.device,
            self.mesh_min_part if min_part is None else min_part,
            setting,
        )

    def write_artifacts(self, run_dir: Path, decode=None, captions=None) -> list[Path]:
        """turntable.mp4 (turntable_views frames, azimuth 0° = front first), views.png (8 of them side by side) and,
        with export_mesh, model.<format>. `decode` is not needed: the renders are RGB already; nor are `captions`: the
        views are of one scene, unlabelled."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return self.write_views(run_dir) + self.write_mesh(run_dir)


def _split(cams: Cameras) -> list[Cameras]:
    """One camera at a time: turntable renders stay within memory whatever their size."""
    return [
        Cameras(cams.azimuth[i : i + 1], cams.elevation[i : i + 1], cams.distance[i : i + 1], cams.fovy[i : i + 1])
        for i in range(len(cams))
    ]
