"""What the wandb logger hands to wandb: distinct names and shared groups for a sweep's jobs, seed tags, images and
videos as such, and a samples table staged inside the run folder (a stand-in `wandb` module records the calls; one
real offline run checks the files)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from PIL import Image

from scoredist.loggers import WandbLogger

CONFIG = {"prompt": "a red cube", "seed": 0, "loss": {"_target_": "scoredist.losses.ours.Ours"}}


class Media:
    def __init__(self, data, **kwargs):
        self.data = data


class FakeRun:
    def __init__(self, run_dir: str, fake: FakeWandb):
        self.id, self.dir, self.fake = "fake", str(Path(run_dir) / "wandb" / "offline-run-fake" / "files"), fake
        self.summary: dict = {}

    def log(self, data, step=None):
        # where wandb would stage a table's images at this moment
        self.fake.logged.append((data, step, os.environ.get("WANDB_DATA_DIR")))

    def finish(self, exit_code=0):
        pass


class FakeWandb(types.ModuleType):
    """The part of wandb the logger uses, recording what it is given."""

    Image = Video = Object3D = Media

    def __init__(self):
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: list[tuple] = []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return FakeRun(kwargs["dir"], self)

    def Settings(self, **kwargs):  # noqa: N802 (wandb's name)
        return kwargs

    class Table:
        def __init__(self, columns):
            self.columns, self.rows = columns, []

        def add_data(self, *values):
            self.rows.append(values)


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)
    return fake


def in_sweep_job(monkeypatch, sweep: Path, num: int, task: list[str]) -> None:
    """HydraConfig as Hydra sets it inside job `num` of a sweep (-m) whose folder is `sweep`."""
    job = OmegaConf.create({"mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep)}, "job": {"num": num}})
    job.overrides = {"task": task}
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: job))


def test_the_jobs_of_a_seed_sweep_get_distinct_names_one_group_and_seed_tags(tmp_path, monkeypatch, fake_wandb):
    sweep = tmp_path / "sweep"
    sweep.mkdir()  # what Hydra's sweeper writes before the first job: the command line as typed
    record = {"hydra": {"overrides": {"task": ["+experiment=demo", "seed=0,1", "logger=wandb", "loss=ours"]}}}
    OmegaConf.save(OmegaConf.create(record), sweep / "multirun.yaml")
    for seed in (0, 1):
        in_sweep_job(monkeypatch, sweep, seed, ["+experiment=demo", f"seed={seed}", "logger=wandb", "loss=ours"])
        WandbLogger(mode="offline").start({**CONFIG, "seed": seed}, sweep / f"{seed}-job", f"{seed}-job")
    first, second = fake_wandb.inits
    assert (first["name"], second["name"]) == ("ours | a red cube | seed=0", "ours | a red cube | seed=1")
    assert first["group"] == second["group"] == str(sweep)
    assert first["tags"] == ["loss:ours", "seed:0"] and second["tags"] == ["loss:ours", "seed:1"]


def test_a_sweep_job_without_the_sweeps_record_is_named_by_its_number_and_overrides(tmp_path, monkeypatch, fake_wandb):
    in_sweep_job(monkeypatch, tmp_path, 3, ["seed=3", "loss=ours"])
    WandbLogger(mode="offline").start(CONFIG, tmp_path / "3-job", "3-job")
    assert fake_wandb.inits[0]["name"] == "ours | a red cube | #3 seed=3 loss=ours"


def test_a_single_run_keeps_its_name_and_an_explicit_name_wins(tmp_path, fake_wandb):
    WandbLogger(mode="offline").start(CONFIG, tmp_path / "r", "r")
    WandbLogger(mode="offline", name="mine").start(CONFIG, tmp_path / "r", "r")
    assert [i["name"] for i in fake_wandb.inits] == ["ours | a red cube", "mine"]
    assert fake_wandb.inits[0]["group"] is None


def test_progress_strip_and_video_are_an_image_and_a_video_under_two_keys(tmp_path, fake_wandb):
    logger = WandbLogger(mode="offline")
    logger.start(CONFIG, tmp_path, "r")
    for name in ("progress.png", "progress.mp4", "views.png"):
        (tmp_path / name).write_bytes(b"...")
    logger.log_artifacts([tmp_path / "progress.png", tmp_path / "progress.mp4", tmp_path / "turntable.mp4"], 7)
    logger.log_artifacts([tmp_path / "views.png"], 7)
    (first, step, _), (second, _, _) = fake_wandb.logged
    assert step == 7 and sorted(first) == ["artifacts/progress", "artifacts/progress_video"]  # no unwritten video
    assert first["artifacts/progress"].data == str(tmp_path / "progress.png")
    assert first["artifacts/progress_video"].data == str(tmp_path / "progress.mp4")
    assert type(first["artifacts/progress"]) is type(first["artifacts/progress_video"]) is Media  # as in the fake
    assert list(second) == ["artifacts/views"]


def test_tables_are_staged_in_the_runs_own_wandb_folder(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setattr("scoredist.eval.exact.summarise_records", lambda rows: {"eval/mean": 1.0})
    logger = WandbLogger(mode="offline")
    logger.start(CONFIG, tmp_path, "r")
    record = {"index": 0, "prompt": "a red cube", "image": "samples/00000.png", "seconds": 1.0, "eval": {"rms": 0.5}}
    logger.log_samples(tmp_path, {0: record})
    logger.log_table("benchmark", [{"label": "ours"}], [], {"ours": tmp_path / "grid.png"})
    (samples, _, staged), (table, _, staged_too) = fake_wandb.logged
    assert staged == staged_too == str(tmp_path / "wandb" / "offline-run-fake")
    assert samples["samples"].rows[0][2].data == str(tmp_path / "samples" / "00000.png")
    assert "WANDB_DATA_DIR" not in os.environ  # put back as it was


@pytest.mark.slow
def test_a_real_offline_run_keeps_its_files_and_staged_images_inside_the_run_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for key, folder in [("HOME", home), ("XDG_DATA_HOME", home / "data"), ("XDG_CACHE_HOME", home / "cache")]:
        monkeypatch.setenv(key, str(folder))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)
    run_dir = tmp_path / "run"
    (run_dir / "samples").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(run_dir / "samples" / "00000.png")
    logger = WandbLogger()
    logger.start(CONFIG, run_dir, "run")
    logger.log_image("preview", np.zeros((8, 8, 3), np.uint8), 1)
    record = {"index": 0, "prompt": "a red cube", "image": "samples/00000.png", "seconds": 1.0, "eval": {"rms": 0.5}}
    logger.log_samples(run_dir, {0: record})
    logger.finish()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert (offline / f"run-{offline.name.rsplit('-', 1)[1]}.wandb").is_file()
    assert list((offline / "files" / "media" / "images").glob("preview_*.png"))
    assert list((offline / "files" / "media" / "table").glob("samples_*.table.json"))
    assert list((offline / "artifacts" / "staging").iterdir())  # the table's files, next to the record
    assert not (home / "data" / "wandb" / "artifacts" / "staging").exists() or not list(
        (home / "data" / "wandb" / "artifacts" / "staging").iterdir()
    )


def test_a_staging_folder_the_user_chose_is_kept(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setattr("scoredist.eval.exact.summarise_records", lambda rows: {})
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "mine"))
    logger = WandbLogger(mode="offline")
    logger.start(CONFIG, tmp_path, "r")
    logger.log_samples(tmp_path, {})
    assert fake_wandb.logged[0][2] == str(tmp_path / "mine") == os.environ["WANDB_DATA_DIR"]


def test_the_samples_table_shows_per_row_metrics_and_the_summary_counts_every_row(tmp_path, fake_wandb):
    """samples.jsonl keeps per-row metrics as lists (one entry per view): one row is shown as its value, several as
    text; fidelity and artifact rate count every row."""
    logger = WandbLogger(mode="offline")
    logger.start(CONFIG, tmp_path, "r")
    image = {"nearest_caption": ["red cube"], "nearest_variant": ["clean"], "nearest_rms": [0.25]}
    views = {
        "nearest_caption": ["red cube", "blue cube"],
        "nearest_variant": ["clean", "foggy"],
        "nearest_rms": [0.5, 1.0],
    }
    rows = [
        {"index": i, "prompt": "a red cube", "image": f"samples/{i:05d}.png", "seconds": 1.0, "eval": e}
        for i, e in enumerate((image, views))
    ]
    logger.log_samples(tmp_path, dict(enumerate(rows)))
    ((samples, _, _),) = fake_wandb.logged
    table = samples["samples"]
    assert table.columns == ["index", "prompt", "image", "seconds", "nearest_caption", "nearest_rms", "nearest_variant"]
    assert [list(r[4:]) for r in table.rows] == [
        ["red cube", 0.25, "clean"],
        ["red cube, blue cube", "0.5, 1.0", "clean, foggy"],
    ]
    summary = logger.run.summary
    assert summary["eval/prompt_fidelity"] == pytest.approx(2 / 3)  # 3 rows, 2 of them show a red cube
    assert summary["eval/artifact_rate"] == pytest.approx(1 / 3)
    assert summary["eval/nearest_rms_mean"] == pytest.approx((0.25 + 0.5 + 1.0) / 3)
