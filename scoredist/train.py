"""The one distillation loop: render → guidance direction → backward → optimizer step → log → checkpoint.

`train(cfg)` is a plain function of a composed config (train.py at the repository root is its Hydra shim). A run
distils N = prompts × samples_per_prompt samples (scoredist.samples), `trainer.batch_size` of them at a time (a
chunk); every condition of every sample of a chunk goes through one batched guidance call per step. A chunk that
finished is never run again: `trainer.resume=<run folder>` continues at the chunk in flight, inside it at its last
checkpoint, bit-for-bit on the same device (RNG states are checkpointed too).
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from scoredist.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from scoredist.errors import NonFiniteError
from scoredist.images import grid, save_png, save_strip, save_video
from scoredist.losses.base import surrogate_loss
from scoredist.prompts import Prompt
from scoredist.renderers.base import ModelSpace, Render
from scoredist.runs import (
    MetricsFile,
    SamplesFile,
    rng_state,
    run_folder,
    set_rng_state,
    stop_requests,
    warn_if_config_changed,
)
from scoredist.samples import INIT, RowGroups, Sample, SampleStreams, make_samples, read_prompts, split_chunks

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class RunResult:
    run_dir: Path
    step: int  # steps completed in the last chunk that ran
    interrupted: bool
    samples_done: int = 0


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
    if tr.precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {tr.precision!r}")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_captions(guidance, samples: list[Sample]) -> None:
    """Every distinct caption once, before any training; an error names the line of the prompt file it came from."""
    seen = set()
    for s in samples:
        if s.caption in seen:
            continue
        seen.add(s.caption)
        try:
            guidance.check_prompt(s.caption)
        except ValueError as e:
            raise ValueError(str(e) if s.source == "prompt" else f"{s.source}: {e}") from None


def row_prompts(render: Render, samples: list[Sample]) -> list[Prompt]:
    """What each row of a render is conditioned on: its sample's caption (or the row's own), view phrase, camera."""
    captions = render.captions or [None] * len(render.samples)
    views = render.views or [""] * len(render.samples)
    cameras = render.cameras.tolist() if render.cameras is not None else [None] * len(render.samples)
    return [
        Prompt(caption if caption is not None else samples[s].caption, view, tuple(cam) if cam else None)
        for s, caption, view, cam in zip(render.samples, captions, views, cameras)
    ]


class Run:
    """What every chunk of a run shares: config, device, guidance, loss, schedule, run folder, logs."""

    def __init__(self, cfg: DictConfig, run_dir: Path, device: torch.device, guidance, loss, schedule):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.guidance, self.loss, self.schedule = guidance, loss, schedule
        self.max_steps = cfg.trainer.max_steps
        self.nonfinite_total = 0
        self.wandb_id = None
        self.logger = None
        self.metrics: MetricsFile | None = None

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
        self.renderer = run.new_renderer(samples)
        self.optimizer = instantiate(cfg.optimizer)(self.renderer.param_groups(cfg.optimizer.lr))
        self.lr_scheduler = instantiate(cfg.lr_scheduler)(self.optimizer) if cfg.get("lr_scheduler") else None
        self.streams = SampleStreams(samples, run.device)
        self.step = 0
        self.seconds = 0.0  # training time of this chunk, over every process that worked on it
        # Without a host sync per step, an optimizer that takes `found_inf` (fused Adam/AdamW) skips a non-finite
        # step on the device; the trainer reads the counters only on logging steps.
        self.device_skips = getattr(self.optimizer, "_step_supports_amp_scaling", False) and run.device.type == "cuda"
        with torch.no_grad():
            run.loss.attach(run.guidance, self.to_model(self.renderer().x).detach())

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
            "renderer": self.renderer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "loss": run.loss.state_dict(),
            "schedule": run.schedule.state_dict(),
            "rng": rng_state(),
            "sample_rng": self.streams.state_dict(),
            "nonfinite_total": run.nonfinite_total,
            "wandb_id": run.wandb_id,
        }

    def load_state_dict(self, state: dict) -> None:
        run = self.run
        self.renderer.load_state_dict(state["renderer"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        run.loss.load_state_dict(state["loss"])
        run.schedule.load_state_dict(state.get("schedule", {}))
        set_rng_state(state["rng"])
        self.streams.load_state_dict(state["sample_rng"])
        self.step, self.seconds = state["step"], state.get("seconds", 0.0)
        run.nonfinite_total = state["nonfinite_total"]

    def checkpoint(self) -> None:
        save_checkpoint(self.state_dict(), self.run.run_dir / "checkpoints" / "last.pt")

    def train_step(self):
        """One step of every sample of the chunk. Returns (objective, t, logs, found_nonfinite) as device tensors."""
        run = self.run
        self.renderer.at_step(self.step)
        render = self.renderer()
        x = self.to_model(render.x)
        rows = RowGroups(render.samples)
        prompts = row_prompts(render, self.samples)
        t, noise = self.streams.draw(rows, run.schedule, self.step, run.guidance.num_train_timesteps, x.shape[1:])
        weighted_direction, logs = run.loss(run.guidance, x, t, noise, prompts, self.step)
        objective = surrogate_loss(x, weighted_direction, rows.row_weights(x.device))
        if render.regularization is not None:
            objective = objective + render.regularization
        logs.update(render.logs)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        # the direction can be finite while the gradient is not (an fp16/bf16 VAE encoder overflowing)
        found = grads_nonfinite(self.optimizer) | ~torch.isfinite(objective.detach())
        if self.device_skips:
            self.optimizer.found_inf = found.float()
            self.optimizer.step()
            found_now = None
        else:
            found_now = bool(found)  # a host sync, free on the CPU
            if not found_now:
                self.optimizer.step()
        logs.update(run.loss.after_step(run.guidance, x.detach(), prompts))
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()  # skipped steps count too, so the schedule stays aligned with `step`
        self.step += 1
        return render, objective, t, logs, found if found_now is None else found_now


def grads_nonfinite(optimizer) -> torch.Tensor:
    """A 0-d bool tensor on the parameters' device: does any gradient hold a NaN or an infinity? (no host sync)"""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.bool)
    return torch.stack([g.isfinite().all() for g in grads]).logical_not().any()


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
        first = chunk.step - len(flags)
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


