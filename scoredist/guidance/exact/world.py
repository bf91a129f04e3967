"""A procedural world of coloured 3D primitives, rendered in pure PyTorch, and the corruptions its words name.

Rendering: sphere tracing of signed-distance functions (SDFs), vectorised over every ray of every view at once,
Lambertian shading under fixed world-space lights, a plain light-grey background, supersampled and box-filtered.
Scene frame: y is up, objects sit at the origin inside the unit ball; a camera at (azimuth, elevation, distance) looks
at the origin, azimuth 0 being the +z axis ("front").

Corruptions: one pure function image → image per descriptor of the paper's source suffix and of the NFSD negative
prompt (words that mean the same share one function, see `VARIANTS`). Images are (..., 3, H, W) in [0, 1].
Randomised ones (noisy, low quality, bad structure, malformed) are deterministic: each variant is one mixture mean.

Mirrored artifacts: every corruption c also has its mirror image through the clean render, "anti-c" = 2·clean − c(clean)
(over-sharpened for blurry, over-exposed for dark, desaturated for oversaturated; not clipped to [0, 1]). A descriptor
selects both faces of its artifact (`variant_family`), so the distribution a source prompt describes is centred on the
clean image. Why: in Stable Diffusion ε(x_t; y + src suffix) and ε(x_t; y + tgt suffix) nearly agree at high noise and
around a clean image, so the paper's update s·(ε_tgt − ε_src) stops there. For two Gaussian families with equal
variances the difference of the scores is the difference of their means, a constant push that never stops; with the
source centred on the clean image it vanishes at the clean image and points towards it from every artifact.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------------------
# Vocabulary of things and colours
# ---------------------------------------------------------------------------------------------------------------------

COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.15, 0.68, 0.20),
    "blue": (0.14, 0.30, 0.90),
    "yellow": (0.95, 0.84, 0.12),
    "purple": (0.55, 0.18, 0.75),
    "orange": (0.98, 0.50, 0.08),
}
BACKGROUND_RGB = (0.85, 0.85, 0.85)

# Lights are fixed in the world frame, so a back view is visibly darker than a front view (views are distinguishable
# even for shapes with rotational symmetry). Directions point from the surface towards the light.
KEY_LIGHT = (0.45, 0.75, 0.50)
FILL_LIGHT = (-0.60, 0.20, -0.40)
AMBIENT, KEY, FILL = 0.28, 0.72, 0.22


# SDFs take the three coordinates as separate tensors (structure of arrays): reductions over a trailing dimension of
# size 3 are several times slower in PyTorch on CPU than plain elementwise arithmetic.


def _length(*parts: torch.Tensor) -> torch.Tensor:
    return sum(p * p for p in parts).sqrt()


def _sdf_sphere(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return _length(x, y, z) - 0.55


def _sdf_cube(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    # Exact box distance: outside part of |p| − b plus the (negative) inside part; slightly rounded edges.
    qx, qy, qz = x.abs() - 0.40, y.abs() - 0.40, z.abs() - 0.40
    outside = _length(qx.clamp_min(0), qy.clamp_min(0), qz.clamp_min(0))
    inside = torch.maximum(torch.maximum(qx, qy), qz).clamp_max(0)
    return outside + inside - 0.03


def _sdf_cylinder(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    # max of the two slab distances: exact inside, a lower bound outside, which is all sphere tracing needs.
    return torch.maximum(_length(x, z) - 0.38, y.abs() - 0.45)


def _sdf_cone(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, radius: float = 0.50, half: float = 0.50):
    # In the (r, y) half-plane the cone is the triangle (0, −h), (R, −h), (0, h); max of the signed distances to its
    # base line and its slanted side (a lower bound outside, exact inside).
    r = _length(x, z)
    side = (2 * half * r + radius * y - radius * half) / math.hypot(2 * half, radius)
    return torch.maximum(-y - half, side)


_TORUS_TILT = math.radians(35)


def _sdf_torus(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, major: float = 0.42, minor: float = 0.16):
    # Ring tilted 35° about the x axis towards the front camera, so that front views at the bank's low elevations
    # see a ring rather than a bar (its plane's normal is (0, cos 35°, sin 35°)).
    c, s = math.cos(_TORUS_TILT), math.sin(_TORUS_TILT)
    y, z = c * y + s * z, -s * y + c * z
    return _length(_length(x, z) - major, y) - minor


SHAPE_SDFS: dict[str, Callable[..., torch.Tensor]] = {
    "sphere": _sdf_sphere,
    "cube": _sdf_cube,
    "cone": _sdf_cone,
    "cylinder": _sdf_cylinder,
    "torus": _sdf_torus,
}

# ---------------------------------------------------------------------------------------------------------------------
# Camera and sphere tracing
# ---------------------------------------------------------------------------------------------------------------------


def camera_rays(
    azimuth: torch.Tensor, elevation: torch.Tensor, distance: float, resolution: int, fovy_deg: float = 40.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole rays looking at the origin: azimuth/elevation (V,) degrees → origins (3, V, 1), directions (3, V, P).

    Coordinates first (structure of arrays, see the SDFs); P = resolution², row-major, image row 0 at the top.
    """
    az, el = torch.deg2rad(azimuth.double()), torch.deg2rad(elevation.double())
    eye = distance * torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], dim=-1)  # (V, 3)
    forward = -eye / eye.norm(dim=-1, keepdim=True)
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = torch.linalg.cross(forward, world_up)
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-9)  # elevation ±90° is not supported (degenerate up)
    up = torch.linalg.cross(right, forward)
    half = math.tan(math.radians(fovy_deg) / 2)
    coords = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution * 2 - 1  # pixel centres in (−1, 1)
    v, u = torch.meshgrid(-coords * half, coords * half, indexing="ij")  # v is up, so row 0 is the top
    dirs = forward[:, None] + u.reshape(1, -1, 1) * right[:, None] + v.reshape(1, -1, 1) * up[:, None]  # (V, P, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return eye.T[:, :, None].float().contiguous(), dirs.permute(2, 0, 1).float().contiguous()


