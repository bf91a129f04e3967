"""Painting-to-real, side by side: the input, SDEdit, DDS and ours; on the exact shapes prior, with the checks.

    python scripts/painting2real.py                                       # the shapes world, CPU, ~1 minute
    python scripts/painting2real.py --seeds 0 1 2 --figure docs/painting2real_shapes.png --out p2r.json
    python scripts/painting2real.py --experiment painting2real -- input=painting.png prompt="a harbour at dusk"

--experiment is the ours overlay (painting2real_shapes, or painting2real for Stable Diffusion); it defines the task:
`input`, `prompt` (what the photo should show), `loss.tgt_suffix` (appended to it) and `loss.source_prompt` (what the
painting is). --dds-experiment is the DDS one (default: the same name + _dds); its prompt and source prompt are
derived from the task (prompt + tgt_suffix, source_prompt), so every row solves the same task. The overrides
after -- go to both overlays, except loss.* ones, which go to the ours run only. SDEdit (Meng et al.): the input
noised to t = strength·(T − 1) and DDIM-denoised under prompt + tgt_suffix (guidance/base.py `sdedit`).

On the exact prior every result is measured against the answer: the clean component of the input's caption nearest
to the input (the clean render of the same view). The check: ours and DDS end nearer to it than the input (RMS), on
it (their nearest component in the whole world is that caption's clean variant), and keep the caption.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from scoredist.devices import pick_device
from scoredist.errors import cli_errors
from scoredist.prompts import TGT_SUFFIX, Prompt
from scoredist.scripting import compose_experiment, train_and_load, write_figure, write_json

DISTILLED = ("DDS", "ours")  # the rows the check is about


def input_image(cfg: DictConfig, guidance) -> torch.Tensor:
    """The painting in model space, (1, ...), at the renderer's size (the model's native size when unset)."""
    from scoredist.images import read_image

    if cfg.input is None:
        raise ValueError("no input image: pass input=PATH (a PNG or JPG of the painting) after --")
    shape = guidance.sample_shape()
    height = cfg.renderer.height or shape[-2] * guidance.downscale
    width = cfg.renderer.width or shape[-1] * guidance.downscale
    device = guidance.alphas_cumprod.device
    with torch.no_grad():
        return guidance.encode(read_image(cfg.input, height, width).to(device)).float()


def sdedit_row(
    cfg: DictConfig, guidance, x: torch.Tensor, seed: int, strength: float, steps: int, scale
) -> torch.Tensor:
    from scoredist.guidance.base import sdedit

    target = Prompt(cfg.prompt).text(cfg.loss.tgt_suffix)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))  # on the CPU: the same on every device
    t_start = round(strength * (guidance.num_train_timesteps - 1))
    return sdedit(guidance, x, [target] * x.shape[0], t_start, steps, noise, scale).float().cpu()


def exact_metrics(prior, caption: str, results: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per row: nearest component in the whole world, and RMS to the answer (the clean component of `caption`
    nearest to the input)."""
    means, labels = prior.components(caption + TGT_SUFFIX)
    x_in = results["input"].float().cpu()
    k = int(torch.cdist(x_in.flatten(1), means.flatten(1)).argmin())
    answer, answer_label = means[k], labels[k]
    out = {}
    for name, x in results.items():
        x = x.float().cpu()
        nearest = prior.nearest_component(x)[0]
        out[name] = {
            "nearest_component": str(nearest),
            "nearest_caption": nearest.caption,
            "nearest_variant": nearest.variant,
            "on_answer": nearest == answer_label,
            "rms_to_answer": float((x[0] - answer).pow(2).mean().sqrt()),
        }
    out["answer"] = {"component": str(answer_label)}
    return out


def painting2real_check(metrics: dict) -> bool:
    """Ours and DDS: nearer to the answer than the input, on the answer's component, the input's caption kept."""
    source = metrics["input"]
    return all(
        metrics[name]["rms_to_answer"] < source["rms_to_answer"]
        and metrics[name]["on_answer"]
        and metrics[name]["nearest_caption"] == source["nearest_caption"]
        for name in DISTILLED
    )


