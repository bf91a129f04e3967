"""Adaptive density control of 3D Gaussians (3DGS, Kerbl et al. 2023), with the optimizer's state kept in step.

Between two densification steps every Gaussian seen by a camera accumulates the norm of the gradient of its projected
centre in normalised device coordinates (pixels × (W/2, H/2), as 3DGS's rasteriser and gsplat's strategy measure it),
once per view it is visible in (`DensityStats.add`). At a densification step the mean of that norm decides (`plan`):

- clone: mean gradient ≥ grad_threshold and largest scale ≤ percent_dense · extent → a copy with the same parameters;
- split: mean gradient ≥ grad_threshold and largest scale > percent_dense · extent → the Gaussian is replaced by
  `split_into` Gaussians whose centres are drawn from it and whose scales are divided by 0.8 · split_into;
- prune: opacity < min_opacity, or largest scale > max_world_size (None: never), or projected radius (a fraction of the
  larger image side, max over the views since the last densification) > max_screen_fraction (None: never). As 3DGS
  prunes after densifying, a faint Gaussian is neither cloned nor split, and a split's children larger than
  max_world_size are dropped.

3DGS resets the screen-size record inside densification before it prunes, so its screen-size test never removes a
Gaussian (gsplat documents this as a bug of the official code); DreamGaussian inherits that. Here a rule set to None
is off, and a rule that is on does what it says.

Each edited parameter is a new tensor put in the old one's place in the optimizer, and its per-parameter moments are
edited the same way (kept rows kept, new rows zero), as 3DGS does. Every draw (the split's
new centres) comes from torch's global RNG, which the trainer seeds and checkpoints, so a resumed run densifies the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scoredist.renderers.splatting import quaternion_to_rotation


@dataclass
class Plan:
    """What one densification step does: a boolean mask of kept Gaussians (N,), the indices cloned and split."""

    keep: torch.Tensor
    clone: torch.Tensor
    split: torch.Tensor


def plan(
    mean_grads: torch.Tensor,
    max_scales: torch.Tensor,
    opacities: torch.Tensor,
    screen_fraction: torch.Tensor,
    grad_threshold: float,
    percent_dense: float,
    extent: float,
    min_opacity: float,
    max_world_size: float | None = None,
    max_screen_fraction: float | None = None,
    densify: bool = True,
) -> Plan:
    """The rule of the module docstring on per-Gaussian statistics (N,) each. `densify` False: prune only."""
    big = max_scales > percent_dense * extent
    faint = opacities < min_opacity
    # 3DGS prunes after cloning and splitting, over the copies too: a faint Gaussian's copies would go with it
    hot = (mean_grads >= grad_threshold) & densify & ~faint
    clone = torch.nonzero(hot & ~big).flatten()
    split = torch.nonzero(hot & big).flatten()
    prune = faint.clone()
    if max_world_size is not None:
        prune |= max_scales > max_world_size
    if max_screen_fraction is not None:
        prune |= screen_fraction > max_screen_fraction
    keep = ~prune
    keep[split] = False  # a split Gaussian is replaced by its children
    return Plan(keep=keep, clone=clone, split=split)


def split_children(
    means: torch.Tensor, log_scales: torch.Tensor, quats: torch.Tensor, index: torch.Tensor, split_into: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The centres (n·k, 3) and log-scales (n·k, 3) of the k = split_into children of each Gaussian in `index`:
    centres drawn from N(μ, R diag(s²) Rᵀ), scales s / (0.8 k) (3DGS's densify_and_split)."""
    scales = log_scales[index].exp().repeat(split_into, 1)
    offsets = torch.randn(scales.shape, device=means.device, dtype=means.dtype) * scales
    rotations = quaternion_to_rotation(quats[index]).repeat(split_into, 1, 1)
    centres = (rotations @ offsets[..., None])[..., 0] + means[index].repeat(split_into, 1)
    return centres, (scales / (0.8 * split_into)).log()


@torch.no_grad()
def edit_parameters(
    module: nn.Module, names: list[str], keep: torch.Tensor, appended: dict[str, torch.Tensor], optimizer=None
) -> None:
    """Each named parameter of `module` becomes a new parameter cat(p[keep], appended[name]), put in the old one's
    place in the optimizer's groups; its state moves along, tensors shaped like the parameter (Adam's moments) edited
    alike with zeros for the appended rows. New parameter objects, as 3DGS makes them: a step's autograd graph can
    still hold the old ones (their gradient accumulators know the old shape)."""
    for name in names:
        old = getattr(module, name)
        extra = appended[name].to(old.dtype)
        new = nn.Parameter(torch.cat([old.data[keep], extra]), requires_grad=old.requires_grad)
        if optimizer is not None:
            state = optimizer.state.pop(old, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == old.shape:
                    state[key] = torch.cat([value[keep], torch.zeros_like(extra)])
            if state:
                optimizer.state[new] = state
            for group in optimizer.param_groups:
                group["params"] = [new if p is old else p for p in group["params"]]
        setattr(module, name, new)


@torch.no_grad()
def reset_state_rows(param: nn.Parameter, optimizer) -> None:
    """Zero the optimizer's moments of one parameter (after its values were reset, as 3DGS's reset_opacity does)."""
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.zero_()


class DensityStats(nn.Module):
    """Per-Gaussian statistics since the last densification, kept as buffers so a checkpoint holds them:
    grad_sum (N,) the summed NDC gradient norms, views (N,) the views each was visible in, screen (N,) the largest
    projected radius as a fraction of the image's larger side."""

    def __init__(self):
        super().__init__()
        for name in ("grad_sum", "views", "screen"):
            self.register_buffer(name, torch.zeros(0))

    def reset(self, n: int, device) -> None:
        for name in ("grad_sum", "views", "screen"):
            setattr(self, name, torch.zeros(n, device=device))

    @torch.no_grad()
    def add(self, grad2d: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> None:
        """One view: grad2d (N, 2) the gradient of the projected centres in pixels, radii (N,) in pixels (0: not
        visible). A non-finite gradient (a skipped step) adds nothing."""
        visible = (radii > 0) & torch.isfinite(grad2d).all(-1)
        scale = torch.tensor([width / 2.0, height / 2.0], device=grad2d.device, dtype=grad2d.dtype)
        norms = (torch.nan_to_num(grad2d) * scale).norm(dim=-1)
        self.grad_sum += torch.where(visible, norms, torch.zeros_like(norms)).to(self.grad_sum.dtype)
        self.views += visible.to(self.views.dtype)
        fraction = radii.to(self.screen.dtype) / float(max(width, height))
        self.screen.copy_(torch.where(visible, torch.maximum(self.screen, fraction), self.screen))

    def mean_grads(self) -> torch.Tensor:
        return self.grad_sum / self.views.clamp_min(1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("grad_sum", "views", "screen"):  # a checkpoint holds as many Gaussians as it had
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
