"""The DDIM lower bound as a run folder: samples of the guidance model itself for the run's prompts × samples.

    python scripts/sample.py +benchmark=shapes                  # the shapes benchmark's lower-bound row
    python scripts/sample.py guidance=shapes prompt="a red cube" samples_per_prompt=8 +sampler.num_steps=100
    python scripts/sample.py -m +benchmark=shapes hydra/launcher=joblib   # through any Hydra launcher

Takes train.py's config and overrides (conf/train.yaml); the sampler is `sampler.{num_steps, guidance_scale}`
(defaults 50 and 1.0, or the preset's `benchmark.lower_bound`). Writes config.yaml, samples.jsonl and
samples/NNNNN.png like a training run, so scripts/collect.py treats it as the "DDIM (lower bound)" row.
"""

import sys
from pathlib import Path

import hydra

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoredist.runs import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg):
    from hydra.core.hydra_config import HydraConfig

    from scoredist.eval.benchmark import cli_errors
    from scoredist.eval.lower_bound import write_lower_bound

    with cli_errors():
        write_lower_bound(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    # train.yaml names run folders after the loss; a lower-bound folder is named after its method instead
    if not any(a.startswith(("hydra.run.dir=", "-m", "--multirun")) for a in sys.argv[1:]):
        sys.argv.append("hydra.run.dir=${fresh_folder:outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}-ddim}")
    main()
