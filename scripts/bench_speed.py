"""Step time of the full trainer against the bare guidance calls the same step needs, for each loss and batch size.

For every (loss, batch size) the script builds the run exactly as `python train.py` would (same config, a list of
distinct captions, one chunk), records which guidance calls one step makes (rows, timesteps, prompts; VSD's
source-model calls with their backward), then alternates `steps` trainer steps with replays of those calls alone
(same device and precision) and compares the medians. The ratio trainer ÷ bare is what the trainer adds around the
model: rendering, noise and timestep draws, the loss arithmetic, backward into the parameters and the optimizer
(design.md §4: a ratio measured in one run, because the machines are shared and noisy).

Each row also measures both times against a compute bound (scoredist/eval/flops.py): the FLOPs of one replay of the
recorded calls (matmuls, convolutions and attention, forward plus VSD's source-fit backward; elementwise ops and norms
count zero) divided by the FLOP/s of a large square matmul measured once in this process, on the guidance's device and
dtype. That bound is a lower bound on the time of the guidance calls; step ÷ bound (the trainer's step) and
bare ÷ bound say how far from matmul-rate compute the step and the model alone run. The peak memory is CUDA's
max_memory_allocated (reset per row) on a GPU, and on the CPU the peak resident set of the whole process so far
(it only grows, so a row carries the largest earlier row's peak too).

    python scripts/bench_speed.py --model tiny                          # the tiny test pipeline (CPU, seconds)
    python scripts/bench_speed.py --model sd21-base --size 64           # SD 2.1-base's UNet (random), 8×8 latents
    python scripts/bench_speed.py --model sd21-base --size 512 --device cuda --precision fp16 --batch-sizes 1 2 4 8 16
    python scripts/bench_speed.py --model tiny-sd3 --losses sds rfds    # the tiny SD3 (likewise tiny-sdxl, tiny-flux)
    python scripts/bench_speed.py --model sd3 --size 64 --losses sds --batch-sizes 1   # SD3-medium's transformer

--model sd21-base builds (once, ~3.5 GB under --cache) a folder with SD 2.1-base's UNet architecture and random
weights: no download, the same compute per step as the real model; --model sdxl, sd3 and flux likewise build SDXL's
UNet (2.6B), SD3-medium's transformer (2.0B) and FLUX.1-dev's (11.9B; 48 GB in fp32, built in bf16 for CUDA) with
one-layer text encoders of the real widths (scoredist/guidance/tiny_families.py). --model PATH uses any local
diffusers folder of the family named by --family (default sd).
The table is printed with the device, torch version, model and the command; --out FILE also appends it to FILE
(the project's tables: --out docs/results/speed.md, a tracked file, so only on purpose).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from scoredist.eval.flops import ComputeBound, count_flops, matmul_throughput

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
    # FLOPs of one replay of the step's guidance calls (forward, and VSD's source-fit backward) over the process's
    # matmul throughput: the least time those calls can take (a lower bound, scoredist/eval/flops.py)
    bound: ComputeBound

    @property
    def ratio(self) -> float:
        return self.trainer_s / self.bare_s

    @property
    def step_over_bound(self) -> float:
        return self.trainer_s / self.bound.seconds if self.bound.flops else math.inf

    @property
    def bare_over_bound(self) -> float:
        return self.bare_s / self.bound.seconds if self.bound.flops else math.inf


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help=f"{' | '.join(MODELS)} | a local diffusers folder (with --family)")
    p.add_argument("--family", default=None, choices=FAMILIES, help="the family of a local folder given as --model")
    p.add_argument("--size", type=int, default=None, help="render size in pixels (default: 512 on CUDA, 64 on CPU)")
    p.add_argument("--losses", nargs="+", default=["sds", "ours", "nfsd", "csd", "vsd"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (medians are reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, cudnn, compile)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="fp16", help="fp32 | fp16 | bf16 (on the CPU fp16 runs as fp32)")
    p.add_argument("--channels-last", action="store_true", help="guidance.channels_last=true")
    p.add_argument("--compile", action="store_true", help="guidance.compile_unet / compile_denoiser = true")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "scoredist"), help="where built models are kept")
    p.add_argument(
        "--out",
        default=None,
        help="markdown file to append the table to (default: print only; the project's: docs/results/speed.md)",
    )
    return p.parse_args(argv)


FAMILIES = ("sd", "sdxl", "sd3", "flux")
# --model name → (family, architecture): random-weight folders built once under --cache
MODELS = {
    "tiny": ("sd", "tiny"),
    "sd21-base": ("sd", "sd21-base"),
    "tiny-sdxl": ("sdxl", "tiny"),
    "tiny-sd3": ("sd3", "tiny"),
    "tiny-flux": ("flux", "tiny"),
    "sdxl": ("sdxl", "real"),
    "sd3": ("sd3", "real"),
    "flux": ("flux", "real"),
}


def model_family(args) -> str:
    return MODELS[args.model][0] if args.model in MODELS else (args.family or "sd")


def model_folder(model: str, cache: Path, device=None) -> Path:
    """The diffusers folder to load: built once for the named random-weight architectures."""
    if model not in MODELS:
        return Path(model)
    family, architecture = MODELS[model]
    folder = cache / f"random-{model}"
    if not (folder / "model_index.json").is_file():
        print(f"building {folder} (random weights, {model} architecture) ...", flush=True)
        if family == "sd":
            from scoredist.guidance.tiny_pipeline import build_tiny_pipeline

            build_tiny_pipeline(folder, architecture=architecture)
        else:
            from scoredist.guidance.tiny_families import MAKERS

            # Flux at real size is 48 GB in fp32: its folder is written in bf16 (the dtype it runs in on a GPU)
            dtype = torch.bfloat16 if model == "flux" else torch.float32
            MAKERS[family](folder, architecture=architecture, dtype=dtype)
    return folder


def guidance_overrides(args, family: str) -> list[str]:
    """--channels-last and --compile as the family's config names them (only SD's UNet takes channels_last)."""
    if family == "sd":
        return [
            f"guidance.channels_last={str(args.channels_last).lower()}",
            f"guidance.compile_unet={str(args.compile).lower()}",
        ]
    if args.channels_last:
        raise SystemExit(f"--channels-last applies to SD's UNet only, not to --model {args.model} ({family})")
    return [f"guidance.compile_denoiser={str(args.compile).lower()}"]


def compose_config(args, folder: Path, loss: str, batch: int, size: int):
    from hydra import compose, initialize_config_dir

    family = model_family(args)
    overrides = [
        f"guidance={family}",
        f"guidance.pretrained={folder}",
        *guidance_overrides(args, family),
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


def peak_memory_gib(device) -> float:
    """CUDA: the allocator's peak since the row's reset. CPU: the process's peak resident set so far (ru_maxrss, kB on
    Linux, bytes on macOS); the CPU has no per-row reset, so it only grows from row to row."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def measure(args, folder: Path, loss_name: str, batch: int, size: int, guidance, flop_per_s: float) -> Row:
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
    recorder.replay()  # warm (the prompt embeddings are cached from here on, so no text encoder below)
    # Counted on a replay of its own, before the timings: the counter slows the ops it sees.
    flops = count_flops(recorder.replay)
    # Trainer steps and bare replays alternate and the medians are compared, so that a machine whose load drifts
    # during the measurement (shared CI boxes) slows both sides alike.
    trainer, bare = [], []
    for _ in range(args.steps):
        trainer.append(timed(chunk.train_step, device))
        bare.append(timed(recorder.replay, device))
    peak = peak_memory_gib(device)
    bound = ComputeBound(flops, flop_per_s)
    return Row(loss_name, batch, statistics.median(trainer), statistics.median(bare), peak, bound)


