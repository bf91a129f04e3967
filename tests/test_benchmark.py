"""The benchmark at a tiny size: the paper's seven rows and the exact-sample floor as ordinary run folders, the same
table from collect.py, unfinished folders skipped with a warning, preset=coco refusing to start without its inputs,
and the multirun path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from scoredist.eval.benchmark import Benchmark, collect_from, compose_run, presets
from scoredist.eval.collect import collect_runs
from scoredist.eval.comparison import CURVE_METRICS
from scoredist.images import save_png

ROOT = Path(__file__).resolve().parents[1]
# 2 prompts × 2 samples × 3 steps on a 16×16 shapes world with 2 views per caption; no feature network (the
# Inception path has its own test), no tracker.
TINY = [
    "prompt=[a red cube,a blue sphere]",
    "samples_per_prompt=2",
    "trainer.max_steps=3",
    "trainer.batch_size=4",
    "trainer.image_every=3",
    "guidance.resolution=16",
    "guidance.num_azimuths=2",
    "guidance.elevations=[15.0]",
    "guidance.supersample=1",
    "benchmark.lower_bound.num_steps=5",
    "benchmark.metrics.feature_net=null",
    "logger=none",
    "benchmark.seeds=[0,1]",
    "benchmark.curve_steps=[2]",
    "benchmark.timing.rounds=1",
    "benchmark.timing.steps=1",
]
ROWS = ["Exact samples (floor)", "DDIM (lower bound)", "SDS", "NFSD", "CSD", "VSD", "VSD, exact source", "Ours",
        "Bridge (k = 4)"]  # fmt: skip
METHODS = ["exact", "ddim", "sds", "nfsd", "csd", "vsd", "vsd_exact", "ours", "bridge"]


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    result = Benchmark("shapes", TINY, out).run()
    return out, result


def table_rows(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()[2:] if line]


def first_table(markdown: str) -> str:
    """The first Markdown table of a report (its header line starts with "| method")."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_every_preset_composes_and_its_metrics_instantiate(tmp_path):
    assert presets() == ["coco", "shapes", "shapes_full"]
    for preset in presets():
        coco = [f"benchmark.metrics.reference_images={tmp_path}", "benchmark.metrics.clip=none"]
        cfg = compose_run(preset, coco if preset == "coco" else [])
        assert set(cfg.benchmark.rows) <= set(cfg.benchmark.methods), preset
        for method in cfg.benchmark.rows:  # every row's overrides compose
            compose_run(preset, [str(o) for o in cfg.benchmark.methods[method]])
        if preset.startswith("shapes"):
            metrics = instantiate(cfg.benchmark.metrics, feature_net=None)
            assert type(metrics).__name__ == "ShapesMetrics"
        else:
            with pytest.raises(Exception, match="has no images") as refused:  # an empty folder, refused by name
                instantiate(cfg.benchmark.metrics)
            assert isinstance(refused.value.__cause__, FileNotFoundError)  # a user error: one line on the CLI
            save_png(torch.rand(1, 3, 8, 8), tmp_path / "0.png")
            assert type(instantiate(cfg.benchmark.metrics)).__name__ == "ZeroShotFID"


