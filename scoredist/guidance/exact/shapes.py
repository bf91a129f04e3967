"""ShapesPrior: an exact Gaussian-mixture prior over 3×R×R images of the procedural shapes world (design.md §3).

Every caption "<colour> <shape>" owns a bank of views (azimuths × elevations). Every view owns one mixture component
per variant: the clean render, one per corruption and one per corruption's mirror (`world.VARIANT_NAMES`; see world.py
for why artifacts come in mirrored pairs). Component k of a caption bank is view k // V_n, variant k % V_n (V_n
variants). Fixed weights: views uniform (or, with `front_weight` w > 1, each front view w times likelier than any
other: the single-view bias behind many-faced 3D objects, for +experiment=janus_shapes); within a view the clean
component has `clean_weight` and the other variants share the rest equally; captions uniform. Means are the renders
in [−1, 1]; every component has the same isotropic variance σ² (`variance`).

A prompt selects components (vocabulary.py):
- colour/shape words select captions (none named = all), "" therefore selects the whole world;
- no descriptor selects every variant (clean + artifacts: the "SDS source has artifacts" story of the paper);
  descriptors select the union of the variants they name, each artifact with its mirror (target-suffix words name the
  clean one);
- view phrases restrict the bank views: overhead if elevation ≥ `overhead_elevation`, otherwise by azimuth:
  front |az| ≤ 45°, back |az| ≥ 135°, side in between.
Excluded components get log-weight −inf in that row, so in the reference every row of a batch, whatever its prompt, is
evaluated in one `GaussianMixture.predict_noise` call, and the result is exactly E[ε | x_t, y].

Caption banks are rendered lazily (only those some prompt needs) and cached, in memory and on disk (`bank_cache.py`:
rendered once per world setting, loaded by every later process); the empty prompt needs all of them.

Speed (mixture.py, `GaussianMixture.predict_noise_pruned`): rows are grouped by the captions they select and each
group is evaluated over its own captions' components only (a "a red cube" row never sees the other 29 banks), and
every row skips the components a float32 screen with a proven error bound shows to be negligible, to within `tol`
(1e-7 per entry of ε, before the float32 cast) of the all-components float64 ε; `predict_noise_reference` is that
reference (one call over the union of the batch's selections, every component in float64).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scoredist.guidance.base import Guidance, SourceModel, scaled_linear_alphas_cumprod
from scoredist.guidance.exact import bank_cache
from scoredist.guidance.exact.mixture import GaussianMixture
from scoredist.guidance.exact.vocabulary import COLOURS, SHAPES, ParsedPrompt, parse_prompt, vocabulary_message
from scoredist.guidance.exact.world import (
    COLOUR_RGB,
    SHAPE_SDFS,
    VARIANT_NAMES,
    composite,
    corrupt,
    render,
    shade_views,
    variant_family,
)

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ComponentLabel:
    """What one mixture component is: e.g. red cube, blurry, seen from azimuth 45°, elevation 15°."""

    colour: str
    shape: str
    variant: str
    azimuth: float
    elevation: float
    view: str

    @property
    def caption(self) -> str:
        return f"{self.colour} {self.shape}"

    def __str__(self) -> str:
        return f"{self.caption} ({self.variant}, {self.view}, az {self.azimuth:g}°, el {self.elevation:g}°)"


def view_name(azimuth: float, elevation: float, overhead_elevation: float = 60.0) -> str:
    """The view phrase a camera gets (threestudio-style): overhead first, then front/side/back by azimuth."""
    if elevation >= overhead_elevation:
        return "overhead view"
    az = (azimuth + 180.0) % 360.0 - 180.0  # (−180, 180]
    if abs(az) <= 45.0:
        return "front view"
    if abs(az) >= 135.0:
        return "back view"
    return "side view"


class ShapesPrior(Guidance):
    """Exact mixture prior over images of the shapes world; pixels in [−1, 1], model input (N, 3, R, R)."""

    channels = 3
    downscale = 1

    def __init__(
        self,
        resolution: int = 32,
        num_azimuths: int = 8,
        elevations: Sequence[float] = (15.0, 40.0),
        distance: float = 2.6,
        variance: float = 0.01,
        clean_weight: float = 0.5,
        supersample: int = 2,
        overhead_elevation: float = 60.0,
        front_weight: float = 1.0,
        mixture_cache_size: int = 4,
        device: str = "cpu",
        precision: str = "fp32",
    ):
        super().__init__(scaled_linear_alphas_cumprod())
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not 0.0 < clean_weight < 1.0:
            raise ValueError(f"clean_weight must be in (0, 1), got {clean_weight}")
        # The mixture is exact and cheap, so it always runs in float64 whatever `precision` says (the result is fp32).
        self.precision = precision
        self.resolution = int(resolution)
        self.distance = float(distance)
        self.variance = float(variance)
        self.supersample = int(supersample)
        self.overhead_elevation = float(overhead_elevation)
        self.mixture_cache_size = int(mixture_cache_size)
        self._abar64 = scaled_linear_alphas_cumprod()  # exact ᾱ for the float64 mixture (the buffer is float32)

        azimuths = [360.0 * i / num_azimuths for i in range(num_azimuths)]
        self.bank_views: list[tuple[float, float]] = [(az, float(el)) for el in elevations for az in azimuths]
        self.bank_view_names = [view_name(az, el, self.overhead_elevation) for az, el in self.bank_views]
        n_var, n_view = len(VARIANT_NAMES), len(self.bank_views)
        self._variant_of = torch.arange(n_var).repeat(n_view)  # (K_c,) component → variant index
        self._view_of = torch.arange(n_view).repeat_interleave(n_var)  # (K_c,) component → view index
        variant_logw = torch.full((n_var,), math.log((1 - clean_weight) / (n_var - 1)), dtype=torch.float64)
        variant_logw[VARIANT_NAMES.index("clean")] = math.log(clean_weight)
        # front_weight > 1: a front view is that much likelier than any other view of the same object, whatever the
        # prompt's view phrase does not exclude — the bias of 2D models that makes a 3D object many-faced (Janus)
        if front_weight <= 0:
            raise ValueError(f"front_weight must be positive, got {front_weight}")
        front = torch.tensor([name == "front view" for name in self.bank_view_names], dtype=torch.float64)
        view_logw = torch.log_softmax(math.log(front_weight) * front, 0)  # (n_view,)
        if front_weight == 1.0:
            view_logw = torch.full((n_view,), -math.log(n_view), dtype=torch.float64)  # uniform, as always before
        self._component_logw = variant_logw[self._variant_of] + view_logw[self._view_of]  # (K_c,), sums to 1

        self.captions: list[tuple[str, str]] = [(c, s) for c in COLOURS for s in SHAPES]
        self._banks: dict[tuple[str, str], torch.Tensor] = {}  # caption → means (K_c, D) float64 on CPU
        self._world_table: torch.Tensor | None = None  # (30·K_c, D): every bank in its rows, canonical caption order
        self._shading: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # shape → (hit, shade), shared by colours
        self._mixtures: OrderedDict = OrderedDict()  # (captions, device) → (GaussianMixture, {caption: offset})
        self._caption_mixtures: dict = {}  # (caption, device) → GaussianMixture sharing the bank's memory
        self.build_seconds = 0.0  # total time spent rendering banks (measured; reported by tests/benchmarks)
        self.load_seconds = 0.0  # total time spent loading banks from the disk cache
        self.tol = 1e-7  # max |ε − ε_reference| per entry that the pruned evaluation may add (mixture.py)
        self.pruning: dict = {}  # further options of GaussianMixture.predict_noise_pruned (tests force the screen)
        self.last_info: dict | None = None  # the last CPU predict_noise call's pruning record, per row (benchmarks)
        self.to(device)

    # ----------------------------------------------------------------------------------------------------------------
    # Banks and selections
    # ----------------------------------------------------------------------------------------------------------------

    @property
    def components_per_caption(self) -> int:
        return len(self.bank_views) * len(VARIANT_NAMES)

    def bank(self, colour: str, shape: str) -> torch.Tensor:
        """Component means of one caption, rendered (or loaded from the disk cache) on first use: (K_c, 3·R·R) float64
        in [−1, 1]."""
        key = (colour, shape)
        if key not in self._banks:
            start = time.perf_counter()
            path = bank_cache.bank_path(self.world_key(), colour, shape)
            variants = bank_cache.load(path, self.world_key(), key, self._bank_shape())
            if variants is not None:
                self.load_seconds += time.perf_counter() - start
            else:
                variants = self._render_bank(colour, shape)
                self.build_seconds += time.perf_counter() - start
                bank_cache.save(path, self.world_key(), key, variants)
            # Each bank lives in its rows of one world table (allocated untouched: the OS commits only the pages of
            # the banks written), so the whole world's mixture is that table itself, never a concatenated copy.
            if self._world_table is None:
                d = 3 * self.resolution**2
                self._world_table = torch.empty(
                    len(self.captions) * self.components_per_caption, d, dtype=torch.float64
                )
            first = self.captions.index(key) * self.components_per_caption
            rows = self._world_table[first : first + self.components_per_caption]
            rows.copy_(variants.reshape(self.components_per_caption, -1)).mul_(2).sub_(1)  # = 2·x − 1 in float64
            self._banks[key] = rows
        return self._banks[key]

    def _bank_shape(self) -> tuple[int, ...]:
        return (len(self.bank_views), len(VARIANT_NAMES), 3, self.resolution, self.resolution)

    def _render_bank(self, colour: str, shape: str) -> torch.Tensor:
        """Every variant of every bank view: (V, n_var, 3, R, R) float32 in [0, 1] (mirrors may leave it)."""
        if shape not in self._shading:
            az, el = zip(*self.bank_views)
            self._shading[shape] = shade_views(shape, az, el, self.distance, self.resolution, self.supersample)
        clean = composite(*self._shading[shape], colour, self.supersample)  # (V, 3, R, R)
        return torch.stack([corrupt(clean, name) for name in VARIANT_NAMES], dim=1)  # (V, n_var, 3, R, R)

    def world_key(self) -> str:
        """What the banks depend on: the world's settings, the world's code and torch (bank_cache.world_key)."""
        if not hasattr(self, "_world_key"):
            self._world_key = bank_cache.world_key(
                resolution=self.resolution,
                bank_views=self.bank_views,
                distance=self.distance,
                supersample=self.supersample,
            )
        return self._world_key

    def _selection(self, prompt: str) -> tuple[list[tuple[str, str]], torch.Tensor]:
        """Captions a prompt selects and, within each caption bank, the component mask (K_c,) bool."""
        return self._selection_of(parse_prompt(prompt), prompt)

    def _selection_of(self, parsed: ParsedPrompt, prompt: str) -> tuple[list[tuple[str, str]], torch.Tensor]:
        colours = parsed.colours or COLOURS
        shapes = parsed.shapes or SHAPES
        captions = [(c, s) for c, s in self.captions if c in colours and s in shapes]
        mask = torch.ones(self.components_per_caption, dtype=torch.bool)
        if parsed.variants:
            wanted = torch.tensor([VARIANT_NAMES.index(f) for v in parsed.variants for f in variant_family(v)])
            mask &= torch.isin(self._variant_of, wanted)
        if parsed.views:
            views = [i for i, name in enumerate(self.bank_view_names) if name in parsed.views]
            if not views:
                raise ValueError(
                    f"no view of the bank matches {', '.join(parsed.views)} in prompt {prompt!r}: the bank has "
                    f"elevations {sorted({el for _, el in self.bank_views})} and overhead needs elevation ≥ "
                    f"{self.overhead_elevation:g}; add such an elevation to `elevations` in the config"
                )
            mask &= torch.isin(self._view_of, torch.tensor(views))
        return captions, mask

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError (listing the vocabulary) if the prompt has an unknown word or selects no component."""
        self._selection(prompt)

    def check_resolution(self, height: int, width: int) -> None:
        if height != self.resolution or width != self.resolution:
            raise ValueError(
                f"the shapes prior is a distribution over {self.resolution}x{self.resolution} images, got renders of "
                f"{height}x{width}; set the renderer's size to {self.resolution} or the prior's resolution to match"
            )

    def sample_shape(self) -> tuple[int, ...]:
        return (3, self.resolution, self.resolution)

    def _mixture(self, captions: list[tuple[str, str]], device) -> tuple[GaussianMixture, dict]:
        """The mixture over the given captions' banks (cached, a few most recent caption sets) and bank offsets."""
        key = (tuple(captions), str(device))
        if key in self._mixtures:
            self._mixtures.move_to_end(key)
            return self._mixtures[key]
        banks = [self.bank(*c) for c in captions]
        means = self._world_table if list(captions) == self.captions else torch.cat(banks)
        offsets = {c: i * self.components_per_caption for i, c in enumerate(captions)}
        logw = self._component_logw.repeat(len(captions))
        entry = (GaussianMixture(means, logw, self.variance).to(device), offsets)
        self._mixtures[key] = entry
        while len(self._mixtures) > self.mixture_cache_size:
            self._mixtures.popitem(last=False)
        return entry

    # ----------------------------------------------------------------------------------------------------------------
    # The guidance interface
    # ----------------------------------------------------------------------------------------------------------------

    def _caption_mixture(self, caption: tuple[str, str], device) -> GaussianMixture:
        """One caption's components (no copy: the mixture holds the bank itself on the CPU), kept for every caption."""
        key = (caption, str(device))
        if key not in self._caption_mixtures:
            self._caption_mixtures[key] = GaussianMixture(self.bank(*caption), self._component_logw, self.variance).to(
                device
            )
        return self._caption_mixtures[key]

    def _check_rows(self, x_t: torch.Tensor, prompts: Sequence[str]) -> None:
        if len(prompts) != x_t.shape[0]:
            raise ValueError(f"got {x_t.shape[0]} rows but {len(prompts)} prompts")
        self.check_resolution(x_t.shape[-2], x_t.shape[-1])

    @torch.no_grad()
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Exact ε̂ = E[ε | x_t, y] per row: x_t (N, 3, R, R), t (N,) long, N prompts → (N, 3, R, R) float32.

        Within `tol` (per entry) of `predict_noise_reference`: rows are grouped by the captions they select, each group
        evaluated over those captions' components with the pruned evaluation of mixture.py (on the CPU; on an
        accelerator the reference itself is faster)."""
        return self.exact_eps(x_t, t, prompts).float()

    @torch.no_grad()
    def exact_eps(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """`predict_noise` before its float32 cast: (N, 3, R, R) float64."""
        self._check_rows(x_t, prompts)
        if x_t.device.type != "cpu":
            # On an accelerator the one all-components float64 call is the faster path (H100: 8 ms per 36-row call
            # against 18 ms pruned, where the grouping's small kernels and host syncs dominate; docs/results/speed.md).
            self.last_info = None
            return self._reference_eps(x_t, t, prompts)
        n = x_t.shape[0]
        flat = x_t.reshape(n, -1)
        abar = self._abar64.to(x_t.device)[t.long()]  # move the small table, not t: no host sync
        groups: dict[tuple, list[int]] = {}
        masks = []
        for i, p in enumerate(prompts):
            captions, mask = self._selection(p)
            groups.setdefault(tuple(captions), []).append(i)
            masks.append(mask)
        eps = torch.empty(flat.shape, dtype=torch.float64, device=x_t.device)
        info = {name: torch.zeros(n, dtype=torch.float64) for name in ("kept", "allowed", "total")}
        info["skipped_mass_bound"] = torch.zeros(n, dtype=torch.float64)
        info["error_bound"] = torch.zeros(n, dtype=torch.float64)
        for captions, rows in groups.items():
            if len(captions) == 1:
                mixture = self._caption_mixture(captions[0], x_t.device)
            else:
                mixture = self._mixture(list(captions), x_t.device)[0]
            # The prior's own log-weights on the components each row's prompt selects, −inf elsewhere.
            log_weights = torch.stack(
                [torch.where(masks[i], self._component_logw, -math.inf).repeat(len(captions)) for i in rows]
            )
            idx = torch.tensor(rows, device=x_t.device)
            out, row_info = mixture.predict_noise_pruned(
                flat[idx].double(), abar[idx], log_weights.to(x_t.device), tol=self.tol, **self.pruning
            )
            eps[idx] = out
            row_info.pop("kept_mask")
            for name, value in row_info.items():
                info[name][rows] = value.double()
            info["total"][rows] = float(mixture.means.shape[0])
        self.last_info = info
        return eps.reshape(x_t.shape)

    @torch.no_grad()
    def predict_noise_reference(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The reference ε̂ (what `predict_noise` computed before pruning): one float64 call over the union of the
        batch's selections, every component of it evaluated, −inf log-weights for a row's unselected ones."""
        return self._reference_eps(x_t, t, prompts).float()

    def _reference_eps(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self._check_rows(x_t, prompts)
        n = x_t.shape[0]
        selections = [self._selection(p) for p in prompts]
        needed = {c for captions, _ in selections for c in captions}
        captions = [c for c in self.captions if c in needed]  # canonical order, so the cache key is stable
        mixture, offsets = self._mixture(captions, x_t.device)
        # Row i: the prior's own log-weights on the components its prompt selects, −inf elsewhere (the softmax of
        # the responsibilities renormalises within the selection).
        log_weights = torch.full((n, mixture.means.shape[0]), -math.inf, dtype=torch.float64)
        k_c = self.components_per_caption
        for i, (row_captions, mask) in enumerate(selections):
            row_logw = torch.where(mask, self._component_logw, -math.inf)
            for c in row_captions:
                log_weights[i, offsets[c] : offsets[c] + k_c] = row_logw
        abar = self._abar64.to(x_t.device)[t.long()]  # move the small table, not t: no host sync
        eps = mixture.predict_noise(x_t.reshape(n, -1).double(), abar, log_weights.to(x_t.device))
        return eps.reshape(x_t.shape)

    def make_source_model(self) -> ShapesSourceModel:
        return ShapesSourceModel(self).to(self.alphas_cumprod.device)

    # ----------------------------------------------------------------------------------------------------------------
    # Inspection, for tests and evaluations
    # ----------------------------------------------------------------------------------------------------------------

    def components(self, prompt: str = "") -> tuple[torch.Tensor, list[ComponentLabel]]:
        """Means of the components a prompt selects, (K, 3, R, R) float32 in [−1, 1], and their labels."""
        captions, mask = self._selection(prompt)
        idx = mask.nonzero().squeeze(1)
        means = torch.cat([self.bank(*c)[idx] for c in captions]).float()
        labels = [self._label(c, int(k)) for c in captions for k in idx]
        return means.reshape(-1, *self.sample_shape()), labels

    def _label(self, caption: tuple[str, str], k: int) -> ComponentLabel:
        az, el = self.bank_views[int(self._view_of[k])]
        variant = VARIANT_NAMES[int(self._variant_of[k])]
        return ComponentLabel(caption[0], caption[1], variant, az, el, self.bank_view_names[int(self._view_of[k])])

    @torch.no_grad()
    def nearest_component(self, x: torch.Tensor, prompt: str = "") -> list[ComponentLabel]:
        """Label of the nearest component mean (Euclidean, model space) per image: x (N, 3, R, R) → N labels.

        Searches the components `prompt` selects ("" = the whole world).
        """
        return self._nearest(x, prompt)[0]

    def _nearest(self, x: torch.Tensor, prompt: str) -> tuple[list[ComponentLabel], torch.Tensor]:
        """Nearest component labels and the distances to them (N,) float64: one float64 matmul per caption bank for
        all rows at once (the whole world's means are never gathered: they are 14,880 images), the running best kept
        as tensors; labels are made once per row at the end."""
        captions, mask = self._selection(prompt)
        flat = x.detach().reshape(x.shape[0], -1).double().cpu()
        x_sq = (flat**2).sum(1, keepdim=True)
        best = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
        best_caption = torch.zeros(x.shape[0], dtype=torch.long)
        best_k = torch.zeros(x.shape[0], dtype=torch.long)
        for ci, c in enumerate(captions):
            mixture = self._caption_mixture(c, "cpu")  # the bank and its squared norms, computed once
            sq = (x_sq - 2 * flat @ mixture.means.T + mixture.sq_norms[None]).masked_fill(~mask, math.inf)  # (N, K_c)
            dmin, kmin = sq.min(dim=1)
            better = dmin < best  # strict: ties keep the earlier caption, as a search over the concatenation does
            best = torch.where(better, dmin, best)
            best_caption = torch.where(better, ci, best_caption)
            best_k = torch.where(better, kmin, best_k)
        # the distance to the chosen mean, recomputed directly (no cancellation in the expanded form)
        chosen = torch.stack([self.bank(*captions[int(c)])[int(k)] for c, k in zip(best_caption, best_k)])
        distances = (flat - chosen).norm(dim=1)
        labels = [self._label(captions[int(c)], int(k)) for c, k in zip(best_caption, best_k)]
        return labels, distances

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, prompt: str) -> dict:
        """What each final image became: its nearest component in the whole world, and the RMS distance to it."""
        labels, distances = self._nearest(x, "")
        rms = distances / math.sqrt(x[0].numel())
        return {
            "nearest_component": [str(label) for label in labels],
            "nearest_caption": [label.caption for label in labels],
            "nearest_variant": [label.variant for label in labels],
            "nearest_rms": rms.tolist(),
        }

    def reference_image(self, caption: str, azimuth: float = 0.0, elevation: float = 20.0) -> torch.Tensor:
        """A clean (or, with descriptors, corrupted) render of the caption in model space: (3, R, R) in [−1, 1]."""
        return self.encode(render_caption(caption, azimuth, elevation, self.resolution, self.distance))

    def mixture_for(self, prompt: str) -> GaussianMixture:
        """The exact distribution p(x | prompt) on the CPU: the components the prompt selects, with the prior's own
        weights renormalised over them (what `predict_noise` conditions on), e.g. for exact moments and densities."""
        captions, mask = self._selection(prompt)
        means = torch.cat([self.bank(*c)[mask] for c in captions])
        logw = self._component_logw[mask].repeat(len(captions))
        return GaussianMixture(means, logw - torch.logsumexp(logw, 0), self.variance)


