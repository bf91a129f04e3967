"""Whole runs to their final files and a clean exit: every renderer × guidance pairing the configs allow (an invalid
pairing fails at once with one clear line, exit status 2), and every +experiment overlay of conf/experiment/.

Each run goes through train.py's command line as `python train.py ...` runs it — train.py executed as __main__
(runpy) with sys.argv set, so Hydra creates the run folder, writes train.log and turns errors into exit statuses —
but in this process, to save each run the interpreter's and torch's start-up. Settings are short (a few steps, small
renders, the 16×16 shapes world, the tiny SD pipeline in place of SD weights).

An overlay that a documented command already runs end to end (tests/test_readme.py: README, conf and script
examples, each checked against the same run-folder contract) is not run again here: OVERLAYS names that command,
and a test checks that the command is in the table, runs here and is checked as a run folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import runpy
import sys
import time
import traceback
from pathlib import Path

import pytest

from tests.test_readme import COMMANDS, ROOT, WORLD, contract

CONF = ROOT / "conf"
RGBA = ROOT / "assets" / "references" / "yellow_torus_rgba.png"  # an RGBA reference (alpha: the object's mask)
TINY_SD = ("guidance.pretrained={tiny}", "renderer.height=64", "renderer.width=64")
SHORT = ("trainer.max_steps=3", "trainer.image_every=1", "trainer.log_every=1", "trainer.device=cpu", "logger=none")
NERF_SMALL = (
    "renderer.height=16",
    "renderer.width=16",
    "renderer.stages=[]",
    "renderer.num_levels=4",
    "renderer.log2_hashmap_size=10",
    "renderer.max_resolution=32",
    "renderer.num_samples=16",
    "renderer.mesh_resolution=16",
    "renderer.mesh_threshold=5.0",
    "renderer.turntable_views=2",
    "renderer.eval_views=2",
)

GS_SMALL = (
    "renderer.height=16",
    "renderer.width=16",
    "renderer.num_points=64",
    "renderer.densify_every=2",
    "renderer.mesh_resolution=16",
    "renderer.mesh_threshold=0.05",
    "renderer.turntable_views=2",
    "renderer.eval_views=2",
)

# ---------------------------------------------------------------------------------------------------------------------
# train.py's command line, in process
# ---------------------------------------------------------------------------------------------------------------------

LOGGERS = ("scoredist", "scoredist.tracebacks", "py.warnings")


def cli(*args: str) -> tuple[int, str]:
    """`python train.py ARGS` in this process: its exit status and everything it printed. What Hydra leaves behind
    (its logging configuration, the job's HydraConfig, the global Hydra) is undone afterwards, so later tests see
    the process they started with."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    root = logging.getLogger()
    loggers = {n: logging.getLogger(n).__dict__ for n in LOGGERS}
    saved = (list(root.handlers), root.level, {n: {**d, "handlers": list(d["handlers"])} for n, d in loggers.items()})
    hydra_config = HydraConfig.instance().cfg  # the running job's config: set by a Hydra run, read by train()
    GlobalHydra.instance().clear()
    buffer = io.StringIO()
    argv, code = sys.argv, 0
    sys.argv = [str(ROOT / "train.py"), *args]
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception:  # what python would print before exiting with status 1
        buffer.write(traceback.format_exc())
        code = 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = hydra_config
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, state in saved[2].items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if handler not in state["handlers"]:
                    handler.close()
            logger.__dict__.update(state)
        logging.captureWarnings(False)
    return code, buffer.getvalue()


def run(tmp_path: Path, tiny: Path | dict, run_summary, name: str, *args: str) -> tuple[int, str, Path]:
    """tiny: the tiny SD folder ({tiny} in args), or a dict of folders by placeholder name (the tiny_paths fixture)."""
    folder = tmp_path / "run"
    for key, path in (tiny if isinstance(tiny, dict) else {"tiny": tiny}).items():
        args = tuple(a.replace("{" + key + "}", str(path)) for a in args)
    args = args + (f"hydra.run.dir={folder}",)
    start = time.perf_counter()
    code, output = cli(*args)
    seconds = time.perf_counter() - start
    line = next((x for x in output.splitlines() if x.startswith("error:")), "")
    print(f"\n[{name}] {seconds:.1f} s, exit {code}: train.py {' '.join(args)}\n    {line}")
    run_summary.append(
        {
            "name": name,
            "command": "train.py " + " ".join(args[:-1]),
            "how": "in process",
            "seconds": round(seconds, 1),
            "rc": code,
            "result": line or "-",
        }
    )
    return code, output, folder


# ---------------------------------------------------------------------------------------------------------------------
# Renderer × guidance
# ---------------------------------------------------------------------------------------------------------------------

RENDERERS = {
    "image-latent": ("renderer=image", "renderer.mode=latent"),
    "image-rgb": ("renderer=image", "renderer.mode=rgb"),
    "nerf": ("renderer=nerf", *NERF_SMALL),
    "nerf_threestudio": ("renderer=nerf_threestudio", *NERF_SMALL),
    "points": ("renderer=points", "renderer.num_points=64"),
    "gaussians": ("renderer=gaussians", *GS_SMALL),
}
GUIDANCES = {
    "sd": ("guidance=sd", "guidance.pretrained={tiny}"),
    "sdxl": ("guidance=sdxl", "guidance.pretrained={tiny_sdxl}"),
    "sd3": ("guidance=sd3", "guidance.pretrained={tiny_sd3}"),
    "flux": ("guidance=flux", "guidance.pretrained={tiny_flux}"),
    "shapes": ("guidance=shapes", "prompt=a red cube", *WORLD),
    "shapes_flow": ("guidance=shapes_flow", "prompt=a red cube", *WORLD),
    # one view per object: any renderer's cameras per step fill whole groups (groups of 2+: test_multiview_prior.py)
    "shapes_multiview": ("guidance=shapes_multiview", "prompt=a red cube", *WORLD, "guidance.views_per_object=1"),
    "shapes_image": ("guidance=shapes_image", "prompt=a torus", *WORLD),
    "points2d": ("guidance=points2d", "prompt=a ring"),
    "zero123": ("guidance=zero123", "guidance.pretrained={tiny_zero123}", f"guidance.reference={RGBA}"),
    "stable_zero123": ("guidance=stable_zero123", "guidance.pretrained={tiny_zero123}", f"guidance.reference={RGBA}"),
    # one view per object here (any cameras per step); groups of four: +experiment=t23d_mvdream below
    "mvdream": ("guidance=mvdream", "guidance.pretrained={tiny_mvdream}", "guidance.views_per_object=1"),
}
# the pairings the code supports, and the files a run of each ends with besides the run-folder contract
VALID = {
    ("image-latent", "sd"): ("progress.png", "progress.mp4"),
    ("image-rgb", "sd"): ("progress.png", "progress.mp4"),
    ("nerf", "sd"): ("views.png", "turntable.mp4", "model.obj"),
    ("image-latent", "shapes"): ("eval.json", "progress.png", "progress.mp4"),
    ("image-rgb", "shapes"): ("eval.json", "progress.png", "progress.mp4"),
    ("nerf", "shapes"): ("eval.json", "views.png", "turntable.mp4", "model.obj"),
    ("nerf_threestudio", "sd"): ("views.png", "turntable.mp4", "model.obj"),
    ("nerf_threestudio", "shapes"): ("eval.json", "views.png", "turntable.mp4", "model.obj"),
    ("gaussians", "sd"): ("views.png", "turntable.mp4", "gaussians.ply", "model.obj"),
    ("gaussians", "shapes"): ("eval.json", "views.png", "turntable.mp4", "gaussians.ply", "model.obj"),
    ("gaussians", "shapes_flow"): ("eval.json", "views.png", "gaussians.ply"),
    ("nerf", "shapes_multiview"): ("eval.json", "views.png", "model.obj"),
    ("nerf_threestudio", "shapes_multiview"): ("eval.json", "views.png"),
    ("gaussians", "shapes_multiview"): ("eval.json", "views.png", "gaussians.ply"),
    ("nerf", "shapes_image"): ("eval.json", "views.png"),
    ("nerf_threestudio", "shapes_image"): ("eval.json",),
    ("gaussians", "shapes_image"): ("eval.json", "gaussians.ply"),
    ("points", "points2d"): ("particles.png", "progress.png"),
    **{
        (renderer, family): files
        for family in ("sdxl", "sd3", "flux")
        for renderer, files in {
            "image-latent": ("progress.png", "progress.mp4"),
            "image-rgb": ("progress.png",),
            "nerf": ("views.png", "turntable.mp4", "model.obj"),
            "nerf_threestudio": ("views.png",),
            "gaussians": ("views.png", "gaussians.ply"),
        }.items()
    },
    ("image-latent", "shapes_flow"): ("eval.json", "progress.png"),
    ("image-rgb", "shapes_flow"): ("eval.json", "progress.png"),
    ("nerf", "shapes_flow"): ("eval.json", "views.png", "turntable.mp4", "model.obj"),
    ("nerf_threestudio", "shapes_flow"): ("eval.json", "views.png"),
    **{
        (renderer, family): files
        for family in ("zero123", "stable_zero123", "mvdream")
        for renderer, files in {
            "nerf": ("views.png", "turntable.mp4", "model.obj"),
            "nerf_threestudio": ("views.png",),
            "gaussians": ("views.png", "gaussians.ply"),
        }.items()
    },
}
PAIRS = [(r, g) for r in RENDERERS for g in GUIDANCES]


def test_the_pairings_cover_every_renderer_and_guidance_option():
    """A new renderer or guidance YAML must be classified here (and run) before it ships."""
    assert {p.stem for p in (CONF / "renderer").glob("*.yaml")} == {r.split("-")[0] for r in RENDERERS}
    assert {p.stem for p in (CONF / "guidance").glob("*.yaml")} == set(GUIDANCES)
    assert set(VALID) <= set(PAIRS)


@pytest.mark.parametrize("renderer,guidance", [p for p in PAIRS if p in VALID], ids=lambda x: x)
def test_a_valid_pairing_runs_to_its_final_files(renderer, guidance, tmp_path, tiny_paths, run_summary):
    code, output, folder = run(
        tmp_path,
        tiny_paths,
        run_summary,
        f"{renderer}×{guidance}",
        *RENDERERS[renderer],
        *GUIDANCES[guidance],
        *SHORT,
    )
    assert code == 0, output[-4000:]
    contract(folder)
    for name in VALID[(renderer, guidance)]:
        assert (folder / name).is_file(), f"{name} missing: {sorted(p.name for p in folder.iterdir())}"


@pytest.mark.parametrize("loss", ["sds", "ours"])
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_every_diffusers_family_distils_twenty_steps(family, loss, tmp_path, tiny_paths, run_summary):
    """Each tiny backbone through train.py: 20 steps of SDS and of ours (its two stages: 10 + 10), final files, and a
    finite loss at every logged step."""
    code, output, folder = run(
        tmp_path,
        tiny_paths,
        run_summary,
        f"{family}×{loss}",
        f"guidance={family}",
        "guidance.pretrained={tiny_" + family + "}",
        f"loss={loss}",
        "renderer=image",
        "renderer.height=64",
        "renderer.width=64",
        "trainer.max_steps=20",
        "trainer.log_every=1",
        "trainer.device=cpu",
        "logger=none",
        "prompt=a red cube",
    )
    assert code == 0, output[-4000:]
    contract(folder)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "step" in r]
    assert max(steps) == 20, steps
    assert all(math.isfinite(v) for r in records for v in r.values() if isinstance(v, float))


