"""Entry point: `python train.py loss=ours prompt="a red cube" ...` (see `python train.py --help`)."""

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from scoredist.checkpoint import run_folder_of

# hydra.run.dir: a resumed run keeps writing into its own folder instead of opening a new, empty one.
OmegaConf.register_new_resolver(
    "resume_dir_or", lambda resume, default: str(run_folder_of(resume)) if resume else default
)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from scoredist.errors import user_error
    from scoredist.train import train

    try:
        result = train(cfg)
    except Exception as e:
        message = user_error(e)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    if result.interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
