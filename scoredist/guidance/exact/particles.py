"""An exactly computable VSD source: the score of a Gaussian mixture centred on the current particles.

VSD's source model ε_ψ(x_t; y, t) estimates the noise prediction of the distribution q_y of the current renders of
prompt y. When q_y is taken to be the mixture (1/n) Σ_i N(x_i, σ_p² I) over the n current particles x_i of y (the rows
whose prompt text is y), its MMSE noise prediction is closed-form (mixture.py, design.md §3):

    r_i ∝ N(x_t; a x_i, (a² σ_p² + b²) I),   E[x | x_t] = Σ_i r_i (x_i + a σ_p² (x_t − a x_i) / (a² σ_p² + b²)),
    ε_particles(x_t; y, t) = (x_t − a E[x | x_t]) / b,                         a = sqrt(ᾱ_t), b = sqrt(1 − ᾱ_t).

This is the function a learned ε_ψ would converge to if it were fitted perfectly to the kernel-smoothed particle
distribution, so it serves both as a VSD source in its own right (`VSD(source="particles")`) and as the yardstick of
how well a learned ε_ψ fits (VSD's `vsd/fit_ratio_*` logs). The empty prompt "" (VSD's condition dropout, the
unconditional source) sees every particle of every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scoredist.guidance.base import SourceModel
from scoredist.guidance.exact.mixture import GaussianMixture
from scoredist.prompts import Prompt, texts


class ParticleScore(SourceModel):
    """ε_ψ(x_t; y, t) = E[ε | x_t] under (1/n) Σ_i N(x_i, σ_p² I) over the current particles x_i of prompt y.

    alphas_cumprod: the guidance's ᾱ_t (T,), indexed by the integer t of `predict_noise`.
    variance σ_p²: the kernel variance around each particle. Default 0.01, the exact priors' own component variance
        (ShapesPrior; the 2D points' sharp components, std 0.1): a particle sitting exactly on a prior component then
        gives the same ε as that component alone, so ε_φ(x_t; y) − ε_particles(x_t; y) vanishes where the particles have
        collapsed onto the prior's modes, rather than carrying a bias from a kernel wider or narrower than the modes.
        σ_p² → 0 would be the score of the empirical distribution itself (a Dirac per particle), whose ε explodes as
        t → 0 (the b in the denominator); a wider kernel blurs the particles into one another.

    No trainable parameters: `parameters()` is empty and VSD takes no optimizer step for it; `update(x, prompts)`
    replaces the particles. They are in `state_dict` (extra state), so a resumed run continues with the same ones.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, variance: float = 0.01):
        super().__init__()
        if not variance > 0:
            raise ValueError(f"the particle kernel variance must be > 0, got {variance}")
        self.variance = float(variance)
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().double().clone(), persistent=False)
        self.particles: dict[str, torch.Tensor] = {}  # prompt text → (n, D) float64, detached, in order of first row

    @torch.no_grad()
    def update(self, x: torch.Tensor, prompts: Sequence[Prompt | str]) -> None:
        """Replace the particles by the rows of x (N, ...), grouped by prompt text (N prompts)."""
        names = [str(name) for name in texts(prompts)]  # plain strings: the particles go into checkpoints
        if len(names) != x.shape[0]:
            raise ValueError(f"got {x.shape[0]} particles but {len(names)} prompts")
        flat = x.detach().reshape(x.shape[0], -1).double()
        self.particles = {}
        for name in dict.fromkeys(names):
            rows = torch.tensor([i for i, p in enumerate(names) if p == name], device=flat.device)
            self.particles[name] = flat[rows].clone()

    def has_particles(self, prompts: Sequence[Prompt | str]) -> bool:
        """Whether every row's prompt has particles ("" has them as soon as any prompt has)."""
        return all((p in self.particles) if p else bool(self.particles) for p in texts(prompts))

    def particles_of(self, prompt: str) -> torch.Tensor:
        """The particles prompt y sees, (n, D) float64: its own rows; for "" every prompt's rows."""
        if prompt == "":
            if not self.particles:
                raise ValueError("ParticleScore has no particles yet: call update(x, prompts) with the current renders")
            return torch.cat(list(self.particles.values()))
        if prompt not in self.particles:
            known = ", ".join(repr(p) for p in self.particles) or "none"
            raise ValueError(f"ParticleScore has no particles of prompt {prompt!r} (it has particles of: {known})")
        return self.particles[prompt]

    @torch.no_grad()
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[Prompt | str], cameras=None):
        """ε_particles per row: x_t (N, ...), t (N,) long, N prompts (`Prompt`s or strings) → (N, ...) float32.
        cameras are ignored (a row's view phrase is part of its prompt text, so it selects its own particles)."""
        names = texts(prompts)
        if len(names) != x_t.shape[0]:
            raise ValueError(f"got {x_t.shape[0]} rows but {len(names)} prompts")
        flat = x_t.reshape(x_t.shape[0], -1).double()
        abar = self.alphas_cumprod.to(x_t.device)[t.to(x_t.device).long()]
        eps = torch.empty_like(flat)
        for name in dict.fromkeys(names):
            rows = torch.tensor([i for i, p in enumerate(names) if p == name], device=flat.device)
            mixture = GaussianMixture(self.particles_of(name), variances=self.variance).to(flat.device)
            eps[rows] = mixture.predict_noise(flat[rows], abar[rows])
        return eps.reshape(x_t.shape).float()

    def get_extra_state(self) -> dict:
        return {"particles": {k: v.clone() for k, v in self.particles.items()}, "variance": self.variance}

    def set_extra_state(self, state: dict) -> None:
        self.particles = {k: v.detach().double().clone() for k, v in state["particles"].items()}
        self.variance = float(state["variance"])
