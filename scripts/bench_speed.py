"""Step time of the full trainer against the bare guidance calls the same step needs, for each loss and batch size.

For every (loss, batch size) the script builds the run exactly as `python train.py` would (same config, a list of
distinct captions, one chunk), records which guidance calls one step makes (rows, timesteps, prompts; VSD's
source-model calls with their backward), then alternates `steps` trainer steps with replays of those calls alone
(same device and precision) and compares the medians. The ratio trainer ÷ bare is what the trainer adds around the
model: rendering, noise and timestep draws, the loss arithmetic, backward into the parameters and the optimizer
(design.md §4: a ratio measured in one run, because the machines are shared and noisy).

    python scripts/bench_speed.py --model tiny                          # the tiny test pipeline (CPU, seconds)
    python scripts/bench_speed.py --model sd21-base --size 64           # SD 2.1-base's UNet (random), 8×8 latents
    python scripts/bench_speed.py --model sd21-base --size 512 --device cuda --precision fp16 --batch-sizes 1 2 4 8 16

--model sd21-base builds (once, ~3.5 GB under --cache) a folder with SD 2.1-base's UNet architecture and random
weights: no download, the same compute per step as the real model. --model PATH uses any local diffusers folder.
The table is printed with the device, torch version, model and the command; --out FILE also appends it to FILE
(the project's tables: --out docs/results/speed.md, a tracked file, so only on purpose).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = (
    "a photo of a hamburger",
    "a red cube on a table",
    "a blue sphere",
    "a painting of a fox",
    "a green cone in the snow",
    "a yellow torus",
    "a purple car",
    "an orange cat",
)


@dataclass
class Row:
    loss: str
    batch: int
    trainer_s: float
    bare_s: float
    peak_gb: float | None

    @property
    def ratio(self) -> float:
        return self.trainer_s / self.bare_s


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny | sd21-base | a local diffusers folder")
    p.add_argument("--size", type=int, default=None, help="render size in pixels (default: 512 on CUDA, 64 on CPU)")
    p.add_argument("--losses", nargs="+", default=["sds", "ours", "nfsd", "csd", "vsd"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (medians are reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, cudnn, compile)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="fp16", help="fp32 | fp16 | bf16 (CUDA only; CPU runs fp32)")
    p.add_argument("--channels-last", action="store_true", help="guidance.channels_last=true")
    p.add_argument("--compile", action="store_true", help="guidance.compile_unet=true")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "scoredist"), help="where built models are kept")
    p.add_argument(
        "--out",
        default=None,
        help="markdown file to append the table to (default: print only; the project's: docs/results/speed.md)",
    )
    return p.parse_args(argv)


def model_folder(model: str, cache: Path) -> Path:
    """The diffusers folder to load: built once for the named random-weight architectures."""
    from scoredist.guidance.tiny_pipeline import ARCHITECTURES, build_tiny_pipeline

    if model not in ARCHITECTURES:
        return Path(model)
    folder = cache / f"random-{model}"
    if not (folder / "model_index.json").is_file():
        print(f"building {folder} (random weights, {model} architecture) ...", flush=True)
        build_tiny_pipeline(folder, architecture=model)
    return folder


def compose_config(args, folder: Path, loss: str, batch: int, size: int):
    from hydra import compose, initialize_config_dir

    overrides = [
        "guidance=sd",
        f"guidance.pretrained={folder}",
        f"guidance.channels_last={str(args.channels_last).lower()}",
        f"guidance.compile_unet={str(args.compile).lower()}",
        f"loss={loss}",
        "renderer=image",
        f"renderer.height={size}",
        f"renderer.width={size}",
        f"trainer.batch_size={batch}",
        f"trainer.device={args.device}",
        f"trainer.precision={args.precision}",
        "logger=none",
    ]
    if loss in ("ours", "bridge"):
        overrides.append("loss.stage_one=null")  # time the bridge itself; its first stage is SDS, timed as sds
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    cfg.prompt = [CAPTIONS[i % len(CAPTIONS)] + ("" if i < len(CAPTIONS) else f" {i}") for i in range(batch)]
    return cfg


class CallRecorder:
    """Wraps `predict_noise` of the guidance (and of a VSD source model) to record one step's calls, then replays them
    alone: the bare model time of that step."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.recording = False

    @contextlib.contextmanager
    def wrap(self, model):
        original = model.predict_noise

        def recorded(x_t, t, prompts):
            out = original(x_t, t, prompts)
            if self.recording:  # a call that built a graph is one the step also differentiates
                self.calls.append((original, x_t.detach().clone(), t.clone(), list(prompts), out.requires_grad))
            return out

        model.predict_noise = recorded
        try:
            yield
        finally:
            del model.predict_noise  # back to the class's method

    def replay(self) -> None:
        for call, x_t, t, prompts, with_grad in self.calls:
            if with_grad:  # VSD's source fit: forward and backward into the LoRA weights
                call(x_t, t, prompts).float().square().mean().backward()
            else:
                with torch.no_grad():
                    call(x_t, t, prompts)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(args, folder: Path, loss_name: str, batch: int, size: int, guidance) -> Row:
    from hydra.utils import instantiate

    from scoredist.devices import pick_device
    from scoredist.samples import make_samples, read_prompts
    from scoredist.train import Chunk, Run

    cfg = compose_config(args, folder, loss_name, batch, size)
    device = pick_device(cfg.trainer.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    samples = make_samples(read_prompts(cfg.prompt, None), 1, cfg.seed)
    run = Run(cfg, Path("/nonexistent"), device, guidance, instantiate(cfg.loss), instantiate(cfg.schedule))
    chunk = Chunk(run, 0, samples)
    for _ in range(args.warmup):
        chunk.train_step()

    recorder = CallRecorder()
    source = getattr(run.loss, "source", None)
    with recorder.wrap(guidance), recorder.wrap(source) if source is not None else contextlib.nullcontext():
        recorder.recording = True
        chunk.train_step()
        recorder.recording = False
    recorder.replay()  # warm
    # Trainer steps and bare replays alternate and the medians are compared, so that a machine whose load drifts
    # during the measurement (shared CI boxes) slows both sides alike.
    trainer, bare = [], []
    for _ in range(args.steps):
        trainer.append(timed(chunk.train_step, device))
        bare.append(timed(recorder.replay, device))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return Row(loss_name, batch, statistics.median(trainer), statistics.median(bare), peak)


def table(rows: list[Row]) -> str:
    columns = [
        "loss",
        "batch",
        "trainer s/step",
        "bare s/step",
        "trainer ÷ bare",
        "steps/s",
        "s per sample, 1000 steps",
    ]
    lines = ["| " + " | ".join([*columns, "peak GiB"]) + " |", "|---" * (len(columns) + 1) + "|"]
    for r in rows:
        peak = f"{r.peak_gb:.1f}" if r.peak_gb is not None else "—"
        lines.append(
            f"| {r.loss} | {r.batch} | {r.trainer_s:.4f} | {r.bare_s:.4f} | {r.ratio:.2f} | {1 / r.trainer_s:.2f} "
            f"| {1000 * r.trainer_s / r.batch:.1f} | {peak} |"
        )
    return "\n".join(lines)


def header(args, device, size: int, guidance) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86'})"
    threads = torch.get_num_threads()
    unet = guidance.unet.config
    precision = args.precision if device.type == "cuda" else "fp32"
    return (
        f"### {args.model}: {name}, torch {torch.__version__}, {precision}, {threads} threads, "
        f"{size}×{size} renders → {size // guidance.downscale}×{size // guidance.downscale} latents\n\n"
        f"UNet block_out_channels {list(unet.block_out_channels)}, cross-attention {unet.cross_attention_dim}, "
        f"{sum(p.numel() for p in guidance.unet.parameters()) / 1e6:.0f}M parameters. "
        f"Command: `python scripts/bench_speed.py {shlex.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')})\n"
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    from scoredist.devices import pick_device
    from scoredist.guidance.stable_diffusion import StableDiffusion

    folder = model_folder(args.model, Path(args.cache))
    device = pick_device(args.device)
    size = args.size or (512 if device.type == "cuda" and args.model != "tiny" else 64)
    guidance = StableDiffusion(
        str(folder),
        device=str(device),
        precision=args.precision,
        channels_last=args.channels_last,
        compile_unet=args.compile,
    )
    rows = []
    for loss_name in args.losses:
        for batch in args.batch_sizes:
            row = measure(args, folder, loss_name, batch, size, guidance)
            rows.append(row)
            print(
                f"{loss_name:5s} batch {batch:3d}: trainer {row.trainer_s * 1e3:8.1f} ms/step, bare "
                f"{row.bare_s * 1e3:8.1f} ms, ratio {row.ratio:.2f}",
                flush=True,
            )
    report = header(args, device, size, guidance) + "\n" + table(rows) + "\n"
    print("\n" + report)
    append_report(report, args.out)


def append_report(report: str, out: str | None) -> None:
    """Append the report to `out` (with the file's heading if it is new); without --out, only say how to keep it:
    the default never touches a tracked file such as docs/results/speed.md."""
    if out is None:
        print("not written anywhere: add --out FILE to append it (the project's tables: --out docs/results/speed.md)")
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(("\n" if out.stat().st_size else "# Speed\n\nWritten by scripts/bench_speed.py.\n\n") + report)
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