def test_the_tiny_benchmark_writes_the_table_with_intervals_differences_curves_and_the_floor(tiny_benchmark):
    out, result = tiny_benchmark
    md = (out / "results.md").read_text()
    assert [r[0] for r in table_rows(first_table(md))] == ROWS
    data = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in data["rows"]] == ROWS
    assert data["design"]["samples_per_caption"] == [4, 4] and data["design"]["seeds"] == [0, 1]
    for r in data["rows"]:
        fd, fid = r["metrics"]["fd_pixels"], r["metrics"]["fidelity"]
        assert fd["low"] <= fd["estimate"] <= fd["high"] and fd["estimate"] > 0
        assert 0 <= fid["low"] <= fid["estimate"] <= fid["high"] <= 1
        assert (out / data["grids"][r["method"]]).is_file()
        assert set(r["per_seed"]) == {"0", "1"}
        if r["method"] != "ours":  # every method against ours, paired
            assert set(r["difference_vs_ours"]) == set(data["keys"])
    cost = {r["method"]: r["guidance_rows_per_sample"] for r in data["rows"]}
    assert cost["exact"] == 0 and cost["ddim"] == 5 and cost["sds"] == 2 * 3  # counted, not assumed
    timing = json.loads((out / "timing.json").read_text())
    assert set(timing) == set(METHODS[2:]) and all(v > 0 for v in timing.values())
    # exact samples of the prompt's own distribution: every sample shows its caption, and the floor is the lowest FD
    rows = {r["method"]: r["metrics"] for r in data["rows"]}
    assert rows["exact"]["fidelity"]["estimate"] == 1.0
    assert rows["exact"]["fd_pixels"]["estimate"] < min(rows[m]["fd_pixels"]["estimate"] for m in METHODS[2:])
    # curves: one PNG per metric; a trained row has a point per snapshot step and the end, a sampled row one
    assert [Path(p).name for p in data["curve_plots"]] == [f"{k}.png" for k in CURVE_METRICS]
    assert all((out / p).is_file() for p in data["curve_plots"])
    assert [p["step"] for p in data["curves"]["sds"]["points"]] == [2, 3]
    assert [p["guidance_rows"] for p in data["curves"]["sds"]["points"]] == [4.0, 6.0]
    assert len(data["curves"]["exact"]["points"]) == 1
    for method in METHODS:
        for seed in (0, 1):
            run = out / method / f"seed{seed}"
            assert (run / "samples.jsonl").is_file() and OmegaConf.load(run / "config.yaml").seed == seed
    assert (out / "benchmark.yaml").is_file() and "benchmark.py" in (out / "command.txt").read_text()
    assert "### What is significant" in md and "Ours vs SDS:" in md


def test_collect_on_the_same_folders_gives_the_same_table(tiny_benchmark, tmp_path):
    out, result = tiny_benchmark
    again = collect_from([out], [], tmp_path / "table")
    assert table_rows(again["table"]) == table_rows(result["table"])


def test_rerunning_adds_nothing_twice(tiny_benchmark, capsys):
    out, _ = tiny_benchmark
    before = {p: p.stat().st_mtime_ns for p in out.rglob("samples.jsonl")}
    timing = (out / "timing.json").read_text()
    Benchmark("shapes", [*TINY, "benchmark.rows=[ddim,sds]"], out).run()
    said = capsys.readouterr().out
    assert "sds seed 0: already finished" in said and "sds seed 1: already finished" in said
    assert {p: p.stat().st_mtime_ns for p in out.rglob("samples.jsonl")} == before
    assert (out / "timing.json").read_text() == timing
    for run in out.glob("*/seed*"):
        snaps = run / "snapshots.jsonl"
        if snaps.exists():
            assert len(snaps.read_text().splitlines()) == 4  # one step × 4 samples, written once


def test_a_plain_rerun_of_an_interrupted_benchmark_continues_it(tmp_path, monkeypatch, capsys):
    """`python scripts/benchmark.py` stopped by Ctrl-C says "rerun the same command": the same command (no out=)
    continues that folder and says so; other settings, or a finished benchmark, start a new one."""
    import types

    import scoredist.train
    from scoredist.eval.benchmark import continue_or_start

    script = load_benchmark_script()
    monkeypatch.chdir(tmp_path)
    command = [*TINY, "benchmark.rows=[exact,sds]"]
    with monkeypatch.context() as m:  # Ctrl-C in the sds row: train() returns an interrupted run
        m.setattr(scoredist.train, "train", lambda cfg: types.SimpleNamespace(interrupted=True, stopped_by="SIGINT"))
        with pytest.raises(SystemExit) as stop:
            script.main(command)
    assert stop.value.code == 130
    (first,) = (tmp_path / "outputs" / "benchmarks").iterdir()
    assert f"rerun the same command to continue outputs/benchmarks/{first.name}" in capsys.readouterr().out
    other = continue_or_start("shapes", [*command, "trainer.max_steps=2"])  # other settings: not this folder
    assert other.out_dir != Path("outputs/benchmarks") / first.name and capsys.readouterr().out == ""

    script.main(command)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"continuing outputs/benchmarks/{first.name}: 1 of 2 rows done"
    assert "exact seed 0: already finished" in out
    assert [p.name for p in (tmp_path / "outputs" / "benchmarks").iterdir()] == [first.name]
    assert len((first / "sds" / "seed1" / "samples.jsonl").read_text().splitlines()) == 4
    assert (first / "results.md").is_file()
    finished = continue_or_start("shapes", command)  # a finished benchmark is measured again, in a new folder
    assert finished.out_dir != Path("outputs/benchmarks") / first.name and "continuing" not in capsys.readouterr().out


def load_benchmark_script():
    sys.path.insert(0, str(ROOT / "scripts"))
    import benchmark as script

    return script


