"""An exact prior over 2D points: named Gaussian mixtures whose ε̂ is closed-form (design.md §3, world (a)).

Every named shape ("ring", "grid", "spiral", "moons") exists in two variants, so the paper's bridge has a meaning here:

    sharp     means μ_k,            std `sharp_std`     (the target: ", detailed high resolution, high quality, sharp")
    degraded  means c·μ_k + shift,  std `degraded_std`  (the source: ", oversaturated, smooth, ..., malformed")

i.e. the degraded version is a blurred copy of the sharp one (c = 1, shift = 0 by default). Why the same means by
default: the "ours" field ε̂(x_t; y_tgt) − ε̂(x_t; y_src) vanishes on the target modes only when both variants share
their means; with c ≠ 1 or a shift it is a nearly constant translation that carries particles through the target and
beyond.
Prompts mirror the image world:

    "a ring"                        both variants, sharp with weight `sharp_weight`, degraded with 1 − sharp_weight
    "a ring" + TGT_SUFFIX           the sharp ring only                          (y_tgt of "ours")
    "a ring" + SRC_SUFFIX           the degraded ring only                       (y_src of "ours")
    ", blurry"                      the degraded variant of every shape (no shape named = all shapes)
    ""                              the union of everything (∅, the unconditional prompt of CFG)

A prompt is split at commas; each phrase is either a shape name (with an optional article: "a ring", "the grid") or a
descriptor phrase of SRC_SUFFIX / TGT_SUFFIX / the NFSD negative prompt (the negative prompt's words also select the
degraded variant, so NFSD and CSD run here too). Several shapes in one prompt ("a ring, a grid") mean their union.
Anything else raises ValueError listing the vocabulary. The model space is (N, 2): every particle is one batch row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from scoredist.guidance.base import Guidance, SourceModel, scaled_linear_alphas_cumprod
from scoredist.guidance.exact.mixture import GaussianMixture
from scoredist.prompts import NFSD_NEGATIVE, SRC_SUFFIX, TGT_SUFFIX

ARTICLES = ("a ", "an ", "the ")


def _phrases(text: str) -> list[str]:
    """Comma-separated phrases, lower-cased, hyphens as spaces: ", high  Quality,Low-resolution" → ["high quality",
    "low resolution"] (the shapes world's prompts.py normalises the same way)."""
    return [" ".join(p.replace("-", " ").split()).lower() for p in text.rstrip(". ").split(",") if p.strip()]


SHARP_WORDS = frozenset(_phrases(TGT_SUFFIX))
DEGRADED_WORDS = frozenset(_phrases(SRC_SUFFIX)) | frozenset(_phrases(NFSD_NEGATIVE))


def shape_means(name: str) -> torch.Tensor:
    """Means (K, 2) of the sharp version of a built-in shape; every shape fits in [−2.2, 2.2]²."""
    if name == "ring":  # 8 modes on a circle of radius 2
        theta = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return 2.0 * torch.stack([theta.cos(), theta.sin()], dim=1)
    if name == "grid":  # 3×3 modes, spacing 1.5
        axis = torch.tensor([-1.5, 0.0, 1.5], dtype=torch.float64)
        return torch.cartesian_prod(axis, axis)
    if name == "spiral":  # 12 modes on an Archimedean spiral, 1.5 turns
        s = torch.linspace(0, 1, 12, dtype=torch.float64)
        r, theta = 0.3 + 1.7 * s, 3 * math.pi * s
        return torch.stack([r * theta.cos(), r * theta.sin()], dim=1)
    if name == "moons":  # two interleaved half circles, 6 modes each, centred on the origin
        theta = torch.linspace(0, math.pi, 6, dtype=torch.float64)
        upper = torch.stack([theta.cos(), theta.sin()], dim=1)
        lower = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], dim=1)
        return 1.6 * (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64))
    raise ValueError(f"unknown built-in shape {name!r}; built-in shapes: ring, grid, spiral, moons")


BUILTIN_SHAPES = ("ring", "grid", "spiral", "moons")


