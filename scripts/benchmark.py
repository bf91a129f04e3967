"""The paper's table as one command: DDIM (the lower bound), SDS, NFSD, CSD, VSD, ours and the k-step bridge, each as
an ordinary run folder over the preset's prompts × samples, then results.md / results.json / grids/ and the table.

    python scripts/benchmark.py                                  # preset=shapes: exact prior, CPU, no download
    python scripts/benchmark.py preset=shapes trainer.max_steps=50 samples_per_prompt=2 out=bench/quick
    python scripts/benchmark.py "benchmark.rows=[ddim,sds,ours]" # some rows only
    python scripts/benchmark.py preset=coco prompt_file=captions.txt \\
        benchmark.metrics.reference_images=coco_val2014/ benchmark.metrics.clip=clip-vit-base-patch32/
    python scripts/benchmark.py --commands                       # the same as train.py multiruns + collect.py

Every other key=value is a train.py override applied to every run (conf/benchmark/<preset>.yaml lists the preset's
settings). Rerunning with the same out= skips the rows that finished and continues the others. Exit status 2 with
a one-line message for a user error (missing weights, reference images, captions).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse(argv: list[str]) -> tuple[str, Path | None, bool, list[str]]:
    preset, out, commands, overrides = "shapes", None, False, []
    for arg in argv:
        if arg.startswith("preset="):
            preset = arg.split("=", 1)[1]
        elif arg.startswith("out="):
            out = Path(arg.split("=", 1)[1])
        elif arg == "--commands":
            commands = True
        else:
            overrides.append(arg)
    return preset, out, commands, overrides


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return None
    from scoredist.errors import cli_errors
    from scoredist.eval.benchmark import Benchmark

    preset, out, commands, overrides = parse(argv)
    out = out or Path("outputs") / "benchmarks" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{preset}"
    with cli_errors():
        bench = Benchmark(preset, overrides, out)
        if commands:
            print("\n".join(bench.commands()))
            return None
        return bench.run()


if __name__ == "__main__":
    main()
