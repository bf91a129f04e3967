"""The one distillation loop: render → guidance direction → backward → optimizer step → log → checkpoint.

`train(cfg)` is a plain function of a composed config (train.py at the repository root is its Hydra shim). A run
distils N = prompts × samples_per_prompt samples (scoredist.samples), `trainer.batch_size` of them at a time (a
chunk); every condition of every sample of a chunk goes through one batched guidance call per step. A chunk that
finished is never run again: `trainer.resume=<run folder>` continues at the chunk in flight, inside it at its last
checkpoint, bit-for-bit on the same device (RNG states are checkpointed too).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from scoredist.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    remove_temporaries,
    replacing,
    save_checkpoint,
)
from scoredist.devices import pick_device
from scoredist.errors import NonFiniteError, ResourceError
from scoredist.images import grid, save_png, save_strip, save_video
from scoredist.losses.base import LazyRMS, surrogate_loss
from scoredist.prompts import Prompt
from scoredist.renderers.base import ModelSpace, Render
from scoredist.runs import (
    CREATED,
    MetricsFile,
    RunLock,
    SamplesFile,
    check_free_space,
    check_resume_recipe,
    config_changes,
    finite_or_none,
    json_text,
    leaves,
    output_errors,
    recipe,
    record_resume,
    remove_if_unstarted,
    report_config_changes,
    resume_hint,
    rng_state,
    run_folder,
    save_config,
    set_rng_state,
    stop_requests,
)
from scoredist.samples import (
    INIT,
    RowGroups,
    Sample,
    SampleStreams,
    chunk_seed,
    make_samples,
    read_prompts,
    row_groups,
    shard_chunks,
    split_chunks,
)

PRECISIONS = ("fp32", "fp16", "bf16")
# The groups whose numbers must be finite (a NaN guidance scale or learning rate would silently ruin every step).
NUMERIC_GROUPS = ("loss", "optimizer", "renderer", "schedule", "lr_scheduler", "guidance", "trainer")
log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    step: int  # steps completed in the last chunk that ran
    interrupted: bool
    samples_done: int = 0
    stopped_by: str | None = None  # the signal that interrupted the run (SIGINT, SIGTERM, SIGUSR2)


def validate(cfg: DictConfig) -> None:
    """Fail before any model is loaded, with the key to change in the message."""
    tr = cfg.trainer
    for key in ("max_steps", "batch_size", "log_every", "image_every", "ckpt_every", "max_nonfinite"):
        value = tr[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"trainer.{key} must be a positive integer, got {value!r}")
    if tr.device not in ("auto", "cpu", "cuda") and not str(tr.device).startswith("cuda:"):
        raise ValueError(f"trainer.device must be auto, cpu or cuda, got {tr.device!r}")
    if str(tr.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but CUDA is not available here; use trainer.device=cpu (or auto)")
    shards, shard = tr.get("shards", 1), tr.get("shard", 0)
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ValueError(f"trainer.shards must be a positive integer, got {shards!r}")
    if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard < shards:
        raise ValueError(f"trainer.shard must be one of 0 … {shards - 1} (trainer.shards={shards}), got {shard!r}")
    if tr.precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {tr.precision!r}")
    snapshot_steps(cfg)  # raises on a bad list
    check_text_values(cfg)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        # a ??? left for the user (image= of an image-to-3D overlay), directly or through an interpolation
        missing = re.search(r"Missing mandatory value: ?(\S*)", str(e))
        if missing:
            key = missing.group(1) or e.full_key
            raise ValueError(f"{key} has no value: give it on the command line ({key}=...)") from None
        raise ValueError(f"config key {e.full_key}: {e.msg}") from None
    for key, value in numbers(resolved, NUMERIC_GROUPS):
        if not math.isfinite(value):
            raise ValueError(f"{key} is {value}; it must be a finite number")
    check_learning_rates(resolved)


def check_settings(cfg: DictConfig, group: str) -> None:
    """Every key of a group's config is an argument of its class: a key left by an overlay written for another
    choice (`+experiment=nerf_demo loss=sds` keeps ours' `loss.stage_one`) is named here, not by a TypeError from
    deep inside instantiate."""
    node = cfg.get(group)
    if node is None or "_target_" not in node:
        return
    try:
        parameters = inspect.signature(get_class(node._target_)).parameters
    except (ValueError, TypeError, ImportError):  # a class without an inspectable signature: instantiate will say
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [k for k in node if not str(k).startswith("_") and k not in parameters]
    if unknown:
        name = node._target_.rsplit(".", 1)[-1]
        raise ValueError(
            f"{group}.{unknown[0]} is not a setting of {name} (its settings: {', '.join(sorted(parameters))}); an "
            f"overlay written for another {group} may have set it. Use the overlay made for this {group} (see its "
            f"comment), or drop the key with ~{group}.{unknown[0]}"
        )


def check_learning_rates(resolved: dict) -> None:
    """A negative rate would climb the objective; torch refuses it in its own words, without naming the setting.
    Every `lr` / `*_lr` key of the optimizer, the renderer (a NeRF's own rates) and the loss (VSD's source model)."""
    for key, value in leaves({g: resolved.get(g) for g in ("optimizer", "renderer", "loss")}):
        if re.search(r"(^|_)lr$", key.rsplit(".", 1)[-1]) and isinstance(value, (int, float)) and value < 0:
            raise ValueError(f"{key} is {value}; a learning rate must be >= 0 (0 freezes what it moves)")


def warn_if_unconditional(captions: list[tuple[str, str]]) -> None:
    """An empty caption is a valid condition (the unconditional model) but rarely what was meant: say so up front."""
    for caption, source in captions:
        if not caption.strip():
            log.warning(
                f"warning: {source} is empty, so this run distils the unconditional distribution (every row "
                'conditioned on the empty prompt); give prompt="..." if that is not what you meant'
            )


def check_text_values(cfg: DictConfig) -> None:
    """A prompt (or suffix) with `${` would be read by the config system as a reference to another setting: refuse it
    before anything resolves it, rather than fail with a resolver traceback or condition on the wrong text."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    for key, value in strings(raw):
        if re.search(r"(prompt|suffix)", key.rsplit(".", 1)[-1]) and re.search(r"(?<!\\)\$\{", value):
            raise ValueError(
                f"{key} {value!r} contains '${{', which the config system reads as a reference to another setting; "
                "write the text without it, escape it as '\\${', or put the captions in a prompt_file"
            )


def strings(node, prefix: str = ""):
    """(dotted key, value) of every string in a nested container; list items as key[i]."""
    yield from ((k, v) for k, v in leaves(node, prefix) if isinstance(v, str))


def numbers(node, groups):
    """(dotted key, value) of every float under the given top-level keys."""
    for key in groups:
        yield from ((k, v) for k, v in leaves(node.get(key), key) if isinstance(v, float))


def check_texts(guidance, loss, captions: list[tuple[str, str]], views: list[str]) -> None:
    """Every string the model will be conditioned on, once, before any training: each caption (with where it came
    from: the prompt, a line of the prompt file, a renderer view's own prompt) with each view phrase the renderer can
    produce, through every condition of the loss (source/target suffixes, negative prompt, source prompt, the empty
    prompt). A model that would cut a string short (too many tokens) or does not know a word refuses it here, and the
    error says which string it is and where its caption came from."""
    seen = set()
    for caption, source in dict.fromkeys(captions):
        for what, text in loss.conditioning_texts([Prompt(caption, view) for view in views]):
            if text in seen:
                continue
            seen.add(text)
            try:
                check_text_role(guidance, what, text)
                guidance.check_prompt(text)
            except ValueError as e:
                origin = "" if source == "prompt" else f"{source}: "
                derived = "" if what == "the prompt" else f"{what}: "  # a suffixed or negative prompt says which
                raise ValueError(f"{origin}{derived}{e}") from None


def check_text_role(guidance, what: str, text: str) -> None:
    """A model without a text encoder (Zero123) tells only the empty prompt (CFG's unconditional rows) from any
    other: a loss's negative, source or other texts would silently become conditional rows. Refuse them."""
    if getattr(guidance, "reads_text", True) or text == "" or what.startswith("the prompt"):
        return
    raise ValueError(
        f"guidance {type(guidance).__name__} reads no text, so {what} ({text!r}) would be conditioned like the prompt: "
        "use a loss whose conditions are only the prompt and the empty prompt (loss=sds without a negative prompt)"
    )


def available_memory(device: torch.device) -> int:
    """Bytes the run could still allocate on its device (free CUDA memory, or the host's MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(cfg: DictConfig, guidance, samples: int, device: torch.device) -> None:
    """Refuse a render size or batch that cannot fit before allocating it. A lower bound only (what one step must hold
    for the renders themselves: each float as the render or parameter, its gradient and Adam's two moments, plus a
    colour and density per field sample of a NeRF); the model's activations come on top, and a run that fits this
    bound but not the rest stops with a ResourceError when it runs out."""
    shape = guidance.sample_shape()
    native = shape[-1] * guidance.downscale if len(shape) == 3 else None
    floats_per_pixel = 4 * 3 + 4 * cfg.renderer.get("num_samples", 0)
    free = available_memory(device)
    for height, width, rows_per_sample in get_class(cfg.renderer._target_).render_sizes(cfg.renderer):
        height, width, stage_rows = height or native, width or native, samples * (rows_per_sample or 1)
        if height is None or width is None:
            continue  # not an image renderer: nothing that scales with a render size
        needed = stage_rows * height * width * floats_per_pixel * 4
        if needed > free:
            raise ResourceError(
                f"a step of this run needs at least {needed / 2**30:.1f} GiB ({stage_rows} rows of {height}x{width} "
                f"pixels), but {free / 2**30:.1f} GiB of {device.type} memory is available; lower trainer.batch_size "
                "or the render size (renderer.height/width, or the renderer's stages)"
            )


def out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in text or "not enough memory" in text


def row_prompts(render: Render, samples: list[Sample]) -> list[Prompt]:
    """What each row of a render is conditioned on: its sample's caption (or the row's own), view phrase, camera."""
    captions = render.captions or [None] * len(render.samples)
    views = render.views or [""] * len(render.samples)
    cameras = render.cameras.tolist() if render.cameras is not None else [None] * len(render.samples)
    return [
        Prompt(caption if caption is not None else samples[s].caption, view, tuple(cam) if cam else None)
        for s, caption, view, cam in zip(render.samples, captions, views, cameras)
    ]


def snapshot_steps(cfg: DictConfig) -> set[int]:
    """trainer.snapshot_steps: the steps at which every sample's current state is also written (a benchmark's
    convergence curves, scoredist.eval.report). Positive integers; max_steps itself is the final sample, and steps
    past it are reached only if the run is extended."""
    steps = cfg.trainer.get("snapshot_steps") or []
    bad = [s for s in steps if not isinstance(s, int) or isinstance(s, bool) or s < 1]
    if bad:
        raise ValueError(f"trainer.snapshot_steps must be positive integers (training steps), got {bad}")
    return set(steps)


class RowCounter:
    """Rows the frozen guidance model evaluates: the NFE a GPU pays, counted beside wall time (issue 18).

    Every loss reaches the model through `guidance.predict_noise` (CFG's conditions in one call, the bridge's extra
    DDIM calls, the exact priors' VSD source through its ε_φ term), so wrapping that one method of this run's instance
    counts them all without each loss reporting its own. A Stable Diffusion VSD source (the LoRA UNet) is not counted
    here: its rows go through its own forward."""

    def __init__(self, guidance):
        self.rows = 0
        inner = guidance.predict_noise

        def counted(x_t, *args, **kwargs):
            self.rows += int(x_t.shape[0])
            return inner(x_t, *args, **kwargs)

        guidance.predict_noise = counted

    def take(self) -> int:
        """The rows counted since the last call."""
        rows, self.rows = self.rows, 0
        return rows

    @contextmanager
    def paused(self):
        """Rows evaluated inside are not the run's cost (a loss's diagnostics)."""
        before = self.rows
        try:
            yield
        finally:
            self.rows = before


class Run:
    """What every chunk of a run shares: config, device, guidance, loss, schedule, run folder, logs."""

    def __init__(self, cfg: DictConfig, run_dir: Path, device: torch.device, guidance, loss, schedule):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.guidance, self.loss, self.schedule = guidance, loss, schedule
        self.rows = RowCounter(guidance)
        self.snapshot_steps = snapshot_steps(cfg)
        self.max_steps = cfg.trainer.max_steps
        self.nonfinite_total = 0
        self.wandb_id = None
        self.logger = None
        self.metrics: MetricsFile | None = None
        self.first_chunk = 0  # the run's own first chunk (a shard's first): its progress images and final outputs

    def space(self) -> ModelSpace:
        g, device = self.guidance, self.device
        shape = g.sample_shape()
        native = (shape[-2] * g.downscale, shape[-1] * g.downscale) if len(shape) == 3 else None
        return ModelSpace(g.channels, g.downscale, native, lambda rgb: g.encode(rgb.to(device)), device)

    def new_renderer(self, samples: list[Sample]):
        renderer = instantiate(self.cfg.renderer)
        renderer.bind(self.space(), [s.stream_seed(INIT) for s in samples])
        renderer.to(self.device)
        if renderer.height is not None:
            self.guidance.check_resolution(renderer.height, renderer.width)
        return renderer

    def global_step(self, chunk: int, step: int) -> int:
        """A step count that grows over the whole run (wandb wants monotonic steps across chunks)."""
        return chunk * self.max_steps + step


class Chunk:
    """The samples trained together: their renderer, optimizer, LR schedule and random streams."""

    def __init__(self, run: Run, index: int, samples: list[Sample]):
        self.run, self.index, self.samples = run, index, samples
        cfg = run.cfg
        # The global RNG (a NeRF's initial field and cameras, VSD's source fits) starts every chunk from a seed of its
        # own: a chunk's result does not depend on the chunks run before it in the same process, and a run resumed
        # at a chunk boundary continues exactly (a resume inside a chunk restores the checkpointed state instead).
        torch.manual_seed(chunk_seed(cfg.seed, index))
        self.renderer = run.new_renderer(samples)
        self.optimizer = instantiate(cfg.optimizer)(self.renderer.param_groups(cfg.optimizer.lr))
        self.lr_scheduler = instantiate(cfg.lr_scheduler)(self.optimizer) if cfg.get("lr_scheduler") else None
        self.streams = SampleStreams(samples, run.device)
        self.step = 0
        self.seconds = 0.0  # training time of this chunk, over every process that worked on it
        self.guidance_rows = 0  # rows of the guidance model evaluated for this chunk's samples (all processes)
        self.last_rows = None  # (model-space rows, prompts) of the last step: what the loss's `measure` looks at
        # Without a host sync per step, an optimizer that takes `found_inf` (fused Adam/AdamW) skips a non-finite
        # step on the device; the trainer reads the counters only on logging steps.
        self.device_skips = getattr(self.optimizer, "_step_supports_amp_scaling", False) and run.device.type == "cuda"
        with torch.no_grad():
            first = self.renderer()
            run.loss.check_rows(row_prompts(first, samples))  # before the run's record: a refusal leaves no folder
            run.loss.attach(run.guidance, self.to_model(first.x).detach())

    def to_model(self, render_x: torch.Tensor) -> torch.Tensor:
        return self.run.guidance.encode(render_x) if self.renderer.outputs_rgb else render_x

    @torch.no_grad()
    def to_rgb(self, render_x: torch.Tensor) -> torch.Tensor:
        """What a person looks at: the render itself, or the model-space tensor decoded (VAE, scatter plot, ...)."""
        return render_x.detach() if self.renderer.outputs_rgb else self.run.guidance.decode(render_x.detach())

    def state_dict(self) -> dict:
        run = self.run
        return {
            "chunk": self.index,
            "step": self.step,
            "max_steps": run.max_steps,
            "seconds": self.seconds,
            "guidance_rows": self.guidance_rows,
            "renderer": self.renderer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "loss": run.loss.state_dict(),
            "schedule": run.schedule.state_dict(),
            "rng": rng_state(),
            "sample_rng": self.streams.state_dict(),
            "nonfinite_total": run.nonfinite_total,
            "wandb_id": run.wandb_id,
            "recipe": recipe(run.cfg),  # the classes these state dicts belong to
        }

    def load_state_dict(self, state: dict) -> None:
        run = self.run
        try:
            self.renderer.load_state_dict(state["renderer"])
            self.optimizer.load_state_dict(state["optimizer"])
            if (self.lr_scheduler is None) != (state["lr_scheduler"] is None):
                raise ValueError("the run was trained " + ("with" if self.lr_scheduler is None else "without") + " one")
            if self.lr_scheduler is not None:
                self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            run.loss.load_state_dict(state["loss"])
        except (RuntimeError, ValueError, KeyError) as e:  # a size mismatch, a missing key, another optimizer
            raise CheckpointError(
                f"the checkpoint of {run.run_dir} does not fit this run's renderer, optimizer, lr_scheduler or loss "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); resume with the run's own settings"
            ) from None
        run.schedule.load_state_dict(state.get("schedule", {}))
        set_rng_state(state["rng"])
        self.streams.load_state_dict(state["sample_rng"])
        self.step, self.seconds = state["step"], state.get("seconds", 0.0)
        self.guidance_rows = state.get("guidance_rows", 0)
        run.nonfinite_total = state["nonfinite_total"]

    def checkpoint(self) -> None:
        save_checkpoint(self.state_dict(), self.run.run_dir / "checkpoints" / "last.pt")

    def train_step(self):
        """One step of every sample of the chunk. Returns (objective, t, logs, found_nonfinite) as device tensors."""
        run = self.run
        self.renderer.at_step(self.step)
        render = self.renderer()
        x = self.to_model(render.x)
        rows = row_groups(tuple(render.samples))
        prompts = row_prompts(render, self.samples)
        t, noise = self.streams.draw(rows, run.schedule, self.step, run.guidance.num_train_timesteps, x.shape[1:])
        weighted_direction, logs = run.loss(run.guidance, x, t, noise, prompts, self.step)
        objective = surrogate_loss(x, weighted_direction, rows.row_weights(x.device))
        if render.regularization is not None:
            objective = objective + render.regularization
        logs.update(render.logs)
        # the objective's value is a sum over pixels (it exists for its gradient); this is the size of the update
        # direction per pixel value, comparable across resolutions, batch sizes and methods
        logs["direction_rms"] = LazyRMS(weighted_direction)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        # the direction can be finite while the gradient is not (an fp16/bf16 VAE encoder overflowing)
        found = nonfinite(objective, self.optimizer)
        if self.device_skips:
            self.optimizer.found_inf = found.float()
            self.optimizer.step()
            found_now = None
        else:
            found_now = bool(found)  # a host sync, free on the CPU
            if not found_now:
                self.optimizer.step()
        logs.update(run.loss.after_step(run.guidance, x.detach(), prompts))
        self.last_rows = (x.detach(), prompts)
        logs["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this step was taken with
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()  # skipped steps count too, so the schedule stays aligned with `step`
        self.renderer.after_update(self.step, self.optimizer)  # last: a renderer's own rates win over the scheduler's
        self.step += 1
        return render, objective, t, logs, found if found_now is None else found_now


def nonfinite(objective: torch.Tensor, optimizer) -> torch.Tensor:
    """A 0-d bool tensor on the parameters' device, without a host sync: is there a NaN or an infinity in the objective
    or in any gradient? One reduction per gradient: a NaN or an infinity anywhere makes the sum non-finite (a finite sum
    overflowing float32, ~3e38, would count too: no real gradient is near that)."""
    total = objective.detach().float()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                total = total + p.grad.sum()
    return ~torch.isfinite(total)


class NonFiniteCounter:
    """Counts skipped steps. On the CPU each step's flag is a bool; on CUDA it stays a device tensor until `read`
    (a logging step), so a step has no host sync."""

    def __init__(self, run: Run, max_in_a_row: int):
        self.run, self.max_in_a_row = run, max_in_a_row
        self.pending: list[torch.Tensor | bool] = []
        self.in_a_row = 0

    def add(self, found) -> None:
        self.pending.append(found)

    def read(self, chunk: Chunk) -> bool:
        """Fold the pending flags into the totals; warn for each skipped step; stop after too many in a row.
        Returns whether the most recent step was skipped."""
        flags = [bool(f) for f in self.pending]
        self.pending = []
        first = chunk.step - len(flags) + 1  # steps are counted as in metrics.jsonl: the n-th step is step n
        for i, skipped in enumerate(flags):
            if not skipped:
                self.in_a_row = 0
                continue
            self.run.nonfinite_total += 1
            self.in_a_row += 1
            warnings.warn(
                f"step {first + i}: non-finite direction, skipped ({self.run.nonfinite_total} total)", stacklevel=2
            )
            if self.in_a_row >= self.max_in_a_row:
                chunk.checkpoint()
                raise NonFiniteError(
                    f"{self.in_a_row} non-finite steps in a row at step {first + i}; checkpoint written to "
                    f"{self.run.run_dir}. Lower the learning rate or guidance scale, or use trainer.precision=fp32."
                )
        return bool(flags[-1]) if flags else False


def train(cfg: DictConfig) -> RunResult:
    """Run (or resume) the distillation `cfg` describes. A new run that fails before its first step leaves no folder
    it created behind; running out of memory is a ResourceError saying what to lower."""
    run_dir = run_folder(cfg)
    try:
        return train_in(cfg, run_dir)
    except BaseException as e:
        remove_if_unstarted(run_dir)
        if out_of_memory(e):
            raise ResourceError(
                f"out of memory ({str(e).splitlines()[0][:200]}); lower trainer.batch_size (now "
                f"{cfg.trainer.batch_size}) or the render size (renderer.height/width)"
            ) from e
        raise


def train_in(cfg: DictConfig, run_dir: Path) -> RunResult:
    validate(cfg)
    device = pick_device(cfg.trainer.device)
    captions = read_prompts(cfg.prompt, cfg.get("prompt_file"))
    warn_if_unconditional(captions)
    samples = make_samples(captions, cfg.get("samples_per_prompt", 1), cfg.seed)
    resume_path = checkpoint_path(cfg.trainer.resume) if cfg.trainer.resume else None
    resume = load_checkpoint(resume_path) if resume_path is not None else None
    if resume is not None:
        check_resume_recipe(resume, cfg, resume_path)  # a resume with another loss: that, not the keys it lacks
    for group in ("loss", "renderer", "guidance", "schedule", "optimizer", "lr_scheduler"):
        check_settings(cfg, group)
    with output_errors(run_dir):
        if resume is None and not run_dir.exists():
            run_dir.mkdir(parents=True)
            CREATED.add(run_dir.resolve())
        with RunLock(run_dir):
            remove_temporaries(run_dir)  # what a killed write left; no other process writes here while we hold the lock
            return run_chunks(cfg, run_dir, device, samples, resume)


def run_chunks(cfg: DictConfig, run_dir: Path, device: torch.device, samples: list[Sample], resume) -> RunResult:
    """Load and check everything, then (and only then) write the run's record, then train chunk after chunk."""
    torch.manual_seed(cfg.seed)
    guidance = instantiate(cfg.guidance, device=str(device), precision=cfg.trainer.precision)
    renderer_class = get_class(cfg.renderer._target_)
    check_pairing(renderer_class, guidance)
    loss = instantiate(cfg.loss)
    check_views_per_object(guidance, renderer_class.render_sizes(cfg.renderer), loss)
    schedule = instantiate(cfg.schedule)
    check_view_groups(guidance, cfg.renderer, schedule)
    run = Run(cfg, run_dir, device, guidance, loss, schedule)
    chunks = plan_chunks(cfg, samples)
    mine = own_chunks(cfg, [len(c) for c in chunks])
    run.first_chunk = mine.start
    captions = [(s.caption, s.source) for s in samples] + renderer_class.row_captions(cfg.renderer)
    check_texts(guidance, run.loss, captions, renderer_class.view_phrases(cfg.renderer))
    check_memory(cfg, guidance, len(chunks[0]), device)

    resume_chunk = resume.get("chunk", 0) if resume is not None else None
    # a chunk resumed short of max_steps is run on: its finished samples (if any) are written again, once
    rerun = {resume_chunk} if resume is not None and resume["step"] < run.max_steps else set()
    samples_file = SamplesFile(run_dir / "samples.jsonl", [len(c) for c in chunks], rerun)
    finished = samples_file.finished_chunks()
    if resume is not None:
        if resume.get("max_steps", run.max_steps) != run.max_steps and len(chunks) > 1:
            raise ValueError(
                f"trainer.max_steps changed from {resume['max_steps']} to {run.max_steps}, but this run has "
                f"{len(chunks)} chunks and only the last one's state is kept: samples would end at different "
                "steps. Keep the run's max_steps, or start a new run."
            )
        run.nonfinite_total, run.wandb_id = resume["nonfinite_total"], resume.get("wandb_id")
    todo = [i for i in mine if i not in finished]
    if resume is not None and resume_chunk not in mine:
        raise ValueError(
            f"{run_dir}'s checkpoint is of chunk {resume_chunk}, which trainer.shard={cfg.trainer.shard} of "
            f"trainer.shards={cfg.trainer.shards} does not train: resume it with the shard settings it started with"
        )
    if resume_chunk in todo:  # the checkpoint's chunk first, so its steps are kept even when an earlier chunk has
        todo.remove(resume_chunk)  # to run again (its samples.jsonl lines were torn by a kill): chunks are
        todo.insert(0, resume_chunk)  # independent of their order (each seeds its own streams)
    first = Chunk(run, todo[0], chunks[todo[0]]) if todo else None
    if first is not None and resume is not None and first.index == resume_chunk:
        first.load_state_dict(resume)
        stretch_lr_schedule(cfg, first)
    if first is not None:
        check_free_space(run_dir, checkpoint_bytes(first))

    # the run has started: from here on it writes its record
    samples_file.tidy()
    run.metrics = MetricsFile(run_dir / "metrics.jsonl")
    if resume is None:
        save_config(cfg, run_dir / "config.yaml")
        log.info(start_line(cfg, run_dir, device, len(samples), chunks, mine))
    else:
        # where training really goes on: the checkpoint's chunk, or the first chunk left when that one had finished
        resumed_at = (first.index, first.step) if first is not None else (resume_chunk, resume["step"])
        changes = (
            config_changes(OmegaConf.load(run_dir / "config.yaml"), cfg) if (run_dir / "config.yaml").exists() else {}
        )
        log.info(f"resuming {run_dir} at chunk {resumed_at[0]} step {resumed_at[1]} ({len(finished)} chunks finished)")
        report_config_changes(changes, resumed_at)
        # metrics of finished chunks stay, and those of the resumed chunk up to its checkpoint; the rest runs again
        at_chunk, at_step = resumed_at
        run.metrics.trim(lambda chunk, step: chunk in finished or (chunk == at_chunk and step <= at_step))
        record_resume(run_dir, cfg, changes, resumed_at)
        if first is not None and first.index == resume_chunk:
            warn_if_learning_rate_is_zero(cfg, first)
    run.logger = instantiate(cfg.logger)
    run.wandb_id = run.logger.start(OmegaConf.to_container(cfg, resolve=True), run_dir, run_dir.name, run.wandb_id)

    # a resumed chunk's steps count as done from the first line the bar prints (a log file sees few lines)
    in_flight = min(first.step, run.max_steps) if first is not None else 0
    steps_done = len(finished & set(mine)) * run.max_steps + in_flight
    bar = tqdm(
        total=len(mine) * run.max_steps,
        initial=steps_done,
        desc=run_dir.name,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s, not every step
    )
    interrupted, exit_code, chunk, stopped_by = False, 1, None, None
    try:
        with stop_requests() as stop:
            for index in todo:
                chunk = first if index == todo[0] else Chunk(run, index, chunks[index])
                interrupted = train_chunk(run, chunk, bar, stop)
                if interrupted:
                    stopped_by = stop["signal"]
                    break
                finish_chunk(run, chunk, samples_file)
        if interrupted:
            log.info(f"interrupted at chunk {chunk.index} step {chunk.step}: resume with {resume_hint(run_dir)}")
        elif todo:
            run.logger.log_samples(run_dir, samples_file.records)
            done = len(samples_file.records)
            log.info(f"finished: {done} sample{'s' * (done != 1)} in {run_dir}")
        exit_code = 0
    finally:
        bar.close()
        run.logger.finish(exit_code=exit_code)
    return RunResult(
        run_dir=run_dir,
        step=chunk.step if chunk is not None else (resume or {}).get("step", 0),
        interrupted=interrupted,
        samples_done=len(samples_file.records),
        stopped_by=stopped_by,
    )