class Points2DPrior(Guidance):
    """Exact ε̂(x_t; y, t) of named 2D Gaussian mixtures, on Stable Diffusion's scaled-linear schedule (T = 1000).

    Args:
        shapes: shape names to offer (built-ins: ring, grid, spiral, moons), or a dict name → list of sharp means
            [[x, y], ...] to define custom ones (e.g. {"dot": [[1, 0]]} is a single Gaussian).
        sharp_std: std of every component of a sharp (target) variant.
        degraded_std: std of every component of a degraded (source) variant.
        degraded_contraction: degraded means are c·μ_k + degraded_shift ("smooth": modes pulled together).
        degraded_shift: (2,) offset of the degraded means.
        sharp_weight: weight of the sharp variant when a prompt names no descriptor.
        preview_prompt: density drawn under the particles by `decode`; None = the sharp variant (the target) of the
            shapes named by the last prompt given to `check_prompt` (the trainer checks the run's prompt), or of
            every shape before any check.
        preview_size: side of the `decode` image in pixels.
        extent: `decode` shows the square [−extent, extent]².
        device: where ε̂ is computed.
        precision: accepted for the common interface; the mixture always computes in float64 and returns float32.
    """

    def __init__(
        self,
        shapes: Sequence[str] | dict[str, Sequence[Sequence[float]]] = BUILTIN_SHAPES,
        sharp_std: float = 0.1,
        degraded_std: float = 0.4,
        degraded_contraction: float = 1.0,
        degraded_shift: Sequence[float] = (0.0, 0.0),
        sharp_weight: float = 0.5,
        preview_prompt: str | None = None,
        preview_size: int = 256,
        extent: float = 3.0,
        device: str = "cpu",
        precision: str = "fp32",
    ):
        super().__init__(scaled_linear_alphas_cumprod())
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        if not 0.0 <= sharp_weight <= 1.0:
            raise ValueError(f"sharp_weight must lie in [0, 1], got {sharp_weight}")
        if isinstance(shapes, Mapping):  # also Hydra's DictConfig, whose lists are ListConfig: convert to floats
            sharp = {
                str(name): torch.tensor([[float(v) for v in row] for row in m], dtype=torch.float64).reshape(-1, 2)
                for name, m in shapes.items()
            }
        else:
            sharp = {name: shape_means(name) for name in shapes}
        if not sharp:
            raise ValueError("Points2DPrior needs at least one shape")
        self.shape_names = tuple(sharp)
        self.sharp_weight = float(sharp_weight)
        self.preview_prompt = preview_prompt
        self._checked_shapes: tuple[str, ...] = ()  # shapes of the last checked prompt, for the default preview
        self.preview_size = int(preview_size)
        self.extent = float(extent)

        # One mixture holds every component; a prompt is a row of log-weights with −inf on excluded components.
        shift = torch.tensor([float(v) for v in degraded_shift], dtype=torch.float64)
        means, variances, self._blocks, start = [], [], {}, 0
        for name, mu in sharp.items():
            for variant, m, std in (
                ("sharp", mu, sharp_std),
                ("degraded", degraded_contraction * mu + shift, degraded_std),
            ):
                means.append(m)
                variances.append(torch.full((len(m),), float(std) ** 2, dtype=torch.float64))
                self._blocks[(name, variant)] = slice(start, start + len(m))
                start += len(m)
        self.mixture = GaussianMixture(torch.cat(means), variances=torch.cat(variances))
        self._abar64 = scaled_linear_alphas_cumprod()  # exact ᾱ; the float32 buffer is for the losses
        self._rows: dict[str, torch.Tensor] = {}  # prompt → (K,) log-weights on the current device
        self._preview_bg: torch.Tensor | None = None
        self._sync_device(torch.device(device))
        self.to(device)

    # ------------------------------------------------------------------ prompts
    def vocabulary(self) -> str:
        return (
            f"shapes: {', '.join(self.shape_names)} (optionally 'a '/'the ' before them); "
            f"sharp descriptors: {', '.join(sorted(SHARP_WORDS))}; "
            f"degraded descriptors: {', '.join(sorted(DEGRADED_WORDS))}"
        )

    def parse(self, prompt: str) -> tuple[tuple[str, ...], str | None]:
        """prompt → (shape names, variant) with variant "sharp", "degraded" or None (both); raises ValueError."""
        shapes, variants = [], set()
        for phrase in _phrases(prompt):
            if phrase in SHARP_WORDS:
                variants.add("sharp")
                continue
            if phrase in DEGRADED_WORDS:
                variants.add("degraded")
                continue
            name = next((phrase[len(a) :] for a in ARTICLES if phrase.startswith(a)), phrase)
            if name not in self.shape_names:
                raise ValueError(
                    f"Points2DPrior cannot condition on {phrase!r} in prompt {prompt!r}. Prompts are comma-separated "
                    f"phrases from this vocabulary: {self.vocabulary()}."
                )
            if name not in shapes:
                shapes.append(name)
        if len(variants) > 1:
            raise ValueError(
                f"prompt {prompt!r} mixes sharp and degraded descriptors; use one kind "
                f"(vocabulary: {self.vocabulary()})"
            )
        return tuple(shapes) or self.shape_names, next(iter(variants), None)

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError (listing the vocabulary) if `prompt` is not in this world; keep its shapes for previews."""
        shapes, _ = self.parse(prompt)
        if shapes != self._checked_shapes:
            self._checked_shapes, self._preview_bg = shapes, None

    def log_weights(self, prompt: str) -> torch.Tensor:
        """Normalised log π_k (K,) float64 of the mixture a prompt names; −inf marks excluded components."""
        if prompt not in self._rows:
            shapes, variant = self.parse(prompt)
            w = torch.zeros(self.mixture.means.shape[0], dtype=torch.float64)
            share = {"sharp": 1.0, "degraded": 0.0} if variant == "sharp" else {"sharp": 0.0, "degraded": 1.0}
            if variant is None:
                share = {"sharp": self.sharp_weight, "degraded": 1.0 - self.sharp_weight}
            for name in shapes:
                for v, p in share.items():
                    block = self._blocks[(name, v)]
                    w[block] = p / len(shapes) / (block.stop - block.start)
            self._rows[prompt] = w.log().to(self.mixture.means.device)
        return self._rows[prompt]

    # ------------------------------------------------------------------ the model
    def _sync_device(self, device: torch.device) -> None:
        """Keep the float64 tables (plain attributes, so `.to(dtype)` never rounds them) beside the inputs."""
        if self.mixture.means.device != device:
            self.mixture.to(device)
            self._abar64 = self._abar64.to(device)
            self._rows = {k: v.to(device) for k, v in self._rows.items()}

    @torch.no_grad()
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Exact ε̂ = E[ε | x_t; y]: x_t (N, 2), t (N,) long, N prompts → (N, 2) float32, one batched evaluation."""
        if x_t.dim() != 2 or x_t.shape[1] != 2 or len(prompts) != x_t.shape[0]:
            raise ValueError(
                f"expected x_t (N, 2) and N prompts, got x_t {tuple(x_t.shape)} and {len(prompts)} prompts"
            )
        self._sync_device(x_t.device)
        # a table of the distinct prompts' rows, gathered per row: N is often 1000s of particles but few prompts
        distinct = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        table = torch.stack([self.log_weights(p) for p in distinct])
        log_w = table[torch.tensor([distinct[p] for p in prompts], device=table.device)]  # (N, K)
        abar = self._abar64[t.to(x_t.device).long()]
        return self.mixture.predict_noise(x_t.double(), abar, log_w).float()

    def mixture_for(self, prompt: str) -> GaussianMixture:
        """The GaussianMixture of x_0 under `prompt`, restricted to its components (for sampling and figures)."""
        log_w = self.log_weights(prompt)
        keep = torch.isfinite(log_w)
        return GaussianMixture(self.mixture.means[keep], log_w[keep], self.mixture.variances[keep])

    def log_prob(self, points: torch.Tensor, prompt: str) -> torch.Tensor:
        """Exact log p(x_0 = points | prompt): points (..., 2) → (...) float64."""
        flat = points.reshape(-1, 2).double().to(self.mixture.means.device)
        ones = torch.ones(flat.shape[0], dtype=torch.float64, device=flat.device)
        # at ᾱ = 1 the per-component term of log_posterior is exactly log π_k + log N(x; μ_k, σ_k² I)
        log_joint = self.mixture.log_posterior(flat, ones, self.log_weights(prompt).expand(flat.shape[0], -1))
        return torch.logsumexp(log_joint, dim=1).reshape(points.shape[:-1])

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, prompt: str) -> dict:
        """Mean exact log-density of the particles under the prompt and under its sharp (target) version."""
        shapes, _ = self.parse(prompt)
        return {
            "mean_log_prob": self.log_prob(x, prompt).mean().item(),
            "mean_log_prob_sharp": self.log_prob(x, ", ".join(shapes) + TGT_SUFFIX).mean().item(),
        }

    def density(self, prompt: str, grid: torch.Tensor) -> torch.Tensor:
        """p(x_0 | prompt) on a grid (..., 2) → (...) float64, for figures."""
        return self.log_prob(grid, prompt).exp()

    def sample_prior(self, prompt: str, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples x_0 ~ p(· | prompt), (num_samples, 2) float32 (no ODE; `sample` runs DDIM)."""
        return self.mixture_for(prompt).sample(num_samples, generator).float()

    def sample_shape(self) -> tuple[int, ...]:
        return (2,)

    def check_resolution(self, height: int, width: int) -> None:
        """Points have no resolution; accept anything."""

    # ------------------------------------------------------------------ images
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """Identity: the points renderer already outputs model space (N, 2)."""
        return rgb

    def _pixel_grid(self) -> torch.Tensor:
        """Centres of the preview's pixels in world coordinates, (S, S, 2); row 0 is the top (largest y)."""
        s, e = self.preview_size, self.extent
        c = (torch.arange(s, dtype=torch.float64) + 0.5) / s * 2 * e - e
        ys, xs = torch.meshgrid(c.flip(0), c, indexing="ij")
        return torch.stack([xs, ys], dim=-1)

    def preview_background(self) -> torch.Tensor:
        """The preview density as RGB (3, S, S): white where p ≈ 0, blue where p peaks (gamma 0.5, for visibility)."""
        if self._preview_bg is None:
            prompt = self.preview_prompt
            if prompt is None:  # the target of the bridge for the run's shapes
                prompt = ", ".join(self._checked_shapes) + TGT_SUFFIX
            d = self.density(prompt, self._pixel_grid().to(self.mixture.means.device)).cpu()
            d = (d / d.max()).sqrt().float()
            ink = torch.tensor([0.75, 0.55, 0.2]).view(3, 1, 1)  # subtracted from white → a blue
            self._preview_bg = 1.0 - ink * d[None]
        return self._preview_bg

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Particles (N, 2) → preview RGB (1, 3, S, S) in [0, 1]: red 3×3-pixel dots over the preview density.

        Particles outside [−extent, extent]² are not drawn.
        """
        img = self.preview_background().clone()
        s, e = self.preview_size, self.extent
        pts = x.detach().reshape(-1, 2).double().cpu()
        col = torch.floor((pts[:, 0] + e) / (2 * e) * s).long()
        row = torch.floor((e - pts[:, 1]) / (2 * e) * s).long()
        inside = (col >= 0) & (col < s) & (row >= 0) & (row < s)
        row, col = row[inside], col[inside]
        red = torch.tensor([0.85, 0.1, 0.1])
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = (row + dr).clamp(0, s - 1), (col + dc).clamp(0, s - 1)
                img[:, r, c] = red[:, None]
        return img[None]

    # ------------------------------------------------------------------ VSD
    def make_source_model(self, residual: bool = True) -> PointsSourceModel:
        """A fresh ε_ψ for VSD. residual=True (default) adds a zero-initialised MLP to this prior's own ε̂, so ε_ψ
        starts equal to ε_φ, like a LoRA copy; residual=False is the plain MLP, which starts near 0."""
        base = self.predict_noise if residual else None
        return PointsSourceModel(base=base, num_train_timesteps=self.num_train_timesteps).to(self.mixture.means.device)


class PointsSourceModel(SourceModel):
    """ε_ψ(x_t; y, t) = [ε_φ(x_t; y, t)] + MLP([x_t, sinusoidal(t), embedding(y)]): x_t (N, 2) → (N, 2).

    Each distinct prompt string gets its own learned embedding on first use (up to `max_prompts`; "" is always
    index 0, so VSD's condition dropout has its own row). `parameters()` yields only the MLP and the embeddings.
    """

    def __init__(
        self,
        base=None,
        hidden: int = 128,
        time_dim: int = 32,
        prompt_dim: int = 32,
        max_prompts: int = 64,
        num_train_timesteps: int = 1000,
    ):
        super().__init__()
        self._base = [base]  # a list, so the frozen prior is not registered as a submodule
        self.time_dim = time_dim
        self.num_train_timesteps = num_train_timesteps
        self.prompt_index: dict[str, int] = {"": 0}
        self.embedding = nn.Embedding(max_prompts, prompt_dim)
        self.mlp = nn.Sequential(
            nn.Linear(2 + time_dim + prompt_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2),
        )
        if base is not None:  # start exactly at the frozen prior, as a LoRA copy would
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """Transformer-style sinusoids of the integer timestep: t (N,) → (N, time_dim)."""
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def _indices(self, prompts: Sequence[str], device) -> torch.Tensor:
        for p in prompts:
            if p not in self.prompt_index:
                if len(self.prompt_index) >= self.embedding.num_embeddings:
                    raise ValueError(f"source model holds at most {self.embedding.num_embeddings} distinct prompts")
                self.prompt_index[p] = len(self.prompt_index)
        return torch.tensor([self.prompt_index[p] for p in prompts], device=device)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str], cameras=None) -> torch.Tensor:
        """x_t (N, 2), t (N,) long, N prompts → ε_ψ (N, 2) float32, differentiable in the parameters. cameras (what
        VSD passes for rows with one) are ignored."""
        x_t = x_t.float()
        features = torch.cat(
            [x_t, self.time_embedding(t.to(x_t.device)), self.embedding(self._indices(prompts, x_t.device))], dim=1
        )
        eps = self.mlp(features)
        base = self._base[0]
        return eps if base is None else eps + base(x_t, t, prompts)
