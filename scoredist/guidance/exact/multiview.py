"""ShapesMultiviewPrior: the exact joint distribution of V views of one object of the shapes world at given cameras —
MVDream's setting (four views of one object denoised together, each knowing its camera) with a closed-form ε.

An object o is a caption and a variant (its clean render or one corruption); its weight w_o is the single-view prior's
(captions uniform, within a caption `clean_weight` on the clean variant and the rest shared by the others). Seen from
camera c_v, o is the bank image μ_o(c_v) of the bank view nearest to c_v (the largest cosine between view directions)
with the prior's isotropic variance σ². V views x_1 … x_V of one object are independent given the object:

    p(x_1 … x_V | c_1 … c_V, y) = Σ_{o selected by y} w_o Π_v N(x_v; μ_o(c_v), σ² I).

Each view is noised on its own (its own t_v), so the posterior over objects gathers the evidence of every view,
log π_o ∝ log w_o + Σ_v log N(x_v,t; √ᾱ_v μ_o(c_v), (ᾱ_v σ² + 1 − ᾱ_v) I), and

    E[x_0,v | x_1,t … x_V,t] = (1 − √ᾱ_v s_v) Σ_o π_o μ_o(c_v) + s_v x_v,t,   s_v = √ᾱ_v σ² / (ᾱ_v σ² + 1 − ᾱ_v),
    ε̂_v = (x_v,t − √ᾱ_v E[x_0,v | ·]) / √(1 − ᾱ_v).

With V = 1 this is the single-view prior restricted to the one bank view the camera sees. `front_weight` (a setting
of the single-view prior) changes nothing here: the camera fixes which view each row is. The prompt selects objects
as it does for the single-view prior (colour and shape words, descriptors); view phrases are not needed — the
camera says where each view is from — and are ignored.

Rows arrive as MVDream's do: consecutive groups of V views of one object (`views_per_object`), every row carrying its
camera (`prompts.Condition.camera`, from a 3D renderer's rows). A loss's conditions (y, ∅, ...) each keep the render's
rows in order, so every group lies within one condition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from scoredist.cameras import Cameras, eye_positions
from scoredist.guidance.exact.shapes import ShapesPrior
from scoredist.guidance.exact.vocabulary import parse_prompt
from scoredist.guidance.exact.world import VARIANT_NAMES
from scoredist.prompts import require_cameras

REPO_ROOT = Path(__file__).resolve().parents[3]


class ShapesMultiviewPrior(ShapesPrior):
    """Exact joint prior over groups of `views_per_object` views of one shapes-world object at their cameras."""

    needs_cameras = True

    def __init__(self, views_per_object: int = 4, **kwargs):
        super().__init__(**kwargs)
        if int(views_per_object) < 1:
            raise ValueError(f"guidance.views_per_object must be at least 1, got {views_per_object}")
        self.views_per_object = int(views_per_object)
        az, el = (torch.tensor(v, dtype=torch.float64) for v in zip(*self.bank_views))
        self._bank_directions = directions(az, el)  # (n_view, 3)

    def bank_view_of(self, cameras: torch.Tensor) -> torch.Tensor:
        """(N,) the bank view nearest to each camera (N, ≥ 2: azimuth, elevation in degrees, ...)."""
        dirs = directions(cameras[:, 0].double(), cameras[:, 1].double())
        return (dirs @ self._bank_directions.T).argmax(1)

    def objects(self, prompt: str) -> tuple[list[tuple[str, str]], torch.Tensor]:
        """The captions a prompt selects and its variant mask (n_var,) bool; view phrases do not restrict."""
        parsed = parse_prompt(prompt)
        captions, mask = self._selection_of(replace(parsed, views=()), prompt)
        return captions, mask.view(len(self.bank_views), len(VARIANT_NAMES))[0]

    def _check_groups(self, x_t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The rows' cameras (N, 4), after checking every row has one and the rows come in whole groups."""
        self._check_rows(x_t, prompts)
        cameras = require_cameras(prompts, type(self).__name__)
        if len(prompts) % self.views_per_object:
            raise ValueError(
                f"guidance=shapes_multiview takes views in groups of guidance.views_per_object="
                f"{self.views_per_object}, got {len(prompts)} rows: set the renderer's cameras per step "
                f"(trainer.batch_size) to a multiple of {self.views_per_object}"
            )
        return torch.tensor(cameras, dtype=torch.float64)

    def check_prompt(self, prompt: str) -> None:
        self.objects(prompt)  # view phrases are ignored here: the cameras say where each view is from

    def group_objects(self, prompts: Sequence[str], views: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One group's objects: means (V, O, D) float64, view v of object o (captions × selected variants) as bank
        view views[v] shows it, and the objects' log-weights (O,), normalised."""
        captions, variants = self.objects(prompts[0])
        for p in prompts[1:]:
            other = self.objects(p)
            if other[0] != captions or not torch.equal(other[1], variants):
                raise ValueError(
                    f"the views of one object must share its prompt (but for view phrases): {prompts[0]!r} and {p!r} "
                    "in one group of guidance.views_per_object rows"
                )
        kept = variants.nonzero().flatten()
        n_var = len(VARIANT_NAMES)
        means = torch.stack(
            [torch.cat([self.bank(*c).view(-1, n_var, dim)[int(j), kept] for c in captions]) for j in views]
        )
        log_w = self._component_logw[:n_var][kept].repeat(len(captions))  # the variant weights, equal in every view
        return means, log_w - torch.logsumexp(log_w, 0)

    def _groups(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]):
        """Each group's rows, flattened views (V, D) float64, ᾱ (V,), means (V, O, D) and log-weights (O,)."""
        views = self.bank_view_of(self._check_groups(x_t, prompts))
        flat = x_t.reshape(x_t.shape[0], -1).double()
        abar = self._abar64.to(flat.device)[t.long().to(flat.device)]
        for start in range(0, flat.shape[0], self.views_per_object):
            rows = slice(start, start + self.views_per_object)
            means, log_w = self.group_objects(prompts[rows], views[rows], flat.shape[1])
            log_w = self.object_evidence(prompts[start], log_w)
            yield rows, flat[rows], abar[rows], means.to(flat.device), log_w.to(flat.device)

    def object_evidence(self, prompt: str, log_w: torch.Tensor) -> torch.Tensor:
        """The objects' log-weights given what the rows are conditioned on besides their views (here nothing)."""
        return log_w

    @torch.no_grad()
    def exact_eps(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """ε̂ (N, 3, R, R) float64 of every row given the other views of its group (module docstring)."""
        eps = torch.empty(x_t.shape[0], x_t[0].numel(), dtype=torch.float64, device=x_t.device)
        for rows, x, abar, means, log_w in self._groups(x_t, t, prompts):
            eps[rows] = group_eps(x, abar, means, log_w, self.variance)
        return eps.reshape(x_t.shape)

    def _reference_eps(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.exact_eps(x_t, t, prompts)

    def group_log_density(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """log p(x_1,t … x_V,t) of each group (N / V,) float64, differentiable in x_t (tests: ε̂ = −√(1 − ᾱ) ∇ log p)."""
        out = [
            torch.logsumexp(log_w + view_log_likelihoods(x, abar, means, self.variance), 0)
            for _, x, abar, means, log_w in self._groups(x_t, t, prompts)
        ]
        return torch.stack(out)


def directions(azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
    """Unit vectors from the origin to cameras at these angles (degrees), float64: scoredist/cameras.py's frame."""
    ones = torch.ones_like(azimuth)
    return eye_positions(Cameras(azimuth, elevation, ones, ones))


def view_log_likelihoods(x_t: torch.Tensor, abar: torch.Tensor, means: torch.Tensor, variance: float) -> torch.Tensor:
    """Σ_v log N(x_v,t; √ᾱ_v μ_{o,v}, (ᾱ_v σ² + 1 − ᾱ_v) I) per object (O,): x_t (V, D), abar (V,), means (V, O, D)."""
    a = abar.sqrt()[:, None]  # (V, 1)
    var = abar[:, None] * variance + (1 - abar)[:, None]  # (V, 1)
    sq = ((x_t[:, None, :] - a[..., None] * means) ** 2).sum(-1)  # (V, O)
    d = x_t.shape[1]
    return (-0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)).sum(0)


def group_eps(
    x_t: torch.Tensor, abar: torch.Tensor, means: torch.Tensor, log_weights: torch.Tensor, variance: float
) -> torch.Tensor:
    """ε̂ (V, D) of one group's views: x_t (V, D), abar (V,), means (V, O, D), log_weights (O,) (module docstring)."""
    posterior = torch.softmax(log_weights + view_log_likelihoods(x_t, abar, means, variance), 0)  # (O,)
    a = abar.sqrt()[:, None]
    shrink = a * variance / (abar[:, None] * variance + (1 - abar)[:, None])  # (V, 1)
    mean_x0 = (1 - a * shrink) * torch.einsum("o,vod->vd", posterior, means) + shrink * x_t
    return (x_t - a * mean_x0) / (1 - abar)[:, None].sqrt()


class ShapesImagePrior(ShapesMultiviewPrior):
    """Zero123's setting, exact: the distribution of an object's view at a row's camera given one reference image of
    it and the reference's camera (so the relative pose of each row is known).

    The reference x_ref is one more, noise-free view of the object, seen from bank view v_ref (the nearest to
    `reference_azimuth`, `reference_elevation`): the objects' weights become π_o ∝ w_o N(x_ref; μ_o(v_ref), σ² I),
    and every group of views is then distributed as in ShapesMultiviewPrior with π in place of w. As Zero123's
    classifier-free guidance zeroes the image and pose of its unconditional branch, a row with the empty prompt is
    not conditioned on the reference (the world's prior, each view at its camera); any other prompt's words still
    select captions and variants.

    reference: a PNG (any size: resized to the world's resolution) of the object as `reference_azimuth` /
    `reference_elevation` show it (degrees, the cameras' convention).
    """

    def __init__(
        self,
        reference: str,
        reference_azimuth: float = 0.0,
        reference_elevation: float = 15.0,
        views_per_object: int = 1,
        **kwargs,
    ):
        super().__init__(views_per_object=views_per_object, **kwargs)
        from scoredist.images import read_image  # local: only this prior reads an image

        path = Path(reference)
        if not path.is_file() and not path.is_absolute() and (REPO_ROOT / path).is_file():
            path = REPO_ROOT / path  # a shipped reference (assets/references/...) from any directory
        rgb = read_image(path, self.resolution, self.resolution)  # (1, 3, R, R) in [0, 1]
        self.reference = (rgb.double() * 2 - 1).reshape(-1)  # model space, flattened
        cameras = torch.tensor([[float(reference_azimuth), float(reference_elevation)]], dtype=torch.float64)
        self.reference_view = int(self.bank_view_of(cameras)[0])

    def object_evidence(self, prompt: str, log_w: torch.Tensor) -> torch.Tensor:
        """log π_o = log w_o + log N(x_ref; μ_o(v_ref), σ² I), normalised; the empty prompt keeps w (no image)."""
        if str(prompt) == "":
            return log_w
        captions, variants = self.objects(prompt)
        kept = variants.nonzero().flatten()
        n_var = len(VARIANT_NAMES)
        dim = self.reference.shape[0]
        seen = torch.cat([self.bank(*c).view(-1, n_var, dim)[self.reference_view, kept] for c in captions])  # (O, D)
        log_lik = -0.5 * ((self.reference[None] - seen) ** 2).sum(1) / self.variance
        posterior = log_w + log_lik
        return posterior - torch.logsumexp(posterior, 0)