# What to choose instead when a renderer and a guidance model do not fit: the guidance groups for each kind of render.
GUIDANCE_FOR = {"images": "guidance=sd or guidance=shapes", "points": "guidance=points2d"}


def check_pairing(renderer_class, guidance) -> None:
    """A renderer makes images or 2D points; a guidance model takes one of them (its sample shape: (C, H, W) or
    (2,)), and a camera-conditioned one needs a renderer whose rows have cameras. Refuse a pair that does not fit
    before anything runs, naming what to choose instead (otherwise it fails
    later in the model's own words: a conv2d shape error, an unknown view word, a size hint that cannot be met)."""
    takes = "points" if len(guidance.sample_shape()) == 1 else "images"
    if renderer_class.makes != takes:
        name = chosen_option("renderer", renderer_class.__name__.removesuffix("Renderer").lower())
        raise ValueError(
            f"renderer={name} makes {renderer_class.makes}, but guidance {type(guidance).__name__} takes {takes}: "
            f"use {GUIDANCE_FOR[renderer_class.makes]} with renderer={name}"
        )
    if getattr(guidance, "needs_cameras", False) and not renderer_class.has_cameras:
        name = chosen_option("renderer", renderer_class.__name__.removesuffix("Renderer").lower())
        raise ValueError(
            f"renderer={name} has no cameras, but guidance {type(guidance).__name__} conditions every view on its "
            f"camera: use renderer=nerf or renderer=gaussians with it (or guidance=shapes with renderer={name})"
        )