def test_a_missing_run_folder_is_skipped_with_a_warning(tiny_benchmark, tmp_path):
    out, _ = tiny_benchmark
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("wandb"))
    for seed in (0, 1):
        lines = (copy / "vsd" / f"seed{seed}" / "samples.jsonl").read_text().splitlines()
        (copy / "vsd" / f"seed{seed}" / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n")  # killed half-way
    shutil.rmtree(copy / "csd")
    with pytest.warns(UserWarning, match=r"skipping unfinished run .*vsd/seed0: 2 of 4 samples finished"):
        result = collect_from([copy], [], copy)
    assert [r[0] for r in table_rows(result["table"])] == [r for r in ROWS if r not in ("VSD", "CSD")]


def test_collect_on_one_sample_per_run_writes_the_table_and_says_why_the_distances_are_missing(tmp_path, capsys):
    """The README's sweep (+experiment=demo loss=sds,ours: one prompt, one sample per run) at a tiny size: collect.py
    writes the columns one sample allows and a footnote per Fréchet column saying what to rerun with."""
    import importlib.util

    from scoredist.scripting import compose_train
    from scoredist.train import train

    tiny_world = ["guidance.resolution=16", "guidance.num_azimuths=2", "guidance.elevations=[15.0]"]
    for loss in ("sds", "ours"):
        cfg = compose_train(["+experiment=demo", f"loss={loss}", "trainer.max_steps=3", *tiny_world])
        cfg.trainer.run_dir = str(tmp_path / "sweep" / loss)
        train(cfg)
    spec = importlib.util.spec_from_file_location("collect", ROOT / "scripts" / "collect.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "table")])  # the shapes metrics, Inception included

    md = (tmp_path / "table" / "results.md").read_text()
    table, notes = md.split("\n\n")[1], md.split("\n\n")[2].splitlines()
    rows = {r[0]: r for r in table_rows(table)}
    assert list(rows) == ["SDS", "Ours"]
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    for row in rows.values():
        cells = dict(zip(header, row))
        assert cells["FD pixels ↓"] == cells["FD pixels (clean) ↓"] == cells["FD Inception ↓"] == "–"
        assert cells["prompt fidelity ↑"].endswith("%") and cells["log p clean (nats/dim) ↑"] != "–"
    advice = "rerun with samples_per_prompt=2 or more"
    assert notes == [
        f"- FD pixels: – for every row: a Fréchet distance needs at least 2 samples per prompt, got 1: {advice}"
        " (the runs of a seed sweep are separate rows, not pooled)",
        f"- FD pixels (clean): – for every row: a Fréchet distance needs at least 2 samples per prompt, got 1: {advice}"
        " (the runs of a seed sweep are separate rows, not pooled)",
        f"- FD Inception: – for every row: a Fréchet distance needs at least 2 samples per run, got 1: {advice}"
        " (the runs of a seed sweep are separate rows, not pooled)",
    ]
    assert "note: FD Inception: – for every row" in capsys.readouterr().out
    data = json.loads((tmp_path / "table" / "results.json").read_text())
    assert data[0]["fd_features"] is None and "samples_per_prompt=2" in data[0]["missing"]["fd_features"]


def test_preset_coco_without_its_inputs_fails_at_once_saying_what_to_pass(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import benchmark as script

    out = tmp_path / "coco"
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        script.main(["preset=coco", f"out={out}", "logger=none"])
    assert exit_info.value.code == 2
    assert "prompt_file=/path/to/captions.txt" in capsys.readouterr().err
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a cat\n")
    with pytest.raises(SystemExit):
        script.main(["preset=coco", f"out={out}", "logger=none", f"prompt_file={captions}"])
    assert "benchmark.metrics.reference_images=" in capsys.readouterr().err
    refs = tmp_path / "refs"
    refs.mkdir()
    save_png(torch.rand(1, 3, 8, 8), refs / "0.png")
    args = [f"prompt_file={captions}", f"benchmark.metrics.reference_images={refs}", "benchmark.metrics.clip=none"]
    with pytest.raises(SystemExit):
        script.main(["preset=coco", f"out={out}", "logger=none", *args, f"guidance.pretrained={tmp_path}/no-weights"])
    assert "guidance.pretrained=/path/to/local/folder" in capsys.readouterr().err
    assert not out.exists() and time.perf_counter() - start < 60  # nothing was trained or written


def test_commands_give_the_multirun_equivalent():
    lines = Benchmark("shapes", ["trainer.max_steps=9"], "unused").commands()
    common = "+benchmark=shapes trainer.max_steps=9"
    assert lines[0] == f"python scripts/sample.py -m {common} +sampler.name=exact benchmark.row=exact seed=0,1"
    assert lines[1] == f"python scripts/sample.py -m {common} +sampler.name=ddim benchmark.row=ddim seed=0,1"
    assert lines[2] == f"python train.py -m {common} loss=sds benchmark.row=sds seed=0,1"
    assert f"python train.py -m {common} loss=vsd loss.source=particles benchmark.row=vsd_exact seed=0,1" in lines
    assert lines[-1].startswith("python scripts/collect.py")
    sharded = Benchmark("shapes", ["benchmark.prompt_shards=4", "trainer.batch_size=12"], "unused").commands()
    common = "+benchmark=shapes benchmark.prompt_shards=4 trainer.batch_size=12"
    assert sharded[1] == f"python scripts/sample.py -m {common} +sampler.name=ddim benchmark.row=ddim seed=0,1"
    shards = "trainer.shards=4 trainer.shard=0,1,2,3"
    assert sharded[2] == f"python train.py -m {common} loss=sds benchmark.row=sds seed=0,1 {shards}"


def test_more_prompt_shards_than_a_runs_chunks_are_refused_in_one_line(tmp_path):
    bench = Benchmark("shapes", ["benchmark.prompt_shards=4", "benchmark.metrics.feature_net=null"], tmp_path / "b")
    expected = (
        "row sds: benchmark.prompt_shards=4, but this run has 1 chunk (48 samples, trainer.batch_size=48) and a shard "
        "trains whole chunks: use trainer.batch_size=12 or benchmark.prompt_shards=1"
    )
    with pytest.raises(ValueError) as error:
        bench.check()
    assert str(error.value) == expected
    assert [u for u in Benchmark("shapes", ["benchmark.prompt_shards=2"], "unused").units() if u[1] == 0][:4] == [
        ("exact", 0, None),
        ("ddim", 0, None),
        ("sds", 0, 0),
        ("sds", 0, 1),
    ]


@pytest.mark.slow
def test_the_same_table_through_a_hydra_multirun_and_sample_py(tmp_path):
    """The lower bound through scripts/sample.py, two methods through `train.py -m`, the table by collect.py."""
    env_overrides = ["+benchmark=shapes", *TINY]
    sweep = tmp_path / "sweep"
    subprocess.run(
        [sys.executable, "train.py", "-m", *env_overrides, "loss=sds,ours", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    lower = tmp_path / "ddim"
    subprocess.run(
        [sys.executable, "scripts/sample.py", *env_overrides, "+sampler.name=ddim", f"hydra.run.dir={lower}"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "scripts/collect.py", str(sweep), str(lower), "--out", str(tmp_path / "table")],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    rows = table_rows(first_table((tmp_path / "table" / "results.md").read_text()))
    assert [r[0] for r in rows] == ["DDIM (lower bound)", "SDS", "Ours"], done.stdout


def sample_py(*args: str, cwd: Path = ROOT, multirun: bool = False) -> subprocess.CompletedProcess:
    """scripts/sample.py at the tiny setting (one sample per prompt), as a user runs it."""
    command = [sys.executable, str(ROOT / "scripts" / "sample.py"), *(["-m"] if multirun else [])]
    tiny = ["+benchmark=shapes", *TINY, "samples_per_prompt=1", "trainer.batch_size=2"]
    return subprocess.run([*command, *tiny, *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow
def test_a_sample_py_sweep_finishes_every_job_and_a_bad_job_fails_alone(tmp_path):
    """`python scripts/sample.py -m` (README, conf/benchmark/shapes.yaml): both jobs finish, exit 0, and each writes
    its run folder; a job with a user error is reported and recorded, the other one still runs, the sweep exits 1."""
    sweep = tmp_path / "sweep"
    done = sample_py("+sampler.name=exact,ddim", f"hydra.sweep.dir={sweep}", multirun=True)
    assert done.returncode == 0, done.stderr
    assert "2 of 2 jobs finished" in done.stderr
    jobs = [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    assert [j["status"] for j in jobs] == ["finished", "finished"]
    for job, method in zip(jobs, ("exact", "ddim")):
        run = Path(job["run_dir"])
        assert len((run / "samples.jsonl").read_text().splitlines()) == 2
        assert sorted(p.name for p in (run / "samples").iterdir()) == ["00000.png", "00001.png"]
        assert collect_runs(run)[0].method == method

    bad = tmp_path / "bad"
    failed = sample_py("prompt=a red cube,a pink blob", f"hydra.sweep.dir={bad}", multirun=True)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "1 of 2 jobs finished" in failed.stderr and "unknown word 'pink'" in failed.stderr
    jobs = [json.loads(line) for line in (bad / "jobs.jsonl").read_text().splitlines()]
    assert [j["status"] for j in jobs] == ["finished", "failed"] and "pink" in jobs[1]["error"]
    assert [p.name.split("-")[0] for p in bad.iterdir() if p.is_dir()] == ["0"]  # the failed job left no folder


@pytest.mark.slow
def test_a_single_sample_py_run_is_named_after_its_method_and_a_user_error_is_one_line(tmp_path):
    for method in ("exact", "ddim"):
        done = sample_py(*([f"+sampler.name={method}"] if method == "exact" else []), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    folders = sorted(p.name.rsplit("-", 1)[-1] for p in (tmp_path / "outputs").glob("*/*"))
    assert folders == ["ddim", "exact"]
    failed = sample_py("prompt=a pink blob", cwd=tmp_path)
    assert failed.returncode == 2 and failed.stderr.startswith("error: unknown word 'pink'"), failed.stderr
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 2  # the failed run's folder was removed


# what each script's own --help must name (its file name, or its purpose where argparse does not print the name)
SCRIPT_HELP = {
    "bench_prior.py": "bench_prior.py",
    "bench_splat.py": "bench_splat.py",
    "bench_speed.py": "bench_speed.py",
    "benchmark.py": "scripts/benchmark.py",
    "collect.py": "collect.py",
    "convert_checkpoint.py": "sd-image-variations-diffusers",
    "export.py": "export.py",
    "illusion_figure.py": "illusion_figure.py",
    "make_tiny_pipeline.py": "make_tiny_pipeline.py",
    "painting2real.py": "painting2real.py",
    "render.py": "render.py",
    "render_shape.py": "render_shape.py",
    "sample.py": "+sampler.num_steps=50",
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py")))
def test_every_script_answers_help_with_its_own_text(script):
    """`python scripts/X.py --help`: exit 0 and the script's own text, never train.py's Hydra help (sample.py is a
    Hydra app too: its help names its sampler.* keys with their defaults)."""
    assert script in SCRIPT_HELP, f"scripts/{script} is new: add what its --help must name to SCRIPT_HELP"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert SCRIPT_HELP[script] in done.stdout, done.stdout
    assert "== Config groups" not in done.stdout and "Powered by Hydra" not in done.stdout  # train.py's help
    if script == "sample.py":
        for key, default in (("name", "ddim"), ("num_steps", "50"), ("guidance_scale", "1.0")):
            assert f"+sampler.{key}={default}\n" in done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_demo_installs_on_a_fresh_clone_and_then_only_when_pyproject_changes(tmp_path):
    """`make demo` / `make test` depend on a stamp in the venv, not on a phony install: a fresh clone (no .venv, as
    in CI) installs, a second call does not reinstall (+15 s), a changed pyproject.toml installs again."""
    import os

    (tmp_path / "scripts").mkdir()
    for name in ("Makefile", "pyproject.toml", "scripts/install.sh"):
        shutil.copy(ROOT / name, tmp_path / name)
    dry_run = lambda target: (
        subprocess.run(  # noqa: E731
            ["make", "-n", "--no-print-directory", target], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
    )
    install = "bash scripts/install.sh .venv"
    for target in ("demo", "test"):
        assert install in dry_run(target)  # a fresh clone
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()
    past = time.time() - 60
    for name in ("pyproject.toml", "scripts/install.sh"):
        os.utime(tmp_path / name, (past, past))
    assert dry_run("demo").splitlines() == [".venv/bin/python train.py +experiment=demo"]  # installed: no pip
    assert dry_run("test").splitlines() == [".venv/bin/python -m pytest -q -n 2 --dist loadfile"]
    (tmp_path / "pyproject.toml").touch()  # a new dependency
    assert dry_run("demo").splitlines() == [
        install,
        "touch .venv/.installed",
        ".venv/bin/python train.py +experiment=demo",
    ]


def test_lower_bound_samples_jsonl_is_strict_json(tmp_path, monkeypatch):
    """A non-finite metric becomes null (as in every JSON file scoredist writes), never the NaN token."""
    from scoredist.eval.lower_bound import write_lower_bound
    from scoredist.guidance.exact.shapes import ShapesPrior

    def evaluate(self, x, prompt):
        return {"nearest_rms": [float("nan")] * x.shape[0], "log_p": float("-inf"), "fidelity": 1.0}

    monkeypatch.setattr(ShapesPrior, "evaluate", evaluate)
    run = write_lower_bound(compose_run("shapes", [*TINY, "+sampler.name=exact"]), tmp_path / "exact")
    lines = (run / "samples.jsonl").read_text().splitlines()
    strict = lambda token: pytest.fail(f"{token} in samples.jsonl")  # noqa: E731
    records = [json.loads(line, parse_constant=strict) for line in lines]
    # per-row values as one-element lists, as the trainer's samples.jsonl writes them
    assert [r["eval"] for r in records] == [{"nearest_rms": [None], "log_p": None, "fidelity": 1.0}] * 4


def test_cli_errors_print_a_wrapped_user_error_as_one_line_and_keep_bugs(capsys, monkeypatch):
    from hydra.errors import InstantiationException

    from scoredist.errors import cli_errors

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def wrapped():
        try:
            raise FileNotFoundError("mesh sketch.obj does not exist")
        except FileNotFoundError as e:
            raise InstantiationException("Error in call to target 'NeRFRenderer'") from e

    with pytest.raises(SystemExit) as exit_info, cli_errors():
        wrapped()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mesh sketch.obj does not exist [test_benchmark.py:") and err.count("\n") == 1
    with pytest.raises(KeyError), cli_errors():  # a bug keeps its traceback
        raise KeyError("bug")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(InstantiationException), cli_errors():  # the traceback on request
        wrapped()


def fake_nerf_run(folder: Path, init_shape: Path) -> Path:
    """A NeRF run folder whose config names a sketch mesh (since deleted) and a checkpoint that loads."""
    from scoredist.checkpoint import FORMAT, VERSION

    (folder / "checkpoints").mkdir(parents=True)
    OmegaConf.save(
        {"renderer": {"_target_": "scoredist.renderers.nerf.NeRFRenderer", "init_shape": str(init_shape)}},
        folder / "config.yaml",
    )
    torch.save({"format": FORMAT, "version": VERSION, "renderer": {}, "step": 0}, folder / "checkpoints" / "last.pt")
    return folder


@pytest.mark.parametrize("script", ["export", "render", "nerf_benchmark"])
def test_nerf_scripts_turn_a_deleted_sketch_into_one_line(script, tmp_path, capsys, monkeypatch):
    """export.py, render.py and `python -m scoredist.renderers.benchmark` on a run whose init_shape mesh is gone:
    Hydra wraps the FileNotFoundError in an InstantiationException; the scripts still print one line, exit 2."""
    import importlib.util

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    run = fake_nerf_run(tmp_path / "run", tmp_path / "deleted.obj")
    if script == "nerf_benchmark":
        from scoredist.renderers.benchmark import main
    else:
        spec = importlib.util.spec_from_file_location(script, ROOT / "scripts" / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        main = module.main
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--device", "cpu"] if script != "nerf_benchmark" else [str(run)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "deleted.obj" in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "is not a run folder" in capsys.readouterr().err


def test_the_comparison_goes_to_wandb_offline_with_its_table_and_curves(tiny_benchmark, tmp_path, monkeypatch):
    """The table's own tracker run (a config naming the benchmark by its title): a table, the curves and the grids."""
    from scoredist.eval.benchmark import finish_table
    from scoredist.eval.exact import ShapesMetrics

    home = tmp_path / "home"
    for key, folder in [("HOME", home), ("XDG_DATA_HOME", home / "data"), ("XDG_CACHE_HOME", home / "cache")]:
        monkeypatch.setenv(key, str(folder))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    out, _ = tiny_benchmark
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("wandb"))
    logger = OmegaConf.load(ROOT / "conf" / "logger" / "wandb.yaml")
    finish_table(copy, collect_runs(copy), ShapesMetrics(), "Benchmark preset=shapes", logger, "test-group")
    (offline,) = (copy / "wandb").glob("offline-run-*")
    media = offline / "files" / "media"
    assert list((media / "table").glob("benchmark_*.table.json"))
    assert {p.name.split("_")[0] for p in (media / "images" / "artifacts").glob("*.png")} >= {"fidelity", "fd"}
