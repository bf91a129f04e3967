"""Variational Score Distillation (ProlificDreamer): the source distribution is learned online.

    g = ε_cfg(x_t; y) − ε_ψ(x_t; y)

ε_ψ is a trainable copy of the model (a LoRA of the UNet for Stable Diffusion, a small network for the exact priors),
fitted after every step to the current renders with the plain denoising loss, t ~ U[0, T), and the prompt dropped to
∅ with probability `condition_dropout` (so that it also learns the unconditional render distribution).

`source="particles"` replaces the learned ε_ψ by the exact noise prediction of a Gaussian mixture centred on the
current renders of each prompt (`ParticleScore`, guidance/exact/particles.py): what a perfectly fitted ε_ψ of the
kernel-smoothed render distribution would answer. It has no parameters; after each step it is handed the renders
instead of taking a gradient step.

Fit ratio. On the exact priors (ShapesPrior, Points2DPrior) the loss measures on every logging step (`measure`), per
quarter of the timestep range, `vsd/fit_ratio_t<lo>-<hi>` = ‖ε_ψ − ε_particles‖ / ‖ε_φ(y) − ε_particles‖ over the
batch's rows at freshly noised renders: 0 is a perfect fit of the current renders' (smoothed) distribution, 1 is no
better than ε_ψ never having left ε_φ, above 1 is worse. Its noise and timesteps come from a generator of its own
(seeded by the step), so measuring never changes a run's random draws, and its model rows are not counted as the
run's cost. Not for `source="particles"` (0 by construction) nor Stable Diffusion (too costly); `measure_fit=false`
turns it off.

Camera conditioning (NeRF, as ProlificDreamer): rows that carry a camera (`Prompt.camera`) hand it to ε_ψ, both when
it is asked and when it is fitted; the condition dropout drops the text only, the camera stays. (ProlificDreamer's code
instead keeps the text and zeroes the camera with probability 0.1.) Rows without cameras (2D) call ε_ψ exactly as
before, without the argument.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from scoredist.guidance.base import add_noise, cfg
from scoredist.guidance.exact.particles import ParticleScore
from scoredist.losses.base import ScoreLoss, noised, norm, predict_conditions
from scoredist.prompts import texts
from scoredist.schedules import value_at

SOURCES = ("learned", "particles")
FIT_BANDS = 4  # the fit ratio is logged per quarter of [0, T)


class VSD(ScoreLoss):
    """source: "learned" (guidance.make_source_model(), fitted online) or "particles" (`ParticleScore` of the current
    renders, kernel variance `particle_variance`). measure_fit: log the fit ratio on logging steps on the exact
    priors."""

    def __init__(
        self,
        guidance_scale=7.5,
        lora_lr: float = 3e-4,
        lora_weight_decay: float = 0.0,
        condition_dropout: float = 0.1,
        source_steps: int = 1,
        weighting: str = "1-abar",
        source: str = "learned",
        particle_variance: float = 0.01,
        measure_fit: bool = True,
    ):
        super().__init__(weighting)
        if source not in SOURCES:
            raise ValueError(f"VSD source must be one of {SOURCES}, got {source!r}")
        self.guidance_scale, self.lora_lr, self.lora_weight_decay = guidance_scale, lora_lr, lora_weight_decay
        self.condition_dropout, self.source_steps = condition_dropout, source_steps
        self.source_kind, self.particle_variance, self.measure_fit = source, float(particle_variance), measure_fit
        self.source = None
        self.optimizer = None
        self._fit_reference: ParticleScore | None = None

    def attach(self, guidance, x_init):
        """Each chunk of samples starts from a fresh ε_ψ = ε_φ (or no particles) and a fresh optimizer. The source model
        is built once and reset afterwards: on Stable Diffusion every new one would add another LoRA adapter to the
        shared UNet."""
        if self.source is None:
            self.source = self.make_source(guidance)
            self._initial_source = clone_state(self.source.state_dict())
        else:
            self.source.load_state_dict(clone_state(self._initial_source))
        trainable = [p for p in self.source.parameters() if p.requires_grad]
        # a source without parameters (the particles) takes no gradient step, so it has no optimizer
        self.optimizer = (
            torch.optim.AdamW(trainable, lr=self.lora_lr, weight_decay=self.lora_weight_decay) if trainable else None
        )
        measure = self.measure_fit and self.source_kind == "learned" and is_exact_prior(guidance)
        self._fit_reference = ParticleScore(guidance.alphas_cumprod, self.particle_variance) if measure else None

    def make_source(self, guidance):
        if self.source_kind == "particles":
            return ParticleScore(guidance.alphas_cumprod, self.particle_variance)
        return guidance.make_source_model()

    def direction(self, guidance, x, t, noise, prompts, step):
        x_t = noised(guidance, x, t, noise)
        eps_cond, eps_uncond = predict_conditions(guidance, x_t, t, [prompts, [""] * len(prompts)])
        if isinstance(self.source, ParticleScore) and not self.source.has_particles(prompts):
            self.source.update(x, prompts)  # the first step: no after_step has handed it renders yet
        with torch.no_grad():
            eps_source = self.source_noise(x_t, t, prompts)
        eps_cfg = cfg(eps_uncond, eps_cond, value_at(self.guidance_scale, step))
        return eps_cfg - eps_source, {"norm/cfg": norm(eps_cfg), "norm/source": norm(eps_source)}

    def source_noise(self, x_t, t, prompts) -> torch.Tensor:
        """ε_ψ of the rows, each asked with its own prompt and camera (ESD mixes in camera-free rows)."""
        return self.source.predict_noise(x_t, t, texts(prompts), **camera_kwargs(prompts)).float()

    def fitting_rows(self, prompts) -> tuple[list, dict]:
        """The rows ε_ψ is fitted on at one fitting step and their camera argument: the step's own (ESD drops their
        cameras at times)."""
        return list(prompts), camera_kwargs(prompts)

    def after_step(self, guidance, x, prompts):
        """Fit ε_ψ to the current renders: `source_steps` denoising steps on x (detached); or hand the particles the
        renders."""
        x = x.detach()
        if self.optimizer is None:
            if isinstance(self.source, ParticleScore):
                self.source.update(x, prompts)
            return {}
        return {"vsd/source_loss": self.fit_source(guidance, x, prompts)}

    def measure(self, guidance, x, prompts, step):
        """The fit ratios (module docstring) on the exact priors with a learned source."""
        return self.fit_ratios(guidance, x.detach(), prompts, step) if self._fit_reference is not None else {}

    def fit_source(self, guidance, x, prompts) -> torch.Tensor:
        total = torch.zeros((), device=x.device)
        for _ in range(self.source_steps):
            t = torch.randint(0, guidance.num_train_timesteps, (x.shape[0],), device=x.device)
            noise = torch.randn_like(x)
            rows, cameras = self.fitting_rows(prompts)
            drop = torch.rand(x.shape[0]).tolist()
            conditioned = [p if d >= self.condition_dropout else "" for p, d in zip(texts(rows), drop)]
            x_t = add_noise(x, noise, t, guidance.alphas_cumprod)
            pred = self.source.predict_noise(x_t, t, conditioned, **cameras)  # the camera is kept
            loss = F.mse_loss(pred.float(), noise)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        return total / self.source_steps

    @torch.no_grad()
    def fit_ratios(self, guidance, x, prompts, step: int) -> dict[str, float]:
        """{"vsd/fit_ratio_t<lo>-<hi>": ‖ε_ψ − ε_particles‖ / ‖ε_φ(y) − ε_particles‖} per quarter of [0, T): every
        row of x (N, ...) noised at a t drawn uniformly in each band, norms over all of the band's rows together;
        ε_particles is the `ParticleScore` of x itself. Plain floats."""
        n, T = x.shape[0], guidance.num_train_timesteps
        edges = [round(T * i / FIT_BANDS) for i in range(FIT_BANDS + 1)]
        bands = list(zip(edges[:-1], edges[1:]))
        gen = torch.Generator().manual_seed(step)  # a stream of its own: the run's draws are untouched
        t = torch.cat([torch.randint(lo, hi, (n,), generator=gen) for lo, hi in bands]).to(x.device)
        noise = torch.randn((len(bands) * n, *x.shape[1:]), generator=gen).to(device=x.device, dtype=x.dtype)
        x_t = add_noise(x.repeat(len(bands), *([1] * (x.dim() - 1))), noise, t, guidance.alphas_cumprod)
        rows = list(prompts) * len(bands)
        self._fit_reference.update(x, prompts)
        eps_particles = self._fit_reference.predict_noise(x_t, t, rows)
        eps_prior = guidance.predict_noise(x_t, t, texts(rows))
        eps_source = self.source.predict_noise(x_t, t, texts(rows), **camera_kwargs(rows)).float()
        logs = {}
        for i, (lo, hi) in enumerate(bands):
            band = slice(i * n, (i + 1) * n)
            miss = float((eps_source[band] - eps_particles[band]).norm())
            scale = float((eps_prior[band] - eps_particles[band]).norm())
            logs[f"vsd/fit_ratio_t{lo}-{hi}"] = miss / scale if scale > 0 else float("nan")
        return logs

    def state_dict(self):
        state = {"source": self.source.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state):
        self.source.load_state_dict(state["source"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])


def clone_state(state: dict) -> dict:
    """A copy of a state dict that later training cannot change: tensors cloned, extra state (a dict) deep-copied."""
    return {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in state.items()}


def is_exact_prior(guidance) -> bool:
    """The priors whose fit ratio is cheap and meaningful: the shapes world and the 2D points."""
    from scoredist.guidance.exact.points2d import Points2DPrior  # local: a loss module needs no exact world to load
    from scoredist.guidance.exact.shapes import ShapesPrior

    return isinstance(guidance, (ShapesPrior, Points2DPrior))


def camera_kwargs(prompts) -> dict:
    """{"cameras": one camera or None per row} when some row has a camera (a NeRF render), else {} (2D rows)."""
    cameras = [getattr(p, "camera", None) for p in prompts]
    return {"cameras": cameras} if any(c is not None for c in cameras) else {}
