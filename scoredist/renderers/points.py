"""2D particles as the "renderer": the parameters are the points themselves, x = θ (N, 2), so ∂x/∂θ = I.

This is the toy world of the bridge picture: every particle is one batch row of the guidance call, and watching the
particles move shows what a loss's direction g does to a distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from scoredist.renderers.base import ModelSpace, Render, Renderer

PANEL = 512  # side of each panel of particles.png, pixels
BLUE, RED, GREY = (40, 90, 220), (210, 30, 30), (205, 205, 205)


class PointsRenderer(Renderer):
    """S clouds of N particles θ (S·N, 2), optimised directly; `forward` returns all of them.

    Args:
        num_points: N, the number of particles of each sample's cloud.
        init_mean, init_std: particles start at init_mean + init_std · z, z ~ N(0, I) from the sample's own seed.
        record_every: keep a snapshot of the positions every this many forward passes (for the trajectory figure).
        max_records: memory cap on snapshots; when exceeded, every other one is dropped and record_every doubles,
            so the whole run stays covered at a coarser step.
    """

    makes = "points"
    outputs_rgb = False

    def __init__(
        self,
        num_points: int = 512,
        init_mean: Sequence[float] = (0.0, 0.0),
        init_std: float = 1.0,
        record_every: int = 10,
        max_records: int = 256,
    ):
        super().__init__()
        if int(num_points) < 1:
            raise ValueError(f"renderer.num_points must be positive, got {num_points}")
        self.num_points = int(num_points)
        self.init_mean = torch.tensor([float(v) for v in init_mean])
        self.init_std = float(init_std)
        self.record_every = int(record_every)
        self.max_records = max(2, int(max_records))
        self.num_forwards = 0
        self.snapshots: list[torch.Tensor] = []  # (S·N, 2) CPU copies, positions *before* the update of that step
        self.snapshot_steps: list[int] = []
        self.points = None  # nn.Parameter (S·N, 2), created in bind()

    def bind(self, space: ModelSpace | None, seeds: Sequence[int]) -> None:
        """One cloud of num_points per seed; the model space is not needed (points are the model's input)."""
        clouds = [torch.randn(self.num_points, 2, generator=torch.Generator().manual_seed(s)) for s in seeds]
        init = self.init_mean + self.init_std * torch.cat(clouds)
        self.points = nn.Parameter(init.clone())
        self.register_buffer("initial", init.clone())
        self.num_forwards, self.snapshots, self.snapshot_steps = 0, [], []

    def forward(self) -> Render:
        """All particles, x (S·N, 2): the particles themselves are the rows, num_points for each sample.
        Only forwards with gradient count as optimisation steps and are recorded."""
        if self.training and torch.is_grad_enabled():
            if self.num_forwards % self.record_every == 0:
                self._record()
            self.num_forwards += 1
        samples = torch.arange(self.points.shape[0]) // self.num_points
        return Render(x=self.points, samples=samples.tolist())

    def get_extra_state(self) -> dict:
        """The recorded trajectory travels with the checkpoint, so a resumed run's figure shows the whole path."""
        snapshots = torch.stack(self.snapshots) if self.snapshots else torch.empty(0, *self.points.shape)
        return {
            "snapshots": snapshots,
            "snapshot_steps": torch.tensor(self.snapshot_steps, dtype=torch.long),
            "num_forwards": self.num_forwards,
            "record_every": self.record_every,
        }

    def set_extra_state(self, state: dict) -> None:
        self.snapshots = list(state["snapshots"].unbind(0))
        self.snapshot_steps = state["snapshot_steps"].tolist()
        self.num_forwards, self.record_every = int(state["num_forwards"]), int(state["record_every"])

    def _record(self) -> None:
        self.snapshots.append(self.points.detach().cpu().clone())
        self.snapshot_steps.append(self.num_forwards)
        if len(self.snapshots) > self.max_records:
            self.snapshots, self.snapshot_steps = self.snapshots[::2], self.snapshot_steps[::2]
            self.record_every *= 2

    def trajectory(self) -> torch.Tensor:
        """Recorded positions followed by the current ones, (S + 1, N, 2) on the CPU."""
        return torch.stack([*self.snapshots, self.points.detach().cpu()])

    def write_artifacts(self, run_dir: Path, decode=None, captions=None) -> list[Path]:
        """Write particles.png (trajectories, and the final particles decoded by the guidance) and particles.npz."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        traj = self.trajectory()
        panels = [trajectory_panel(self.initial.cpu(), traj, self.num_forwards)]
        if decode is not None:
            preview = decode(self.points.detach())
            if preview.dim() == 4 and preview.shape[1] == 3:
                panels.append(image_panel(preview[0], "final particles on the guidance density"))
        figure = Image.new("RGB", (PANEL * len(panels), panels[0].height), "white")
        for i, panel in enumerate(panels):
            figure.paste(panel, (i * PANEL, 0))
        png = run_dir / "particles.png"
        figure.save(png)
        npz = run_dir / "particles.npz"
        np.savez(
            npz,
            initial=self.initial.cpu().numpy(),
            final=traj[-1].numpy(),
            trajectory=traj.numpy(),
            steps=np.array([*self.snapshot_steps, self.num_forwards]),
        )
        return [png, npz]


def _view_box(points: torch.Tensor) -> tuple[float, float, float]:
    """A square (cx, cy, half-side) holding 99 % of the points (N, 2), plus a 10 % margin; outliers do not squash it."""
    lo = torch.quantile(points, 0.005, dim=0)
    hi = torch.quantile(points, 0.995, dim=0)
    centre = (lo + hi) / 2
    half = float((hi - lo).max()) / 2 * 1.1 + 1e-3
    return float(centre[0]), float(centre[1]), half


def trajectory_panel(initial: torch.Tensor, traj: torch.Tensor, num_forwards: int) -> Image.Image:
    """A PANEL×(PANEL + 40) image: grey paths, blue initial and red final particles, axes, legend.

    initial (N, 2), traj (S, N, 2) with traj[-1] the final positions.
    """
    header = 40
    every = torch.cat([initial[None], traj]).reshape(-1, 2).double()
    cx, cy, half = _view_box(every)
    plot = Image.new("RGB", (PANEL, PANEL), "white")  # drawn on its own canvas, so far-off points are clipped
    draw = ImageDraw.Draw(plot)

    def to_px(p: torch.Tensor) -> list[tuple[float, float]]:
        """World points (M, 2) → M pixel coordinates (u right, v down)."""
        p = p.reshape(-1, 2).double()
        u = (p[:, 0] - cx + half) / (2 * half) * PANEL
        v = (cy + half - p[:, 1]) / (2 * half) * PANEL
        return list(zip(u.tolist(), v.tolist()))

    # axes through the origin when visible
    origin_u, origin_v = to_px(torch.zeros(2))[0]
    draw.line([(origin_u, 0), (origin_u, PANEL)], fill=(230, 230, 230))
    draw.line([(0, origin_v), (PANEL, origin_v)], fill=(230, 230, 230))

    # at most 256 paths, evenly chosen, so the figure stays readable with many particles
    n = traj.shape[1]
    chosen = torch.linspace(0, n - 1, min(n, 256)).round().long().unique()
    paths = torch.cat([initial[None], traj])[:, chosen]  # (S + 1, M, 2)
    for j in range(paths.shape[1]):
        draw.line(to_px(paths[:, j]), fill=GREY, width=1)
    for points, colour in ((initial, BLUE), (traj[-1], RED)):
        for u, v in to_px(points):
            draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=colour)

    # the frame and its corner coordinates, on top of the points
    draw.rectangle([0, 0, PANEL - 1, PANEL - 1], outline=(120, 120, 120))
    draw.text((4, 2), f"({cx - half:.2f}, {cy + half:.2f})", fill=(60, 60, 60))
    draw.text((PANEL - 110, PANEL - 14), f"({cx + half:.2f}, {cy - half:.2f})", fill=(60, 60, 60))

    img = Image.new("RGB", (PANEL, PANEL + header), "white")
    img.paste(plot, (0, header))
    title = ImageDraw.Draw(img)
    title.text((6, 4), f"{n} particles, {num_forwards} steps", fill=(0, 0, 0))
    title.text((6, 20), "blue: initial   red: final   grey: paths", fill=(0, 0, 0))
    return img


def image_panel(rgb: torch.Tensor, title: str) -> Image.Image:
    """An RGB tensor (3, H, W) in [0, 1] resized to PANEL×PANEL under a 40-pixel title."""
    array = (rgb.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array).resize((PANEL, PANEL), Image.NEAREST)
    img = Image.new("RGB", (PANEL, PANEL + 40), "white")
    img.paste(picture, (0, 40))
    ImageDraw.Draw(img).text((6, 12), title, fill=(0, 0, 0))
    return img
