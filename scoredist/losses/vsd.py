"""Variational Score Distillation (ProlificDreamer): the source distribution is learned online.

    g = ε_cfg(x_t; y) − ε_ψ(x_t; y)

ε_ψ is a trainable copy of the model (a LoRA of the UNet for Stable Diffusion, a small network for the exact priors),
fitted after every step to the current renders with the plain denoising loss, t ~ U[0, T), and the prompt dropped to
∅ with probability `condition_dropout` (so that it also learns the unconditional render distribution).

Camera conditioning (NeRF, as ProlificDreamer): rows that carry a camera (`Prompt.camera`) hand it to ε_ψ, both when
it is asked and when it is fitted; the condition dropout drops the text only, the camera stays. (ProlificDreamer's code
instead keeps the text and zeroes the camera with probability 0.1.) Rows without cameras (2D) call ε_ψ exactly as
before, without the argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scoredist.guidance.base import add_noise, cfg
from scoredist.losses.base import ScoreLoss, noised, norm, predict_conditions
from scoredist.prompts import texts
from scoredist.schedules import value_at


class VSD(ScoreLoss):
    def __init__(
        self,
        guidance_scale=7.5,
        lora_lr: float = 3e-4,
        lora_weight_decay: float = 0.0,
        condition_dropout: float = 0.1,
        source_steps: int = 1,
        weighting: str = "1-abar",
    ):
        super().__init__(weighting)
        self.guidance_scale, self.lora_lr, self.lora_weight_decay = guidance_scale, lora_lr, lora_weight_decay
        self.condition_dropout, self.source_steps = condition_dropout, source_steps
        self.source = None
        self.optimizer = None

    def attach(self, guidance, x_init):
        """Each chunk of samples starts from a fresh ε_ψ = ε_φ and a fresh optimizer. The source model is built once
        and reset afterwards: on Stable Diffusion every new one would add another LoRA adapter to the shared UNet."""
        if self.source is None:
            self.source = guidance.make_source_model()
            self._initial_source = {k: v.detach().clone() for k, v in self.source.state_dict().items()}
        else:
            self.source.load_state_dict(self._initial_source)
        self.optimizer = torch.optim.AdamW(
            self.source.parameters(), lr=self.lora_lr, weight_decay=self.lora_weight_decay
        )

    def direction(self, guidance, x, t, noise, prompts, step):
        x_t = noised(guidance, x, t, noise)
        eps_cond, eps_uncond = predict_conditions(guidance, x_t, t, [prompts, [""] * len(prompts)])
        with torch.no_grad():
            eps_source = self.source.predict_noise(x_t, t, texts(prompts), **camera_kwargs(prompts)).float()
        eps_cfg = cfg(eps_uncond, eps_cond, value_at(self.guidance_scale, step))
        return eps_cfg - eps_source, {"norm/cfg": norm(eps_cfg), "norm/source": norm(eps_source)}

    def after_step(self, guidance, x, prompts):
        """Fit ε_ψ to the current renders: `source_steps` denoising steps on x (detached)."""
        x = x.detach()
        total = torch.zeros((), device=x.device)
        for _ in range(self.source_steps):
            t = torch.randint(0, guidance.num_train_timesteps, (x.shape[0],), device=x.device)
            noise = torch.randn_like(x)
            drop = torch.rand(x.shape[0]).tolist()
            conditioned = [p if d >= self.condition_dropout else "" for p, d in zip(texts(prompts), drop)]
            x_t = add_noise(x, noise, t, guidance.alphas_cumprod)
            pred = self.source.predict_noise(x_t, t, conditioned, **camera_kwargs(prompts))  # the camera is kept
            loss = F.mse_loss(pred.float(), noise)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        return {"vsd/source_loss": total / self.source_steps}

    def state_dict(self):
        return {"source": self.source.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.source.load_state_dict(state["source"])
        self.optimizer.load_state_dict(state["optimizer"])


def camera_kwargs(prompts) -> dict:
    """{"cameras": one camera or None per row} when some row has a camera (a NeRF render), else {} (2D rows)."""
    cameras = [getattr(p, "camera", None) for p in prompts]
    return {"cameras": cameras} if any(c is not None for c in cameras) else {}