def check_views_per_object(guidance, sizes: list[tuple], loss=None) -> None:
    """A multi-view guidance model takes the views of one object in groups of `views_per_object`: every stage's
    cameras per step must fill whole groups, and the loss must call it with whole groups."""
    per_object = getattr(guidance, "views_per_object", None)
    if per_object and per_object > 1 and loss is not None and not loss.calls_whole_rows:
        raise ValueError(
            f"loss={chosen_option('loss', type(loss).__name__.lower())} calls the model on some rows at a time (its "
            f"inversion), but guidance.views_per_object={per_object} needs an object's views together: use "
            "guidance.views_per_object=1 or another loss"
        )
    cameras = sorted({rows for _, _, rows in sizes if rows is not None})
    if per_object and any(rows % per_object for rows in cameras):
        raise ValueError(
            f"guidance.views_per_object={per_object} takes the views of one object in groups of {per_object}, but the "
            f"renderer has {', '.join(map(str, cameras))} cameras per step: use trainer.batch_size={per_object} "
            f"(or a multiple of it)"
        )


def check_view_groups(guidance, renderer_cfg, schedule) -> None:
    """A model trained on an object's views at one timestep (MVDream) needs schedule.shared_t, and one trained on
    views evenly spaced around the object needs the renderer's cameras in such groups (renderer.views_per_group):
    otherwise it would run, on inputs it never saw."""
    per_object = getattr(guidance, "views_per_object", 1)
    name = type(guidance).__name__
    if getattr(guidance, "shares_timestep", False) and per_object > 1 and not getattr(schedule, "shared_t", False):
        raise ValueError(
            f"guidance {name} denoises an object's {per_object} views at one timestep: set schedule.shared_t=true "
            "(as +experiment=t23d_mvdream does)"
        )
    groups = renderer_cfg.get("views_per_group", 1)
    if getattr(guidance, "views_on_an_orbit", False) and per_object > 1 and groups != per_object:
        raise ValueError(
            f"guidance {name} was trained on {per_object} views evenly spaced around the object: set "
            f"renderer.views_per_group={per_object} (got {groups}), as +experiment=t23d_mvdream does"
        )


