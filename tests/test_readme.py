"""Every example command of the documentation, run: README.md's ```bash blocks, the `python ...` lines of the comments
in conf/**/*.yaml, of the scripts' docstrings (their --help texts) and of `python train.py --help`.

A command is a line (joined with the next while it ends in `\\`), without its trailing `# comment`; `&&` splits it into
steps. COMMANDS below is the table: for the exact text of every command, how it runs here and what the documentation
says it produces. A command the table does not know fails `test_every_documented_command_is_in_the_table`, so a new
example cannot be added without deciding how it is run and checked.

How a command runs: in a process of its own from the repository root with the venv's python, HF_HUB_OFFLINE=1,
WANDB_MODE=offline. In CI that process is forked from a python that has already imported torch, Hydra, diffusers and
scoredist (`Forker`: the script then runs as __main__ with its argv, exactly as `python script.py ...` runs it, minus
the ~5 s of imports each of ~50 commands would pay); with SCOREDIST_README_EXEC=1 or SCOREDIST_README_FULL=1 each
command is a fresh `sys.executable script.py ...` (the times that go into the README are those).

The fields of a table entry (`Spec`):
- `subst`: placeholders replaced, always (RUN_DIR, outputs/DATE/TIME-ours → a run folder an earlier command made,
  /path/to/sd → the tiny pipeline, captions.txt / painting.png → files the test writes, output paths → tmp).
- `always`: arguments always appended: output folders redirected into the test's tmp folder (hydra.run.dir,
  hydra.sweep.dir, out=, --out), and the tiny pipeline (+ a 64² latent) where the command needs SD weights.
- `short` / `short_flags` / `short_subst`: CI's shortening (fewer steps, a 16×16 shapes world with 4 azimuths and
  one elevation, smaller renders). Set SCOREDIST_README_FULL=1 to run every command without them, as written:
  that is the run whose numbers go into the README (roughly half an hour on a 2-core machine).
- `skip`: why it cannot run here (a GPU, SD weights, a SLURM cluster, the suite itself).
What the documentation says is checked after the run: the exit status, files, the run-folder contract of every
train.py run (final.png, train.log, config.yaml, checkpoints/last.pt, samples.jsonl, no .lock), output text, and on
the exact priors what the result is nearest to (`nearest`, `variant`) — that last check only where the command ran
as written (SCOREDIST_README_FULL=1, or a command CI runs unshortened), since a shortened run ends elsewhere.

Each command's wall time and key result (nearest components, RMS, "check holds") are printed (`pytest -s`) and, with
SCOREDIST_README_TIMES=PATH, written to PATH as a markdown table at the end of the session.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FULL = os.environ.get("SCOREDIST_README_FULL") == "1"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
TIMEOUT = 3 * 3600 if FULL else 240  # seconds per command
EXEC = FULL or os.environ.get("SCOREDIST_README_EXEC") == "1"  # a fresh interpreter per command (else: forked)

# ---------------------------------------------------------------------------------------------------------------------
# Reading the commands
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Command:
    text: str  # the exact command: lines joined, comment stripped
    sources: list[str] = field(default_factory=list)  # "README.md:57", "scripts/export.py:4", "train.py --help:6"


def strip_comment(line: str) -> str:
    """A line without its trailing `# comment` (a # at the start or after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def split_steps(command: str) -> list[str]:
    """`a && b` → ["a", "b"] (outside quotes)."""
    steps, quote, start, i = [], None, 0, 0
    while i < len(command):
        ch = command[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif command.startswith("&&", i):
            steps.append(command[start:i].strip())
            start = i = i + 2
            continue
        i += 1
    return [*steps, command[start:].strip()]


def join_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(line number, text) → commands: a line ending in `\\` continues on the next one."""
    out, buf, first = [], None, 0
    for no, line in lines:
        if buf is None:
            buf, first = "", no
        text = line.rstrip()
        if text.endswith("\\"):
            buf += text[:-1].strip() + " "
            continue
        out.append((first, strip_comment(buf + text.strip())))
        buf = None
    if buf:
        out.append((first, strip_comment(buf.strip())))
    return out


def readme_commands() -> list[tuple[str, str]]:
    """(source, command) of every line of README.md's ```bash blocks."""
    block, found = None, []
    for no, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            if block is None:
                block = [] if line.strip() == "```bash" else False
            else:
                found += join_lines(block) if block else []
                block = None
        elif block not in (None, False) and line.strip():
            block.append((no, line))
    return [(f"README.md:{no}", text) for no, text in found if text]


def python_lines(lines: list[tuple[int, str]], source: str) -> list[tuple[str, str]]:
    """The commands in a comment or docstring: lines that start with `python `, with their continuation lines."""
    found, i = [], 0
    while i < len(lines):
        no, text = lines[i]
        if text.strip().startswith("python "):
            group = [(no, text)]
            while group[-1][1].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                group.append(lines[i])
            found += [(f"{source}:{n}", c) for n, c in join_lines(group)]
        i += 1
    return found


def conf_commands() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        text = path.read_text().splitlines()
        lines = [(n, x.strip()[1:]) for n, x in enumerate(text, 1) if x.strip().startswith("#")]
        found += python_lines(lines, str(path.relative_to(ROOT)))
    return found


def script_docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def script_commands() -> list[tuple[str, str]]:
    """The scripts' module docstrings (their --help description) and train.py's --help header."""
    found = []
    for path in sorted((ROOT / "scripts").glob("*.py")):
        found += python_lines(list(enumerate(script_docstring(path).splitlines(), 1)), str(path.relative_to(ROOT)))
    header = yaml.safe_load((ROOT / "conf" / "hydra" / "help" / "scoredist.yaml").read_text())["header"]
    found += python_lines(list(enumerate(header.splitlines(), 1)), "train.py --help")
    return found


def documented_commands() -> list[Command]:
    """Every documented command once, README order first, with every place it appears."""
    commands: dict[str, Command] = {}
    for source, text in readme_commands() + conf_commands() + script_commands():
        commands.setdefault(text, Command(text)).sources.append(source)
    return list(commands.values())


# ---------------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------------

# CI's shortening of a shapes-prior run: a 16×16 world with 4 azimuths (front, side, back reachable) and one elevation,
# so the prior's banks render in a fraction of a second (documented settings of conf/guidance/shapes.yaml).
WORLD = ("guidance.resolution=16", "guidance.num_azimuths=4", "guidance.elevations=[15.0]", "guidance.supersample=1")
# the tiny pipeline in place of SD 2.1-base weights; its native size is 64² (an 8×8 latent)
TINY_SD = ("guidance.pretrained={tiny}", "renderer.height=64", "renderer.width=64")
# a Gaussians demo in seconds: 40 steps end nearest "red cube" in the 16² world
GS_SHORT = ("trainer.max_steps=40", "renderer.mesh_resolution=32", "renderer.turntable_views=4", *WORLD)
# a NeRF run in seconds
NERF_SHORT = ("trainer.max_steps=10", "renderer.mesh_resolution=32", "renderer.turntable_views=4", *WORLD)
# the benchmark at tests/test_benchmark.py's tiny size: 2 prompts × 2 samples × 3 steps, no Inception, no tracker
BENCH_SHORT = (
    "prompt=[a red cube,a blue sphere]",
    "samples_per_prompt=2",
    "trainer.max_steps=3",
    "trainer.batch_size=4",
    "trainer.image_every=3",
    *WORLD,
    "benchmark.lower_bound.num_steps=5",
    "benchmark.metrics.feature_net=null",
    "logger=none",
    "benchmark.curve_steps=[2]",
    "benchmark.timing.rounds=1",
    "benchmark.timing.steps=1",
)
# the +benchmark multiruns at one sample per prompt (what collect.py then gets from the README's seed sweeps, too)
ONE_SAMPLE = tuple(
    {"samples_per_prompt=2": "samples_per_prompt=1", "trainer.batch_size=4": "trainer.batch_size=2"}.get(a, a)
    for a in BENCH_SHORT
)
# a SLURM job on the 2-CPU test node: one CPU and 1 GB, so two run at once
SLURM_SHORT = ("trainer.max_steps=3", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", *WORLD)
SLURM_BENCH_JOB = ("launcher.cpus_per_task=1", "launcher.mem_gb=1")
SLURM_PROMPT_SHARDS = ("trainer.batch_size=2", "benchmark.prompt_shards=2")
RUN = "hydra.run.dir={out}/run"
SWEEP = "hydra.sweep.dir={out}/sweep"
GPU_SD = (
    "needs a GPU and Stable Diffusion 2.1-base weights from the hub (none here); the overlay runs end to end on the "
    "tiny pipeline in tests/test_end_to_end.py"
)
COCO = "needs a GPU, SD weights, the COCO captions and images and a CLIP folder"
AUTHORS_CHECKPOINT = (
    "needs the authors' checkpoint and a base folder (none here: no hub); tests/test_camera_guidance.py converts a "
    "tiny checkpoint of each layout made in code"
)
GPU_CONVERTED = (
    "needs a GPU and the converted weights (none here); the overlay runs 20 steps on its tiny pipeline in "
    "tests/test_end_to_end.py"
)


def check_rgba(path: Path) -> None:
    """An RGBA image whose alpha is the object's mask: some of it opaque, the rest transparent, nothing between."""
    import numpy as np
    from PIL import Image

    alpha = np.asarray(Image.open(path))[..., 3]
    assert set(np.unique(alpha)) == {0, 255} and 0.1 < (alpha == 255).mean() < 0.4, np.unique(alpha)


SD = "needs Stable Diffusion 2.1-base weights from the hub (guidance=sd is the default; none here, offline)"


@dataclass(frozen=True)
class Spec:
    """How one documented command runs here and what it must produce. Paths in the strings: {out} this command's
    tmp folder, {out:NAME} another command's (run first), {tiny} the tiny SD folder, {file:captions|painting}."""

    name: str  # a short id, for {out:NAME} references and the summary
    skip: str | None = None  # why it is not run here
    slurm: bool = False  # runs when the local SLURM cluster is up
    same_as: str | None = None  # the same command as another entry (run once): its result is checked again
    make: str | None = None  # a make target: its recipe is read with make -n and its last line run
    subst: tuple = ()  # (old, new) replacements of the command text, always
    always: tuple = ()  # arguments appended always (output folders, the tiny pipeline)
    short: tuple = ()  # arguments appended in CI (not with SCOREDIST_README_FULL=1)
    short_flags: tuple = ()  # options inserted before `--` (or appended) in CI
    short_subst: tuple = ()  # (old, new) replacements in CI
    dashdash: bool = False  # overrides go after `--` (argparse scripts with nargs="+" options)
    rc: int = 0
    runs: tuple = ()  # train.py run folders (globs under {out}) that must satisfy the run-folder contract
    files: tuple = ()  # files (globs under {out}, or absolute after placeholders) that must exist
    output: tuple = ()  # strings the command's output must contain
    # per sample (samples.jsonl order): the caption every row of it is nearest to, or a tuple of one per row
    nearest: tuple | None = None
    variant: str | None = None  # the nearest variant of every row (e.g. "clean")
    not_variant: str | None = None  # ... or a variant no row may be nearest to
    output_full: tuple = ()  # output strings checked only when run as written
    check: Callable | None = None  # extra check(result)


def nearest_rows(run: Path) -> list[dict]:
    """samples.jsonl's eval per sample, every value a list over the sample's rows."""
    rows = []
    for line in (run / "samples.jsonl").read_text().splitlines():
        ev = json.loads(line)["eval"]
        rows.append({k: v if isinstance(v, list) else [v] for k, v in ev.items()})
    return rows


def check_irfds(result):
    """iRFDS's inverted noise sampled back under the caption is the red cube again, and under the edit prompt blue."""
    ev = json.loads((result.out / "run" / "eval.json").read_text())
    assert ev["inversion"]["nearest_caption"] == ["red cube"] and ev["edit"]["nearest_caption"] == ["blue cube"], ev


def check_nothing_written(folder: str) -> Callable:
    def check(result):
        assert not (result.out / folder).exists(), f"{result.text} wrote {folder}/"

    return check


def check_sweep_jobs(n: int) -> Callable:
    def check(result):
        jobs = [json.loads(x) for x in (result.out / "sweep" / "jobs.jsonl").read_text().splitlines()]
        assert [j["status"] for j in jobs] == ["finished"] * n, jobs
        assert all(j.get("state", "COMPLETED") == "COMPLETED" for j in jobs), jobs  # a SLURM sweep's: its jobs' end

    return check


def check_samples(prompts: list[str]) -> Callable:
    def check(result):
        records = [json.loads(x) for x in (result.out / "run" / "samples.jsonl").read_text().splitlines()]
        assert [r["prompt"] for r in records] == prompts
        assert sorted(p.name for p in (result.out / "run" / "samples").glob("*.png")) == [
            f"{i:05d}.png" for i in range(len(prompts))
        ]

    return check


def check_resumed(run_of: str) -> Callable:
    """A resume of another command's run folder (README: "once resumed, resumes.jsonl"): its line records this
    command's overrides, and the checkpoint is at the trainer.max_steps the command gave (if it gave one)."""

    def check(result):
        run = result.ctx.out(run_of) / "run"
        last = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
        args = [a for a in result.argvs[-1][2:]]
        assert set(args) <= set(last["overrides"]), (args, last)
        steps = [int(a.split("=", 1)[1]) for a in args if a.startswith("trainer.max_steps=")]
        if steps:
            assert result.ctx.steps_of(run_of) == steps[-1]
        contract(run)

    return check


def check_views(labels: list[str]) -> Callable:
    """views.png (README: "each view as the model sees it, labelled") is the sample's final rows — the views as the
    model saw them, samples/00000.pt — side by side under these labels (the exact priors' pixels: RGB = (x + 1) / 2)."""

    def check(result):
        import imageio.v3 as iio
        import torch

        from scoredist.images import labelled_row

        run = result.out / "run"
        rows = torch.load(run / "samples" / "00000.pt", weights_only=True)
        expected = labelled_row(((rows + 1) / 2).clamp(0, 1), labels)
        got = iio.imread(run / "views.png")
        assert got.shape == expected.shape and (got == expected).all(), f"views.png is not the views labelled {labels}"

    return check


def check_results_rows(rows: list[str]) -> Callable:
    def check(result):
        md = (result.out / "bench" / "results.md").read_text().splitlines()
        start = next(i for i, x in enumerate(md) if x.startswith("| method")) + 2  # the first table: the results
        table = [x for x in md[start:] if x.startswith("| ")]
        table = table[: next((i for i, x in enumerate(md[start:]) if not x.startswith("|")), len(table))]
        assert [x.strip("|").split("|")[0].strip() for x in table] == rows, md

    return check


EXTEND = 5  # CI: the extended resume runs this many steps more than the run it extends


def _table() -> dict[str, Spec]:
    shapes_run = dict(always=(RUN,), runs=("run",))
    # a painting-to-real edit on the tiny SD pipeline, two steps: its run folder and edit.png
    sd_edit = dict(
        subst=(("painting.png", "{file:painting}"),),
        always=(RUN, *TINY_SD),
        short=("trainer.max_steps=2", "logger=none"),
        runs=("run",),
        files=("run/edit.png",),
    )
    specs = [
        # --- README: the first block
        (
            "make demo",
            Spec(
                "demo",
                make="demo",
                always=(RUN,),
                runs=("run",),
                short=("trainer.max_steps=40", *WORLD),
                files=(
                    "run/final.png",
                    "run/progress.png",
                    "run/progress.mp4",
                    "run/eval.json",
                    "run/checkpoints/last.pt",
                ),
                nearest=("red cube",),
            ),
        ),
        ("make test", Spec("make-test", skip="the test suite itself: this test runs inside it")),
        # --- README: Usage
        (
            "python train.py --help",
            Spec("train-help", output=("python train.py +experiment=demo", "python train.py trainer.resume=")),
        ),
        ('python train.py +experiment=t2i_ours prompt="a photo of a hamburger"', Spec("t2i-ours", skip=GPU_SD)),
        (
            "python train.py +experiment=demo loss=sds",
            Spec(
                "demo-sds",
                **shapes_run,
                short=("trainer.max_steps=20", *WORLD),
                files=("run/eval.json",),
                nearest=("red cube",),
                not_variant="clean",
            ),
        ),
        (
            "python train.py -m +experiment=demo loss=ism,sdi,esd,asd",
            Spec(
                "demo-recent",
                always=(SWEEP,),
                short=("trainer.max_steps=3", *WORLD),
                runs=("sweep/*-*",),
                check=check_sweep_jobs(4),
            ),
        ),
        (
            "python train.py +experiment=points_bridge",
            Spec(
                "points-bridge",
                **shapes_run,
                short=("trainer.max_steps=40",),
                files=("run/particles.png", "run/final.png", "run/progress.png"),
            ),
        ),
        (
            "python train.py +experiment=nerf_demo",
            Spec(
                "nerf-demo",
                **shapes_run,
                short=NERF_SHORT,
                files=("run/final.png", "run/views.png", "run/turntable.mp4", "run/model.obj", "run/eval.json"),
                nearest=("red cube",),
            ),
        ),
        ('python train.py +experiment=t23d_ours prompt="a hamburger"', Spec("t23d-ours", skip=GPU_SD)),
        (
            "python train.py +experiment=gs_demo",
            Spec(
                "gs-demo",
                **shapes_run,
                short=GS_SHORT,
                files=(
                    "run/final.png",
                    "run/views.png",
                    "run/turntable.mp4",
                    "run/gaussians.ply",
                    "run/model.obj",
                    "run/eval.json",
                ),
                nearest=("red cube",),
            ),
        ),
        ('python train.py +experiment=t23d_ours_gs prompt="a hamburger"', Spec("t23d-ours-gs", skip=GPU_SD)),
        *[
            (f"python scripts/convert_checkpoint.py {args}", Spec(f"convert-{i}", skip=AUTHORS_CHECKPOINT))
            for i, args in enumerate(
                [
                    "zero123 zero123-xl.ckpt zero123-xl-diffusers --base sd-image-variations-diffusers",
                    "mvdream sd-v2.1-base-4view.pt mvdream-sd21-diffusers --base stable-diffusion-2-1-base",
                    "zero123 zero123-xl.ckpt zero123-xl-diffusers --base SD_IMAGE_VARIATIONS",
                    "stable_zero123 stable_zero123.ckpt stable-zero123-diffusers --base SD_IMAGE_VARIATIONS",
                    "mvdream sd-v2.1-base-4view.pt mvdream-sd21-diffusers --base SD21_FOLDER",
                ]
            )
        ],
        *[
            (f"python train.py +experiment={args}", Spec(f"camera-overlay-{i}", skip=GPU_CONVERTED))
            for i, args in enumerate(
                [
                    "i23d_zero123 image=assets/references/yellow_torus_rgba.png",
                    "i23d_zero123 image=path/to/object_rgba.png",
                    "i23d_stable_zero123 image=path/to/object_rgba.png",
                    't23d_mvdream prompt="an astronaut riding a horse"',
                ]
            )
        ],
        (
            "python scripts/make_tiny_pipeline.py tiny-zero123 --family zero123",
            Spec("make-tiny-zero123", subst=(("tiny-zero123", "{out}/tiny-zero123"),), files=("tiny-zero123/unet/*",)),
        ),
        (
            'python scripts/render_shape.py "a yellow torus" torus_rgba.png --alpha --elevation 5 --resolution 256',
            Spec(
                "render-rgba",
                subst=(("torus_rgba.png", "{out}/torus_rgba.png"),),
                files=("torus_rgba.png",),
                check=lambda result: check_rgba(result.out / "torus_rgba.png"),
            ),
        ),
        (
            "python train.py +experiment=i23d_shapes",
            Spec(
                "i23d-shapes",
                **shapes_run,
                short=("trainer.max_steps=10", "renderer.mesh_resolution=16", "renderer.turntable_views=4", *WORLD),
                files=("run/eval.json", "run/views.png", "run/model.obj"),
            ),
        ),
        (
            "python train.py +experiment=janus_shapes",
            Spec(
                "janus-shapes",
                always=(SWEEP,),
                short=("trainer.max_steps=10", "renderer.mesh_resolution=16", "renderer.turntable_views=4", *WORLD),
                runs=("sweep/*-*",),
                files=("sweep/0-*/eval.json", "sweep/1-*/eval.json", "sweep/1-*/views.png"),
                check=check_sweep_jobs(2),
            ),
        ),
        (
            'python train.py +experiment=t23d_ism prompt="a DSLR photo of a bagel filled with cream cheese and lox."',
            Spec("t23d-ism", skip=GPU_SD),
        ),
        (
            'python train.py +experiment=t23d_sdi prompt="a zoomed out DSLR photo of a hamburger"',
            Spec("t23d-sdi", skip=GPU_SD),
        ),
        ('python train.py +experiment=t23d_esd prompt="a DSLR photo of a hamburger"', Spec("t23d-esd", skip=GPU_SD)),
        ('python train.py +experiment=t23d_asd prompt="a DSLR photo of a hamburger"', Spec("t23d-asd", skip=GPU_SD)),
        (
            'python scripts/render_shape.py "a blue cube" blue.png',
            Spec("render-blue", subst=(("blue.png", "{out}/blue.png"),), files=("blue.png",)),
        ),
        (
            'python train.py guidance=shapes loss=dds prompt="a red cube" loss.reference=blue.png '
            'renderer.init=blue.png loss.source_prompt="a blue cube"',
            Spec(
                "dds-edit",
                **shapes_run,
                subst=(("blue.png", "{out:render-blue}/blue.png"),),
                short=("trainer.max_steps=20", *WORLD),
                files=("run/edit.png",),
                nearest=("red cube",),
            ),
        ),
        (
            "python train.py -m +experiment=demo loss=sds,ours seed=0,1",
            Spec(
                "demo-sweep",
                always=(SWEEP,),
                short=("trainer.max_steps=3", *WORLD),
                runs=("sweep/*-*",),
                check=check_sweep_jobs(4),
            ),
        ),
        (
            "python train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu loss=sds,ours",
            Spec(
                "slurm-sweep",
                slurm=True,
                subst=(("partition=gpu", "partition={slurm_partition}"),),
                always=(
                    SWEEP,
                    "guidance.pretrained={tiny}",
                    "hydra.launcher.gpus_per_node=0",
                    "hydra.launcher.cpus_per_task=1",
                    "hydra.launcher.mem_gb=2",
                    "hydra.launcher.timeout_min=10",
                ),
                short=("trainer.max_steps=3",),
                runs=("sweep/*-*",),
                check=check_sweep_jobs(2),
            ),
        ),
        (
            "python scripts/benchmark.py launcher=slurm_cpu benchmark.prompt_shards=4 trainer.batch_size=12",
            Spec(
                "benchmark-slurm",
                slurm=True,
                always=("out={out}/bench",),
                # 4 samples per run in 2 chunks of 2, in 2 prompt shards
                short=(*BENCH_SHORT, "benchmark.rows=[ddim,sds,ours]", *SLURM_BENCH_JOB, *SLURM_PROMPT_SHARDS),
                files=(
                    "bench/results.md",
                    "bench/results.json",
                    "bench/shards.jsonl",
                    "bench/sds/seed0/shard1/samples.jsonl",
                ),
                check=check_results_rows(["DDIM (lower bound)", "SDS", "Ours"]),
            ),
        ),
        (
            "python train.py -m hydra/launcher=slurm_cpu +experiment=demo loss=sds,ours seed=0,1",
            Spec(
                "slurm-cpu-sweep",
                slurm=True,
                always=(SWEEP,),
                short=SLURM_SHORT,
                runs=("sweep/*-*",),
                check=check_sweep_jobs(4),
            ),
        ),
        (
            "python train.py -m hydra/launcher=slurm_cpu +experiment=demo loss=sds trainer.max_steps=3000 "
            "hydra.launcher.timeout_min=1",
            Spec(
                "slurm-time-limit",
                slurm=True,
                always=(SWEEP,),
                # the requeues at the limit take minutes (tests/test_slurm.py runs a shorter one through them); SLURM
                # may send a 1-minute limit's warning early, and a requeued job waits 2 minutes: 5 minutes here
                short=SLURM_SHORT,
                short_subst=(("timeout_min=1", "timeout_min=5"),),
                runs=("sweep/*-*",),
                check=check_sweep_jobs(1),
            ),
        ),
        (
            "python train.py trainer.resume=outputs/2026-11-29/14-30-38-ours",
            Spec(
                "resume", subst=(("outputs/2026-11-29/14-30-38-ours", "{out:demo}/run"),), check=check_resumed("demo")
            ),
        ),
        (
            "python train.py trainer.resume=outputs/2026-11-29/14-30-38-ours trainer.max_steps=2000",
            Spec(
                "resume-extend",
                subst=(("outputs/2026-11-29/14-30-38-ours", "{out:demo}/run"),),
                short_subst=(("trainer.max_steps=2000", f"trainer.max_steps={{steps+{EXTEND}:demo}}"),),
                check=check_resumed("demo"),
            ),
        ),
        (
            "python scripts/make_tiny_pipeline.py tiny-sd && python train.py guidance.pretrained=tiny-sd",
            Spec(
                "tiny-sd-run",
                subst=(("tiny-sd", "{out}/tiny-sd"),),
                always=(RUN,),
                short=("trainer.max_steps=5",),
                runs=("run",),
                files=("tiny-sd/model_index.json", "run/wandb/offline-run-*"),
            ),
        ),
        (
            "python scripts/benchmark.py",
            Spec(
                "benchmark",
                always=("out={out}/bench",),
                short=BENCH_SHORT,
                files=("bench/results.md", "bench/results.json", "bench/grids/*.png"),
                check=check_results_rows(
                    [
                        "Exact samples (floor)",
                        "DDIM (lower bound)",
                        "SDS",
                        "NFSD",
                        "CSD",
                        "VSD",
                        "VSD, exact source",
                        "Ours",
                        "Bridge (k = 4)",
                    ]
                ),
            ),
        ),
        (
            'python scripts/benchmark.py "benchmark.rows=[sds,vsd,ours,ism,sdi,esd,asd]"',
            Spec(
                "benchmark-recent",
                always=("out={out}/bench",),
                short=(*BENCH_SHORT, "benchmark.seeds=[0]"),
                files=("bench/results.md", "bench/results.json", "bench/grids/*.png"),
                check=check_results_rows(["SDS", "VSD", "Ours", "ISM", "SDI", "ESD", "ASD"]),
            ),
        ),
        # --- README: many prompts
        (
            "python train.py guidance=shapes loss=ours prompt='[a red cube,a blue sphere,a green cone,a yellow torus]' "
            "trainer.batch_size=4",
            Spec(
                "four-prompts",
                **shapes_run,
                short=("trainer.max_steps=20", *WORLD),
                nearest=("red cube", "blue sphere", "green cone", "yellow torus"),
                variant="clean",
                check=check_samples(["a red cube", "a blue sphere", "a green cone", "a yellow torus"]),
            ),
        ),
        (
            'python train.py guidance=shapes_flow loss=rfds prompt="a red cube"',
            Spec("rfds-flow", **shapes_run, short=("trainer.max_steps=150", *WORLD), nearest=("red cube",)),
        ),
        (
            "python train.py +experiment=irfds_shapes",
            Spec(
                "irfds-shapes",
                **shapes_run,
                short=("trainer.max_steps=150", *WORLD),
                files=("run/inversion.png", "run/edit.png", "run/eval.json"),
                check=check_irfds,
            ),
        ),
        (
            'python train.py +experiment=t2i_rfds prompt="a photo of a hamburger"',
            Spec(
                "t2i-rfds",
                skip="needs a GPU and SD3-medium weights from the hub (none here); the overlay runs end to end on the "
                "tiny SD3 folder in tests/test_end_to_end.py",
            ),
        ),
        (
            "python train.py +experiment=t2i_ours prompt_file=captions.txt samples_per_prompt=2 trainer.batch_size=8",
            Spec(
                "prompt-file",
                subst=(("captions.txt", "{file:captions}"),),
                always=(RUN, *TINY_SD),
                short=(
                    "trainer.max_steps=2",
                    "logger=none",
                ),
                runs=("run",),
                check=check_samples([c for c in CAPTIONS for _ in range(2)]),
            ),
        ),
        # --- README: Gaussians
        (
            "python scripts/export.py RUN_DIR --format ply",
            Spec(
                "export-gs-ply",
                subst=(("RUN_DIR", "{out:gs-demo}/run"),),
                files=("{out:gs-demo}/run/gaussians.ply",),
                output=("Gaussians (3DGS layout",),
            ),
        ),
        (
            "python scripts/export.py RUN_DIR --format obj",
            Spec(
                "export-gs-obj",
                subst=(("RUN_DIR", "{out:gs-demo}/run"),),
                files=("{out:gs-demo}/run/model.obj",),
                output=("watertight",),
            ),
        ),
        # --- README: NeRF
        (
            "python scripts/export.py RUN_DIR --format glb --resolution 256 --threshold 10",
            Spec(
                "export-glb",
                subst=(("RUN_DIR", "{out:nerf-demo}/run"),),
                short_subst=(("--resolution 256", "--resolution 32"), ("--threshold 10", "--threshold 5")),
                files=("{out:nerf-demo}/run/model.glb",),
                output=("watertight",),
            ),
        ),
        (
            "python scripts/render.py RUN_DIR --views 24 --size 128",
            Spec(
                "render-views",
                subst=(("RUN_DIR", "{out:nerf-demo}/run"),),
                short_subst=(("--views 24", "--views 4"), ("--size 128", "--size 16")),
                files=(
                    "{out:nerf-demo}/run/render/000.png",
                    "{out:nerf-demo}/run/render/views.png",
                    "{out:nerf-demo}/run/render/turntable.mp4",
                ),
            ),
        ),
        (
            "python train.py +experiment=sketch2real",
            Spec(
                "sketch2real",
                **shapes_run,
                short=NERF_SHORT,
                files=("run/model.obj", "run/views.png"),
                nearest=("red cube",),
            ),
        ),
        (
            'python train.py +experiment=t23d_ours renderer.init_shape=assets/sketches/flower.obj prompt="a flower"',
            Spec("t23d-flower", skip=GPU_SD),
        ),
        # --- README: illusions
        (
            "python train.py +experiment=illusion_shapes",
            Spec(
                "illusion-shapes",
                **shapes_run,
                short=("trainer.max_steps=20", *WORLD),
                files=("run/views.png",),
                nearest=(("blue cube", "blue cone"),),
                check=check_views(["identity: a blue cube", "rot180: a blue cone"]),
            ),
        ),
        (
            "python scripts/illusion_figure.py --seeds 0 1 2",
            Spec(
                "illusion-figure-seeds",
                dashdash=True,
                short_flags=("--seeds", "0", "--steps", "3"),
                short=WORLD,
                output=("check holds for",),
                output_full=("check holds for 3 of 3 seeds",),
            ),
        ),
        (
            "python train.py +experiment=illusion guidance.pretrained=/path/to/sd-2-1-base",
            Spec(
                "illusion-sd",
                subst=(("/path/to/sd-2-1-base", "{tiny}"),),
                always=(RUN, "renderer.height=64", "renderer.width=64"),
                short=(
                    "trainer.max_steps=2",
                    "logger=none",
                ),
                runs=("run",),
                files=("run/views.png",),
            ),
        ),
        # --- README: painting-to-real
        (
            "python train.py +experiment=painting2real_shapes",
            Spec("painting2real-shapes", **shapes_run, files=("run/edit.png",), nearest=("red cube",), variant="clean"),
        ),
        (
            "python scripts/painting2real.py --seeds 0 1 2",
            Spec(
                "painting2real-seeds",
                dashdash=True,
                short_flags=("--seeds", "0", "--sdedit-steps", "5"),
                short=("trainer.max_steps=5", *WORLD),
                output=("| ours |",),
                output_full=("check holds for 3 of 3 seeds", "| ours | red cube, clean"),
            ),
        ),
        (
            'python train.py +experiment=painting2real input=painting.png prompt="a photo of a harbour at dusk" '
            'loss.source_prompt="an oil painting of a harbour at dusk"',
            Spec("painting2real-sd", **sd_edit),
        ),
        (
            "python scripts/painting2real.py --experiment painting2real -- input=painting.png "
            'prompt="a photo of a harbour at dusk" loss.source_prompt="an oil painting of a harbour at dusk"',
            Spec(
                "painting2real-sd-rows",
                dashdash=True,
                subst=(("painting.png", "{file:painting}"),),
                always=("--figure", "{out}/row.png", *TINY_SD),
                short_flags=("--sdedit-steps", "2"),
                short=("trainer.max_steps=2",),
                files=("row.png",),
            ),
        ),
        # --- conf/**/*.yaml comments
        (
            "python scripts/benchmark.py preset=coco prompt_file=captions.txt "
            "benchmark.metrics.reference_images=/data/coco/val2014_5k "
            "benchmark.metrics.clip=/models/clip-vit-base-patch32",
            Spec("coco-benchmark", skip=COCO),
        ),
        (
            "python train.py -m +benchmark=shapes loss=sds,nfsd,csd,vsd,ours,bridge hydra/launcher=joblib",
            Spec("benchmark-sweep", always=(SWEEP,), short=ONE_SAMPLE, runs=("sweep/*-*",), check=check_sweep_jobs(6)),
        ),
        (
            "python scripts/sample.py -m +benchmark=shapes +sampler.name=exact,ddim",
            Spec(
                "sample-sweep",
                always=(SWEEP,),
                short=ONE_SAMPLE,
                files=("sweep/*exact*/samples.jsonl", "sweep/*ddim*/samples.jsonl"),
                check=check_sweep_jobs(2),
            ),
        ),
        (
            "python scripts/collect.py multirun/DATE/TIME multirun/DATE/TIME2",
            Spec(
                "collect-multiruns",
                subst=(
                    ("multirun/DATE/TIME2", "{out:sample-sweep}/sweep"),
                    ("multirun/DATE/TIME", "{out:benchmark-sweep}/sweep"),
                ),
                always=("--out", "{out}/table"),
                files=("table/results.md", "table/results.json"),
            ),
        ),
        (
            'python train.py +experiment=painting2real_dds input=painting.png prompt="a photo of a harbour at dusk" '
            'loss.source_prompt="an oil painting of a harbour at dusk"',
            Spec("painting2real-dds-sd", **sd_edit),
        ),
        (
            "python train.py +experiment=sketch2real_sds",
            Spec("sketch2real-sds", **shapes_run, short=NERF_SHORT, files=("run/model.obj",)),
        ),
        (
            "python train.py -m hydra/launcher=local +experiment=demo loss=sds,ours seed=0,1",
            Spec(
                "local-launcher",
                always=(SWEEP,),
                short=("trainer.max_steps=3", "hydra.launcher.cpu_jobs=2", *WORLD),
                runs=("sweep/*-*",),
                check=check_sweep_jobs(4),
            ),
        ),
        # --- scripts' docstrings
        (
            "python scripts/bench_speed.py --model tiny",
            Spec(
                "bench-speed-tiny",
                always=("--out", "{out}/speed.md"),
                short_flags=("--losses", "sds", "ours", "--batch-sizes", "1", "2", "--steps", "2", "--warmup", "1"),
                files=("speed.md",),
            ),
        ),
        (
            "python scripts/bench_speed.py --model tiny-sd3 --losses sds rfds",
            Spec(
                "bench-speed-tiny-sd3",
                always=("--out", "{out}/speed.md", "--cache", "{out}/cache"),
                short_flags=("--batch-sizes", "1", "--steps", "2", "--warmup", "1"),
                files=("speed.md",),
                output=("SD3Transformer2DModel", "step ÷ bound"),
            ),
        ),
        (
            "python scripts/bench_splat.py",
            Spec(
                "bench-splat",
                short_flags=("--count", "300", "--size", "24", "--rounds", "1"),
                output=("M pixel-Gaussian pairs a step", "| torch |"),
            ),
        ),
        ("python scripts/bench_splat.py --device cuda", Spec("bench-splat-cuda", skip="needs a GPU (--device cuda)")),
        (
            "python scripts/bench_splat.py --run RUN_DIR",
            Spec(
                "bench-splat-run",
                subst=(("RUN_DIR", "{out:gs-demo}/run"),),
                short_flags=("--size", "16", "--rounds", "1"),
                output=("| torch |",),
            ),
        ),
        (
            "python scripts/bench_speed.py --model sd3 --size 64 --losses sds --batch-sizes 1",
            Spec(
                "bench-speed-sd3",
                skip="builds SD3-medium's 2B-parameter transformer with random weights (~8 GB under "
                "~/.cache/scoredist): minutes and gigabytes on this shared CPU (measured in docs/results/speed.md)",
            ),
        ),
        (
            "python scripts/bench_speed.py --model sd21-base --size 64",
            Spec(
                "bench-speed-sd21",
                skip="builds an SD 2.1-base-sized UNet (865M parameters, ~3.5 GB under "
                "~/.cache/scoredist): minutes and gigabytes on this shared CPU",
            ),
        ),
        (
            "python scripts/bench_speed.py --model sd21-base --size 512 --device cuda --precision fp16 "
            "--batch-sizes 1 2 4 8 16",
            Spec("bench-speed-cuda", skip="needs a GPU (--device cuda)"),
        ),
        (
            "python scripts/benchmark.py preset=shapes trainer.max_steps=50 samples_per_prompt=2 out=bench/quick",
            Spec(
                "benchmark-quick",
                subst=(("out=bench/quick", "out={out}/bench"),),
                short_subst=(("trainer.max_steps=50", "trainer.max_steps=3"),),
                short=BENCH_SHORT,
                files=("bench/results.md", "bench/grids/*.png"),
            ),
        ),
        (
            'python scripts/benchmark.py "benchmark.rows=[ddim,sds,ours]"',
            Spec(
                "benchmark-rows",
                always=("out={out}/bench",),
                short=BENCH_SHORT,
                check=check_results_rows(["DDIM (lower bound)", "SDS", "Ours"]),
            ),
        ),
        (
            "python scripts/benchmark.py preset=coco prompt_file=captions.txt "
            "benchmark.metrics.reference_images=coco_val2014/ benchmark.metrics.clip=clip-vit-base-patch32/",
            Spec("coco-benchmark-2", skip=COCO),
        ),
        (
            "python scripts/benchmark.py --commands",
            Spec(
                "benchmark-commands",
                always=("out={out}/bench",),
                output=(
                    "python train.py -m +benchmark=shapes",
                    "python scripts/sample.py -m +benchmark=shapes",
                    "python scripts/collect.py",
                ),
            ),
        ),
        (
            "python scripts/benchmark.py --dry-run",
            Spec(
                "benchmark-dry-run",
                always=("out={out}/bench",),
                short=BENCH_SHORT,
                output=("| sds | 2 | 8 | 3 | 6 | 48 |", "| exact | 2 | 8 | – | 0 | 0 |", "training: about"),
                check=check_nothing_written("bench"),
            ),
        ),
        (
            "python scripts/benchmark.py --tune",
            Spec(
                "benchmark-tune",
                always=("out={out}/bench",),
                short=(
                    *BENCH_SHORT,
                    "benchmark.seeds=[0,1]",
                    "benchmark.rows=[sds,ours]",
                    "benchmark.tuning.points=[[2.0,1.0]]",
                    "benchmark.tuning.metric=fd_pixels",
                ),
                output=("| sds | 2 | 1 | `optimizer.lr=0.04 loss.guidance_scale=40` |", "written: "),
                files=("bench/tuning/tuning.md", "bench/tuning/results.md", "bench/tuning/sds_tuned/seed1/final.png"),
            ),
        ),
        (
            "python scripts/benchmark.py preset=shapes_full --dry-run",
            Spec(
                "benchmark-full-dry-run",
                always=("out={out}/bench",),
                short=(*BENCH_SHORT, "benchmark.rows=[exact,sds,ours]"),
                output=("rows × 3 seeds (0, 1, 2)", "| ours | 3 |"),
                output_full=("| sds | 3 | 720 | 500 | 1000 | 720000 |",),
            ),
        ),
        (
            "python scripts/benchmark.py preset=shapes_full --commands",
            Spec(
                "benchmark-full-commands",
                output=("python train.py -m +benchmark=shapes_full loss=sds benchmark.row=sds seed=0,1,2",),
            ),
        ),
        (
            "python scripts/collect.py benchmarks/2026-11-29_19-00-00-shapes",
            Spec(
                "collect-benchmark",
                subst=(("benchmarks/2026-11-29_19-00-00-shapes", "{out:benchmark}/bench"),),
                files=("{out:benchmark}/bench/results.md",),
            ),
        ),
        (
            "python scripts/collect.py multirun/2026-11-29/19-00-00 outputs/2026-11-29/19-30-00-ddim --out table/",
            Spec(
                "collect-table",
                subst=(
                    ("multirun/2026-11-29/19-00-00", "{out:benchmark-sweep}/sweep"),
                    ("outputs/2026-11-29/19-30-00-ddim", "{out:sample-benchmark}/run"),
                    ("--out table/", "--out {out}/table/"),
                ),
                files=("table/results.md",),
                check=lambda r: check_collected(r, ["DDIM (lower bound)", "SDS", "Ours"]),
            ),
        ),
        (
            "python scripts/collect.py DIR --baseline sds",
            Spec(
                "collect-baseline",
                subst=(("DIR", "{out:benchmark}/bench"),),
                always=("--out", "{out}/table"),
                files=("table/results.md",),
                output=("## SDS − method (paired",),
            ),
        ),
        (
            "python scripts/collect.py DIR benchmark.metrics.reference_images=coco_val2014/",
            Spec(
                "collect-coco",
                skip="needs COCO reference images (coco_val2014/) and a preset=coco run (GPU, SD weights)",
            ),
        ),
        (
            "python scripts/export.py outputs/2026-11-29/14-30-38-ours",
            Spec(
                "export-obj",
                subst=(("outputs/2026-11-29/14-30-38-ours", "{out:nerf-demo}/run"),),
                short_flags=("--resolution", "32"),
                files=("{out:nerf-demo}/run/model.obj",),
            ),
        ),
        (
            "python scripts/export.py RUN_DIR/checkpoints/last.pt --output cube.ply",
            Spec(
                "export-ply",
                subst=(("RUN_DIR", "{out:nerf-demo}/run"), ("cube.ply", "{out}/cube.ply")),
                short_flags=("--resolution", "32"),
                files=("cube.ply",),
            ),
        ),
        (
            "python scripts/illusion_figure.py",
            Spec(
                "illusion-figure", dashdash=True, short_flags=("--steps", "3"), short=WORLD, output=("check holds for",)
            ),
        ),
        (
            "python scripts/illusion_figure.py --seeds 0 1 2 --figure docs/illusion_shapes.png --out illusion.json",
            Spec(
                "illusion-figure-files",
                dashdash=True,
                subst=(
                    ("docs/illusion_shapes.png", "{out}/illusion_shapes.png"),
                    ("illusion.json", "{out}/illusion.json"),
                ),
                short_flags=("--seeds", "0", "--steps", "3"),
                short=WORLD,
                files=("illusion_shapes.png", "illusion.json"),
            ),
        ),
        (
            'python scripts/illusion_figure.py -- prompt="a green cone"',
            Spec(
                "illusion-figure-prompt",
                dashdash=True,
                short_flags=("--steps", "3"),
                short=WORLD,
                output=("a green cone",),
            ),
        ),
        (
            "python scripts/make_tiny_pipeline.py tiny-sd",
            Spec("make-tiny", subst=(("tiny-sd", "{out}/tiny-sd"),), files=("tiny-sd/model_index.json",)),
        ),
        (
            "python train.py guidance=sd guidance.pretrained=tiny-sd ...",
            Spec(
                "tiny-sd-dots",
                subst=((" ...", ""), ("tiny-sd", "{out:make-tiny}/tiny-sd")),
                always=(RUN,),
                short=(
                    "trainer.max_steps=3",
                    "logger=none",
                ),
                runs=("run",),
            ),
        ),
        (
            "python scripts/painting2real.py",
            Spec(
                "painting2real-script",
                dashdash=True,
                short_flags=("--sdedit-steps", "5"),
                short=("trainer.max_steps=5", *WORLD),
                output=("| ours |",),
            ),
        ),
        (
            "python scripts/painting2real.py --seeds 0 1 2 --figure docs/painting2real_shapes.png --out p2r.json",
            Spec(
                "painting2real-files",
                dashdash=True,
                subst=(
                    ("docs/painting2real_shapes.png", "{out}/painting2real_shapes.png"),
                    ("p2r.json", "{out}/p2r.json"),
                ),
                short_flags=("--seeds", "0", "--sdedit-steps", "5"),
                short=("trainer.max_steps=5", *WORLD),
                files=("painting2real_shapes.png", "p2r.json"),
            ),
        ),
        (
            "python scripts/painting2real.py --experiment painting2real -- input=painting.png "
            'prompt="a harbour at dusk"',
            Spec(
                "painting2real-sd-script",
                dashdash=True,
                subst=(("painting.png", "{file:painting}"),),
                always=("--figure", "{out}/row.png", *TINY_SD),
                short_flags=("--sdedit-steps", "2"),
                short=("trainer.max_steps=2",),
                files=("row.png",),
            ),
        ),
        (
            "python scripts/render.py outputs/2026-11-29/14-30-38-ours",
            Spec(
                "render-default",
                subst=(("outputs/2026-11-29/14-30-38-ours", "{out:nerf-demo}/run"),),
                short_flags=("--views", "2", "--size", "16"),
                files=("{out:nerf-demo}/run/render/views.png",),
            ),
        ),
        (
            "python scripts/render.py RUN_DIR --views 120 --size 256 --elevation 20 --out turntable/",
            Spec(
                "render-turntable",
                subst=(("RUN_DIR", "{out:nerf-demo}/run"), ("--out turntable/", "--out {out}/turntable/")),
                short_subst=(("--views 120", "--views 4"), ("--size 256", "--size 16")),
                files=("turntable/003.png", "turntable/views.png"),
            ),
        ),
        (
            'python scripts/render_shape.py "a red cube" ref.png --azimuth 30 --elevation 20 --resolution 32',
            Spec("render-ref", subst=(("ref.png", "{out}/ref.png"),), files=("ref.png",)),
        ),
        (
            'python scripts/render_shape.py "a red cube, blurry" blurry.png',
            Spec("render-blurry", subst=(("blurry.png", "{out}/blurry.png"),), files=("blurry.png",)),
        ),
        (
            "python scripts/sample.py +benchmark=shapes",
            Spec(
                "sample-benchmark",
                always=(RUN,),
                short=BENCH_SHORT,
                files=("run/samples.jsonl", "run/config.yaml", "run/samples/00000.png"),
            ),
        ),
        (
            'python scripts/sample.py guidance=shapes prompt="a red cube" samples_per_prompt=8 +sampler.num_steps=100',
            Spec(
                "sample-ddim",
                always=(RUN,),
                short_subst=(("+sampler.num_steps=100", "+sampler.num_steps=5"),),
                short=WORLD,
                check=check_samples(["a red cube"] * 8),
            ),
        ),
        (
            "python scripts/bench_prior.py",
            Spec("bench-prior", same_as="python scripts/bench_prior.py --out table.md", output=("| batch | N | t |",)),
        ),
        (
            "python scripts/bench_prior.py --train",
            Spec(
                "bench-prior-train",
                skip="times train.py in fresh processes before/after (a measurement: 29 s at its smallest on this "
                "machine); its tables run in `python scripts/bench_prior.py --out table.md`, train.py everywhere",
            ),
        ),
        (
            "python scripts/bench_prior.py --train --train-benchmark",
            Spec(
                "bench-prior-train-benchmark",
                short_flags=(
                    "--rows",
                    "4",
                    "--t",
                    "20",
                    "--repeats",
                    "1",
                    "--train-steps",
                    "2",
                    "--train-repeats",
                    "1",
                ),
                output=("+benchmark=shapes loss=sds trainer.max_steps=2 logger=none", "faster"),
                output_full=("+benchmark=shapes loss=sds logger=none",),
            ),
        ),
        (
            "python scripts/bench_prior.py --out table.md",
            Spec(
                "bench-prior-out",
                subst=(("table.md", "{out}/table.md"),),
                short_flags=("--rows", "4", "--t", "20", "mixed", "--repeats", "1"),
                output=("| batch | N | t |",),
                files=("table.md",),
            ),
        ),
        # --- train.py --help
        ("python train.py +experiment=demo", Spec("help-demo", same_as="make demo")),
        ('python train.py loss=ours prompt="a photo of a hamburger"', Spec("help-hamburger", skip=SD)),
        (
            "python train.py -m loss=sds,ours seed=0,1,2",
            Spec(
                "help-sweep",
                skip=SD + "; the same sweep on the exact prior is the README's "
                "`python train.py -m +experiment=demo loss=sds,ours seed=0,1`",
            ),
        ),
        (
            "python train.py trainer.resume=outputs/DATE/TIME-ours",
            Spec("help-resume", subst=(("outputs/DATE/TIME-ours", "{out:demo}/run"),), check=check_resumed("demo")),
        ),
    ]
    table = {}
    for text, spec in specs:
        assert text not in table, f"twice in the table: {text}"
        table[text] = spec
    return table


CAPTIONS = ["a photo of a hamburger", "a red cube on a table"]  # captions.txt (with a blank and a # line)


def check_collected(result, rows: list[str]) -> None:
    md = (result.out / "table" / "results.md").read_text()
    table = [x for x in md.splitlines() if x.startswith("| ") and not x.startswith("| method")]
    names = [x.strip("|").split("|")[0].strip() for x in table]
    assert set(rows) <= set(names), md


COMMANDS = _table()
BY_NAME = {spec.name: text for text, spec in COMMANDS.items()}
assert len(BY_NAME) == len(COMMANDS), "two table entries share a name"

# ---------------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------------


@functools.cache
def slurm_partition() -> str | None:
    """The local SLURM cluster's partition when it is up (../shared/slurm/start-local-slurm.sh), else None."""
    env_sh = Path("/tmp/slurm/env.sh")
    if not env_sh.exists() or shutil.which("sinfo") is None:
        return None
    done = subprocess.run(["bash", "-c", f". {env_sh} && sinfo -h -o %P"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return done.stdout.split()[0].rstrip("*")


def slurm_env() -> dict:
    done = subprocess.run(["bash", "-c", ". /tmp/slurm/env.sh && env -0"], capture_output=True, text=True)
    return dict(x.split("=", 1) for x in done.stdout.split("\0") if "=" in x)


# The forking server: imports what the commands import, then forks one child per command, which runs the script as
# __main__ (runpy) with the command's argv, cwd, environment and its own stdout/stderr files, and exits as python would
# (SystemExit's code, 1 and a traceback for an exception; atexit handlers and thread joins as usual).
FORKER = r"""
import importlib, json, os, runpy, sys, traceback
for name in sys.argv[1:]:
    importlib.import_module(name)
reply = os.fdopen(os.dup(1), "w", buffering=1)
print(json.dumps({"ready": os.getpid()}), file=reply)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        reply.close()
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdin = open(os.devnull)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = list(req["argv"])
        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
        code = 0
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.exit(code)
    print(json.dumps({"pid": pid}), file=reply)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), file=reply)
"""
PREIMPORT = (
    "torch",
    "numpy",
    "hydra",
    "omegaconf",
    "imageio.v3",
    "trimesh",
    "scoredist.train",
    "scoredist.runs",
    "scoredist.scripting",
    "scoredist.eval.benchmark",
    "scoredist.renderers.loading",
    "scoredist.renderers.mesh",
    "scoredist.guidance.tiny_pipeline",
    "scoredist.guidance.diffusers.sd",
    "scoredist.guidance.diffusers.sd3",
    "scoredist.guidance.diffusers.flux",
    "scoredist.guidance.diffusers.sdxl",
    "diffusers.models.embeddings",
    "peft",
)


class Forker:
    """One forking server per session (see FORKER)."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORKER, *PREIMPORT],
            cwd=ROOT,
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert "ready" in json.loads(self._read(300)), "the forking server did not start"

    def _read(self, timeout: float) -> str:
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError
        line = self.proc.stdout.readline()
        assert line, f"the forking server died (exit status {self.proc.poll()})"
        return line

    def run(self, argv: list[str], env: dict, timeout: float, folder: Path) -> tuple[int, str, str]:
        out, err = folder / ".stdout", folder / ".stderr"
        request = {"argv": argv, "env": env, "cwd": str(ROOT), "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self._read(60))["pid"]
        try:
            rc = json.loads(self._read(timeout))["rc"]
        except TimeoutError:
            os.killpg(pid, 9)
            json.loads(self._read(60))
            raise subprocess.TimeoutExpired(argv, timeout, stderr=err.read_bytes()) from None
        texts = out.read_text(errors="replace"), err.read_text(errors="replace")
        out.unlink()
        err.unlink()
        return rc, *texts

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def contract(run: Path) -> None:
    """What every finished train.py run folder holds (README: 'A run folder holds ...')."""
    assert run.is_dir(), f"no run folder {run}"
    present = sorted(p.name for p in run.iterdir())
    for name in ("final.png", "train.log", "config.yaml", "samples.jsonl"):
        assert (run / name).is_file(), f"{run} has no {name}: {present}"
    assert (run / "checkpoints" / "last.pt").is_file(), f"{run} has no checkpoints/last.pt: {present}"
    assert (run / "samples.jsonl").read_text().strip(), f"{run}/samples.jsonl is empty"
    assert not (run / ".lock").exists(), f"a finished run left {run}/.lock"


@dataclass
class Result:
    name: str
    text: str  # the command as documented
    argvs: list  # what ran
    rc: int
    output: str
    seconds: float
    out: Path
    as_written: bool
    ctx: Context


def _repo_state() -> dict[str, float]:
    """What a command could leave in the repository by mistake: outputs/, multirun/, wandb/, docs/ and new top-level
    entries (mtimes)."""
    state = {p.name: 0.0 for p in ROOT.iterdir()}
    for folder in ("outputs", "multirun", "wandb", "docs"):
        for p in (ROOT / folder).rglob("*") if (ROOT / folder).is_dir() else []:
            if "results" not in p.parts:  # docs/results is rewritten by other tools
                state[str(p.relative_to(ROOT))] = p.stat().st_mtime
    return state


class Context:
    """One session's runs: each command at most once, its tmp folder, the files the commands need."""

    def __init__(self, base: Path, tiny: Path, forker: Forker | None):
        self.base, self.tiny, self.forker = base, tiny, forker
        self.results: dict[str, Result] = {}
        self.rows: list[dict] = []

    def out(self, name: str) -> Path:
        return self.base / name

    def steps_of(self, name: str) -> int:
        import torch

        return torch.load(self.out(name) / "run" / "checkpoints" / "last.pt", weights_only=False)["step"]

    def file(self, name: str) -> Path:
        files = self.base / "files"
        files.mkdir(exist_ok=True)
        if name == "captions":
            path = files / "captions.txt"
            path.write_text(f"# captions of the test\n{CAPTIONS[0]}\n\n{CAPTIONS[1]}\n")
        elif name == "painting":
            path = files / "painting.png"
            shutil.copy(ROOT / "docs" / "painting2real_shapes_input.png", path)  # a 32×32 "painting"
        else:
            raise KeyError(name)
        return path

    def fill(self, text: str, own: str) -> str:
        def one(m):
            key, arg = m.group(1), m.group(2)
            if key == "out":
                return str(self.out(arg) if arg else self.out(own))
            if key == "tiny":
                return str(self.tiny)
            if key == "file":
                return str(self.file(arg))
            if key == "slurm_partition":
                return slurm_partition() or "none"
            if key.startswith("steps+"):
                return str(self.steps_of(arg) + int(key[6:]))
            raise KeyError(key)

        return re.sub(r"\{([a-z_]+(?:\+\d+)?)(?::([a-z0-9-]+))?\}", one, text)

    def needs(self, spec: Spec) -> list[str]:
        strings = [x for pair in spec.subst + spec.short_subst for x in pair] + list(spec.always) + list(spec.files)
        found = {m for s in strings for m in re.findall(r"\{(?:out|steps\+\d+):([a-z0-9-]+)\}", s)}
        return sorted(found - {spec.name})

    def argvs(self, text: str, spec: Spec) -> tuple[list[list[str]], bool]:
        """The steps to run and whether the command runs as written (placeholders and output folders aside)."""
        shortened = not FULL and bool(spec.short or spec.short_flags or spec.short_subst)
        for old, new in spec.subst + (() if FULL else spec.short_subst):
            assert old in text, f"{old!r} is not in {text!r}"
            text = text.replace(old, self.fill(new, spec.name))
        if spec.make:
            recipe = subprocess.run(
                ["make", "-n", "--no-print-directory", spec.make], cwd=ROOT, capture_output=True, text=True, check=True
            )
            lines = [x for x in recipe.stdout.splitlines() if x.strip()]
            # the recipe's last line is the command; an install step before it (a fresh venv) has run already
            assert lines[-1].startswith("$(PY)") or lines[-1].startswith(".venv/bin/python"), lines
            steps = [lines[-1]]
        else:
            steps = split_steps(text)
        argvs = [shlex.split(step) for step in steps]
        for argv in argvs:
            if argv[0] in ("python", ".venv/bin/python"):
                argv[0] = sys.executable
        last = argvs[-1]
        flags = [self.fill(a, spec.name) for a in ([] if FULL else spec.short_flags)]
        extra = [self.fill(a, spec.name) for a in (*spec.always, *(() if FULL else spec.short))]
        overrides = [a for a in extra if "=" in a and not a.startswith("-")]
        options = [a for a in extra if a not in overrides]
        if "--" in last:
            at = last.index("--")
            last[at:at] = flags + options
            last += overrides
        else:
            last += flags + options + (["--"] if spec.dashdash and overrides else []) + overrides
        return argvs, not shortened

    def run(self, text: str) -> Result:
        if text in self.results:
            return self.results[text]
        spec = COMMANDS[text]
        if spec.same_as:
            result = self.run(spec.same_as)
            self.results[text] = result
            return result
        for name in self.needs(spec):
            dep = self.run(BY_NAME[name])
            assert dep.rc == 0, f"`{dep.text}` (needed by this command) failed with exit status {dep.rc}"
        out = self.out(spec.name)
        out.mkdir(parents=True, exist_ok=True)
        argvs, as_written = self.argvs(text, spec)
        env = {**ENV, **slurm_env()} if spec.slurm else ENV
        before = _repo_state()
        start = time.perf_counter()
        output, rc = "", 0
        for argv in argvs:
            try:
                if self.forker is not None and argv[0] == sys.executable and argv[1].endswith(".py"):
                    rc, stdout, stderr = self.forker.run(argv[1:], env, TIMEOUT, out)
                else:
                    done = subprocess.run(
                        argv,
                        cwd=ROOT,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=TIMEOUT,
                        stdin=subprocess.DEVNULL,
                    )
                    rc, stdout, stderr = done.returncode, done.stdout, done.stderr
            except subprocess.TimeoutExpired as e:
                pytest.fail(f"`{shlex.join(argv)}` ran past {TIMEOUT} s:\n{(e.stderr or b'')[-3000:]!r}")
            output += stdout + stderr
            if rc != 0:
                break
        seconds = time.perf_counter() - start
        after = _repo_state()
        left = sorted(k for k, v in after.items() if k not in before or before[k] != v)
        result = Result(spec.name, text, argvs, rc, output, seconds, out, as_written, self)
        self.results[text] = result
        self.rows.append(summary_row(result))
        print(f"\n[{spec.name}] {seconds:.1f} s, exit {rc}: {shlex.join(argvs[-1][1:])}\n    {self.rows[-1]['result']}")
        assert not left, f"`{text}` wrote into the repository: {left}"
        return result


def key_result(result: Result) -> str:
    """What a command ended with, for the summary: nearest components and RMS of its runs, a script's check line."""
    parts = []
    for jsonl in sorted(result.out.rglob("samples.jsonl")):
        run = jsonl.parent
        try:
            rows = nearest_rows(run)
        except (ValueError, KeyError):
            continue
        for record in rows:
            if "nearest_component" not in record:
                continue
            comps = record["nearest_component"]
            rms = record.get("nearest_rms") or []
            caps = sorted(set(record.get("nearest_caption", comps)))
            variants = sorted(set(record.get("nearest_variant", [])))
            span = f"{min(rms):.2f}–{max(rms):.2f}" if len(rms) > 1 else (f"{rms[0]:.2f}" if rms else "?")
            parts.append(f"{run.name}: {'/'.join(caps)} ({'/'.join(variants)}) ×{len(comps)} RMS {span}")
    for line in result.output.splitlines():  # a script's own table (benchmark, painting2real, illusion) and verdict
        if line.startswith("check holds for") or (line.startswith("| ") and not line.startswith("|---")):
            parts.append(re.sub(r"\s+", " ", line.strip()))
    return "; ".join(parts) or "-"


def summary_row(result: Result) -> dict:
    return {
        "name": result.name,
        "command": result.text,
        "how": ("as written" if result.as_written else "shortened") + ("" if EXEC else ", forked"),
        "seconds": round(result.seconds, 1),
        "rc": result.rc,
        "result": key_result(result),
    }


@pytest.fixture(scope="session")
def ctx(tmp_path_factory, tiny_sd_path, run_summary):
    forker = None if EXEC else Forker()
    context = Context(tmp_path_factory.mktemp("readme"), Path(tiny_sd_path), forker)
    yield context
    run_summary.extend(context.rows)
    if forker is not None:
        forker.close()


# ---------------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------------


def paths(result: Result, pattern: str) -> list[Path]:
    pattern = result.ctx.fill(pattern, result.name)
    if pattern.startswith("/"):
        return sorted(Path("/").glob(pattern[1:]))
    return sorted(result.out.glob(pattern))


def check(spec: Spec, result: Result) -> None:
    tail = result.output[-4000:]
    assert result.rc == spec.rc, f"exit status {result.rc} (expected {spec.rc}):\n{tail}"
    if spec.rc == 0:
        assert "Traceback (most recent call last)" not in result.output, tail
    for pattern in spec.runs:
        runs = [p for p in paths(result, pattern) if p.is_dir()]
        assert runs, f"no run folder {pattern} under {result.out}"
        for run in runs:
            contract(run)
    for pattern in spec.files:
        assert paths(result, pattern), f"{pattern} missing after the command:\n{tail}"
    for text in spec.output + (spec.output_full if result.as_written else ()):
        assert text in result.output, f"{text!r} not in the output:\n{tail}"
    if spec.nearest is not None and result.as_written:
        records = nearest_rows(result.out / "run")
        assert len(records) == len(spec.nearest), records
        for want, record in zip(spec.nearest, records):
            got = record["nearest_caption"]
            want = list(want) if isinstance(want, tuple) else [want] * len(got)
            assert got == want, f"nearest components {record['nearest_component']}, expected {want}"
            if spec.variant is not None:
                assert set(record["nearest_variant"]) == {spec.variant}, record["nearest_component"]
            if spec.not_variant is not None:
                assert spec.not_variant not in record["nearest_variant"], record["nearest_component"]
    if spec.check is not None:
        spec.check(result)


def command_id(command: Command) -> str:
    text = re.sub(r"\s+", " ", command.text)
    return text if len(text) <= 100 else text[:97] + "..."


DOCUMENTED = documented_commands()


@pytest.mark.parametrize("command", DOCUMENTED, ids=command_id)
def test_documented_command(command: Command, ctx):
    """Runs one documented command as the table says and checks what the documentation says it produces."""
    spec = COMMANDS.get(command.text)
    if spec is None:
        pytest.fail(f"not in the table (tests/test_readme.py COMMANDS): {command.text!r} from {command.sources}")
    if spec.skip:
        pytest.skip(spec.skip)
    if spec.slurm and slurm_partition() is None:
        pytest.skip("needs a SLURM cluster: none is up here (bash ../shared/slurm/start-local-slurm.sh starts one)")
    check(spec, ctx.run(command.text))


def test_every_documented_command_is_in_the_table():
    documented = {c.text: c.sources for c in DOCUMENTED}
    unknown = {text: sources for text, sources in documented.items() if text not in COMMANDS}
    stale = sorted(text for text in COMMANDS if text not in documented)
    assert not unknown, "documented commands the table does not know (add them to COMMANDS):\n" + "\n".join(
        f"  {text!r}  ({', '.join(src)})" for text, src in unknown.items()
    )
    assert not stale, "table entries no documentation shows any more (remove them):\n" + "\n".join(stale)


def test_the_readme_has_its_commands():
    """The collector itself: the README's bash blocks give the commands the README shows (a broken parser would
    make the table test pass with nothing in it)."""
    readme = [text for _, text in readme_commands()]
    assert readme[:2] == ["make demo", "make test"] and len(readme) >= 25
    joined = next(t for t in readme if "loss=dds" in t)
    assert joined.endswith('loss.source_prompt="a blue cube"') and "\\" not in joined and "#" not in joined
    assert ["python scripts/make_tiny_pipeline.py tiny-sd", "python train.py guidance.pretrained=tiny-sd"] == (
        split_steps(next(t for t in readme if "&&" in t))
    )
    assert strip_comment("python x.py 'a # b'  # c") == "python x.py 'a # b'"


SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help_shows_its_examples(script, capsys, monkeypatch):
    """`python scripts/X.py --help` prints the script's own description with its example commands (in process:
    the script run as __main__, as the command line runs it)."""
    import runpy

    doc = script_docstring(ROOT / "scripts" / script).splitlines()
    starts = [int(source.rsplit(":", 1)[1]) for source, _ in python_lines(list(enumerate(doc, 1)), script)]
    examples = []  # the example lines as the docstring writes them, continuation lines included
    for start in starts:
        i = start - 1
        examples.append(re.sub(r"\s+", " ", doc[i].strip()))
        while doc[i].rstrip().endswith("\\"):
            i += 1
            examples.append(re.sub(r"\s+", " ", doc[i].strip()))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / script), "--help"])
    monkeypatch.chdir(ROOT)
    code = 0
    try:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    except SystemExit as done:
        code = done.code
    out = capsys.readouterr()
    text = re.sub(r"\s+", " ", out.out + out.err)
    assert code in (0, None), text[-2000:]
    first = script_docstring(ROOT / "scripts" / script).splitlines()[0]
    assert re.sub(r"\s+", " ", first) in text, f"--help does not show {script}'s own description:\n{text[:600]}"
    missing = [e for e in examples if e not in text]
    assert not missing, f"--help of {script} lacks its examples {missing}"
