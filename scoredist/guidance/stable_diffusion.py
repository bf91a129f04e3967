"""Stable Diffusion (or any diffusers UNet2DConditionModel + CLIP text encoder folder) as a frozen guidance model.

    ε_φ(x_t; y, t) = UNet(x_t, t, CLIP(y))                       ("epsilon" models)
    ε              = sqrt(ᾱ_t) v + sqrt(1 − ᾱ_t) x_t              ("v_prediction" models, e.g. SD 2.1-v)
    ε              = (x_t − sqrt(ᾱ_t) x̂_0) / sqrt(1 − ᾱ_t)        ("sample" models)

Model space: SD latents z = s · E(2·rgb − 1) with s = vae.config.scaling_factor, (B, 4, H/8, W/8); or, for a folder
without a `vae/` subfolder, pixels in [−1, 1] (B, 3, H, W).

Weights load only through `from_pretrained(..., use_safetensors=True)` of a hub id or a local folder; the tiny test
folder from `scoredist.guidance.tiny_pipeline` goes through exactly this code. When weights cannot be found offline
the constructor fails at once with `WeightsNotFoundError`, saying what to pass instead.

VSD's source model (`LoRASource`) is a LoRA of the same UNet that, for NeRF renders, also sees each row's camera
through a class embedding, as ProlificDreamer's does.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from scoredist.errors import WeightsNotFoundError  # the one class the CLI reports without a traceback
from scoredist.guidance.base import Guidance, SourceModel

__all__ = [
    "LoRASource",
    "StableDiffusion",
    "WeightsNotFoundError",
    "hub_offline",
    "hub_reachable",
    "resolve_pretrained",
]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections of every transformer block


FOLDER_LAYOUTS = {  # what a local folder of each family holds (besides model_index.json and scheduler/)
    "sd": "unet/, text_encoder/, tokenizer/ and, for latent models, vae/",
    "sdxl": "unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/",
    "sd3": "transformer/, vae/, text_encoder/ … text_encoder_3/, tokenizer/ … tokenizer_3/",
    "flux": "transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/",
}


def what_to_pass_instead(pretrained: str, reason: str, family: str = "sd") -> str:
    tiny = f"tiny-{family}"
    flag = "" if family == "sd" else f" --family {family}"
    return (
        f"Could not load diffusion weights from {pretrained!r}: {reason}. Instead, pass a local diffusers folder "
        "(guidance.pretrained=/path/to/local/folder, containing model_index.json, scheduler/, "
        f"{FOLDER_LAYOUTS[family]}, "
        f"with .safetensors weights), or build a tiny random-weight test pipeline with `python "
        f"scripts/make_tiny_pipeline.py {tiny}{flag}` and pass guidance.pretrained={tiny}, or use the exact offline "
        'prior: `python train.py +experiment=demo`, or guidance=shapes prompt="a red cube".'
    )


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set, read at call time (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint: a down network fails here in ≤ timeout s (DNS errors at once), instead of
    after huggingface_hub's ~25 s of retries. Behind a proxy a direct connect proves nothing, so it is skipped."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist on disk is a mistyped folder.
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def resolve_pretrained(pretrained: str, revision: str | None = None) -> tuple[str, bool, dict]:
    """Check quickly that weights can be found: on disk, in the hub cache, or (network up) on the hub.

    Returns (source, local_files_only, model_index): source is a local folder or a hub id. Raises WeightsNotFoundError
    for a missing folder, a folder without model_index.json, or a hub id that is not cached while HF_HUB_OFFLINE is
    set or the hub is unreachable.
    """
    path = Path(pretrained).expanduser()
    if path.exists() or _looks_like_path(pretrained):
        if not (path / "model_index.json").is_file():
            reason = "this local folder does not exist" if not path.exists() else "the folder has no model_index.json"
            raise WeightsNotFoundError(what_to_pass_instead(pretrained, reason))
        return str(path), True, json.loads((path / "model_index.json").read_text())

    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(pretrained, "model_index.json", revision=revision)
    except HFValidationError as err:
        raise WeightsNotFoundError(what_to_pass_instead(pretrained, "neither a folder nor a valid hub id")) from err
    # Offline also when the hub cannot be reached, so that a cached model loads from disk without retry delays.
    offline = hub_offline() or not hub_reachable()
    if not isinstance(cached, str):
        if offline:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the model hub is unreachable"
            raise WeightsNotFoundError(what_to_pass_instead(pretrained, f"{why} and this hub id is not in the cache"))
        try:  # online: one small download tells us quickly whether the id exists and is accessible
            cached = hf_hub_download(pretrained, "model_index.json", revision=revision)
        except (OSError, ValueError) as err:  # HfHubHTTPError, ConnectionError, LocalEntryNotFoundError are OSErrors
            why = f"downloading model_index.json failed ({type(err).__name__}: {err})"
            raise WeightsNotFoundError(what_to_pass_instead(pretrained, why)) from err
    return pretrained, offline, json.loads(Path(cached).read_text())


class StableDiffusion(Guidance):
    """Frozen text-conditioned UNet (SD 1.x/2.x layout), latent or pixel space.

    Args:
        pretrained: hub id or local diffusers folder.
        revision, variant: passed to every `from_pretrained` (e.g. variant="fp16" for half-precision files).
        enable_xformers: use xformers attention in the UNet (needs the xformers package; PyTorch's
            scaled-dot-product attention, diffusers' default processor, is used otherwise).
        max_batch: the most rows one UNet call takes; a step with more rows (conditions × samples × views) is split
            into several calls of at most this many rows, for memory. None: never split.
        channels_last: run the UNet in channels_last memory format (often faster convolutions on CUDA).
        compile_unet: wrap the UNet's forward in torch.compile (CUDA; the first steps pay the compile time).
        prompt_cache_size: prompt embeddings kept (least recently used dropped first): a run over thousands of
            captions must not keep every caption's (77, 1024) embedding on the GPU.
        offload_text_encoder: keep the text encoder on the CPU in fp32; it only runs once per new prompt, because
            prompt embeddings are cached, so this saves its GPU memory (≈0.7 GB for SD 2.1) at little cost.
        device, precision: where the models live and, on CUDA, their dtype (fp16/bf16); on CPU always fp32.
    """

    def __init__(
        self,
        pretrained: str = "stabilityai/stable-diffusion-2-1-base",
        revision: str | None = None,
        variant: str | None = None,
        enable_xformers: bool = False,
        offload_text_encoder: bool = False,
        max_batch: int | None = None,
        channels_last: bool = False,
        compile_unet: bool = False,
        prompt_cache_size: int = 1024,
        device: str = "cpu",
        precision: str = "fp32",
    ):
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        dtype = DTYPES[precision] if str(device).startswith("cuda") else torch.float32
        source, local_only, model_index = resolve_pretrained(pretrained, revision)
        load = {"local_files_only": local_only, "use_safetensors": True}
        load.update({k: v for k, v in {"revision": revision, "variant": variant}.items() if v is not None})

        try:
            scheduler, unet, vae, text_encoder, tokenizer = _load_components(
                source, model_index, load, dtype, text_encoder_dtype=torch.float32 if offload_text_encoder else dtype
            )
        except OSError as err:  # missing files, .bin-only folders, hub/connection errors: all OSErrors
            why = f"loading a component failed ({type(err).__name__}: {err})"
            raise WeightsNotFoundError(what_to_pass_instead(pretrained, why)) from err

        super().__init__(scheduler_alphas_cumprod(scheduler))
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unsupported prediction_type {self.prediction_type!r}; expected one of {PREDICTION_TYPES}"
            )
        self.model_dtype = dtype

        self.unet = unet.requires_grad_(False).eval()
        self.vae = None if vae is None else vae.requires_grad_(False).eval()
        text_encoder = text_encoder.requires_grad_(False).eval()
        if offload_text_encoder:
            object.__setattr__(self, "text_encoder", text_encoder)  # outside the module tree: .to(cuda) skips it
        else:
            self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        if max_batch is not None and int(max_batch) < 1:
            raise ValueError(f"guidance.max_batch must be a positive number of rows or null, got {max_batch}")
        self.max_batch = int(max_batch) if max_batch is not None else None
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.prompt_cache_size = int(prompt_cache_size)
        self._num_source_models = 0
        self._active_adapter: str | None = None

        self.channels = unet.config.in_channels
        if self.vae is None:
            self.downscale = 1
        else:
            self.downscale = 2 ** (len(self.vae.config.block_out_channels) - 1)
            if self.vae.config.latent_channels != self.channels:
                raise ValueError(
                    f"UNet in_channels={self.channels} != VAE latent_channels={self.vae.config.latent_channels}: "
                    "inpainting/depth UNets are not supported as guidance"
                )
            if dtype == torch.float16 and self.vae.config.force_upcast:
                self.vae.to(torch.float32)  # SD VAEs overflow in fp16; this is what diffusers' pipelines do too
        if enable_xformers:
            self.unet.enable_xformers_memory_efficient_attention()
        self.to(device)
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        # outside the module tree (object.__setattr__): the compiled wrapper shares the UNet's weights, it must not
        # appear a second time in state_dict() or parameters()
        object.__setattr__(self, "_compiled_unet", torch.compile(self.unet) if compile_unet else None)

    # ---- prompts -------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device  # not unet.device/dtype: diffusers walks every module for those

    @property
    def unet_dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        return self.vae.encoder.conv_in.weight.dtype  # may be fp32 under an fp16 UNet (force_upcast)

    def check_prompt(self, prompt: str) -> None:
        """Reject non-strings and texts longer than CLIP's context: their tail (a source/target suffix, a view phrase)
        would otherwise be silently truncated away. The trainer calls this for every text a loss conditions on."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__} {prompt!r}")
        n, limit = len(self.tokenizer(prompt, truncation=False).input_ids), self.tokenizer.model_max_length
        if n > limit:
            raise ValueError(
                f"{prompt!r} is {n} tokens long (with BOS/EOS), more than the text encoder's {limit}: the words "
                "after the limit would be silently ignored. Shorten the prompt (or the suffix / negative prompt)"
            )

    @torch.no_grad()
    def prompt_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, L, D) text embeddings in the UNet's dtype/device, one row per prompt.

        Each distinct prompt goes through the text encoder once while it stays in the cache (all new ones in a single
        batch); later calls only index the cache.
        """
        distinct = list(dict.fromkeys(prompts))
        if len(distinct) > self.prompt_cache_size:
            raise ValueError(
                f"one call conditions on {len(distinct)} distinct prompts, more than guidance.prompt_cache_size="
                f"{self.prompt_cache_size}; raise it"
            )
        new = [p for p in distinct if p not in self._prompt_cache]
        if new:
            tokens = self.tokenizer(
                new,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            enc_device = next(self.text_encoder.parameters()).device
            hidden = self.text_encoder(tokens.input_ids.to(enc_device))[0]  # last_hidden_state (n, L, D), as SD uses
            for prompt, h in zip(new, hidden):
                self._prompt_cache[prompt] = h.to(device=self.device, dtype=self.unet_dtype)
        for p in distinct:
            self._prompt_cache.move_to_end(p)
        while len(self._prompt_cache) > self.prompt_cache_size:
            self._prompt_cache.popitem(last=False)
        rows = [self._prompt_cache[p] for p in prompts]
        return torch.stack(rows).to(device=self.device, dtype=self.unet_dtype)

    # ---- noise prediction ----------------------------------------------------------------------------------------

    def _to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Convert the UNet's raw output (float32, shape of x_t) to ε using the prediction type."""
        if self.prediction_type == "epsilon":
            return out
        abar = self.alphas_cumprod[t].view(-1, *([1] * (x_t.dim() - 1)))
        a, b = abar.sqrt(), (1 - abar).sqrt()
        if self.prediction_type == "v_prediction":  # v = a ε − b x_0  ⇒  ε = a v + b x_t
            return a * out + b * x_t
        return (x_t - a * out) / b  # "sample": out = x̂_0

    def unet_eps(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """ONE UNet call on the stacked batch, whatever adapters are active: (N, C, h, w) → ε (N, C, h, w) float32.

        Gradients flow to whatever requires them (the LoRA weights when called from LoRASource).
        """
        if len(prompts) != x_t.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {x_t.shape[0]} rows of x_t")
        emb = self.prompt_embeddings(prompts)
        t = t.to(self.device).long()
        x_in = x_t.to(device=self.device, dtype=self.unet_dtype)
        rows = self.max_batch or x_in.shape[0]
        # The UNet runs in its own dtype: an outer autocast (trainer in AMP) must not re-cast it op by op.
        with torch.autocast(device_type=self.device.type, enabled=False):
            out = torch.cat(
                [
                    (self._compiled_unet or self.unet)(
                        x_in[i : i + rows], t[i : i + rows], emb[i : i + rows], return_dict=False
                    )[0]
                    for i in range(0, x_in.shape[0], rows)
                ]
            )
        if out.shape[1] == 2 * x_t.shape[1]:
            out = out[:, : x_t.shape[1]]  # learned-variance UNets output [ε, v]; the variance is not needed
        return self._to_eps(out.float(), x_t.float().to(self.device), t)

    @torch.no_grad()
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Frozen ε_φ for x_t (N, C, h, w), t (N,) long, N prompts → (N, C, h, w) float32, in one UNet call.

        Runs without autograd (the losses detach the direction anyway, and keeping the UNet graph would cost GBs) and
        with every LoRA adapter disabled, so a VSD source model sharing this UNet never leaks into ε_φ.
        """
        with self._adapters_disabled():
            return self.unet_eps(x_t, t, prompts)

    @contextlib.contextmanager
    def _adapters_disabled(self) -> Iterator[None]:
        if not getattr(self.unet, "_hf_peft_config_loaded", False):
            yield
            return
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    # ---- model space ---------------------------------------------------------------------------------------------

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] → latents (B, 4, H/8, W/8) float32, differentiably (posterior mean, not a
        sample, so that the same render always gives the same latent); pixel models: 2·rgb − 1."""
        if self.vae is None:
            return rgb * 2 - 1
        x = (rgb * 2 - 1).to(device=self.device, dtype=self.vae_dtype)
        z = self.vae.encode(x).latent_dist.mean
        shift = self.vae.config.shift_factor or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) → RGB (B, 3, 8h, 8w) in [0, 1], float32; pixel models: (x + 1) / 2."""
        if self.vae is None:
            return super().decode(x.float())
        shift = self.vae.config.shift_factor or 0.0
        z = x.to(device=self.device, dtype=self.vae_dtype) / self.vae.config.scaling_factor + shift
        return ((self.vae.decode(z).sample.float() + 1) / 2).clamp(0, 1)

    def sample_shape(self) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (self.channels, h, w)

    def make_source_model(self, rank: int = 4, alpha: float | None = None) -> LoRASource:
        """A LoRA ε_ψ on this UNet (shared frozen weights), equal to ε_φ at start."""
        self._num_source_models += 1
        source = LoRASource(self, f"vsd{self._num_source_models}", rank=rank, alpha=alpha)
        self._active_adapter = source.adapter_name  # add_adapter activates the new adapter
        return source


class LoRASource(SourceModel):
    """VSD's ε_ψ: LoRA adapters on the attention projections of the guidance's own UNet, plus a camera embedding.

    The frozen UNet weights are shared with the guidance, not copied (memory matters for SD); only the low-rank
    matrices are new, kept in float32 for stable AdamW updates even when the UNet is fp16. peft initialises B = 0,
    so ε_ψ = ε_φ at start. `parameters()` yields only the LoRA weights and the camera embedding; the guidance is held
    outside the module tree so that it is neither trained, saved nor moved through this object.

    Camera conditioning (ProlificDreamer; the paper's code): each row's camera-to-world matrix, flattened to 16
    numbers, goes through `camera_embedding` (an MLP 16 → time-embedding width, diffusers' TimestepEmbedding) and is
    added to the UNet's timestep embedding as a class embedding. Its last layer starts at zero (there: random), so
    that ε_ψ = ε_φ at start for every camera, like the LoRA itself. Rows without a camera get the zero matrix, as the
    paper's 2D code feeds; a call where no row has a camera (2D images) leaves the embedding out entirely, so 2D VSD
    is exactly the prompt-only LoRA.
    """

    def __init__(self, guidance: StableDiffusion, adapter_name: str, rank: int = 4, alpha: float | None = None):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig

        config = LoraConfig(
            r=rank, lora_alpha=alpha or rank, target_modules=LORA_TARGETS, init_lora_weights=True, lora_dropout=0.0
        )
        with warnings.catch_warnings():  # several adapters on one UNet is intended here (one per source model)
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            guidance.unet.add_adapter(config, adapter_name=adapter_name)
        marker = f".{adapter_name}."
        params = [p for n, p in guidance.unet.named_parameters() if marker in n]
        for p in params:
            p.data = p.data.float()
            p.requires_grad_(True)
        self.lora = nn.ParameterList(params)  # the very Parameter objects inside the UNet's LoRA layers
        width = guidance.unet.time_embedding.linear_2.out_features  # 1280 for SD 1.x/2.x
        self.camera_embedding = TimestepEmbedding(CAMERA_FEATURES, width).to(guidance.device)
        nn.init.zeros_(self.camera_embedding.linear_2.weight)
        nn.init.zeros_(self.camera_embedding.linear_2.bias)
        self.adapter_name = adapter_name
        object.__setattr__(self, "guidance", guidance)

    def predict_noise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        prompts: Sequence[str],
        cameras: Sequence[Sequence[float] | None] | None = None,
    ) -> torch.Tensor:
        """ε_ψ for x_t (N, C, h, w), t (N,), N prompts → (N, C, h, w) float32, with autograd to the LoRA weights and
        the camera embedding. cameras: N rows of (azimuth, elevation, distance, fovy) (`Prompt.camera`) or None."""
        guidance = self.guidance
        if guidance._active_adapter != self.adapter_name:  # set_adapter walks every module: only when switching
            guidance.unet.set_adapter(self.adapter_name)  # also gives this adapter back its requires_grad
            guidance._active_adapter = self.adapter_name
        if cameras is None:  # rows without cameras (2D); a list, even of Nones, goes through the camera embedding
            return guidance.unet_eps(x_t, t, prompts)
        if len(cameras) != x_t.shape[0]:
            raise ValueError(f"got {len(cameras)} cameras for {x_t.shape[0]} rows of x_t")
        with self._class_labels(camera_features(cameras).to(guidance.device)):
            return guidance.unet_eps(x_t, t, prompts)

    @contextlib.contextmanager
    def _class_labels(self, labels: torch.Tensor) -> Iterator[None]:
        """Within the block, the shared UNet adds `camera_embedding(labels)` to its timestep embedding.

        The embedding is installed on the UNet only here: the frozen guidance (ε_φ) calls the same UNet without it.
        `unet_eps` may split the rows into several UNet calls (max_batch); a pre-hook hands each call the next rows'
        labels, in order, and every label must have been used by the end.
        """
        unet, remaining = self.guidance.unet, [labels]

        def add_labels(module, args, kwargs):
            rows = args[0].shape[0]
            kwargs["class_labels"], remaining[0] = remaining[0][:rows], remaining[0][rows:]
            return args, kwargs

        original = unet.class_embedding  # None for SD 1.x/2.x
        unet.class_embedding = self.camera_embedding
        hook = unet.register_forward_pre_hook(add_labels, with_kwargs=True)
        try:
            yield
        finally:
            hook.remove()
            unet.class_embedding = original
        if remaining[0].shape[0]:
            raise RuntimeError(f"{remaining[0].shape[0]} camera rows were not used by the UNet calls")


CAMERA_FEATURES = 16  # a flattened 4×4 camera-to-world matrix


def camera_features(cameras: Sequence[Sequence[float] | None]) -> torch.Tensor:
    """(N, 16) float32: each row's flattened camera-to-world matrix; rows without a camera get zeros."""
    from scoredist.cameras import Cameras, camera_to_world

    features = torch.zeros(len(cameras), CAMERA_FEATURES)
    rows = [i for i, c in enumerate(cameras) if c is not None]
    if rows:
        cams = Cameras.from_tensor(torch.tensor([list(cameras[i]) for i in rows], dtype=torch.float32))
        features[rows] = camera_to_world(cams).flatten(1)
    return features


def scheduler_alphas_cumprod(scheduler) -> torch.Tensor:
    """(T,) ᾱ_t of the folder's training noise schedule."""
    return torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)


def _load_components(source: str, model_index: dict, load: dict, dtype: torch.dtype, text_encoder_dtype: torch.dtype):
    """from_pretrained of each subfolder; the VAE only when model_index.json lists one (pixel-space models have none).

    The scheduler config is read into a DDPMScheduler whatever its class (PNDM for SD 2.1-base): only the training
    schedule (β's → ᾱ) and prediction_type are needed, and those keys are shared by all of diffusers' schedulers.
    """
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from packaging.version import Version
    from transformers import CLIPTextModel, CLIPTokenizer

    # transformers renamed torch_dtype → dtype in 4.56 (and warns on the old name); diffusers accepts torch_dtype.
    te_dtype_kw = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    common = {k: v for k, v in load.items() if k in ("local_files_only", "revision")}
    config = DDPMScheduler.load_config(source, subfolder="scheduler", **common)
    scheduler = DDPMScheduler.from_config(config)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **load)
    has_vae = (model_index.get("vae") or [None])[0] is not None
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **load) if has_vae else None
    text_encoder = CLIPTextModel.from_pretrained(
        source, subfolder="text_encoder", **{te_dtype_kw: text_encoder_dtype}, **load
    )
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
    return scheduler, unet, vae, text_encoder, tokenizer