def chosen_option(group: str, fallback: str) -> str:
    """The option of a config group the command line chose (renderer=nerf_threestudio), or `fallback` when train()
    runs outside Hydra (the benchmark, tests)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group) or fallback)
    return fallback


def start_line(cfg: DictConfig, run_dir: Path, device: torch.device, samples: int, chunks: list, mine: range) -> str:
    """What train.log says first: where, what, how much."""
    classes = {g: cfg[g]._target_.rsplit(".", 1)[-1] for g in ("loss", "renderer", "guidance")}
    share = ""
    if len(mine) < len(chunks):
        share = f" (shard {cfg.trainer.shard} of {cfg.trainer.shards}: chunks {mine.start} … {mine.stop - 1})"
    return (
        f"run {run_dir}: {samples} sample{'s' * (samples != 1)} in {len(chunks)} chunk{'s' * (len(chunks) != 1)}"
        f"{share}, {cfg.trainer.max_steps} steps each, on {device}; "
        + ", ".join(f"{g} {c}" for g, c in classes.items())
    )


def own_chunks(cfg: DictConfig, chunk_sizes: list[int]) -> range:
    """The chunks this run trains: all of them, or its shard's share (trainer.shard of trainer.shards)."""
    shards, shard, chunks = cfg.trainer.get("shards", 1), cfg.trainer.get("shard", 0), chunk_sizes
    if shards > len(chunks):
        samples = sum(chunks)
        smaller = f"trainer.batch_size={samples // shards} or " if samples >= shards else ""
        raise ValueError(
            f"trainer.shards={shards}, but this run has {len(chunks)} chunk{'s' * (len(chunks) != 1)} ({samples} "
            f"samples, trainer.batch_size={cfg.trainer.batch_size}) and a shard trains whole chunks: use "
            f"{smaller}trainer.shards={len(chunks)}"
        )
    return shard_chunks(len(chunks), shard, shards)