def finite_or_none(value):
    """Metrics files hold valid JSON: a NaN or infinity is written as null (lists and dicts element by element)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    return value


def train(cfg: DictConfig) -> RunResult:
    validate(cfg)
    device = pick_device(cfg.trainer.device)
    samples = make_samples(read_prompts(cfg.prompt, cfg.get("prompt_file")), cfg.get("samples_per_prompt", 1), cfg.seed)
    run_dir = run_folder(cfg)
    resume = load_checkpoint(checkpoint_path(cfg.trainer.resume)) if cfg.trainer.resume else None
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    guidance = instantiate(cfg.guidance, device=str(device), precision=cfg.trainer.precision)
    check_captions(guidance, samples)
    run = Run(cfg, run_dir, device, guidance, instantiate(cfg.loss), instantiate(cfg.schedule))
    max_samples = get_class(cfg.renderer._target_).max_samples
    if max_samples is not None and len(samples) > max_samples:
        raise ValueError(
            f"{cfg.renderer._target_.rsplit('.', 1)[-1]} distils {max_samples} scene per run, but this run asks for "
            f"{len(samples)} samples ({len({s.caption for s in samples})} prompts × samples_per_prompt="
            f"{cfg.get('samples_per_prompt', 1)}); run one job per prompt as a sweep instead: "
            "python train.py -m renderer=nerf prompt='a hamburger','a red cube'"
        )
    chunks = split_chunks(samples, min(cfg.trainer.batch_size, max_samples or len(samples)))

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
        warn_if_config_changed(run_dir / "config.yaml", cfg)
        print(f"resuming {run_dir} at chunk {resume_chunk} step {resume['step']} ({len(finished)} chunks finished)")
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=False)
    run.metrics = MetricsFile(run_dir / "metrics.jsonl", (resume_chunk, resume["step"]) if resume else None)
    run.logger = instantiate(cfg.logger)
    run.wandb_id = run.logger.start(OmegaConf.to_container(cfg, resolve=True), run_dir, run_dir.name, run.wandb_id)

    todo = [i for i in range(len(chunks)) if i not in finished]
    bar = tqdm(
        total=len(chunks) * run.max_steps,
        initial=len(finished) * run.max_steps,
        desc=run_dir.name,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s, not every step
    )
    interrupted, exit_code, chunk = False, 1, None
    try:
        with stop_requests() as stop:
            for index in todo:
                chunk = Chunk(run, index, chunks[index])
                if resume is not None and index == resume_chunk:
                    chunk.load_state_dict(resume)
                    bar.update(min(chunk.step, run.max_steps))
                interrupted = train_chunk(run, chunk, bar, stop)
                if interrupted:
                    break
                finish_chunk(run, chunk, samples_file, first=index == 0)
        if interrupted:
            print(f"interrupted at chunk {chunk.index} step {chunk.step}: resume with trainer.resume={run_dir}")
        elif todo:
            run.logger.log_samples(run_dir, samples_file.records)
        exit_code = 0
    finally:
        bar.close()
        run.logger.finish(exit_code=exit_code)
    return RunResult(
        run_dir=run_dir,
        step=chunk.step if chunk is not None else (resume or {}).get("step", 0),
        interrupted=interrupted,
        samples_done=len(samples_file.records),
    )


def train_chunk(run: Run, chunk: Chunk, bar, stop) -> bool:
    """Train one chunk to max_steps (or until a stop signal). Returns True if interrupted."""
    tr = run.cfg.trainer
    counter = NonFiniteCounter(run, tr.max_nonfinite)
    (run.run_dir / "progress").mkdir(exist_ok=True)
    start = time.perf_counter()
    while chunk.step < run.max_steps:
        render, objective, t, logs, found = chunk.train_step()
        counter.add(found)
        bar.update(1)
        step = chunk.step
        logging_step = step % tr.log_every == 0 or step == run.max_steps
        if logging_step or not chunk.device_skips:
            skipped = counter.read(chunk)
            if logging_step and not skipped:
                log_step(run, chunk, objective, t, logs, bar)
        if step % tr.image_every == 0:
            preview(run, chunk, render.x)
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
    record = {"chunk": chunk.index, "step": chunk.step, "loss": objective, "t": t.float().mean(), **logs}
    record = {k: finite_or_none(float(v.detach()) if torch.is_tensor(v) else v) for k, v in record.items()}
    record["nonfinite_total"] = run.nonfinite_total
    run.metrics.write(record)
    run.logger.log(record, run.global_step(chunk.index, chunk.step))
    loss = record["loss"]
    bar.set_postfix(chunk=chunk.index, loss="nan" if loss is None else f"{loss:.4g}", t=f"{record['t']:.0f}")


def preview(run: Run, chunk: Chunk, render_x: torch.Tensor) -> None:
    """progress/step_*.png for the first chunk (the run's strip and video); every chunk's preview goes to the logger."""
    frame = grid(chunk.to_rgb(render_x))
    if chunk.index == 0:
        iio.imwrite(run.run_dir / "progress" / f"step_{chunk.step:06d}.png", frame)
    run.logger.log_image("preview", frame, run.global_step(chunk.index, chunk.step))


def finish_chunk(run: Run, chunk: Chunk, samples_file: SamplesFile, first: bool) -> None:
    """A finished chunk: its samples' images and samples.jsonl lines, then a checkpoint. The first chunk also writes
    the run's final.png, progress strip and video, eval.json and the renderer's own artifacts."""
    renderer = chunk.renderer
    renderer.eval()  # fixed, repeatable views (a NeRF's front-first orbit) rather than this step's random cameras
    with torch.no_grad():
        final = renderer()
        x = chunk.to_model(final.x)
        rgb = chunk.to_rgb(final.x)
    rows = RowGroups(final.samples)
    per_sample_eval = {}
    records = []
    for s, sample in enumerate(chunk.samples):
        idx = rows.rows_of[s]
        with torch.no_grad():
            metrics = run.guidance.evaluate(x[idx], sample.caption)
        per_sample_eval[s] = metrics
        image = save_png(rgb[idx], run.run_dir / "samples" / f"{sample.index:05d}.png")
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
                "image": str(image.relative_to(run.run_dir)),
                "tensor": str(tensor.relative_to(run.run_dir)),
                "eval": scalar_metrics(metrics),
            }
        )
    if first:
        write_final_outputs(run, chunk, rgb, x, per_sample_eval)
    samples_file.write_chunk(records)
    renderer.train()
    chunk.checkpoint()


def save_tensor(x: torch.Tensor, path: Path) -> Path:
    """A sample's final model-space rows (R, ...) as a float32 CPU tensor (torch.load(path, weights_only=True))."""
    torch.save(x.detach().float().cpu().clone(), path)
    return path


def scalar_metrics(metrics: dict) -> dict:
    """One sample's metrics with one-element lists unwrapped (an image's nearest component is a list of one)."""
    return {k: finite_or_none(v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in metrics.items()}


def write_final_outputs(run: Run, chunk: Chunk, rgb, x, per_sample_eval: dict) -> None:
    """final.png (the first chunk's final renders), the progress strip and video (from the progress images on disk,
    so a resumed run's are complete), eval.json, and whatever the renderer adds (particle figure, turntable, ...)."""
    run_dir, step = run.run_dir, run.global_step(chunk.index, chunk.step)
    save_png(rgb, run_dir / "final.png")
    run.logger.log_image("final", grid(rgb), step)
    frames = [iio.imread(p) for p in sorted((run_dir / "progress").glob("step_*.png"))]
    frames = [f for f in frames if f.shape == frames[-1].shape] if frames else []
    if frames:
        save_strip(frames, run_dir / "progress.png")
        save_video(frames, run_dir / "progress.mp4")
    run.logger.log_artifacts(chunk.renderer.write_artifacts(run_dir, run.guidance.decode), step)
    captions = {s.caption for s in chunk.samples}
    if len(captions) == 1:  # one prompt: its metrics over the whole chunk, as the prior computes them
        with torch.no_grad():
            metrics = run.guidance.evaluate(x, captions.pop())
    else:
        metrics = merge_metrics([per_sample_eval[s] for s in range(len(chunk.samples))])
    if metrics:
        (run_dir / "eval.json").write_text(json.dumps(finite_or_none(metrics), indent=2) + "\n")
        print("eval: " + json.dumps(metrics))
        run.logger.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step)


def merge_metrics(per_sample: list[dict]) -> dict:
    """Per-sample metric dicts → one dict of lists (lists concatenated, scalars collected)."""
    merged: dict[str, list] = {}
    for metrics in per_sample:
        for k, v in metrics.items():
            merged.setdefault(k, []).extend(v if isinstance(v, list) else [v])
    return merged