def _sphere_trace(sdf, origins: torch.Tensor, dirs: torch.Tensor, distance: float, steps: int = 64):
    """March every ray a fixed number of steps (no data-dependent control flow, so it vectorises).

    origins (3, V, 1), dirs (3, V, P) → depth (V, P), hit mask (V, P).
    """
    depth = torch.full(dirs.shape[1:], max(distance - 1.0, 0.0))
    for _ in range(steps):
        depth = depth + sdf(*(origins + depth * dirs)).clamp_min(0)
    d = sdf(*(origins + depth * dirs))
    return depth, (d < 2e-3) & (depth < distance + 1.0)


def _normals(sdf, p: torch.Tensor, h: float = 1e-3) -> torch.Tensor:
    """Unit surface normals by central differences of the SDF: p (3, ...) → (3, ...)."""
    x, y, z = p
    grad = torch.stack(
        [sdf(x + h, y, z) - sdf(x - h, y, z), sdf(x, y + h, z) - sdf(x, y - h, z), sdf(x, y, z + h) - sdf(x, y, z - h)]
    )
    return grad / _length(*grad).clamp_min(1e-9)


def shade_views(
    shape: str, azimuths, elevations, distance: float = 2.6, resolution: int = 32, supersample: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """The colour-independent part of rendering: hit mask and Lambert shading, each (V, R·s, R·s) (s = supersample).

    Geometry and lighting do not depend on the albedo, so a bank of several colours of one shape traces its rays once.
    """
    sdf = SHAPE_SDFS[shape]
    az = torch.as_tensor(azimuths, dtype=torch.float64).reshape(-1)
    el = torch.as_tensor(elevations, dtype=torch.float64).reshape(-1)
    hi = resolution * supersample
    origins, dirs = camera_rays(az, el, distance, hi)
    depth, hit = _sphere_trace(sdf, origins, dirs, distance)
    nx, ny, nz = _normals(sdf, origins + depth * dirs)
    shade = torch.full_like(depth, AMBIENT)
    for strength, light in ((KEY, KEY_LIGHT), (FILL, FILL_LIGHT)):
        lx, ly, lz = (c / math.hypot(*light) for c in light)
        shade = shade + strength * (nx * lx + ny * ly + nz * lz).clamp_min(0)  # Lambert: max(0, n·l)
    return hit.reshape(-1, hi, hi), shade.reshape(-1, hi, hi)


def composite(hit: torch.Tensor, shade: torch.Tensor, colour: str, supersample: int = 2) -> torch.Tensor:
    """Albedo × shading over the background, then a box filter (anti-aliasing): (V, R·s, R·s) ×2 → (V, 3, R, R)."""
    albedo = torch.tensor(COLOUR_RGB[colour]).view(1, 3, 1, 1)
    background = torch.tensor(BACKGROUND_RGB).view(1, 3, 1, 1)
    img = torch.where(hit[:, None], (shade[:, None] * albedo).clamp(0, 1), background)
    return F.avg_pool2d(img, supersample) if supersample > 1 else img


def render_views(
    shape: str,
    colour: str,
    azimuths,
    elevations,
    distance: float = 2.6,
    resolution: int = 32,
    supersample: int = 2,
) -> torch.Tensor:
    """Render one coloured primitive from V cameras: azimuths/elevations (V,) degrees → (V, 3, R, R) in [0, 1]."""
    hit, shade = shade_views(shape, azimuths, elevations, distance, resolution, supersample)
    return composite(hit, shade, colour, supersample)


def render(shape: str, colour: str, azimuth: float = 0.0, elevation: float = 20.0, **kwargs) -> torch.Tensor:
    """One view: → (3, R, R) in [0, 1]; kwargs as in `render_views`."""
    return render_views(shape, colour, [azimuth], [elevation], **kwargs)[0]


# ---------------------------------------------------------------------------------------------------------------------
# Corruptions: pure functions (..., 3, H, W) → (..., 3, H, W), values in [0, 1]
# ---------------------------------------------------------------------------------------------------------------------


def _as_batch(fn):
    """Let a function written for (B, 3, H, W) accept (3, H, W) or (B, 3, H, W)."""

    def wrapped(img: torch.Tensor) -> torch.Tensor:
        flat = img.reshape(-1, *img.shape[-3:])
        return fn(flat).reshape(img.shape).clamp(0, 1)

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


def _luma(img: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma: (B, 3, H, W) → (B, 1, H, W)."""
    w = img.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)


def _content_seed(img: torch.Tensor, salt: str) -> int:
    """A seed that is a pure function of the image (so that a corruption is a pure function but differs per view)."""
    data = (img.detach().cpu().float() * 255).round().to(torch.uint8).numpy().tobytes()
    return zlib.crc32(data, zlib.crc32(salt.encode()))


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(img.device)
    c = img.shape[1]
    out = F.pad(img, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _desaturate(img: torch.Tensor, amount: float) -> torch.Tensor:
    return img + amount * (_luma(img) - img)


@_as_batch
def oversaturate(img: torch.Tensor) -> torch.Tensor:
    """Push colours 2.2× away from their grey value (and clip): garish, flat-looking colour."""
    return _luma(img) + 2.2 * (img - _luma(img))


@_as_batch
def smooth(img: torch.Tensor) -> torch.Tensor:
    """Waxy smoothing: a mild Gaussian blur (σ = 0.8 px at 32², scaled with resolution)."""
    return _gaussian_blur(img, 0.8 * img.shape[-1] / 32)


@_as_batch
def blur(img: torch.Tensor) -> torch.Tensor:
    """Out of focus: a strong Gaussian blur (σ = 1.6 px at 32², scaled with resolution)."""
    return _gaussian_blur(img, 1.6 * img.shape[-1] / 32)


def pixelate_k(img: torch.Tensor, k: int) -> torch.Tensor:
    """Average k×k blocks and repeat them: every k×k block (aligned at 0) becomes constant."""
    small = F.avg_pool2d(img, k)
    return F.interpolate(small, scale_factor=k, mode="nearest")


@_as_batch
def pixelate(img: torch.Tensor) -> torch.Tensor:
    """Blocky pixel art: constant blocks of R/8 × R/8 pixels (4×4 at 32²)."""
    return pixelate_k(img, max(2, img.shape[-1] // 8))


@_as_batch
def cartoon(img: torch.Tensor) -> torch.Tensor:
    """Posterised colour (4 levels per channel) with black outlines where luma changes sharply."""
    flat = (img * 3).round() / 3
    luma = _luma(img)
    gy = F.pad(luma[..., 1:, :] - luma[..., :-1, :], (0, 0, 0, 1)).abs()
    gx = F.pad(luma[..., :, 1:] - luma[..., :, :-1], (0, 1, 0, 0)).abs()
    edge = ((gx + gy) > 0.12).to(img.dtype)
    return flat * (1 - edge)


@_as_batch
def fog(img: torch.Tensor) -> torch.Tensor:
    """White fog: blend 55 % towards near-white, which lowers contrast and raises brightness."""
    return 0.45 * img + 0.55 * 0.95


@_as_batch
def haze(img: torch.Tensor) -> torch.Tensor:
    """Blue-grey atmospheric haze: blend 45 % towards (0.70, 0.74, 0.82) and soften slightly."""
    tint = img.new_tensor([0.70, 0.74, 0.82]).view(1, 3, 1, 1)
    return _gaussian_blur(0.55 * img + 0.45 * tint, 0.5 * img.shape[-1] / 32)


@_as_batch
def scramble(img: torch.Tensor) -> torch.Tensor:
    """Bad structure: the image cut into a 4×4 grid of tiles, tiles permuted by a fixed permutation."""
    b, c, h, w = img.shape
    g = 4
    tiles = img.reshape(b, c, g, h // g, g, w // g).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c, h // g, w // g)
    perm = torch.randperm(g * g, generator=torch.Generator().manual_seed(7))
    tiles = tiles[:, perm.to(img.device)]
    return tiles.reshape(b, g, g, c, h // g, w // g).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@_as_batch
def warp(img: torch.Tensor) -> torch.Tensor:
    """Malformed: a smooth fixed elastic warp (displacement up to ~12 % of the image) bends the object's outline."""
    b, _, h, w = img.shape
    gen = torch.Generator().manual_seed(11)
    coarse = torch.randn(1, 2, 4, 4, generator=gen) * 0.12
    flow = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = (torch.stack([xs, ys], dim=-1)[None] + flow).to(img)
    return F.grid_sample(img, grid.expand(b, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=True)


def _noise_like(img: torch.Tensor, salt: str) -> torch.Tensor:
    """Standard normal noise (B, 3, H, W), seeded per image from its content (deterministic, differs per view)."""
    noise = [
        torch.randn(im.shape, generator=torch.Generator().manual_seed(_content_seed(im, salt)), dtype=img.dtype)
        for im in img
    ]
    return torch.stack(noise).to(img.device)


@_as_batch
def add_noise_pixels(img: torch.Tensor) -> torch.Tensor:
    """Sensor noise: i.i.d. Gaussian, std 0.12, fixed per image."""
    return img + 0.12 * _noise_like(img, "noisy")


@_as_batch
def low_quality(img: torch.Tensor) -> torch.Tensor:
    """Cheap-camera look: 2×2 blocks, 6 grey levels per channel and mild fixed noise."""
    img = pixelate_k(img, 2) + 0.05 * _noise_like(img, "low quality")
    return (img.clamp(0, 1) * 5).round() / 5


@_as_batch
def low_contrast(img: torch.Tensor) -> torch.Tensor:
    """Keep 35 % of the deviation from the image's mean grey."""
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    return mean + 0.35 * (img - mean)


@_as_batch
def dull(img: torch.Tensor) -> torch.Tensor:
    """Washed-out: 75 % desaturated and contrast halved around the mean."""
    img = _desaturate(img, 0.75)
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    return mean + 0.5 * (img - mean)


@_as_batch
def darken(img: torch.Tensor) -> torch.Tensor:
    """Under-exposed: brightness × 0.35."""
    return 0.35 * img


@_as_batch
def gloom(img: torch.Tensor) -> torch.Tensor:
    """Gloomy: half desaturated, darkened to 50 %, cast towards blue-grey."""
    tint = img.new_tensor([0.85, 0.90, 1.10]).view(1, 3, 1, 1)
    return 0.5 * _desaturate(img, 0.5) * tint


def identity(img: torch.Tensor) -> torch.Tensor:
    """The clean render."""
    return img


# Variant name → (function, the descriptor words that select it). The clean variant carries the target-suffix words;
# NFSD-only words that mean the same as a source word share its function ("out of focus" = blurry, ...).
VARIANTS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[str, ...]]] = {
    "clean": (identity, ("detailed", "high resolution", "high quality", "sharp")),
    "oversaturated": (oversaturate, ("oversaturated",)),
    "smooth": (smooth, ("smooth",)),
    "pixelated": (pixelate, ("pixelated", "low-resolution")),
    "cartoon": (cartoon, ("cartoon", "unrealistic")),
    "foggy": (fog, ("foggy",)),
    "hazy": (haze, ("hazy",)),
    "blurry": (blur, ("blurry", "out of focus")),
    "bad structure": (scramble, ("bad structure",)),
    "noisy": (add_noise_pixels, ("noisy",)),
    "malformed": (warp, ("malformed", "ugly")),
    "low quality": (low_quality, ("low quality",)),
    "low contrast": (low_contrast, ("low contrast",)),
    "dull": (dull, ("dull",)),
    "dark": (darken, ("dark",)),
    "gloomy": (gloom, ("gloomy",)),
}
MIRROR = "anti-"
CORRUPTIONS: tuple[str, ...] = tuple(name for name in VARIANTS if name != "clean")
# clean, the corruptions, then their mirrors: the order of a view's components in the prior's banks
VARIANT_NAMES: tuple[str, ...] = ("clean", *CORRUPTIONS, *(MIRROR + name for name in CORRUPTIONS))
WORD_TO_VARIANT: dict[str, str] = {word: name for name, (_, words) in VARIANTS.items() for word in words}


def variant_family(name: str) -> tuple[str, ...]:
    """The variants a descriptor's variant stands for: ("clean",) or (corruption, its mirror)."""
    return (name,) if name == "clean" else (name, MIRROR + name)


def corrupt(img: torch.Tensor, variant: str) -> torch.Tensor:
    """Apply the named variant (see `VARIANTS`): (..., 3, H, W) → (..., 3, H, W), in [0, 1] except for mirrors
    ("anti-<corruption>" = 2·img − corruption(img), the corruption reflected through the clean image)."""
    if variant.startswith(MIRROR):
        return 2 * img - VARIANTS[variant.removeprefix(MIRROR)][0](img)
    return VARIANTS[variant][0](img)