def plan_chunks(cfg: DictConfig, samples: list[Sample]) -> list[list[Sample]]:
    """The run's samples in chunks of trainer.batch_size (a renderer that holds one scene: one sample per chunk)."""
    max_samples = get_class(cfg.renderer._target_).max_samples
    if max_samples is not None and len(samples) > max_samples:
        raise ValueError(
            f"{cfg.renderer._target_.rsplit('.', 1)[-1]} distils {max_samples} scene per run, but this run asks for "
            f"{len(samples)} samples ({len({s.caption for s in samples})} prompts × samples_per_prompt="
            f"{cfg.get('samples_per_prompt', 1)}); run one job per prompt as a sweep instead: "
            "python train.py -m renderer=nerf prompt='a hamburger','a red cube'"
        )
    return split_chunks(samples, min(cfg.trainer.batch_size, max_samples or len(samples)))


def checkpoint_bytes(chunk: Chunk) -> int:
    """About what one checkpoint of this chunk takes on disk: parameters and Adam's two moments, plus the loss's
    own state (VSD's source model)."""
    tensors = [t for _, t in leaves({"renderer": chunk.renderer.state_dict(), "loss": chunk.run.loss.state_dict()})]
    return 3 * sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def stretch_lr_schedule(cfg: DictConfig, chunk: Chunk) -> None:
    """A decay length the user wrote on a resume's command line (lr_scheduler.total_steps=N, a number rather than the
    `${trainer.max_steps}` the run started with) replaces the checkpoint's: the rate follows the new length from the
    current step. Anything derived from max_steps keeps the length the run started with."""
    scheduler = chunk.lr_scheduler
    written = OmegaConf.to_container(cfg, resolve=False).get("lr_scheduler") or {}
    if hasattr(scheduler, "stretch") and isinstance(written.get("total_steps"), int):
        if written["total_steps"] != scheduler.total_steps:
            log.info(f"lr_scheduler.total_steps {scheduler.total_steps} -> {written['total_steps']}")
            scheduler.stretch(written["total_steps"])


