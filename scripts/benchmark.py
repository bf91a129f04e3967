"""The paper's table as one command: DDIM (the lower bound), SDS, NFSD, CSD, VSD, ours and the k-step bridge, each as
an ordinary run folder over the preset's prompts × samples, then results.md / results.json / grids/ and the table.

    python scripts/benchmark.py                                  # preset=shapes: exact prior, CPU, no download
    python scripts/benchmark.py preset=shapes trainer.max_steps=50 samples_per_prompt=2 out=bench/quick
    python scripts/benchmark.py "benchmark.rows=[ddim,sds,ours]" # some rows only
    python scripts/benchmark.py preset=coco prompt_file=captions.txt \\
        benchmark.metrics.reference_images=coco_val2014/ benchmark.metrics.clip=clip-vit-base-patch32/
    python scripts/benchmark.py --commands                       # the same as train.py multiruns + collect.py
    python scripts/benchmark.py --dry-run                        # what it would run and cost here, then exit
    python scripts/benchmark.py --tune                           # the tuned setting: lr and scale per method
                                                                 # chosen on seed 0, compared on seed 1
    python scripts/benchmark.py launcher=slurm_cpu benchmark.prompt_shards=4 trainer.batch_size=12
        # one SLURM array: a job per row x seed x quarter of its samples (without prompt_shards: per row x seed;
        # launcher.partition=... etc. set its jobs)

Every other key=value is a train.py override applied to every run (conf/benchmark/<preset>.yaml lists the preset's
settings). Without out=, a benchmark goes to outputs/benchmarks/<time>-<preset>/, and rerunning the same command
continues the newest unfinished benchmark with the same settings there ("continuing <folder>: N of M rows done"):
it skips the rows that finished and continues the others. With out=, the same holds for that folder. Exit status 2
with a one-line message for a user error (missing weights, reference images, captions).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse(argv: list[str]) -> tuple[str, Path | None, str | None, list[str], str | None, list[str]]:
    """(preset, out folder or None, mode: None | "commands" | "dry-run" | "tune", train.py overrides, launcher or
    None, launcher.KEY=VALUE overrides)."""
    preset, out, mode, overrides, launcher, launcher_overrides = "shapes", None, None, [], None, []
    for arg in argv:
        if arg.startswith("preset="):
            preset = arg.split("=", 1)[1]
        elif arg.startswith("out="):
            out = Path(arg.split("=", 1)[1])
        elif arg.startswith("launcher="):
            launcher = arg.split("=", 1)[1]
        elif arg.startswith("launcher."):
            launcher_overrides.append(arg)
        elif arg in ("--commands", "--dry-run", "--tune"):
            mode = arg.removeprefix("--")
        else:
            overrides.append(arg)
    return preset, out, mode, overrides, launcher, launcher_overrides


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return None
    from scoredist.errors import cli_errors
    from scoredist.eval.benchmark import Benchmark, continue_or_start

    preset, out, mode, overrides, launcher, launcher_overrides = parse(argv)
    with cli_errors():
        if mode == "dry-run":
            bench = Benchmark(preset, overrides, out) if out is not None else continue_or_start(preset, overrides)
            bench.check()
            print(bench.preview())
            return None
        if mode == "commands":
            print("\n".join(Benchmark(preset, overrides, out or "unused").commands()))
            return None
        # without out=, a plain rerun of an interrupted benchmark's command continues it
        bench = Benchmark(preset, overrides, out) if out is not None else continue_or_start(preset, overrides)
        if mode == "tune":  # scoredist.eval.tuning: in the benchmark's folder, beside its paper-setting rows
            from scoredist.eval.tuning import Tuning

            return Tuning(bench).run(bench.check())
        results = bench.run(launcher, launcher_overrides)
        if results is None:  # a shard did not finish on the cluster: named above; a rerun submits only those
            raise SystemExit(1)
        return results


if __name__ == "__main__":
    main()
