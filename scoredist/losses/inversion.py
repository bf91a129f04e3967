"""DDIM inversion of a render on a timestep path of each row's own, batched per step (ISM, SDI).

A path is a (K + 1, B) long tensor of timesteps walked upward, column b for row b; `active` (K, B) says which rows take
step k. Rows draw their own t, so their paths differ in length: a row whose path has ended sits out the remaining
steps, and its model rows are neither evaluated nor counted. Every step evaluates ε̂ at its start (z, t_k) — the
inversion approximation both authors use — and moves deterministically to t_{k+1} (`ddim_move`); `eta` > 0 adds SDI's
noise on top, η · z · sqrt(σ²) with DDIM's variance σ² = (1 − ᾱ_k) / (1 − ᾱ_{k+1}) · (1 − ᾱ_{k+1} / ᾱ_k) (the
direction term is not shrunk, unlike DDIM-η: diffusers' DDIMInverseScheduler has no η, SDI's code adds this).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scoredist.guidance.base import alpha_bar, ddim_move

# predict(z rows, their timesteps, their row indices) → ε̂ of those rows
Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def invert(
    guidance, z: torch.Tensor, path: torch.Tensor, active: torch.Tensor, predict: Predict, eta: float = 0.0
) -> torch.Tensor:
    """z (B, ...) at path[0] moved up every row's path; one `predict` call per step for the rows active in it."""
    z = z.clone()
    for k in range(active.shape[0]):
        rows = active[k].nonzero().flatten()
        if rows.numel() == 0:
            continue
        t_cur, t_next = path[k, rows], path[k + 1, rows]
        a_cur = alpha_bar(guidance.alphas_cumprod, t_cur, z.dim())
        a_next = alpha_bar(guidance.alphas_cumprod, t_next, z.dim())
        moved = ddim_move(z[rows], predict(z[rows], t_cur, rows), a_cur, a_next)
        if eta > 0:
            variance = (1 - a_cur) / (1 - a_next) * (1 - a_next / a_cur)
            moved = moved + eta * torch.randn_like(moved) * variance.clamp_min(0).sqrt()
        z[rows] = moved.to(z.dtype)
    return z


def strided_path(s: torch.Tensor, start: int, stride: int, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ISM's path: from `start` up by `stride` until s (the last step shortened to land on s), at most `max_steps`
    steps, and always at least one (a row with s == start takes one step of length zero, as LucidDreamer's loop
    does: its model row is evaluated and counted)."""
    steps = ((s - start).clamp_min(0) + stride - 1) // stride
    if bool((steps > max_steps).any()):  # LucidDreamer's strides always reach s (200 × 5 ≥ T); say so if these do not
        raise ValueError(
            f"ISM's inversion cannot reach t = {int(s.max())} from {start} in {max_steps} strides of {stride}: raise "
            "loss.inversion_steps or loss.inversion_stride"
        )
    steps = steps.clamp_min(1)
    k = torch.arange(max_steps + 1, device=s.device)[:, None]
    path = torch.minimum(start + stride * k, s[None, :].clamp_min(start))
    return path, k[:-1] < steps[None, :]


def grid_path(
    t_end: torch.Tensor, t_label: torch.Tensor, num_steps: int, num_train_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDI's path: timestep 0, then the "leading" grid 1, 1 + T/n, 1 + 2T/n, … (diffusers' DDIMInverseScheduler with
    n = num_steps, steps_offset 1) below each row's t_label, then t_end (t + δ). SDI's code starts one grid stride below
    the grid, at t = −99, where its scheduler takes ᾱ_0 but the UNet is evaluated at −99, outside its training range;
    here the first step starts at t = 0 (the same ᾱ, the model at a timestep it knows)."""
    grid = torch.arange(num_steps, device=t_end.device) * (num_train_timesteps // num_steps) + 1
    counts = (grid[:, None] < t_label[None, :]).sum(0)  # (B,): the grid points before each row's t, the first ones
    k = torch.arange(num_steps + 2, device=t_end.device)[:, None]  # 0, up to n grid points, t_end (then t_end again)
    on_grid = grid[(k - 1).clamp(0, num_steps - 1)].expand(-1, t_end.numel())
    path = torch.where(k == 0, 0, torch.where(k <= counts[None, :], on_grid, t_end[None, :]))
    return path, k[:-1] < (counts + 1)[None, :]