def warn_if_learning_rate_is_zero(cfg: DictConfig, chunk: Chunk) -> None:
    """Extending a run whose learning rate has decayed to zero would not change it: say so, and what to change."""
    rates = [group["lr"] for group in chunk.optimizer.param_groups]
    more = cfg.trainer.max_steps - chunk.step
    if more > 0 and chunk.lr_scheduler is not None and max(rates) == 0:
        log.warning(
            f"warning: the learning rate of this run decayed to 0 by step {chunk.step}, so the {more} more steps to "
            f"trainer.max_steps={cfg.trainer.max_steps} will not change the result. To train on, resume with "
            f"lr_scheduler.total_steps={cfg.trainer.max_steps} too (the rate decays again over the new length from "
            "the current step), or start a new run."
        )


def train_chunk(run: Run, chunk: Chunk, bar, stop) -> bool:
    """Train one chunk to max_steps (or until a stop signal). Returns True if interrupted."""
    tr = run.cfg.trainer
    counter = NonFiniteCounter(run, tr.max_nonfinite)
    (run.run_dir / "progress").mkdir(exist_ok=True)
    start = time.perf_counter()
    while chunk.step < run.max_steps:
        before = chunk.step  # the render of this step shows the parameters after `before` updates
        render, objective, t, logs, found = chunk.train_step()
        chunk.guidance_rows += run.rows.take()
        counter.add(found)
        bar.update(1)
        step = chunk.step
        if step in run.snapshot_steps and step < run.max_steps:  # the last step's state is the final sample
            write_snapshot(run, chunk, chunk.seconds + time.perf_counter() - start)
        logging_step = step % tr.log_every == 0 or step == run.max_steps
        if logging_step or not chunk.device_skips:
            skipped = counter.read(chunk)
            if logging_step and not skipped:
                with run.rows.paused():  # diagnostics, not the method's cost
                    logs.update(run.loss.measure(run.guidance, *chunk.last_rows, step))
                log_step(run, chunk, objective, t, logs, bar)
        if before % tr.image_every == 0:
            preview(run, chunk, render.x, before)
        if step % tr.ckpt_every == 0 or stop["signal"]:
            counter.read(chunk)
            chunk.seconds += time.perf_counter() - start
            start = time.perf_counter()
            chunk.checkpoint()
        if stop["signal"]:
            return True
    counter.read(chunk)
    chunk.seconds += time.perf_counter() - start
    return False