@pytest.mark.parametrize("renderer,guidance", [p for p in PAIRS if p not in VALID], ids=lambda x: x)
def test_an_invalid_pairing_fails_at_once_with_one_clear_line(renderer, guidance, tmp_path, tiny_paths, run_summary):
    """Exit status 2, one `error:` line and no traceback, no run folder left behind, and the line says that this
    renderer does not go with this guidance: it names the renderer (renderer=NAME) and the guidance to use instead
    (guidance=...), as renderer=nerf's own check does."""
    start = time.perf_counter()
    code, output, folder = run(
        tmp_path,
        tiny_paths,
        run_summary,
        f"{renderer}×{guidance}",
        *RENDERERS[renderer],
        *GUIDANCES[guidance],
        *SHORT,
    )
    assert code == 2, f"exit status {code}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    errors = [x for x in output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert not folder.exists(), f"a failed start left {sorted(p.name for p in folder.iterdir())}"
    assert time.perf_counter() - start < 60
    name = renderer.split("-")[0]
    assert re.search(rf"renderer={name}\b", errors[0]) and "guidance=" in errors[0], (
        f"the error does not say that renderer={name} does not go with guidance={guidance}: {errors[0]}"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------------------------------------


def documented(text: str) -> tuple[str, str]:
    return ("documented", text)


def short_run(*args: str, files: tuple = ()) -> tuple[str, tuple, tuple]:
    return ("run", args, files)


T2I = (*TINY_SD, "trainer.max_steps=2", "trainer.device=cpu", "logger=none")
T23D = (
    "prompt=a hamburger",
    "guidance.pretrained={tiny}",
    *NERF_SMALL,
    "renderer.num_samples=32",
    "trainer.max_steps=2",
    "trainer.device=cpu",
    "logger=none",
)
T23D_FILES = ("views.png", "turntable.mp4", "model.obj")
I23D_FILES = ("views.png", "turntable.mp4")  # no surface at the small runs' mesh threshold after 20 steps
TWENTY = ("trainer.max_steps=20", "trainer.device=cpu", "logger=none")  # the camera families' overlays: 20 steps
OVERLAYS = {
    "demo": documented("make demo"),
    "illusion": documented("python train.py +experiment=illusion guidance.pretrained=/path/to/sd-2-1-base"),
    "illusion_shapes": documented("python train.py +experiment=illusion_shapes"),
    "nerf_demo": documented("python train.py +experiment=nerf_demo"),
    "gs_demo": documented("python train.py +experiment=gs_demo"),
    "janus_shapes": documented("python train.py +experiment=janus_shapes"),
    "i23d_shapes": documented("python train.py +experiment=i23d_shapes"),
    "t23d_ours_gs": short_run(
        "prompt=a hamburger",
        "guidance.pretrained={tiny}",
        *GS_SMALL,
        "renderer.stages=[]",
        "trainer.max_steps=2",
        "trainer.device=cpu",
        "logger=none",
        files=("views.png", "gaussians.ply", "model.obj"),
    ),  # fmt: skip
    "nerf_demo_sds": short_run(*WORLD, "trainer.max_steps=4", "renderer.mesh_resolution=32", files=("model.obj",)),
    "painting2real": documented(
        'python train.py +experiment=painting2real input=painting.png prompt="a photo of a harbour at dusk" '
        'loss.source_prompt="an oil painting of a harbour at dusk"'
    ),
    "painting2real_dds": documented(
        'python train.py +experiment=painting2real_dds input=painting.png prompt="a photo of a harbour at dusk" '
        'loss.source_prompt="an oil painting of a harbour at dusk"'
    ),
    "irfds_shapes": documented("python train.py +experiment=irfds_shapes"),
    "painting2real_shapes": documented("python train.py +experiment=painting2real_shapes"),
    "painting2real_shapes_dds": short_run(*WORLD, "trainer.max_steps=3", files=("edit.png", "eval.json")),
    "points_bridge": documented("python train.py +experiment=points_bridge"),
    "sketch2real": documented("python train.py +experiment=sketch2real"),
    "sketch2real_sds": documented("python train.py +experiment=sketch2real_sds"),
    "t23d_ours": short_run(*T23D, files=T23D_FILES),
    "t23d_ism": short_run(*T23D, files=T23D_FILES),
    "t23d_sdi": short_run(*T23D, files=T23D_FILES),
    "t23d_esd": short_run(*T23D, files=T23D_FILES),
    "t23d_asd": short_run(*T23D, files=T23D_FILES),
    "i23d_zero123": short_run(
        f"image={RGBA}",
        "guidance.pretrained={tiny_zero123}",
        *NERF_SMALL,
        "trainer.batch_size=2",
        *TWENTY,
        files=I23D_FILES,
    ),
    "i23d_stable_zero123": short_run(
        f"image={RGBA}",
        "guidance.pretrained={tiny_zero123}",
        *NERF_SMALL,
        "trainer.batch_size=2",
        *TWENTY,
        files=I23D_FILES,
    ),
    "t23d_mvdream": short_run(
        "guidance.pretrained={tiny_mvdream}", *NERF_SMALL, "trainer.batch_size=4", *TWENTY, files=T23D_FILES
    ),
    "t2i_asd": short_run(*T2I),
    "t2i_csd": short_run(*T2I),
    "t2i_esd": short_run(*T2I),
    "t2i_ism": short_run(*T2I),
    "t2i_sdi": short_run(*T2I),
    "t2i_nfsd": short_run(*T2I),
    "t2i_ours": documented(
        "python train.py +experiment=t2i_ours prompt_file=captions.txt samples_per_prompt=2 trainer.batch_size=8"
    ),
    "t2i_rfds": short_run("guidance.pretrained={tiny_sd3}", *T2I[1:]),
    "t2i_sds": short_run(*T2I),
    "t2i_vsd": short_run(*T2I),
}


def test_every_overlay_is_run_here_or_by_a_documented_command():
    assert set(OVERLAYS) == {p.stem for p in (CONF / "experiment").glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(k for k, v in OVERLAYS.items() if v[0] == "documented"))
def test_overlay_run_by_a_documented_command(name):
    """Not run again here: tests/test_readme.py runs this command (see its COMMANDS entry) and checks its run folder
    against the same contract."""
    text = OVERLAYS[name][1]
    spec = COMMANDS[text]
    assert spec.skip is None and not spec.slurm, f"{text!r} does not run in tests/test_readme.py: {spec.skip}"
    expanded = "python train.py +experiment=demo" if spec.make == "demo" else text
    assert f"+experiment={name}" in expanded.split(), text
    assert spec.runs, f"tests/test_readme.py does not check {text!r}'s run folder"


@pytest.mark.parametrize("name", sorted(k for k, v in OVERLAYS.items() if v[0] == "run"))
def test_overlay_runs_to_its_final_files(name, tmp_path, tiny_paths, run_summary):
    _, args, files = OVERLAYS[name]
    code, output, folder = run(tmp_path, tiny_paths, run_summary, name, f"+experiment={name}", *args)
    assert code == 0, output[-4000:]
    contract(folder)
    for file in files:
        assert (folder / file).is_file(), f"{file} missing: {sorted(p.name for p in folder.iterdir())}"
