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
import textwrap
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


# what each sampler.* key means; the defaults shown come from scoredist.eval.lower_bound.DEFAULT_SAMPLER
SAMPLER_KEYS = {
    "name": "ddim: DDIM from pure noise (the table's lower-bound row); exact: exact samples of each prompt's "
    "mixture (exact priors only: the floor of every distance)",
    "num_steps": "DDIM steps from t = T to 0 (sampler.name=ddim)",
    "guidance_scale": "CFG scale of DDIM; 1.0 samples the prompt's own distribution (sampler.name=ddim)",
}


def help_text() -> str:
    """This script's --help: what it does, its sampler.* keys with their defaults, examples (not train.py's help,
    which Hydra would print and which never names the sampler)."""
    from scoredist.eval.lower_bound import DEFAULT_SAMPLER

    wrap = lambda text: textwrap.fill(text, 116, initial_indent=" " * 8, subsequent_indent=" " * 8)  # noqa: E731
    keys = "".join(f"    +sampler.{k}={DEFAULT_SAMPLER[k]}\n{wrap(meaning)}\n" for k, meaning in SAMPLER_KEYS.items())
    return (
        f"usage: python scripts/sample.py [-m] [+sampler.KEY=VALUE ...] [train.py overrides ...]\n\n{__doc__}\n"
        "sampler keys (add them with +sampler.KEY=VALUE), with their defaults (a +benchmark preset's\n"
        f"benchmark.lower_bound replaces these):\n{keys}\n"
        "Every other key is train.py's (prompt, prompt_file, samples_per_prompt, seed, guidance.*,\n"
        "trainer.batch_size, trainer.device): python train.py --help lists them.\n"
    )


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
        return SimpleNamespace(interrupted=True, run_dir=run_dir, stopped_by="SIGINT")
    except Exception:
        remove_if_unstarted(run_dir)
        raise
    return SimpleNamespace(interrupted=False, run_dir=run_dir, stopped_by=None)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg) -> dict:
    """{"status": "finished", "run_dir": ...} (a sweep's job record); a failed job in a sweep returns
    {"status": "failed", "error": ...} and the sweep goes on (`scoredist.runs.run_job`)."""
    from scoredist.runs import run_job

    return run_job(cfg, sample)


if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(help_text())
        sys.exit(0)
    if not any(a.startswith("hydra.run.dir=") or a in ("-m", "--multirun") for a in sys.argv[1:]):
        sys.argv.append(RUN_DIR)
    main()
