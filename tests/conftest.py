"""Shared pytest setup: no test may reach the model hub or an experiment tracker; tiny models are built once."""

from __future__ import annotations

import json
import os

# Before anything imports huggingface_hub (it reads these once, at import): every load must come from disk.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
# Tiny models gain nothing from intra-op threads, and on a shared CPU OpenMP threads spin against each other: one
# thread made the LoRA test 0.8 s instead of 25 s on a loaded 2-core machine. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The shapes prior's rendered banks are cached on disk; the suite (and every command it starts) keeps its own cache in
# a folder of this session, never the user's ~/.cache.
_OWN_CACHE = None
if "SCOREDIST_CACHE_DIR" not in os.environ:
    import tempfile

    _OWN_CACHE = os.environ["SCOREDIST_CACHE_DIR"] = tempfile.mkdtemp(prefix="scoredist-test-cache-")

import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    # under pytest-xdist (make test: two workers) a worker hands its commands table to the controller, whose terminal
    # summary prints them all (pytest_testnodedown)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["run_summary"] = json.dumps(RUN_SUMMARY)
    if _OWN_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """A tiny random-weight SD folder (latent space, downscale 8, ε-prediction, 4×8×8 latents ↔ 64×64 RGB)."""
    from scoredist.guidance.tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_family_paths(tmp_path_factory) -> dict:
    """Tiny random-weight folders of the other diffusers families (SDXL, SD3, Flux; tiny_families.py), by family."""
    from scoredist.guidance.tiny_families import MAKERS

    return {family: make(tmp_path_factory.mktemp(f"tiny-{family}")) for family, make in MAKERS.items()}


@pytest.fixture(scope="session")
def tiny_camera_paths(tmp_path_factory) -> dict:
    """Tiny random-weight folders of the camera-conditioned families (tiny_camera_families.py): zero123 (also
    Stable-Zero123's layout) and mvdream."""
    from scoredist.guidance.tiny_camera_families import make_tiny_mvdream, make_tiny_zero123

    return {
        "zero123": make_tiny_zero123(tmp_path_factory.mktemp("tiny-zero123")),
        "mvdream": make_tiny_mvdream(tmp_path_factory.mktemp("tiny-mvdream")),
    }


@pytest.fixture(scope="session")
def tiny_paths(tiny_sd_path, tiny_family_paths, tiny_camera_paths) -> dict:
    """Every tiny folder by the placeholder a test command uses for it: {tiny} (SD), {tiny_sdxl}, {tiny_sd3}, ...,
    {tiny_zero123}, {tiny_mvdream}."""
    families = {**tiny_family_paths, **tiny_camera_paths}
    return {"tiny": tiny_sd_path, **{f"tiny_{family}": path for family, path in families.items()}}


@pytest.fixture(scope="session")
def tiny_sd_v_path(tmp_path_factory):
    """The same architecture with prediction_type="v_prediction"."""
    from scoredist.guidance.tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd-v"), prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_pixel_path(tmp_path_factory):
    """A tiny pixel-space folder: no VAE, the UNet works on 3×16×16 RGB in [−1, 1]."""
    from scoredist.guidance.tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-pixel"), pixel_space=True)


# Rows {name, command, how, seconds, rc, result} that tests/test_readme.py and tests/test_end_to_end.py add for every
# command or run they make (the `run_summary` fixture); the session's terminal summary prints them, so `make test`
# shows which README commands ran, how long each took and what it became.
RUN_SUMMARY: list[dict] = []


@pytest.fixture(scope="session")
def run_summary():
    return RUN_SUMMARY


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist, in the controller: a worker's rows of the commands table."""
    RUN_SUMMARY.extend(json.loads(getattr(node, "workeroutput", {}).get("run_summary", "[]")))


def pytest_terminal_summary(terminalreporter):
    """The commands table at the end of the session's output; with SCOREDIST_README_TIMES=PATH also written to PATH
    as a markdown table (the README's times and results are read from it)."""
    if not RUN_SUMMARY:
        return
    lines = ["| command | how | s | exit | result |", "|---|---|---|---|---|"]
    for row in RUN_SUMMARY:
        cells = [row["command"], row["how"], f"{row['seconds']:.1f}", str(row["rc"]), row["result"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    total = sum(row["seconds"] for row in RUN_SUMMARY)
    text = "\n".join(lines) + f"\n\n{len(RUN_SUMMARY)} commands, {total:.0f} s in all\n"
    terminalreporter.write_sep("=", "README, conf and script commands, and whole runs")
    terminalreporter.write(text)
    path = os.environ.get("SCOREDIST_README_TIMES")
    if path:
        with open(path, "a") as f:
            f.write(text)