def log_step(run: Run, chunk: Chunk, objective, t, logs, bar) -> None:
    record = {"chunk": chunk.index, "step": chunk.step, "objective": objective, "t": t.float().mean(), **logs}
    nulled = [0]
    # tensors, lazy norms and numbers are read as floats here, the step's one host sync
    record = {k: finite_or_none(as_float(v), nulled) for k, v in record.items()}
    if nulled[0]:
        record["nonfinite_values"] = nulled[0]  # how many of this line's values were NaN/inf, written as null
    record["nonfinite_total"] = run.nonfinite_total
    run.metrics.write(record)
    run.logger.log(record, run.global_step(chunk.index, chunk.step))
    size = record["direction_rms"]
    postfix = {"chunk": chunk.index, "rms(w·g)": "nan" if size is None else f"{size:.3g}", "t": f"{record['t']:.0f}"}
    bar.set_postfix(postfix, refresh=False)  # the bar redraws at its own pace (every 30 s in a log file)


def as_float(value):
    """A logged value as a plain float: tensors (detached) and lazy norms are read here; ints, bools, text unchanged."""
    if torch.is_tensor(value):
        return float(value.detach())
    return float(value) if hasattr(value, "__float__") and not isinstance(value, int) else value


def preview(run: Run, chunk: Chunk, render_x: torch.Tensor, updates: int) -> None:
    """progress/step_N.png (the parameters after N updates, from the initial state on) for the first chunk: the run's
    strip and video. Every chunk's preview goes to the logger."""
    frame = grid(chunk.to_rgb(render_x))
    if chunk.index == run.first_chunk:
        iio.imwrite(run.run_dir / "progress" / f"step_{updates:06d}.png", frame)
    run.logger.log_image("preview", frame, run.global_step(chunk.index, updates))


@torch.no_grad()
def eval_render(chunk: Chunk) -> tuple[Render, torch.Tensor, RowGroups]:
    """The chunk's samples as they stand, rendered from fixed, repeatable views (a NeRF's front-first orbit) rather
    than this step's random cameras: (render, model-space rows, which rows are whose). Leaves the renderer in eval
    mode (the final outputs render more views in it); the caller switches it back to training."""
    chunk.renderer.eval()
    render = chunk.renderer()
    return render, chunk.to_model(render.x), RowGroups(render.samples)


def write_snapshot(run: Run, chunk: Chunk, seconds: float) -> None:
    """snapshots/step_NNNNNN/<index>.png and .pt for every sample of the chunk at this step, and one snapshots.jsonl
    line per sample (step, guidance rows and training seconds so far, per sample). A resume that runs a step again
    writes it again; readers keep the last line per (step, index)."""
    render, x, rows = eval_render(chunk)
    chunk.renderer.train()
    folder = run.run_dir / "snapshots" / f"step_{chunk.step:06d}"
    lines = []
    for s, sample in enumerate(chunk.samples):
        idx = rows.rows_of[s]
        image = save_png(chunk.to_rgb(render.x[idx]), folder / f"{sample.index:05d}.png")
        tensor = save_tensor(x[idx], folder / f"{sample.index:05d}.pt")
        lines.append(
            {
                "step": chunk.step,
                "chunk": chunk.index,
                "index": sample.index,
                "prompt": sample.caption,
                "seed": sample.seed,
                "guidance_rows": chunk.guidance_rows / len(chunk.samples),
                "seconds": seconds / len(chunk.samples),
                "image": str(image.relative_to(run.run_dir)),
                "tensor": str(tensor.relative_to(run.run_dir)),
            }
        )
    with open(run.run_dir / "snapshots.jsonl", "a") as f:
        f.write("".join(json_text(line) + "\n" for line in lines))


