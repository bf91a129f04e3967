"""Build the benchmark table from finished run folders (a benchmark folder, Hydra multirun folders, run folders):

    python scripts/collect.py benchmarks/2026-11-29_19-00-00-shapes
    python scripts/collect.py multirun/2026-11-29/19-00-00 outputs/2026-11-29/19-30-00-ddim --out table/
    python scripts/collect.py DIR benchmark.metrics.reference_images=coco_val2014/   # override a metric setting
    python scripts/collect.py DIR --baseline sds    # paired differences against another row than ours

Unfinished run folders are skipped with a warning that names them. The metrics are those of the runs' benchmark
preset (the `benchmark` node of their config.yaml, from `+benchmark=<preset>`), else the shapes metrics for runs on
the shapes prior. Writes results.md, results.json and grids/ into --out (default: the first DIR).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", help="folders to search for run folders, and benchmark.* overrides")
    parser.add_argument("--out", type=Path, help="where results.md / results.json / grids/ go (default: first DIR)")
    parser.add_argument("--wandb", action="store_true", help="also log the table as a wandb run")
    parser.add_argument("--baseline", help="the row every paired difference is taken against (default: ours)")
    args = parser.parse_args(argv)
    from scoredist.errors import cli_errors
    from scoredist.eval.benchmark import collect_from

    overrides = [d for d in args.dirs if "=" in d]
    dirs = [Path(d) for d in args.dirs if "=" not in d]
    with cli_errors():
        return collect_from(dirs, overrides, args.out or dirs[0], log=args.wandb, baseline=args.baseline)


if __name__ == "__main__":
    main()