def table(rows: list[Row]) -> str:
    columns = [
        "loss",
        "batch",
        "trainer s/step",
        "bare s/step",
        "trainer ÷ bare",
        "steps/s",
        "s per sample, 1000 steps",
        "GFLOP/step",
        "step ÷ bound",
        "bare ÷ bound",
        PEAK_COLUMN,
    ]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        peak = f"{r.peak_gb:.2f}" if r.peak_gb is not None else "—"
        lines.append(
            f"| {r.loss} | {r.batch} | {r.trainer_s:.4f} | {r.bare_s:.4f} | {r.ratio:.2f} | {1 / r.trainer_s:.2f} "
            f"| {1000 * r.trainer_s / r.batch:.1f} | {gflops(r.bound.gflops)} | {r.step_over_bound:.1f} "
            f"| {r.bare_over_bound:.1f} | {peak} |"
        )
    return "\n".join(lines)


PEAK_COLUMN = "peak GiB (CUDA allocated / CPU process RSS)"


def gflops(g: float) -> str:
    """Three significant digits below a thousand (0.0923 for the tiny model), whole numbers above (not 1.24e+03)."""
    return f"{g:.3g}" if g < 1000 else f"{g:,.0f}"


def denoiser_of(guidance):
    """The network the guidance calls: `guidance.denoiser` for model families that name it so (transformers), else
    the UNet of the Stable-Diffusion-style guidance."""
    return getattr(guidance, "denoiser", None) or guidance.unet


