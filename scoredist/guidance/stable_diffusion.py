"""Where StableDiffusion lived until the diffusers families shared one base (scoredist/guidance/diffusers/sd.py).

Kept so that a run folder written before the move, whose config names
`_target_: scoredist.guidance.stable_diffusion.StableDiffusion`, still resumes with its own settings.
"""

from scoredist.guidance.diffusers.hub import resolve_pretrained
from scoredist.guidance.diffusers.sd import LoRASource, StableDiffusion, camera_features

__all__ = ["LoRASource", "StableDiffusion", "camera_features", "resolve_pretrained"]
