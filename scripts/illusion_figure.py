"""Ambiguous images on the exact shapes prior, checked: how likely is each view of the result under its own prompt?

    python scripts/illusion_figure.py                                  # +experiment=illusion_shapes, seed 0
    python scripts/illusion_figure.py --seeds 0 1 2 --figure docs/illusion_shapes.png --out illusion.json
    python scripts/illusion_figure.py -- prompt="a green cone"         # Hydra overrides for every run, after --

Runs the illusion (every view of `renderer.views`, each conditioned on its prompt) with each of --losses, and each
view alone with the first loss (the single-prompt image of that view's prompt, seen under the same transform). For
every result and every view it prints the exact log-density of the transformed image under the view's prompt, in nats
per pixel value: log p(T_v(x) | y_v) / D at t = 0, p(· | y) being the prior's own distribution of the prompt (every
variant of the caption, corrupted ones included), and the same under the prompt's clean distribution (y_v + the target
suffix, which selects the clean variant: what ours aims at, and where SDS's washed-out look costs). The check of the
issue: under every view the illusion beats the single-prompt image of every other view's prompt, i.e. the one image
serves both readings better than either single-prompt image serves the other's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from scoredist.errors import cli_errors
from scoredist.prompts import TGT_SUFFIX
from scoredist.scripting import compose_experiment, train_and_load, write_figure, write_json


def log_density(prior, x: torch.Tensor, prompt: str) -> torch.Tensor:
    """Exact log p(x | prompt) / D at t = 0 (the prompt's own mixture, N(μ_k, σ² I)), per image: (N, ...) → (N,)."""
    from scoredist.eval.exact import log_density as mixture_log_density

    return mixture_log_density(prior.mixture_for(prompt), x, abar=1.0) / x[0].numel()


def view_scores(prior, x: torch.Tensor, views, suffix: str = "") -> list[float]:
    """log p(T_v(x) | y_v + suffix) / D for every view v of one image x (1, 3, R, R)."""
    from scoredist.renderers.transforms import apply

    return [float(log_density(prior, apply(v.transform, x), v.prompt + suffix)[0]) for v in views]


def run_set(experiment: str, overrides: list[str], losses: list[str], work: Path) -> tuple[dict, list, DictConfig]:
    """Final images (untransformed, (1, 3, R, R)) of the illusion with each loss and of every view alone (the first
    loss, the view's own transform): {name: image}."""
    from scoredist.renderers.transforms import View, invert, parse_views

    base = compose_experiment(experiment, overrides)
    # a view without a prompt is conditioned on the run's prompt: name it, for the labels and the scores
    views = [
        View(v.transform, v.prompt or base.prompt)
        for v in parse_views(OmegaConf.to_container(base.renderer.views, resolve=True))
    ]
    images = {}
    for loss in losses:
        cfg = compose_experiment(experiment, [*overrides, f"loss={loss}"])
        rows = train_and_load(cfg, work / f"illusion-{loss}")
        images[f"illusion, {loss}"] = invert(views[0].transform, rows[:1])
    for i, view in enumerate(views):
        cfg = compose_experiment(experiment, [*overrides, f"loss={losses[0]}"])
        cfg.renderer.views = [{"transform": view.transform, "prompt": view.prompt}]
        rows = train_and_load(cfg, work / f"single-{i}")
        images[f"only {view.prompt}, {losses[0]}"] = invert(view.transform, rows)
    return images, views, base


def illusion_check(scores: dict[str, list[float]], views, illusion: str) -> bool:
    """Under every view, the illusion scores higher than the single-prompt image of every other view's prompt."""
    single = {v.prompt: next(k for k in scores if k.startswith(f"only {v.prompt},")) for v in views}
    return all(
        scores[illusion][i] > scores[single[other]][i]
        for i, v in enumerate(views)
        for other in single
        if other != v.prompt
    )


def figure(images: dict, scores: dict, clean: dict, views, prior) -> np.ndarray:
    """One row per result, one column per view (the image as that view's prompt sees it), labelled with the scores."""
    from scoredist.images import labelled_row
    from scoredist.renderers.transforms import apply

    rows = []
    for name, x in images.items():
        panels = prior.decode(torch.cat([apply(v.transform, x) for v in views]))
        labels = [
            f"{name} | {v.label()} | log p/D {s:.2f}, clean {c:.2f}"
            for v, s, c in zip(views, scores[name], clean[name])
        ]
        rows.append(labelled_row(panels, labels))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def report(args) -> dict:
    results = {"seeds": {}, "views": None}
    for n, seed in enumerate(args.seeds):
        overrides = [f"seed={seed}", *([f"trainer.max_steps={args.steps}"] if args.steps else []), *args.overrides]
        with tempfile.TemporaryDirectory() as tmp:
            images, views, base = run_set(args.experiment, overrides, args.losses, Path(tmp))
        prior = instantiate(base.guidance, device="cpu", precision="fp32")
        scores = {name: view_scores(prior, x, views) for name, x in images.items()}
        clean = {name: view_scores(prior, x, views, TGT_SUFFIX) for name, x in images.items()}
        holds = illusion_check(scores, views, f"illusion, {args.losses[0]}")
        results["views"] = [v.label() for v in views]
        results["seeds"][seed] = {"log_p_per_dim": scores, "clean_log_p_per_dim": clean, "check_holds": holds}
        if n == 0 and args.figure:
            write_figure(args.figure, figure(images, scores, clean, views, prior))
    print_table(results)
    if args.out:
        write_json(args.out, results)
    return results


def print_table(results: dict) -> None:
    seeds = list(results["seeds"].values())
    print(f"\nlog p(T_v(x) | y_v) / D, mean over seeds {list(results['seeds'])} (min … max); the prompt's whole")
    print("distribution, then its clean variant\n")
    views = results["views"]
    print("| result | " + " | ".join(f"{v}" for v in views) + " | " + " | ".join(f"{v}, clean" for v in views) + " |")
    print("|---" * (2 * len(views) + 1) + "|")
    for name in seeds[0]["log_p_per_dim"]:
        cells = []
        for key in ("log_p_per_dim", "clean_log_p_per_dim"):
            for i in range(len(views)):
                values = [s[key][name][i] for s in seeds]
                cells.append(f"{sum(values) / len(values):.2f} ({min(values):.2f} … {max(values):.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\ncheck holds for {sum(s['check_holds'] for s in seeds)} of {len(seeds)} seeds")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="illusion_shapes", help="the +experiment overlay (exact shapes prior)")
    parser.add_argument(
        "--losses",
        nargs="+",
        default=["ours", "sds"],
        help="losses of the illusion runs; the first is checked and also makes the single-prompt images",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default: the experiment's)")
    parser.add_argument("--figure", type=Path, help="write the labelled figure of the first seed here (PNG)")
    parser.add_argument("--out", type=Path, help="write every number as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    with cli_errors():  # a user error ends the script with its one-line message
        return report(args)


if __name__ == "__main__":
    main()