def describe_denoiser(denoiser) -> str:
    """Class name and parameter count, plus the UNet fields only where its config has them."""
    config = getattr(denoiser, "config", None)
    fields = []
    if getattr(config, "block_out_channels", None) is not None:
        fields.append(f"block_out_channels {list(config.block_out_channels)}")
    if getattr(config, "cross_attention_dim", None) is not None:
        fields.append(f"cross-attention {config.cross_attention_dim}")
    return ", ".join([type(denoiser).__name__, *fields, f"{parameter_count(denoiser)} parameters"])


def parameter_count(module) -> str:
    """866M for SD 2.1-base's UNet, 0.793M for the tiny one, the plain number below ten thousand."""
    n = sum(p.numel() for p in module.parameters())
    if n >= 1e8:
        return f"{n / 1e6:,.0f}M"
    return f"{n / 1e6:.3g}M" if n >= 1e4 else str(n)


def header(args, device, size: int, guidance, flop_per_s: float) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86'})"
    threads = torch.get_num_threads()
    precision = dtype_name(guidance_dtype(guidance))
    latent = size // guidance.downscale
    return (
        f"### {args.model}: {name}, torch {torch.__version__}, {precision}, {threads} threads, "
        f"{size}×{size} renders → {latent}×{latent} latents, matmul {flop_per_s / 1e9:,.0f} GFLOP/s {precision}\n\n"
        f"{describe_denoiser(denoiser_of(guidance))}. "
        f"Command: `python scripts/bench_speed.py {shlex.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')})\n"
    )


def guidance_dtype(guidance) -> torch.dtype:
    """The dtype the denoiser computes in: fp32 on the CPU, --precision on CUDA (the guidance decides, not us)."""
    return next(denoiser_of(guidance).parameters()).dtype


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def main(argv=None) -> None:
    args = parse_args(argv)
    from hydra.utils import instantiate

    from scoredist.devices import pick_device

    folder = model_folder(args.model, Path(args.cache))
    device = pick_device(args.device)
    size = args.size or (512 if device.type == "cuda" and not args.model.startswith("tiny") else 64)
    # Built from the same composed config as the rows (conf/guidance/sd.yaml's _target_, with --channels-last and
    # --compile), as train.py builds it, and loaded once for every row: the script names no guidance class itself.
    cfg = compose_config(args, folder, args.losses[0], args.batch_sizes[0], size)
    guidance = instantiate(cfg.guidance, device=str(device), precision=args.precision)
    # Once per process, on the guidance's device and dtype, with the thread count the steps run with.
    flop_per_s = matmul_throughput(device, guidance_dtype(guidance))
    print(f"matmul throughput: {flop_per_s / 1e9:,.0f} GFLOP/s {dtype_name(guidance_dtype(guidance))}", flush=True)
    rows = []
    for loss_name in args.losses:
        for batch in args.batch_sizes:
            row = measure(args, folder, loss_name, batch, size, guidance, flop_per_s)
            rows.append(row)
            print(
                f"{loss_name:5s} batch {batch:3d}: trainer {row.trainer_s * 1e3:8.1f} ms/step, bare "
                f"{row.bare_s * 1e3:8.1f} ms, ratio {row.ratio:.2f}, {gflops(row.bound.gflops)} GFLOP, "
                f"step ÷ bound {row.step_over_bound:.1f}",
                flush=True,
            )
    report = header(args, device, size, guidance, flop_per_s) + "\n" + table(rows) + "\n"
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
