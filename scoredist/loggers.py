"""Experiment loggers. `WandbLogger` never prompts: with no credentials it runs offline and says so."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

import numpy as np


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

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(NoLogger):
    def __init__(
        self, project: str = "scoredist", entity: str | None = None, mode: str | None = None, tags: list | None = None
    ):
        self.project, self.entity, self.mode, self.tags = project, entity, mode, list(tags or [])
        self.run = None

    def start(self, config, run_dir, name, resume_id=None):
        import wandb

        mode, message = resolve_wandb_mode(self.mode)
        if message:
            print(f"{message} (upload later with `wandb sync {run_dir}/wandb/offline-run-*`)")
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            name=name,
            dir=str(run_dir),
            config=config,
            mode=mode,
            tags=self.tags,
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
        import wandb

        kinds = {".png": wandb.Image, ".mp4": wandb.Video, ".obj": wandb.Object3D, ".glb": wandb.Object3D}
        logged = {f"artifacts/{p.stem}": kinds[p.suffix](str(p)) for p in map(Path, paths) if p.suffix in kinds}
        if logged:
            self.run.log(logged, step=step)

    def log_samples(self, run_dir, records):
        import wandb

        rows = [records[i] for i in sorted(records)]
        keys = sorted({k for r in rows for k, v in r["eval"].items() if not isinstance(v, (list, dict))})
        table = wandb.Table(columns=["index", "prompt", "image", "seconds", *keys])
        for r in rows:
            image = wandb.Image(str(Path(run_dir) / r["image"]))
            table.add_data(r["index"], r["prompt"], image, r["seconds"], *(r["eval"].get(k) for k in keys))
        self.run.log({"samples": table})

    def finish(self, exit_code=0):
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