def render_caption(
    caption: str, azimuth: float = 0.0, elevation: float = 20.0, resolution: int = 32, distance: float = 2.6
) -> torch.Tensor:
    """Render a caption such as "a red cube" or "a red cube, blurry" (descriptors applied in order) → (3, H, W) [0, 1].

    Used for DDS reference images. The caption must name exactly one colour and one shape; view words are ignored
    (the camera is given explicitly).
    """
    from scoredist.guidance.exact.vocabulary import (
        parse_prompt,  # local: prompts.py builds its vocabulary from this module
    )

    parsed = parse_prompt(caption)
    if len(parsed.colours) != 1 or len(parsed.shapes) != 1:
        raise ValueError(
            f"render_caption needs exactly one colour and one shape, got {caption!r}; "
            f"colours: {', '.join(COLOUR_RGB)}; shapes: {', '.join(SHAPE_SDFS)}"
        )
    img = render(parsed.shapes[0], parsed.colours[0], azimuth, elevation, distance=distance, resolution=resolution)
    for variant in parsed.variants:
        img = corrupt(img, variant)
    return img


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: (N,) → (N, dim)."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ShapesSourceModel(SourceModel):
    """VSD's ε_ψ for the shapes world: ε_ψ(x_t; y, t) = ε_φ(x_t; y, t) − κ_t · D_ψ(x_t, x̂0_φ, t, y).

    ε_φ is the frozen exact prior (not a submodule: nothing of it is trained). The residual must represent
    ε_q(x_t; y) − ε_φ(x_t; y), where q is the distribution of the current renders of y. When q is itself a mixture of
    isotropic Gaussians of the prior's variance σ² (the renders, smoothed as in `ParticleScore`), both are
    ε = (x_t − a E[x|x_t]) / b with E[x|x_t] = (b²/v) μ̄ + (aσ²/v) x_t (v = a²σ² + b², μ̄ the posterior mean of the
    component means; mixture.py), so

        ε_q − ε_φ = −κ_t (μ̄_q − μ̄_φ),        κ_t = a b / (a²σ² + b²)  (≤ 1/(2σ), → 0 at both ends).

    D_ψ is a network for that difference of two images, O(1) at every t; κ_t carries the scale, so the net does not
    have to learn a residual that is ~0.07 of its size at t = 999 and ~5 at t ≈ 100 (the former net, with no such
    factor, fitted noise at high t: its ε_ψ was further from the particle score than ε_φ itself). D_ψ is a small
    U-shaped conv net, because μ̄_q − μ̄_φ depends on the whole image (which render and which mode x_t is near):
    - it sees x_t and the prior's own estimate x̂0_φ = (x_t − b ε_φ) / a;
    - three resolutions (32², 16², 8²) with skips, and at 8² a globally pooled feature added back to every position, so
      every output pixel depends on the entire 32×32 image (the former 3-conv net saw a 7×7 window);
    - time (sinusoidal) and prompt scale and shift the features at three levels (FiLM);
    - each distinct prompt text gets its own embedding slot, in order of first sight ("" is slot 0), at most
      `prompt_slots`, persisted in state_dict (extra state): no two prompts share an embedding (the former CRC-32 slots
      put "a yellow cylinder" and "an orange cube" of the benchmark in one);
    - the last conv is zero-initialised: ε_ψ starts exactly at ε_φ(x_t; y), as a zero-initialised LoRA does.
    """

    def __init__(self, prior: ShapesPrior, width: int = 24, prompt_slots: int = 64):
        super().__init__()
        self._prior = (prior,)  # a tuple hides it from nn.Module: not a parameter owner, not in state_dict
        self.width = width
        self.prompt_slots = prompt_slots
        self.slots: dict[str, int] = {"": 0}  # prompt text → embedding row
        w, w2 = width, 2 * width
        self.time_mlp = nn.Sequential(nn.Linear(w, w2), nn.SiLU(), nn.Linear(w2, w2))
        self.prompt_embedding = nn.Embedding(prompt_slots, w2)
        nn.init.normal_(self.prompt_embedding.weight, std=0.02)
        self.film = nn.Linear(w2, 2 * (w + w2 + w))  # scale and shift of the 32², 8² and last 32² features
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.conv_in = nn.Conv2d(6, w, 3, padding=1)  # [x_t, x̂0_φ] at 32²
        self.down1 = nn.Conv2d(w, w2, 3, stride=2, padding=1)  # 16²
        self.down2 = nn.Conv2d(w2, w2, 3, stride=2, padding=1)  # 8²
        self.pooled = nn.Linear(w2, w2)  # the global branch
        self.up1 = nn.Conv2d(w2 + w2, w, 3, padding=1)  # 16², with the skip from down1
        self.up0 = nn.Conv2d(w + w, w, 3, padding=1)  # 32², with the skip from conv_in
        self.conv_out = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def prompt_slot(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embedding rows of the prompts, assigning the next free row to a text seen for the first time."""
        for p in map(str, prompts):  # plain strings: the slots go into checkpoints
            if p not in self.slots:
                if len(self.slots) >= self.prompt_slots:
                    raise ValueError(
                        f"the shapes source model holds at most {self.prompt_slots} distinct prompts ('' included) "
                        f"and has seen them all; {p!r} is one more. Raise prompt_slots or distil fewer prompts at once."
                    )
                self.slots[p] = len(self.slots)
        return torch.tensor([self.slots[p] for p in prompts], dtype=torch.long)

    def get_extra_state(self) -> dict:
        return {"slots": list(self.slots)}  # texts in slot order

    def set_extra_state(self, state: dict) -> None:
        self.slots = {text: i for i, text in enumerate(state["slots"])}

    def residual(
        self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str], eps_prior: torch.Tensor | None = None
    ) -> torch.Tensor:
        """−κ_t D_ψ: (N, 3, R, R) → (N, 3, R, R). eps_prior: ε_φ(x_t; y, t) if already computed (else it is)."""
        if eps_prior is None:
            eps_prior = self._prior[0].predict_noise(x_t, t, prompts)
        abar = self._prior[0].alphas_cumprod.to(x_t.device)[t.to(x_t.device).long()].view(-1, 1, 1, 1)
        x0 = ((x_t - (1 - abar).sqrt() * eps_prior) / abar.sqrt()).clamp(-2, 2)  # the prior's x̂0, kept in range
        emb = F.silu(self.time_mlp(_timestep_embedding(t.to(x_t.device), self.width)))
        emb = emb + self.prompt_embedding(self.prompt_slot(prompts).to(x_t.device))
        w, w2 = self.width, 2 * self.width
        film = list(self.film(emb).split([2 * w, 2 * w2, 2 * w], dim=1))

        def modulate(h, i):
            scale, shift = film[i].chunk(2, dim=1)
            return F.silu(h * (1 + scale[:, :, None, None]) + shift[:, :, None, None])

        h0 = modulate(self.conv_in(torch.cat([x_t, x0], dim=1)), 0)  # 32²
        h1 = F.silu(self.down1(h0))  # 16²
        h2 = self.down2(h1)  # 8²
        h2 = modulate(h2 + self.pooled(h2.mean(dim=(2, 3)))[:, :, None, None], 1)  # every position sees the image
        u1 = F.silu(self.up1(torch.cat([F.interpolate(h2, scale_factor=2.0, mode="nearest"), h1], dim=1)))
        u0 = modulate(self.up0(torch.cat([F.interpolate(u1, scale_factor=2.0, mode="nearest"), h0], dim=1)), 2)
        a, b2 = abar.sqrt(), 1 - abar
        kappa = a * b2.sqrt() / (abar * self._prior[0].variance + b2)
        return -kappa * self.conv_out(u0)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str], cameras=None) -> torch.Tensor:
        """ε_ψ for each row (differentiable in ψ): x_t (N, 3, R, R), t (N,), N prompts → (N, 3, R, R) float32.
        cameras (VSD passes them for NeRF renders) are ignored: the view phrase in the prompt is the condition."""
        base = self._prior[0].predict_noise(x_t, t, prompts)
        return base + self.residual(x_t.float(), t, prompts, eps_prior=base)


# `vocabulary_message` is re-exported so that callers reporting a bad prompt can show the vocabulary.
__all__ = ["ComponentLabel", "ShapesPrior", "ShapesSourceModel", "view_name", "vocabulary_message"]
