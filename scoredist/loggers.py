"""Experiment loggers. `WandbLogger` never prompts: with no credentials it runs offline and says so.

wandb as the dashboard of a comparison: a run is named by its method and prompt ("ours | a red cube +11"; a sweep's
job adds what the sweep varies: "ours | a red cube | seed=1"), grouped by its benchmark or Hydra sweep, tagged with
loss / renderer / guidance / seed, and its samples' eval metrics go into its summary (fractions and means of the
per-sample values), so a group opens as one filterable table of runs; a benchmark adds one run holding the comparison
table with an image grid per method.
"""

from __future__ import annotations

import netrc
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scoredist.eval.collect import component_name, method_of


def has_wandb_credentials() -> bool:
    """True if wandb could log in without asking: an API key in the environment or in ~/.netrc (or $NETRC)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return any("wandb" in host for host in netrc.netrc(path).hosts)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str | None) -> tuple[str, str | None]:
    """(mode, message): the config's mode wins, then $WANDB_MODE, then online with credentials, else offline."""
    if mode:
        return mode, None
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], None
    if has_wandb_credentials():
        return "online", None
    return "offline", "wandb: not logged in, logging offline"


class NoLogger:
    """Logs nothing (metrics.jsonl in the run folder is still written by the trainer)."""

    def start(self, config: dict, run_dir: Path, name: str, resume_id: str | None = None) -> str | None:
        return None

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        pass

    def log_samples(self, run_dir: Path, records: dict[int, dict]) -> None:
        """The run's samples (samples.jsonl records, images under run_dir) as one table."""

    def log_artifacts(self, paths: list[Path], step: int) -> None:
        """Files a renderer wrote at the end of a run: images, videos, meshes."""

    def log_table(self, key: str, rows: list[dict], columns, images: dict[str, Path]) -> None:
        """A comparison table (scoredist.eval.table rows and columns) with one image per row label."""

    def finish(self, exit_code: int = 0) -> None:
        pass


def table_cell(value):
    """A samples.jsonl eval value as one table cell: a per-row list of one row as its value, of several rows (a
    NeRF's views) as text, one entry per row."""
    if isinstance(value, list):
        return value[0] if len(value) == 1 else ", ".join(map(str, value))
    return value


def run_name(config: dict, fallback: str) -> str:
    """ "<method> | <first prompt> [+N more]": what a row of a comparison is (the folder name keeps the time); the
    method as the benchmark table names it (`scoredist.eval.collect.method_of`)."""
    method = method_of(config)
    prompt = config.get("prompt")
    if config.get("prompt_file"):
        prompt = Path(str(config["prompt_file"])).name
    elif isinstance(prompt, (list, tuple)):
        prompt = f"{prompt[0]} +{len(prompt) - 1}" if len(prompt) > 1 else (prompt[0] if prompt else "")
    return f"{method} | {prompt}" if method and prompt else fallback


def run_tags(config: dict) -> list[str]:
    """loss:<name>, renderer:<name>, guidance:<name>, seed:<seed> (and benchmark:<preset>), for filtering runs."""
    tags = [f"loss:{method_of(config)}"]
    for group in ("renderer", "guidance"):
        name = component_name((config.get(group) or {}).get("_target_"))
        if name:
            tags.append(f"{group}:{name}")
    if config.get("seed") is not None:
        tags.append(f"seed:{config['seed']}")
    if isinstance(config.get("benchmark"), dict) and config["benchmark"].get("name"):
        tags.append(f"benchmark:{config['benchmark']['name']}")
    return tags


def sweep_group() -> str | None:
    """The Hydra multirun folder this job belongs to, or None outside a sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return str(HydraConfig.get().sweep.dir)
    except (ImportError, ValueError):
        pass
    return None


def sweep_job_label() -> str | None:
    """What tells this sweep job from the others ("seed=1", "loss=ours seed=2"): its own values of the keys the sweep
    varies, read against the sweep's command line in <sweep>/multirun.yaml (Hydra writes it before any job starts,
    whichever launcher runs them). Without that record: the job's number and all its overrides. None outside a
    sweep."""
    from hydra.core.hydra_config import HydraConfig

    if sweep_group() is None:
        return None
    hydra_cfg = HydraConfig.get()
    job = list(hydra_cfg.overrides.task)
    varying = sweep_keys(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    if varying is None:
        return f"#{hydra_cfg.job.num} {' '.join(job)}".strip()
    return " ".join(o for o in job if override_key(o) in varying) or f"#{hydra_cfg.job.num}"


def sweep_keys(record: Path) -> set[str] | None:
    """The keys a sweep's command line gives several values (`seed=0,1`, `loss=sds,ours`), from its multirun.yaml;
    None when there is no readable record."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        task = OmegaConf.select(OmegaConf.load(record), "hydra.overrides.task")
        overrides = OverridesParser.create().parse_overrides(list(task)) if task is not None else None
    except (OSError, OmegaConfBaseException, HydraException):  # unreadable, or Hydra cannot parse its own line
        return None
    return None if overrides is None else {o.get_key_element() for o in overrides if o.is_sweep_override()}


