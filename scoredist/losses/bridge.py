"""The k-step bridge: ours with the probability-flow ODE solved in k DDIM steps instead of one.

Both branches start from one point z_t at time t and integrate the PF ODE down to t = 0, under the source prompt and
under the target prompt, each with k DDIM steps (both branches evaluated together, one batched call per step), giving
ψ_src and ψ_tgt. The direction, in ε units so that it is comparable with ours:

    g = s · sqrt(ᾱ_t) / sqrt(1 − ᾱ_t) · (ψ_src − ψ_tgt)

start="noise" (default): z_t = sqrt(ᾱ_t) x + sqrt(1 − ᾱ_t) ε, the noised render of every SDS-family loss. For k = 1,
ψ = (z_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t), so g = s · (ε̂_tgt − ε̂_src): exactly ours. As k grows, g approaches the
difference of the full ODE solutions from z_t.
start="invert": z_t is x DDIM-inverted under y_src in k steps (deterministic; ε̂ evaluated at the step's destination
timestep, the usual inversion approximation), so that ψ_src ≈ x and g ≈ (x − ψ_tgt): the bridge of the paper's
motivation slide, "map x back to noise with the source, then generate with the target". Costs 3k model calls.
"""

from __future__ import annotations

import torch

from scoredist.guidance.base import alpha_bar, ddim_move
from scoredist.losses.base import predict_conditions
from scoredist.losses.ours import Ours


def ddim_path(t: torch.Tensor, num_steps: int) -> torch.Tensor:
    """(num_steps + 1, B) long timesteps from t down to −1 (−1 stands for ᾱ = 1, the clean end)."""
    frac = torch.linspace(1.0, 0.0, num_steps + 1, device=t.device)[:-1, None]
    path = (t[None, :].double() * frac).round().long()
    return torch.cat([path, torch.full_like(t, -1)[None]], dim=0)


class Bridge(Ours):
    def __init__(self, num_steps: int = 4, start: str = "noise", **ours_kwargs):
        if num_steps < 1:
            raise ValueError(f"the k-step bridge needs num_steps >= 1, got {num_steps}")
        if start not in ("noise", "invert"):
            raise ValueError(f"bridge start must be 'noise' or 'invert', got {start!r}")
        super().__init__(**ours_kwargs)
        self.num_steps, self.start = num_steps, start

    @torch.no_grad()
    def start_point(self, guidance, x, t, noise, src):
        if self.start == "noise":
            return super().start_point(guidance, x, t, noise, src)
        path = ddim_path(t, self.num_steps).flip(0)  # −1 (clean) … t
        z = x.detach()
        for t_cur, t_next in zip(path[:-1], path[1:]):
            a_cur = alpha_bar(guidance.alphas_cumprod, t_cur, z.dim())
            a_next = alpha_bar(guidance.alphas_cumprod, t_next, z.dim())
            z = ddim_move(z, guidance.predict_noise(z, t_next, src), a_cur, a_next)
        return z

    @torch.no_grad()
    def bridge(self, guidance, x_t, t, src, tgt):
        path = ddim_path(t, self.num_steps)
        z = torch.cat([x_t, x_t])  # rows 0..B-1 follow the source, B..2B-1 the target
        for t_cur, t_next in zip(path[:-1], path[1:]):
            a_cur = alpha_bar(guidance.alphas_cumprod, t_cur.repeat(2), z.dim())
            a_next = alpha_bar(guidance.alphas_cumprod, t_next.repeat(2), z.dim())
            eps = torch.cat(predict_conditions(guidance, list(z.chunk(2)), t_cur, [src, tgt]))
            z = ddim_move(z, eps, a_cur, a_next)
        psi_src, psi_tgt = z.chunk(2)
        a_t = alpha_bar(guidance.alphas_cumprod, t, x_t.dim())
        return (a_t / (1 - a_t)).sqrt() * (psi_src - psi_tgt)