def dds_config(experiment: str, overrides: list[str], ours: DictConfig) -> DictConfig:
    """The DDS run of the task the ours config defines: the same input, target and source texts."""
    cfg = compose_experiment(experiment, [o for o in overrides if not o.lstrip("+~").startswith("loss.")])
    cfg.input = ours.input
    cfg.prompt = Prompt(ours.prompt).text(ours.loss.tgt_suffix)
    cfg.loss.source_prompt = ours.loss.source_prompt or Prompt(ours.prompt).text(ours.loss.src_suffix)
    return cfg


def run_seed(args, seed: int, work: Path) -> tuple[dict, dict, object]:
    overrides = [f"seed={seed}", *args.overrides]
    ours_cfg = compose_experiment(args.experiment, overrides)
    dds_cfg = dds_config(args.dds_experiment or f"{args.experiment}_dds", overrides, ours_cfg)
    guidance = instantiate(
        ours_cfg.guidance, device=str(pick_device(ours_cfg.trainer.device)), precision=ours_cfg.trainer.precision
    )
    exact = hasattr(guidance, "nearest_component")
    scale = (None if exact else 7.5) if args.sdedit_scale == "auto" else _scale(args.sdedit_scale)
    x_in = input_image(ours_cfg, guidance)
    results = {
        "input": x_in.cpu(),
        "SDEdit": sdedit_row(ours_cfg, guidance, x_in, seed, args.sdedit_strength, args.sdedit_steps, scale),
        "DDS": train_and_load(dds_cfg, work / "dds"),
        "ours": train_and_load(ours_cfg, work / "ours"),
    }
    metrics = exact_metrics(guidance, ours_cfg.prompt, results) if exact else {}
    return results, metrics, guidance


def _scale(value: str) -> float | None:
    return None if value.lower() in ("none", "null") else float(value)


def figure(results: dict, metrics: dict, guidance) -> np.ndarray:
    from scoredist.images import labelled_row

    labels = []
    for name in results:
        m = metrics.get(name)
        labels.append(
            name
            if m is None
            else f"{name}: {m['nearest_caption']}, {m['nearest_variant']} | RMS {m['rms_to_answer']:.2f}"
        )
    with torch.no_grad():
        rgb = guidance.decode(torch.cat([x.to(guidance.alphas_cumprod.device) for x in results.values()]))
    return labelled_row(rgb.float().cpu(), labels)


def report(args) -> dict:
    out = {"seeds": {}}
    for n, seed in enumerate(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            results, metrics, guidance = run_seed(args, seed, Path(tmp))
        if metrics:
            out["seeds"][seed] = {"metrics": metrics, "check_holds": painting2real_check(metrics)}
        if n == 0 and args.figure:
            write_figure(args.figure, figure(results, metrics, guidance))
    if out["seeds"]:
        print_table(out)
    if args.out:
        write_json(args.out, out)
    return out


def print_table(out: dict) -> None:
    seeds = list(out["seeds"].values())
    print(f"\nthe answer: {seeds[0]['metrics']['answer']['component']}; seeds {list(out['seeds'])}\n")
    print("| row | nearest component (seeds) | RMS to the answer, mean (min … max) |")
    print("|---|---|---|")
    for name in ("input", "SDEdit", *DISTILLED):
        rows = [s["metrics"][name] for s in seeds]
        rms = [r["rms_to_answer"] for r in rows]
        nearest = sorted({f"{r['nearest_caption']}, {r['nearest_variant']}" for r in rows})
        print(f"| {name} | {'; '.join(nearest)} | {sum(rms) / len(rms):.3f} ({min(rms):.3f} … {max(rms):.3f}) |")
    print(f"\ncheck holds for {sum(s['check_holds'] for s in seeds)} of {len(seeds)} seeds")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="painting2real_shapes", help="the ours overlay")
    parser.add_argument("--dds-experiment", default=None, help="the DDS overlay (default: EXPERIMENT_dds)")
    parser.add_argument("--sdedit-strength", type=float, default=0.5, help="noise level t / (T − 1) (default 0.5)")
    parser.add_argument("--sdedit-steps", type=int, default=50, help="DDIM steps from there (default 50)")
    parser.add_argument(
        "--sdedit-scale",
        default="auto",
        help="CFG scale of SDEdit's denoising; auto: 7.5 on Stable Diffusion, none on the exact priors (exact ODE)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--figure", type=Path, help="write the labelled row of the first seed here (PNG)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both overlays (after --)")
    args = parser.parse_args(argv)
    with cli_errors():  # a user error ends the script with its one-line message
        return report(args)


if __name__ == "__main__":
    main()
