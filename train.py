"""Entry point: `python train.py loss=ours prompt="a red cube" ...` (see `python train.py --help`).

`python train.py trainer.resume=<run folder> [overrides]` continues a run from its own recipe: the run's config.yaml
(composed through conf/resume.yaml) with only this command line's overrides on top, so a run started with
`+experiment=demo` resumes with the demo's settings, not the defaults.
"""

import sys
from pathlib import Path

import hydra

from scoredist.runs import choice_error, exit_with_error, register_resolvers, resume_arguments, run_job

CONF = Path(__file__).resolve().parent / "conf"
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    from scoredist.train import train

    return run_job(cfg, train)


if __name__ == "__main__":
    sys.argv[1:] = resume_arguments(sys.argv[1:])
    message = choice_error(sys.argv[1:], CONF)  # an unknown loss=... is a user error (exit 2), not Hydra's exit 1
    if message:
        exit_with_error(message)
    main()
