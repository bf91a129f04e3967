"""The DDIM lower bound as a run folder: samples of the guidance model itself for the run's prompts × samples.

    python scripts/sample.py +benchmark=shapes                  # the shapes benchmark's lower-bound row
    python scripts/sample.py guidance=shapes prompt="a red cube" samples_per_prompt=8 +sampler.num_steps=100
    python scripts/sample.py -m +benchmark=shapes +sampler.name=exact,ddim   # a sweep, through any Hydra launcher

Takes train.py's config and overrides (conf/train.yaml); the sampler is `sampler.{name, num_steps, guidance_scale}`
(defaults ddim, 50 and 1.0, or the preset's `benchmark.lower_bound`). Writes config.yaml, samples.jsonl and
samples/NNNNN.png like a training run, so scripts/collect.py treats it as the "DDIM (lower bound)" row (or the
exact-samples floor, sampler.name=exact). A user error prints one line (exit 2); in a sweep (-m) it fails that job
only, and the sweep ends with a summary of the failed jobs (exit 1).
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import hydra
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoredist.runs import register_resolvers  # noqa: E402

register_resolvers()
# a lower-bound folder is named after its method as the table names it ("...-ddim", "...-exact"), not after the loss
OmegaConf.register_new_resolver("sampled_method", lambda *, _root_: sampled_method(_root_), replace=True)
# quoted: Hydra's override grammar takes nested interpolations only inside a quoted value
RUN_DIR = "hydra.run.dir='${fresh_folder:outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}-${safe_slug:${sampled_method:}}}'"


def sampled_method(cfg) -> str:
    from scoredist.eval.collect import method_of
    from scoredist.eval.lower_bound import sampler_config

    return method_of({"sampler": sampler_config(cfg)})


def sample(cfg) -> SimpleNamespace:
    """One job: the lower-bound folder in Hydra's output folder, as run_job expects a run's outcome. A new folder
    that got nothing written (a user error before the first sample) is removed, as train() does."""
    from hydra.core.hydra_config import HydraConfig

    from scoredist.eval.lower_bound import write_lower_bound
    from scoredist.runs import remove_if_unstarted

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        write_lower_bound(cfg, run_dir)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {run_dir} is unfinished (collect.py skips it); run it again", file=sys.stderr)
        return SimpleNamespace(interrupted=True, run_dir=run_dir)
    except Exception:
        remove_if_unstarted(run_dir)
        raise
    return SimpleNamespace(interrupted=False, run_dir=run_dir)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg) -> dict:
    """{"status": "finished", "run_dir": ...} (a sweep's job record); a failed job in a sweep returns
    {"status": "failed", "error": ...} and the sweep goes on (`scoredist.runs.run_job`)."""
    from scoredist.runs import run_job

    return run_job(cfg, sample)


if __name__ == "__main__":
    if not any(a.startswith("hydra.run.dir=") or a in ("-m", "--multirun") for a in sys.argv[1:]):
        sys.argv.append(RUN_DIR)
    main()
