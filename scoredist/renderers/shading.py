"""Shading and background of a NeRF render (DreamFusion's, as threestudio implements it).

Shading of a sample with albedo a (sigmoid of the colour MLP), unit normal n and a point light at p_light:

    l = normalise(p_light − x),   textureless = ambient + diffuse · max(0, n · l),   lambertian = a · textureless,

and "albedo" is a alone. Normals come from the density: n = −∇σ / ‖∇σ‖ (central differences, which work with every
hash-grid backend). DreamFusion's augmentation (`shading=random`): while training, albedo during the first
`ambient_only_steps` steps and then with probability 1 − diffuse_prob; otherwise textureless with probability
textureless_prob, else lambertian; one choice for the whole batch; lambertian when not training.

Orientation regulariser (DreamFusion): Σ_i stopgrad(w_i) · max(0, n_i · d)² over samples / (rays with any opacity),
d the ray direction: normals must not face away from the camera where the render sees them.

Background: a solid colour, or a small MLP of the ray direction (degree-3 spherical harmonics → 2 hidden layers of
16 → sigmoid, threestudio's neural environment map), optionally replaced by a random solid colour with probability
`aug_prob` while training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SHADINGS = ("albedo", "lambertian", "textureless", "random")


def spherical_harmonics(dirs: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics of degree ≤ 3 of unit directions (N, 3) → (N, 16)."""
    x, y, z = dirs.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    return torch.stack(
        [
            torch.full_like(x, 0.28209479177387814),
            -0.48860251190291987 * y,
            0.48860251190291987 * z,
            -0.48860251190291987 * x,
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
            -0.59004358992664352 * y * (3 * xx - yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1 - 5 * zz),
            0.3731763325901154 * z * (5 * zz - 3),
            0.45704579946446572 * x * (1 - 5 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (3 * yy - xx),
        ],
        dim=-1,
    )


class Background(nn.Module):
    """Colour behind the object per ray: directions (R, 3) → (R, 3) in [0, 1].

    spec: an RGB triple (a solid colour) or "mlp" (a learned function of the direction).
    aug_prob: while training, the probability that a step's background is one random solid colour instead.
    """

    def __init__(self, spec: Sequence[float] | str = (0.85, 0.85, 0.85), aug_prob: float = 0.0):
        super().__init__()
        if isinstance(spec, str):
            if spec != "mlp":
                raise ValueError(f"renderer.background must be an RGB triple or 'mlp', got {spec!r}")
            self.net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
            self.register_buffer("colour", torch.zeros(3), persistent=False)
        else:
            if len(spec) != 3:
                raise ValueError(f"renderer.background must be 3 numbers (RGB in [0, 1]) or 'mlp', got {list(spec)}")
            self.net = None
            self.register_buffer("colour", torch.tensor([float(c) for c in spec]), persistent=False)
        if not 0.0 <= aug_prob <= 1.0:
            raise ValueError(f"renderer.background_aug must be a probability in [0, 1], got {aug_prob}")
        self.aug_prob = float(aug_prob)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        if self.training and self.aug_prob > 0 and float(torch.rand(())) < self.aug_prob:
            return torch.rand(3, device=dirs.device).expand(dirs.shape[0], 3)
        if self.net is None:
            return self.colour.expand(dirs.shape[0], 3)
        return torch.sigmoid(self.net(spherical_harmonics(dirs)))


def choose_shading(
    mode: str, training: bool, step: int, ambient_only_steps: int, diffuse_prob: float, textureless_prob: float
) -> str:
    """The shading of this step's batch (see the module docstring); draws from torch's global RNG."""
    if mode != "random":
        return mode
    if not training:
        return "lambertian"
    if step < ambient_only_steps or float(torch.rand(())) > diffuse_prob:
        return "albedo"
    return "textureless" if float(torch.rand(())) < textureless_prob else "lambertian"


def shade(
    albedo: torch.Tensor,
    normals: torch.Tensor | None,
    light_dirs: torch.Tensor | None,
    shading: str,
    ambient: float = 0.1,
    diffuse: float = 0.9,
) -> torch.Tensor:
    """Colour per sample (N, 3): albedo (N, 3), unit normals and unit directions towards the light (N, 3)."""
    if shading == "albedo":
        return albedo
    textureless = ambient + diffuse * (normals * light_dirs).sum(-1, keepdim=True).clamp_min(0.0)
    if shading == "textureless":
        return textureless.expand_as(albedo)
    if shading == "lambertian":
        return albedo.clamp(0.0, 1.0) * textureless
    raise ValueError(f"unknown shading {shading!r}; choose one of {SHADINGS}")


def density_normals(density_fn, points: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """n = −∇σ / ‖∇σ‖ by central differences of `density_fn` ((M, 3) → (M,)) at points (N, 3) → (N, 3)."""
    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
    probes = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # (N, 6, 3)
    sigma = density_fn(probes.reshape(-1, 3)).view(-1, 6)
    gradient = (sigma[:, :3] - sigma[:, 3:]) / (2 * eps)
    return F.normalize(-gradient, dim=-1, eps=1e-12)


def orientation_loss(
    weights: torch.Tensor, normals: torch.Tensor, dirs: torch.Tensor, opacity: torch.Tensor
) -> torch.Tensor:
    """DreamFusion's orientation term: weights (N,), normals and sample ray directions (N, 3), opacity (R, 1)."""
    facing_away = (normals * dirs).sum(-1).clamp_min(0.0) ** 2
    return (weights.detach() * facing_away).sum() / (opacity > 0).sum().clamp_min(1)