def override_key(text: str) -> str:
    """The key of an override as `sweep_keys` gives it: "+experiment=demo" -> "+experiment"."""
    return text.partition("=")[0]


class WandbLogger(NoLogger):
    """Args: project, entity, mode (online/offline/disabled; None: decided at start), tags (added to the automatic
    loss/renderer/guidance/seed tags), group (None: the Hydra sweep folder, or the benchmark's), name (None: method
    and prompt, and in a sweep the job's own values of what the sweep varies: "ours | a red cube | seed=1"),
    job_type."""

    def __init__(
        self,
        project: str = "scoredist",
        entity: str | None = None,
        mode: str | None = None,
        tags: list | None = None,
        group: str | None = None,
        name: str | None = None,
        job_type: str | None = None,
    ):
        self.project, self.entity, self.mode, self.tags = project, entity, mode, list(tags or [])
        self.group, self.name, self.job_type = group, name, job_type
        self.run = None

    def start(self, config, run_dir, name, resume_id=None):
        import wandb

        mode, message = resolve_wandb_mode(self.mode)
        if message:
            print(f"{message} (upload later with `wandb sync {run_dir}/wandb/offline-run-*`)")
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            name=self.name or " | ".join(filter(None, [run_name(config, name), sweep_job_label()])),
            group=self.group or sweep_group(),
            job_type=self.job_type,
            dir=str(run_dir),
            config=config,
            mode=mode,
            tags=list(dict.fromkeys([*self.tags, *run_tags(config)])),
            id=resume_id,
            resume="allow" if resume_id else None,
            settings=wandb.Settings(console="off", silent=True),
        )
        return self.run.id

    def log(self, metrics, step):
        self.run.log(metrics, step=step)

    def log_image(self, key, image, step):
        import wandb

        self.run.log({key: wandb.Image(image)}, step=step)

    def log_artifacts(self, paths, step):
        """Images (.png) as images, videos (.mp4) as videos, meshes as 3D objects, under artifacts/<name>; a video
        or mesh gets its kind in its key, so progress.png and progress.mp4 are two entries, not one overwriting the
        other. Paths that were not written (no video encoder) are skipped."""
        import wandb

        kinds = {".png": (wandb.Image, ""), ".mp4": (wandb.Video, "_video"), ".obj": (wandb.Object3D, "_3d")}
        kinds[".glb"] = kinds[".obj"]
        logged = {
            f"artifacts/{p.stem}{kinds[p.suffix][1]}": kinds[p.suffix][0](str(p))
            for p in map(Path, paths)
            if p.suffix in kinds and p.is_file()
        }
        if logged:
            self.run.log(logged, step=step)

    @contextmanager
    def staged_in_run(self):
        """wandb copies a table's images into its artifact staging folder ($WANDB_DATA_DIR/artifacts/staging, by
        default ~/.local/share/wandb, outside the run); stage them in this run's own wandb folder instead, next to
        the offline record that refers to them (`wandb sync` reads them there) and removed with the run. A
        WANDB_DATA_DIR the user set is kept."""
        previous = os.environ.get("WANDB_DATA_DIR")
        if previous is not None:
            yield
            return
        os.environ["WANDB_DATA_DIR"] = str(Path(self.run.dir).parent)
        try:
            yield
        finally:
            os.environ.pop("WANDB_DATA_DIR", None)

    def log_samples(self, run_dir, records):
        import wandb

        rows = [records[i] for i in sorted(records)]
        keys = sorted({k for r in rows for k, v in r["eval"].items() if not isinstance(v, dict)})
        table = wandb.Table(columns=["index", "prompt", "image", "seconds", *keys])
        for r in rows:
            image = wandb.Image(str(Path(run_dir) / r["image"]))
            table.add_data(r["index"], r["prompt"], image, r["seconds"], *(table_cell(r["eval"].get(k)) for k in keys))
        with self.staged_in_run():
            self.run.log({"samples": table})
        from scoredist.eval.exact import summarise_records

        self.run.summary.update(summarise_records(rows))

    def log_table(self, key, rows, columns, images):
        import wandb

        from scoredist.eval.table import shares_text

        # numbers stay numbers (filterable); {artifact: share} becomes "blurry 40%, dull 20%"
        _scalar = lambda v: shares_text(v) if isinstance(v, dict) else v
        table = wandb.Table(columns=["method", *(header for _, header, _, _ in columns), "samples", "grid"])
        for r in rows:
            values = [_scalar(r.get(k)) for k, _, _, _ in columns]
            table.add_data(r["label"], *values, r.get("samples_total"), wandb.Image(str(images[r["label"]])))
        with self.staged_in_run():
            self.run.log({key: table})

    def finish(self, exit_code=0):
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
