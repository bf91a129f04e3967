"""What every diffusers backbone shares: loading, the text-embedding cache, one batched denoiser call per step, the
noise path and prediction type, precision and memory flags, and the VAE.

A family (sd.py, sdxl.py, sd3.py, flux.py) only says which components its folder holds (`load_components`), how a
prompt becomes the tensors its denoiser is conditioned on (`encode_text`), and how the denoiser is called on rows of its
own x_t (`call_denoiser`). Everything else is here, written once:

- the loss's x_t (VP path) is rescaled to the model's path and its output converted to ε̂ (predictions.py), so every
  loss runs on every family; a timestep index t is the model's own training timestep (SD3: the t-th sigma of its
  shifted grid, Flux: of its grid shifted for `shift_resolution` pixels, or `flow_shift`);
- prompt embeddings are computed once per distinct prompt (least recently used dropped past `prompt_cache_size`);
- a step's rows go through the denoiser in one call, or in calls of at most `max_batch` rows;
- memory flags: `precision` (the weights' dtype on CUDA: fp16/bf16; bf16 is honoured on the CPU too, fp16 is not,
  because CPU kernels lack it), `offload_text_encoders` (text encoders stay on the CPU in fp32: they run once per new
  prompt, whose embeddings are then cached on the device), `model_offload` (the denoiser and VAE wait on the CPU and
  visit the device only for their own calls, through accelerate's hooks, as diffusers' enable_model_cpu_offload does).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from scoredist.errors import WeightsNotFoundError
from scoredist.guidance.base import Guidance
from scoredist.guidance.predictions import NoisePath, check_prediction, flow_sigmas

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def weights_dtype(precision: str, device: str) -> torch.dtype:
    """The denoiser's dtype: `precision` on CUDA; on the CPU fp32, except bf16 (CPU kernels have bf16, not fp16)."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    if str(device).startswith("cuda") or precision == "bf16":
        return DTYPES[precision]
    return torch.float32