def finish_chunk(run: Run, chunk: Chunk, samples_file: SamplesFile) -> None:
    """A finished chunk: its samples' images and samples.jsonl lines, then a checkpoint. The run's first chunk also
    writes the run's final.png, progress strip and video, eval.json and the renderer's own artifacts."""
    final, x, rows = eval_render(chunk)
    per_sample_eval = {}
    records = []
    pictures = []
    for s, sample in enumerate(chunk.samples):
        idx = rows.rows_of[s]
        with torch.no_grad():
            metrics = run.guidance.evaluate(x[idx], sample.caption) if run.loss.renders_are_samples else {}
            # a sample's own rows pictured on their own: one image per row (an image, a NeRF's views), or one
            # picture of all its rows (a cloud of 2D particles is one scatter plot, not one image per particle)
            pictures.append(chunk.to_rgb(final.x[idx]))
        per_sample_eval[s] = metrics
        image = save_png(pictures[-1], run.run_dir / "samples" / f"{sample.index:05d}.png")
        # the final model-space tensor too: exact metrics and comparisons need more than 8-bit pixels
        tensor = save_tensor(x[idx], run.run_dir / "samples" / f"{sample.index:05d}.pt")
        records.append(
            {
                "index": sample.index,
                "chunk": chunk.index,
                "prompt": sample.caption,
                "seed": sample.seed,
                "steps": chunk.step,
                "seconds": chunk.seconds / len(chunk.samples),
                "guidance_rows": chunk.guidance_rows / len(chunk.samples),  # per sample: the NFE beside the time
                "image": str(image.relative_to(run.run_dir)),
                "tensor": str(tensor.relative_to(run.run_dir)),
                "eval": finite_or_none(metrics),  # per-row values as lists, as in eval.json: one entry per view
            }
        )
    if chunk.index == run.first_chunk:
        write_final_outputs(run, chunk, torch.cat(pictures), x, per_sample_eval)
    samples_file.write_chunk(records)
    chunk.renderer.train()
    chunk.checkpoint()


def save_tensor(x: torch.Tensor, path: Path) -> Path:
    """A sample's final model-space rows (R, ...) as a float32 CPU tensor (torch.load(path, weights_only=True))."""
    with replacing(path) as tmp:
        torch.save(x.detach().float().cpu().clone(), tmp)
    return path


def write_final_outputs(run: Run, chunk: Chunk, rgb, x, per_sample_eval: dict) -> None:
    """final.png (the first chunk's final renders), the progress strip and video (from the progress images on disk,
    so a resumed run's are complete), eval.json, and whatever the renderer adds (particle figure, turntable, ...)."""
    run_dir, step = run.run_dir, run.global_step(chunk.index, chunk.step)
    save_png(rgb, run_dir / "final.png")
    run.logger.log_image("final", grid(rgb), step)
    frames = [iio.imread(p) for p in sorted((run_dir / "progress").glob("step_*.png"))]
    frames = [f for f in frames if f.shape == frames[-1].shape] if frames else []
    artifacts = []
    if frames:
        artifacts += [save_strip(frames, run_dir / "progress.png"), save_video(frames, run_dir / "progress.mp4")]
    # views.png labels a view without a prompt of its own with its sample's caption
    own = chunk.renderer.write_artifacts(run_dir, run.guidance.decode, [s.caption for s in chunk.samples])
    artifacts = [p for p in artifacts if p is not None] + own
    run.logger.log_artifacts(artifacts, step)
    captions = {s.caption for s in chunk.samples}
    if len(captions) == 1:  # one prompt: its metrics over the whole chunk, as the prior computes them
        with torch.no_grad():
            metrics = run.guidance.evaluate(x, captions.pop()) if run.loss.renders_are_samples else {}
    else:
        metrics = merge_metrics([per_sample_eval[s] for s in range(len(chunk.samples))])
    metrics.update(write_loss_outputs(run, chunk, x, step))
    if metrics:
        nulled = [0]
        metrics = finite_or_none(metrics, nulled)
        if nulled[0]:
            metrics["nonfinite_values"] = nulled[0]  # NaN/inf values, written as null (strict JSON)
        with replacing(run_dir / "eval.json") as tmp:
            tmp.write_text(json_text(metrics, indent=2) + "\n")
        log.info("eval: " + json_text(metrics))
        run.logger.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step)


def write_loss_outputs(run: Run, chunk: Chunk, x: torch.Tensor, step: int) -> dict:
    """The loss's own images of the final parameters (`ScoreLoss.outputs`), each a PNG in the run folder, and what
    each became by the guidance's evaluation, per row under its own prompt: {name: metrics} for eval.json."""
    rows_per_sample = x.shape[0] // len(chunk.samples)
    captions = [s.caption for s in chunk.samples for _ in range(rows_per_sample)]
    found = {}
    for name, (images, prompts) in run.loss.outputs(run.guidance, x, captions).items():
        path = save_png(run.guidance.decode(images), run.run_dir / name)
        run.logger.log_artifacts([path], step)
        with torch.no_grad():
            evaluated = merge_metrics([run.guidance.evaluate(images[i : i + 1], p) for i, p in enumerate(prompts)])
        if evaluated:
            found[path.stem] = evaluated
    return found


def merge_metrics(per_sample: list[dict]) -> dict:
    """Per-sample metric dicts → one dict of lists (lists concatenated, scalars collected)."""
    merged: dict[str, list] = {}
    for metrics in per_sample:
        for k, v in metrics.items():
            merged.setdefault(k, []).extend(v if isinstance(v, list) else [v])
    return merged
