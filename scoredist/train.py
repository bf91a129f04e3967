"""The one distillation loop: render → guidance direction → backward → optimizer step → log → checkpoint.

`train(cfg)` is a plain function of a composed config (train.py at the repository root is its Hydra shim). A run folder
holds config.yaml, metrics.jsonl, progress/ images, final.png, progress.png/.mp4 and checkpoints/last.pt;
`trainer.resume=<run folder>` continues it bit-for-bit on the same device (RNG state is checkpointed too).
"""

from __future__ import annotations

import json
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from scoredist.checkpoint import checkpoint_path, load_checkpoint, run_folder_of, save_checkpoint
from scoredist.errors import NonFiniteError
from scoredist.images import grid, save_png, save_strip, save_video
from scoredist.losses.base import surrogate_loss
from scoredist.renderers.base import ModelSpace

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class RunResult:
    run_dir: Path
    step: int  # steps completed
    interrupted: bool


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


def run_folder(cfg: DictConfig) -> Path:
    """The resumed run's folder, else Hydra's output folder, else trainer.run_dir (plain `train(cfg)` calls)."""
    if cfg.trainer.resume:
        return run_folder_of(cfg.trainer.resume)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.trainer.run_dir or f"outputs/{time.strftime('%Y-%m-%d/%H-%M-%S')}")


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def stop_requests():
    """SIGINT / SIGTERM set a flag instead of killing the loop, so the step in flight finishes and a checkpoint is
    written. A second Ctrl-C interrupts at once."""
    requested = {"signal": None}

    def handler(signum, frame):
        if requested["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested["signal"] = signal.Signals(signum).name
        print(f"\n{requested['signal']} received: finishing this step and writing a checkpoint (Ctrl-C again to abort)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _step_of(line: str) -> float:
    """The step of a metrics line; a line torn by a kill mid-write counts as past any checkpoint (dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class MetricsFile:
    """metrics.jsonl, one JSON object per logged step ("step" = steps completed). On resume, lines from past the
    checkpoint are dropped: they belong to steps that will be run again."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def train(cfg: DictConfig) -> RunResult:
    validate(cfg)
    device = pick_device(cfg.trainer.device)
    run_dir = run_folder(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = load_checkpoint(checkpoint_path(cfg.trainer.resume)) if cfg.trainer.resume else None
    torch.manual_seed(cfg.seed)

    guidance = instantiate(cfg.guidance, device=str(device), precision=cfg.trainer.precision)
    guidance.check_prompt(cfg.prompt)
    renderer = instantiate(cfg.renderer)
    renderer.bind(model_space(guidance, device))
    renderer.to(device)
    if renderer.height is not None:
        guidance.check_resolution(renderer.height, renderer.width)
    schedule = instantiate(cfg.schedule)
    loss = instantiate(cfg.loss)
    optimizer = instantiate(cfg.optimizer)(renderer.param_groups(cfg.optimizer.lr))
    lr_scheduler = instantiate(cfg.lr_scheduler)(optimizer) if cfg.get("lr_scheduler") else None
    to_model = guidance.encode if renderer.outputs_rgb else (lambda x: x)

    @torch.no_grad()
    def to_rgb(render_x: torch.Tensor) -> torch.Tensor:
        """What a person looks at: the render itself, or the model-space tensor decoded (VAE, scatter plot, ...)."""
        return render_x.detach() if renderer.outputs_rgb else guidance.decode(render_x.detach())

    with torch.no_grad():
        loss.attach(guidance, to_model(renderer().x).detach())

    step, nonfinite_total = 0, 0
    if resume is not None:
        renderer.load_state_dict(resume["renderer"])
        optimizer.load_state_dict(resume["optimizer"])
        if lr_scheduler is not None:
            lr_scheduler.load_state_dict(resume["lr_scheduler"])
        loss.load_state_dict(resume["loss"])
        schedule.load_state_dict(resume.get("schedule", {}))
        set_rng_state(resume["rng"])
        step, nonfinite_total = resume["step"], resume["nonfinite_total"]
        warn_if_config_changed(run_dir / "config.yaml", cfg)
        print(f"resuming {run_dir} at step {step}")
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=False)
    metrics = MetricsFile(run_dir / "metrics.jsonl", step if resume is not None else None)
    logger = instantiate(cfg.logger)
    wandb_id = logger.start(
        OmegaConf.to_container(cfg, resolve=True), run_dir, run_dir.name, resume.get("wandb_id") if resume else None
    )

    def checkpoint():
        save_checkpoint(
            {
                "step": step,
                "renderer": renderer.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
                "loss": loss.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": rng_state(),
                "nonfinite_total": nonfinite_total,
                "wandb_id": wandb_id,
            },
            run_dir / "checkpoints" / "last.pt",
        )

    def preview(render_x, name):
        frame = grid(to_rgb(render_x))
        iio.imwrite(run_dir / "progress" / f"{name}.png", frame)
        logger.log_image("preview", frame, step)

    (run_dir / "progress").mkdir(exist_ok=True)
    interrupted, consecutive_nonfinite, exit_code = False, 0, 1
    bar = tqdm(total=cfg.trainer.max_steps, initial=step, desc=run_dir.name, dynamic_ncols=True)
    try:
        with stop_requests() as stop:
            while step < cfg.trainer.max_steps:
                render = renderer()
                x = to_model(render.x)
                prompts = [cfg.prompt + suffix for suffix in render.prompt_suffixes]
                t = schedule.sample(step, x.shape[0], guidance.num_train_timesteps, device)
                noise = torch.randn_like(x)
                weighted_direction, logs = loss(guidance, x, t, noise, prompts, step)
                objective = surrogate_loss(x, weighted_direction)
                if render.regularization is not None:
                    objective = objective + render.regularization
                logs.update(render.logs)
                finite = bool(torch.isfinite(objective))  # the one host sync of a step
                if finite:
                    optimizer.zero_grad(set_to_none=True)
                    objective.backward()
                    # the direction can be finite while the gradient is not (an fp16/bf16 VAE encoder overflowing)
                    finite = grads_finite(optimizer)
                if finite:
                    consecutive_nonfinite = 0
                    optimizer.step()
                    logs.update(loss.after_step(guidance, x.detach(), prompts))
                else:
                    # A NaN step would poison Adam's moments for good; skip it, and stop if it keeps happening.
                    nonfinite_total += 1
                    consecutive_nonfinite += 1
                    warnings.warn(f"step {step}: non-finite direction, skipped ({nonfinite_total} total)", stacklevel=1)
                    if consecutive_nonfinite >= cfg.trainer.max_nonfinite:
                        checkpoint()
                        raise NonFiniteError(
                            f"{consecutive_nonfinite} non-finite steps in a row at step {step}; checkpoint written to "
                            f"{run_dir}. Lower the learning rate or guidance scale, or use trainer.precision=fp32."
                        )
                if lr_scheduler is not None:
                    lr_scheduler.step()  # skipped steps count too, so the schedule stays aligned with `step`
                step += 1
                bar.update(1)

                if finite and (step % cfg.trainer.log_every == 0 or step == cfg.trainer.max_steps):
                    record = {"step": step, "loss": objective, "t": t.float().mean(), **logs}
                    record = {k: float(v.detach()) if torch.is_tensor(v) else v for k, v in record.items()}
                    record["nonfinite_total"] = nonfinite_total
                    metrics.write(record)
                    logger.log(record, step)
                    bar.set_postfix(loss=f"{record['loss']:.4g}", t=f"{record['t']:.0f}")
                if step % cfg.trainer.image_every == 0:
                    preview(render.x, f"step_{step:06d}")
                if step % cfg.trainer.ckpt_every == 0:
                    checkpoint()
                if stop["signal"]:
                    interrupted = True
                    break
        checkpoint()
        if interrupted:
            print(f"interrupted at step {step}: resume with trainer.resume={run_dir}")
        else:
            write_final_outputs(run_dir, renderer, to_rgb, guidance.decode, logger, step)
            evaluate_final(run_dir, guidance, renderer, to_model, cfg.prompt, logger, step)
        exit_code = 0
    finally:
        bar.close()
        logger.finish(exit_code=exit_code)
    return RunResult(run_dir=run_dir, step=step, interrupted=interrupted)


def grads_finite(optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return bool(torch.stack([g.isfinite().all() for g in grads]).all()) if grads else True


def model_space(guidance, device: torch.device) -> ModelSpace:
    shape = guidance.sample_shape()
    native = (shape[-2] * guidance.downscale, shape[-1] * guidance.downscale) if len(shape) == 3 else None
    return ModelSpace(
        channels=guidance.channels,
        downscale=guidance.downscale,
        native_size=native,
        encode=lambda rgb: guidance.encode(rgb.to(device)),
        device=device,
    )


def write_final_outputs(run_dir, renderer, to_rgb, decode, logger, step) -> None:
    """final.png, the progress strip and video (from the progress images on disk, so a resumed run's are complete),
    and whatever the renderer adds (particle figure, turntable, ...)."""
    renderer.eval()  # fixed, repeatable views (a NeRF's front-first orbit) rather than this step's random cameras
    with torch.no_grad():
        final = to_rgb(renderer().x)
    save_png(final, run_dir / "final.png")
    logger.log_image("final", grid(final), step)
    frames = [iio.imread(p) for p in sorted((run_dir / "progress").glob("step_*.png"))]
    frames = [f for f in frames if f.shape == frames[-1].shape] if frames else []
    if frames:
        save_strip(frames, run_dir / "progress.png")
        save_video(frames, run_dir / "progress.mp4")
    renderer.write_artifacts(run_dir, decode)


def evaluate_final(run_dir, guidance, renderer, to_model, prompt, logger, step) -> dict:
    """eval.json: what the exact priors can say about the result (nearest component, log-density); printed too."""
    renderer.eval()
    with torch.no_grad():
        metrics = guidance.evaluate(to_model(renderer().x), prompt)
    if metrics:
        (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print("eval: " + json.dumps(metrics))
        logger.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step)
    return metrics


def warn_if_config_changed(saved: Path, cfg: DictConfig) -> None:
    """Resuming with a different method or prompt is allowed but almost always a mistake: say so."""
    if not saved.exists():
        return
    old = OmegaConf.load(saved)
    if old.trainer.max_steps != cfg.trainer.max_steps:
        print(
            f"trainer.max_steps {old.trainer.max_steps} -> {cfg.trainer.max_steps}: the run continues the schedules it "
            "started with (stage switch, t decay, LR decay keep the lengths saved in the checkpoint)"
        )
    for key in ("prompt", "seed", "loss", "renderer", "guidance", "schedule"):
        # unresolved, so that `${trainer.max_steps}` inside a loss is not a difference when only max_steps changed
        before, now = (OmegaConf.to_container(c, resolve=False).get(key) for c in (old, cfg))
        if before != now:
            warnings.warn(f"resuming with a different `{key}` than the run was started with ({saved})", stacklevel=1)
