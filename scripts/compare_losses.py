"""Run every loss on one setting and print a table: what each final image became, and its cost relative to SDS.

    python scripts/compare_losses.py                       # the demo setting: exact shapes prior, "a red cube", CPU
    python scripts/compare_losses.py --steps 600 --out table.json -- optimizer.lr=0.01

Extra Hydra overrides after `--` apply to every run. Times are measured in this one process, and reported as a ratio to
SDS's time per step, since absolute numbers on a shared machine say little.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

LOSSES = ["sds", "nfsd", "csd", "vsd", "dds", "ours", "bridge"]


def run(loss: str, steps: int, overrides: list[str], base: list[str], run_dir: Path) -> dict:
    from hydra import compose, initialize_config_dir

    from scoredist.train import train

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=[*base, f"loss={loss}", f"trainer.max_steps={steps}", *overrides])
    cfg.trainer.run_dir = str(run_dir)
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    result = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").exists() else {}
    return {"loss": loss, "seconds": seconds, **{k: v[0] if isinstance(v, list) else v for k, v in result.items()}}


def ddim_row(experiment: str, overrides: list[str], num_steps: int) -> dict:
    """The "DDIM (lower bound)" row of the paper's table: sample the prior itself under the prompt with DDIM."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={experiment}", *overrides])
    torch.manual_seed(cfg.seed)
    guidance = instantiate(cfg.guidance, device="cpu", precision="fp32")
    start = time.perf_counter()
    x = guidance.sample(cfg.prompt, num_samples=1, num_steps=num_steps)
    seconds = time.perf_counter() - start
    result = guidance.evaluate(x, cfg.prompt)
    return {
        "loss": f"ddim ({num_steps} steps)",
        "seconds": seconds,
        **{k: v[0] if isinstance(v, list) else v for k, v in result.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    parser.add_argument("--experiment", default="demo", help="the +experiment overlay every run starts from")
    parser.add_argument("--ddim-steps", type=int, default=50, help="steps of the DDIM lower-bound row (0: no row)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args()

    base = [f"+experiment={args.experiment}", "logger=none", "trainer.image_every=100000"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for loss in args.losses:
            rows.append(run(loss, args.steps, args.overrides, base, Path(tmp) / loss))
    if args.ddim_steps:
        rows.insert(0, ddim_row(args.experiment, args.overrides, args.ddim_steps))
    sds = next((r["seconds"] for r in rows if r["loss"] == "sds"), rows[0]["seconds"])
    keys = [k for k in rows[0] if k not in ("loss", "seconds", "nearest_component")]
    print(f"\n| loss | time / SDS time | {' | '.join(keys)} |")
    print("|" + "---|" * (len(keys) + 2))
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        print(f"| {r['loss']} | {r['seconds'] / sds:.2f} | {' | '.join(cells)} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
