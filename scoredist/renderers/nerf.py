"""A NeRF for text-to-3D (the DreamFusion setting of design.md §1): hash grid + small MLPs, volume-rendered from random
orbit cameras, each render carrying its view phrase (", front view", ...) for the prompt.

Field: x ∈ [−bound, bound]³ → hash-grid features (scoredist.renderers.hashgrid) → two MLPs,
    σ(x) = softplus(MLP_σ(enc(x)) + blob(x)),   blob(x) = blob_density · (1 − ‖x‖ / blob_radius),
    c(x) = sigmoid(MLP_c(enc(x))),
so at initialisation (features ≈ 0) the density is a soft ball of radius ≈ blob_radius around the origin, the usual
DreamFusion/Magic3D start. Colour is view-independent (an albedo; fixed world-space lighting, as in the shapes world,
is view-independent too).

Rendering (the standard quadrature): every ray is cut at S + 1 evenly spaced distances between its entry and exit of
the box, t_0 < … < t_S, and the field is evaluated once per interval (at a random point of it while training, at its
middle otherwise). With δ_i = t_{i+1} − t_i,

    α_i = 1 − exp(−σ_i δ_i),   T_i = exp(−Σ_{j<i} σ_j δ_j) = Π_{j<i} (1 − α_j),   w_i = T_i α_i,
    C = Σ_i w_i c_i + (1 − Σ_i w_i) · background,   opacity = Σ_i w_i.

The weights come from nerfacc's `render_weight_from_density` on its dense (B, S) layout, which runs on CPU and CUDA
alike, or from `composite_torch` below, the same formula written out (compositing=torch, or when nerfacc is absent).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scoredist.images import grid, save_strip, save_video
from scoredist.renderers.base import ModelSpace, Render, Renderer
from scoredist.renderers.cameras import Cameras, camera_rays, orbit_cameras, ray_box, sample_cameras, view_suffix
from scoredist.renderers.hashgrid import make_hash_grid, tcnn_available


def composite_torch(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor):
    """Weights of the quadrature above: t_starts, t_ends, sigmas (R, S) → weights, transmittance, alphas (R, S)."""
    optical_depth = sigmas * (t_ends - t_starts)  # σ_i δ_i
    # exclusive cumulative sum: T_i sees only the intervals before i
    before = torch.cumsum(optical_depth, dim=-1) - optical_depth
    transmittance = torch.exp(-before)
    alphas = 1.0 - torch.exp(-optical_depth)
    return transmittance * alphas, transmittance, alphas


def nerfacc_available() -> bool:
    try:
        import nerfacc  # noqa: F401
    except ImportError:
        return False
    return True


def composite(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor, backend: str = "auto"):
    """`composite_torch`'s result through nerfacc (backend nerfacc, or auto when it imports) or pure PyTorch."""
    if backend == "nerfacc" or (backend == "auto" and nerfacc_available()):
        import nerfacc  # imported here: an optional dependency, and its import is slow

        # The dense (R, S) layout (no ray_indices) is plain PyTorch inside nerfacc and runs on CPU; its packed
        # layout needs the CUDA extension.
        return nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    return composite_torch(t_starts, t_ends, sigmas)


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_hidden_layers: int) -> nn.Sequential:
    layers, width = [], in_dim
    for _ in range(num_hidden_layers):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class NeRFRenderer(Renderer):
    """Hash-grid NeRF rendered from `batch_size` random cameras per step: x (B, 3, H, W) in [0, 1].

    Args:
        height, width: render size in pixels.
        batch_size: cameras per step (interpolated from trainer.batch_size).
        encoding_backend: auto (tiny-cuda-nn when it imports and CUDA is available, else PyTorch) | torch | tcnn.
        num_levels, features_per_level, log2_hashmap_size, base_resolution, max_resolution: the hash grid.
        hidden_dim, num_hidden_layers: each of the two MLPs (density, colour).
        density_activation: softplus | exp (exp with its input clamped at 15, where α is 1 anyway).
        blob_density, blob_radius: the initial ball (see the module docstring); blob_density 0 turns it off.
        bound: the scene box is [−bound, bound]³; nothing exists outside it.
        background: fixed RGB in [0, 1] behind the object (0.85 grey matches the shapes world).
        num_samples: S, field evaluations per ray.
        compositing: auto (nerfacc when it imports) | nerfacc | torch.
        azimuth_range, elevation_range, distance_range, fovy_range: uniform camera ranges (degrees, scene units).
        view_dependent_prompt: add ", front view" etc. to each render's prompt.
        front_threshold, back_threshold, overhead_threshold: the view phrase's angles (see cameras.view_suffix).
        sparsity_weight: × mean opacity (pushes empty space to be empty).
        opacity_weight: × mean binary entropy of the opacity (pushes pixels to be fully opaque or fully clear).
        encoding_lr, network_lr: the two parameter groups' learning rates; the trainer's optimizer.lr is not used.
        turntable_views, turntable_elevation, turntable_size: the end-of-run turntable (size None: height).
        chunk: field evaluations per batch when rendering without gradient (bounds the turntable's memory).
    """

    outputs_rgb = True
    max_samples = 1  # one scene per run: a prompt list is a sweep (python train.py -m prompt=...,...)

    def __init__(
        self,
        height: int = 64,
        width: int = 64,
        batch_size: int = 1,
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
        background: Sequence[float] = (0.85, 0.85, 0.85),
        num_samples: int = 64,
        compositing: str = "auto",
        azimuth_range: Sequence[float] = (-180.0, 180.0),
        elevation_range: Sequence[float] = (-10.0, 45.0),
        distance_range: Sequence[float] = (1.0, 1.5),
        fovy_range: Sequence[float] = (40.0, 70.0),
        view_dependent_prompt: bool = True,
        front_threshold: float = 45.0,
        back_threshold: float = 45.0,
        overhead_threshold: float = 60.0,
        sparsity_weight: float = 0.0,
        opacity_weight: float = 0.0,
        encoding_lr: float = 0.01,
        network_lr: float = 0.001,
        turntable_views: int = 24,
        turntable_elevation: float = 15.0,
        turntable_size: int | None = None,
        chunk: int = 2**18,
    ):
        super().__init__()
        for name, value in (
            ("height", height),
            ("width", width),
            ("batch_size", batch_size),
            ("num_samples", num_samples),
        ):
            if int(value) <= 0:
                raise ValueError(f"renderer.{name} must be positive, got {value}")
        if density_activation not in ("softplus", "exp"):
            raise ValueError(f"renderer.density_activation must be softplus or exp, got {density_activation!r}")
        if compositing not in ("auto", "nerfacc", "torch"):
            raise ValueError(f"renderer.compositing must be auto, nerfacc or torch, got {compositing!r}")
        if len(background) != 3:
            raise ValueError(f"renderer.background must be 3 numbers (RGB in [0, 1]), got {list(background)}")
        self.height, self.width, self.batch_size = int(height), int(width), int(batch_size)
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
        self.register_buffer("background", torch.tensor([float(c) for c in background]), persistent=False)
        self.num_samples, self.compositing = int(num_samples), compositing
        self.camera_ranges = {
            "azimuth_range": tuple(azimuth_range),
            "elevation_range": tuple(elevation_range),
            "distance_range": tuple(distance_range),
            "fovy_range": tuple(fovy_range),
        }
        self.view_dependent_prompt = bool(view_dependent_prompt)
        self.thresholds = (float(front_threshold), float(back_threshold), float(overhead_threshold))
        self.sparsity_weight, self.opacity_weight = float(sparsity_weight), float(opacity_weight)
        self.encoding_lr, self.network_lr = float(encoding_lr), float(network_lr)
        self.turntable_views, self.turntable_elevation = int(turntable_views), float(turntable_elevation)
        self.turntable_size = int(turntable_size) if turntable_size else None
        self.chunk = int(chunk)

    # ----------------------------------------------------------------------------------------------------------------
    # The field
    # ----------------------------------------------------------------------------------------------------------------

    def blob(self, points: torch.Tensor) -> torch.Tensor:
        """Density bias (N,) of points (N, 3): blob_density at the origin, 0 at blob_radius, negative beyond."""
        return self.blob_density * (1.0 - points.norm(dim=-1) / self.blob_radius)

    def field(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene points (N, 3) → density σ (N,) ≥ 0 and colour (N, 3) in [0, 1]."""
        features = self.encoding((points / self.bound + 1.0) / 2.0)  # the grid lives on [0, 1]³
        raw = self.density_net(features)[:, 0] + self.blob(points)
        sigma = F.softplus(raw) if self.density_activation == "softplus" else torch.exp(raw.clamp(max=15.0))
        return sigma, torch.sigmoid(self.colour_net(features))

    # ----------------------------------------------------------------------------------------------------------------
    # Rendering
    # ----------------------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.background.device

    def render(self, cams: Cameras, height: int, width: int, stratified: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Cameras (B) → RGB (B, 3, H, W) in [0, 1] and opacity (B, 1, H, W).

        stratified: evaluate each interval at a uniformly random point of it (training), else at its middle.
        """
        origins, dirs = camera_rays(cams, height, width)
        b, p = dirs.shape[:2]
        origins = origins.to(self.device)[:, None].expand(b, p, 3).reshape(-1, 3)
        dirs = dirs.to(self.device).reshape(-1, 3)
        near, far = ray_box(origins, dirs, self.bound)  # (R,) each; rays missing the box get empty intervals
        u = torch.linspace(0.0, 1.0, self.num_samples + 1, device=self.device)
        edges = near[:, None] + (far - near)[:, None] * u  # (R, S + 1)
        t_starts, t_ends = edges[:, :-1].contiguous(), edges[:, 1:].contiguous()
        where = torch.rand_like(t_starts) if stratified else torch.full_like(t_starts, 0.5)
        t_mid = t_starts + (t_ends - t_starts) * where
        points = (origins[:, None] + dirs[:, None] * t_mid[..., None]).reshape(-1, 3)  # (R·S, 3)
        sigma, colour = self.field_batched(points)
        weights, _, _ = composite(t_starts, t_ends, sigma.view_as(t_starts), self.compositing)  # (R, S)
        opacity = weights.sum(-1, keepdim=True)  # (R, 1)
        rgb = (weights[..., None] * colour.view(*weights.shape, 3)).sum(1) + (1.0 - opacity) * self.background
        to_image = lambda v: v.view(b, height, width, -1).permute(0, 3, 1, 2)
        return to_image(rgb), to_image(opacity)

    def field_batched(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`field` in chunks when no gradient is kept (turntables at large sizes), in one go otherwise."""
        if torch.is_grad_enabled() or points.shape[0] <= self.chunk:
            return self.field(points)
        parts = [self.field(chunk) for chunk in points.split(self.chunk)]
        return torch.cat([s for s, _ in parts]), torch.cat([c for _, c in parts])

    def suffixes(self, cams: Cameras) -> list[str]:
        if not self.view_dependent_prompt:
            return [""] * len(cams)
        return [view_suffix(a, e, *self.thresholds) for a, e in zip(cams.azimuth.tolist(), cams.elevation.tolist())]

    def regularizers(self, opacity: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Sparsity (mean opacity) and opacity entropy −(o log o + (1 − o) log(1 − o)), averaged over pixels; their
        weighted sum (None when both weights are 0) and their values for the log."""
        mean_opacity = opacity.mean()
        o = opacity.clamp(1e-5, 1.0 - 1e-5)
        entropy = -(o * o.log() + (1.0 - o) * (1.0 - o).log()).mean()
        logs = {"nerf/mean_opacity": mean_opacity.detach(), "nerf/opacity_entropy": entropy.detach()}
        if self.sparsity_weight == 0.0 and self.opacity_weight == 0.0:
            return None, logs
        return self.sparsity_weight * mean_opacity + self.opacity_weight * entropy, logs

    def bind(self, space: ModelSpace, seeds: Sequence[int] = (0,)) -> None:
        """The scene's initial field comes from torch's global RNG, which the trainer seeds with the run's seed."""
        if self.encoding_backend == "auto" and space.device.type == "cuda" and tcnn_available():
            self.encoding = make_hash_grid("tcnn", **self.encoding_kwargs)
        if space.native_size is None:
            raise ValueError("renderer=nerf renders images: use an image guidance model (guidance=sd or shapes)")
        if self.height % space.downscale or self.width % space.downscale:
            raise ValueError(
                f"render size {self.height}x{self.width} is not divisible by {space.downscale}, the model's latent "
                f"downscale factor: set renderer.height and renderer.width to multiples of {space.downscale}"
            )

    def forward(self) -> Render:
        """B random cameras → x (B, 3, H, W) in [0, 1], their view suffixes and the regularisers.

        In eval mode (`renderer.eval()`) the cameras are fixed instead: B azimuths evenly spaced from 0° (front) at
        turntable_elevation, mid-range distance and fovy, without sample jitter, so final images are repeatable."""
        if self.training:
            cams = sample_cameras(self.batch_size, **self.camera_ranges)
        else:
            cams = self.orbit(self.batch_size)
        rgb, opacity = self.render(cams, self.height, self.width, stratified=self.training)
        regularization, logs = self.regularizers(opacity)
        return Render(
            x=rgb,
            samples=[0] * len(cams),
            views=self.suffixes(cams),
            cameras=cams.as_tensor(),
            regularization=regularization,
            logs=logs,
        )

    def param_groups(self, lr: float) -> list[dict]:
        """The hash grid at encoding_lr and the MLPs at network_lr (the paper's two rates); `lr` is not used."""
        encoding = list(self.encoding.parameters())
        networks = [*self.density_net.parameters(), *self.colour_net.parameters()]
        return [{"params": encoding, "lr": self.encoding_lr}, {"params": networks, "lr": self.network_lr}]

    # ----------------------------------------------------------------------------------------------------------------
    # End of run
    # ----------------------------------------------------------------------------------------------------------------

    def orbit(self, views: int) -> Cameras:
        """`views` cameras evenly spaced in azimuth from 0° (front), at turntable_elevation, mid distance and fovy."""
        mid = lambda key: sum(self.camera_ranges[key]) / 2
        return orbit_cameras(views, self.turntable_elevation, mid("distance_range"), mid("fovy_range"))

    def turntable(self, views: int | None = None, size: int | None = None) -> torch.Tensor:
        """`views` renders (V, 3, S, S) around the object at turntable_elevation, mid-range distance and fovy."""
        size = size or self.turntable_size or self.height
        cams = self.orbit(views or self.turntable_views)
        with torch.no_grad():
            frames = [self.render(cams_i, size, size, stratified=False)[0] for cams_i in _split(cams)]
        return torch.cat(frames).cpu()

    def write_artifacts(self, run_dir: Path, decode=None) -> list[Path]:
        """turntable.mp4 (turntable_views frames, azimuth 0° = front first) and views.png (8 of them side by side).
        `decode` is not needed: the renders are RGB already."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        frames = [grid(view[None]) for view in self.turntable()]  # uint8 (h, w, 3), upsampled to ≥ 128 px
        every = max(1, len(frames) // 8)  # evenly spaced azimuths (every 45° for 24 views)
        written = [save_strip(frames[::every][:8], run_dir / "views.png", max_frames=8)]
        video = save_video(frames, run_dir / "turntable.mp4", fps=8)
        return written + ([video] if video is not None else [])


def _split(cams: Cameras) -> list[Cameras]:
    """One camera at a time: turntable renders stay within memory whatever their size."""
    return [
        Cameras(cams.azimuth[i : i + 1], cams.elevation[i : i + 1], cams.distance[i : i + 1], cams.fovy[i : i + 1])
        for i in range(len(cams))
    ]