def transformers_dtype_kw() -> str:
    """transformers renamed torch_dtype → dtype in 4.56 (and warns on the old name); diffusers accepts torch_dtype."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def noise_path_of(scheduler_config: dict, flow_shift: float | None = None) -> tuple[NoisePath, str]:
    """(training noise path, prediction type) of a folder's scheduler config, whatever the scheduler class.

    DDPM-style schedulers (DDPM, PNDM, Euler, DDIM: SD, SDXL) share the β keys and `prediction_type`; a flow-matching
    scheduler (SD3, Flux) trains the velocity on σ = shift(s) with s = (t + 1)/T. Flux's shift depends on the image
    size (use_dynamic_shifting): `flow_shift` fixes it (diffusers: e^μ with μ interpolated in the token count), else
    the scheduler's static `shift` is used.
    """
    from diffusers import DDPMScheduler

    T = int(scheduler_config.get("num_train_timesteps", 1000))
    if scheduler_config.get("_class_name", "").startswith("FlowMatch"):
        shift = float(flow_shift if flow_shift is not None else scheduler_config.get("shift", 1.0))
        return NoisePath.rectified_flow(flow_sigmas(T, shift)), "flow"
    scheduler = DDPMScheduler.from_config(scheduler_config)
    prediction = check_prediction(scheduler.config.prediction_type)
    return NoisePath.variance_preserving(torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)), prediction


def dynamic_flow_shift(scheduler_config: dict, image_tokens: int) -> float:
    """Flux's resolution shift e^μ, μ linear in the number of image tokens between (base_image_seq_len, base_shift) and
    (max_image_seq_len, max_shift) — diffusers' calculate_shift, with the scheduler's own constants."""
    c = scheduler_config
    if c.get("time_shift_type", "exponential") != "exponential":
        raise ValueError(
            f"time_shift_type {c['time_shift_type']!r}: only diffusers' exponential shift (e^μ) is known here"
        )
    slope = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    mu = c["base_shift"] + slope * (image_tokens - c["base_image_seq_len"])
    return math.exp(mu)


@dataclass(frozen=True)
class Folder:
    """One diffusers folder being loaded: `from_pretrained` of its subfolders with the keyword arguments each kind of
    component takes (weights: safetensors, offline flag, revision, variant, dtype; configs and tokenizers: the offline
    flag and revision only)."""

    source: str
    model_index: dict
    load: dict
    dtype: torch.dtype
    text_dtype: torch.dtype

    @property
    def common(self) -> dict:
        return {k: v for k, v in self.load.items() if k in ("local_files_only", "revision")}

    def has(self, component: str) -> bool:
        """Whether model_index.json lists the component (a pixel-space SD has no vae, SD3 may drop text_encoder_3)."""
        return (self.model_index.get(component) or [None])[0] is not None

    def model(self, cls, subfolder: str):
        return cls.from_pretrained(self.source, subfolder=subfolder, torch_dtype=self.dtype, **self.load)

    def text_encoder(self, cls, subfolder: str):
        return cls.from_pretrained(
            self.source, subfolder=subfolder, **{transformers_dtype_kw(): self.text_dtype}, **self.load
        )

    def tokenizer(self, subfolder: str, cls=None):
        from transformers import AutoTokenizer

        return (cls or AutoTokenizer).from_pretrained(self.source, subfolder=subfolder, **self.common)

    def scheduler_config(self, cls) -> dict:
        return dict(cls.load_config(self.source, subfolder="scheduler", **self.common))


class DiffusersGuidance(Guidance):
    """A frozen diffusers backbone as guidance: subclasses load their components and call their denoiser.

    Args (every family):
        pretrained, revision, variant: hub id or local diffusers folder; passed to every `from_pretrained`.
        max_batch: the most rows one denoiser call takes (None: one call per step).
        prompt_cache_size: distinct prompts whose embeddings are kept on the device.
        offload_text_encoders, model_offload, precision: memory flags (module docstring); model_offload implies
            offload_text_encoders (the encoders then run on the CPU in fp32, once per new prompt).
        compile_denoiser: torch.compile the denoiser's forward (CUDA; the first steps pay the compile time).
        device: where the models run.
    """

    family = "?"

    def __init__(
        self,
        pretrained: str,
        revision: str | None = None,
        variant: str | None = None,
        max_batch: int | None = None,
        prompt_cache_size: int = 1024,
        offload_text_encoders: bool = False,
        model_offload: bool = False,
        compile_denoiser: bool = False,
        device: str = "cpu",
        precision: str = "fp32",
    ):
        from scoredist.guidance.diffusers.hub import resolve_pretrained, what_to_pass_instead

        dtype = weights_dtype(precision, device)
        offload_text_encoders = offload_text_encoders or model_offload
        source, local_only, model_index = resolve_pretrained(pretrained, revision, self.family)
        load = {"local_files_only": local_only, "use_safetensors": True}
        load.update({k: v for k, v in {"revision": revision, "variant": variant}.items() if v is not None})
        text_dtype = torch.float32 if offload_text_encoders else dtype
        try:
            parts = self.load_components(Folder(source, model_index, load, dtype, text_dtype))
        except OSError as err:  # missing files, .bin-only folders, hub/connection errors: all OSErrors
            why = f"loading a component failed ({type(err).__name__}: {err})"
            raise WeightsNotFoundError(what_to_pass_instead(pretrained, why, self.family)) from err
        path, prediction = noise_path_of(parts["scheduler_config"], self.resolve_flow_shift(parts))
        super().__init__(path.alphas_cumprod)
        self.noise_path, self.prediction = path, prediction
        self.denoiser = parts["denoiser"].requires_grad_(False).eval()
        for name, module in parts.get("modules", {}).items():  # a family's other networks (Zero123's image encoder)
            setattr(self, name, module.requires_grad_(False).eval())
        self.vae = None if parts.get("vae") is None else parts["vae"].requires_grad_(False).eval()
        encoders = [e.requires_grad_(False).eval() for e in parts["text_encoders"]]
        if offload_text_encoders:  # outside the module tree (object.__setattr__): .to(device) must skip them
            object.__setattr__(self, "text_encoders", encoders)
        else:
            self.text_encoders = torch.nn.ModuleList(encoders)
        self.tokenizers = list(parts["tokenizers"])
        if max_batch is not None and int(max_batch) < 1:
            raise ValueError(f"guidance.max_batch must be a positive number of rows or null, got {max_batch}")
        self.max_batch = int(max_batch) if max_batch is not None else None
        self.prompt_cache_size = int(prompt_cache_size)
        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, ...]] = OrderedDict()
        self.configure_model_space()
        if self.vae is not None and dtype == torch.float16 and self.vae.config.force_upcast:
            self.vae.to(torch.float32)  # SD/SDXL VAEs overflow in fp16; diffusers' pipelines upcast them too
        self._execution_device = torch.device(device)
        if model_offload:
            self._install_offload(torch.device(device))
        else:
            self.to(device)
        # outside the module tree: the compiled wrapper shares the denoiser's weights
        object.__setattr__(self, "_compiled", torch.compile(self.denoiser) if compile_denoiser else None)

    # ---- what a family provides ----------------------------------------------------------------------------------

    def load_components(self, folder: Folder) -> dict:
        """{"denoiser", "vae" (or None), "text_encoders", "tokenizers", "scheduler_config"} from the folder, and
        optionally "modules": {attribute name: other frozen network} (Zero123's image encoder and pose projection)."""
        raise NotImplementedError

    def resolve_flow_shift(self, parts: dict) -> float | None:
        """The shift of a flow model's time grid (flow families set `flow_shift`; None: the scheduler's own)."""
        return getattr(self, "flow_shift", None)

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """The denoiser's conditioning tensors for new prompts, each (n, ...) with one row per prompt."""
        raise NotImplementedError

    def call_denoiser(self, model, x: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The native output for rows x (n, C, h, w) of the model's own x_t at timestep indices t (n,)."""
        raise NotImplementedError

    def configure_model_space(self) -> None:
        """Set channels / downscale from the loaded components (default: the VAE's latents)."""
        self.channels = self.vae.config.latent_channels
        self.downscale = 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ---- devices and memory ---------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._execution_device

    @property
    def denoiser_dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype  # may be fp32 under an fp16 denoiser (force_upcast)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        # follow .to(device): the device the rows are sent to is where the denoiser's weights now are
        if not getattr(self, "_offloaded", False) and hasattr(self, "denoiser"):
            self._place(next(self.denoiser.parameters()).device)
        return result

    def _place(self, device: torch.device) -> None:
        """Rows go to `device`, and the noise path's tables live there too."""
        self._execution_device = device
        self.noise_path = self.noise_path.to(device)

    def _install_offload(self, device: torch.device) -> None:
        """Denoiser and VAE stay on the CPU and move to `device` for their own forward (accelerate's hooks). A hook
        sends the previous one's model back before its own runs; the chain is closed into a cycle (VAE → denoiser →
        VAE), so that whichever runs, the other leaves the device: at most one of them is there at a time."""
        from accelerate import cpu_offload_with_hook

        object.__setattr__(self, "_offloaded", True)
        self.to("cpu")
        hooks = []
        for model in [m for m in (self.denoiser, self.vae) if m is not None]:
            _, hook = cpu_offload_with_hook(model, device, prev_module_hook=hooks[-1] if hooks else None)
            hooks.append(hook)
        if len(hooks) > 1:
            hooks[0].hook.prev_module_hook = hooks[-1]
        self._place(device)

    # ---- prompts --------------------------------------------------------------------------------------------------

    def check_prompt(self, prompt: str) -> None:
        """Reject non-strings and prompts longer than a text encoder's context: their tail (a suffix, a view phrase)
        would otherwise be silently cut off."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__} {prompt!r}")
        limits = self.token_limits()
        for tokenizer, limit in limits:
            n = len(tokenizer(prompt, truncation=False).input_ids)
            if n > limit:
                which = f" ({type(tokenizer).__name__})" if len(limits) > 1 else ""
                raise ValueError(
                    f"{prompt!r} is {n} tokens long (with special tokens), more than the text encoder's {limit}{which}:"
                    " the words after the limit would be silently ignored. Shorten the prompt (or the suffix / "
                    "negative prompt)"
                )

    def token_limits(self) -> list[tuple]:
        """(tokenizer, most tokens it is given) for every text encoder."""
        return [(tok, tok.model_max_length) for tok in self.tokenizers]

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """The conditioning tensors of N prompts, each (N, ...) on the device in the denoiser's dtype.

        Each distinct prompt is encoded once while it stays in the cache (all new ones in one batch)."""
        distinct = list(dict.fromkeys(prompts))
        if len(distinct) > self.prompt_cache_size:
            raise ValueError(
                f"one call conditions on {len(distinct)} distinct prompts, more than guidance.prompt_cache_size="
                f"{self.prompt_cache_size}; raise it"
            )
        new = [p for p in distinct if p not in self._prompt_cache]
        if new:
            encoded = self.encode_text(new)
            for i, prompt in enumerate(new):
                self._prompt_cache[prompt] = tuple(
                    e[i].to(device=self.device, dtype=self.denoiser_dtype) for e in encoded
                )
        for p in distinct:
            self._prompt_cache.move_to_end(p)
        while len(self._prompt_cache) > self.prompt_cache_size:
            self._prompt_cache.popitem(last=False)
        parts = len(self._prompt_cache[distinct[0]]) if distinct else 0
        return tuple(torch.stack([self._prompt_cache[p][j] for p in prompts]) for j in range(parts))

    def text_encoder_device(self, index: int = 0) -> torch.device:
        return next(self.text_encoders[index].parameters()).device

    # ---- noise prediction -----------------------------------------------------------------------------------------

    def model_eps(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """ε̂ for the losses' x_t (N, C, h, w) at indices t (N,): rows rescaled to the model's path, ONE denoiser call
        (or calls of max_batch rows), the output converted (predictions.py). float32; autograd as the caller has it."""
        if len(prompts) != x_t.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {x_t.shape[0]} rows of x_t")
        cond = self.embed(prompts)
        t = t.to(self.device).long()
        x_vp = x_t.float().to(self.device)
        x_model = self.noise_path.scale(t, x_vp) * x_vp
        x_in = x_model.to(self.denoiser_dtype)
        rows = self.max_batch or x_in.shape[0]
        model = self._compiled or self.denoiser
        # The denoiser runs in its own dtype: an outer autocast (trainer in AMP) must not re-cast it op by op.
        with torch.autocast(device_type=self.device.type, enabled=False):
            out = torch.cat(
                [
                    self.call_denoiser(model, x_in[i : i + rows], t[i : i + rows], tuple(c[i : i + rows] for c in cond))
                    for i in range(0, x_in.shape[0], rows)
                ]
            )
        if out.shape[1] == 2 * x_t.shape[1]:
            out = out[:, : x_t.shape[1]]  # learned-variance UNets output [ε, v]; the variance is not needed
        return self.noise_path.eps_from_output(out.float(), x_model, t, self.prediction)

    @torch.no_grad()
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Frozen ε_φ for x_t (N, C, h, w), t (N,) long, N prompts → (N, C, h, w) float32, in one denoiser call."""
        with self.frozen():
            return self.model_eps(x_t, t, prompts)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block the denoiser is exactly the pretrained one (SD disables its VSD LoRA adapters here)."""
        yield

    def timestep_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ of the model's own path at indices t (n,), float32 on t's device (flow models' timestep input)."""
        return self.noise_path.sigma[t].float()

    # ---- model space ----------------------------------------------------------------------------------------------

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] → latents z = s·(E(2·rgb − 1) − shift), float32, differentiably (posterior mean,
        so the same render always gives the same latent)."""
        vae = self.vae
        x = (rgb * 2 - 1).to(device=self.device, dtype=self.vae_dtype)
        z = vae.encode(x).latent_dist.mean
        return ((z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) → RGB (B, 3, H, W) in [0, 1], float32."""
        vae = self.vae
        z = x.to(device=self.device, dtype=self.vae_dtype) / vae.config.scaling_factor
        z = z + (vae.config.shift_factor or 0.0)
        return ((vae.decode(z).sample.float() + 1) / 2).clamp(0, 1)

    def sample_shape(self) -> tuple[int, ...]:
        size = getattr(self.denoiser.config, "sample_size", None) or 64
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (self.channels, h, w)
