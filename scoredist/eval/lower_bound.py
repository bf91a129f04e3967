"""The "DDIM (lower bound)" row of the paper's table: samples of the guidance model itself, as an ordinary run folder.

Sampling the model with DDIM is what score distillation approximates; its distance to the reference is the floor a
distillation method can reach with the same model (on the exact priors, with guidance_scale 1, DDIM samples the
prompt's exact distribution up to the ODE's discretisation, so it also shows the distances' own sampling noise at this
number of samples). The folder looks like a training run's to `scoredist.eval.collect`: config.yaml (with a `sampler`
node that names the method), samples.jsonl and samples/NNNNN.png; sample i starts from noise drawn from its own seed,
so a sample does not depend on the batch it ran in.

`sampler.name=exact` (exact priors only) draws exact samples of p(x | prompt) from the prior's mixture instead: the
floor of every distance at this number of samples. It differs from DDIM's row on the shapes prior because Stable
Diffusion's schedule, which the exact priors share, does not end at pure noise (ᾱ_999 ≈ 0.005): DDIM started from
N(0, I) lacks the small mean offset every image shares at t = 999 and ends, here, mostly on darker and lower-contrast
components — the same flaw that keeps Stable Diffusion from very bright or dark images (Lin et al., 2024).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from scoredist.devices import pick_device
from scoredist.guidance.base import ddim_sample
from scoredist.images import save_png
from scoredist.runs import finite_or_none, json_text
from scoredist.samples import INIT, make_samples, read_prompts, split_chunks

DEFAULT_SAMPLER = {"name": "ddim", "num_steps": 50, "guidance_scale": 1.0}


def sampler_config(cfg: DictConfig) -> DictConfig:
    """The sampler's settings: defaults, then a benchmark preset's `benchmark.lower_bound`, then `sampler`."""
    preset = cfg.get("benchmark", {}).get("lower_bound", {}) if cfg.get("benchmark") else {}
    return OmegaConf.merge(DEFAULT_SAMPLER, preset or {}, cfg.get("sampler") or {})


def initial_noise(sample, shape: tuple[int, ...]) -> torch.Tensor:
    """x_T of one sample, from its own seed (on the CPU, so every device gets the same noise)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(sample.stream_seed(INIT)))


def write_lower_bound(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Sample every (prompt, sample) of the config with DDIM and write the run folder. Returns its path."""
    run_dir = Path(run_dir)
    sampler = sampler_config(cfg)
    samples = make_samples(read_prompts(cfg.prompt, cfg.get("prompt_file")), cfg.get("samples_per_prompt", 1), cfg.seed)
    device = pick_device(cfg.trainer.device)
    guidance = instantiate(cfg.guidance, device=str(device), precision=cfg.trainer.precision)
    for caption in dict.fromkeys(s.caption for s in samples):
        guidance.check_prompt(caption)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(cfg)
    with open_dict(config):
        config.sampler = sampler
    OmegaConf.save(config, run_dir / "config.yaml", resolve=False)
    logger = instantiate(cfg.logger)
    logger.start(OmegaConf.to_container(config, resolve=True), run_dir, run_dir.name)
    records: dict[int, dict] = {}
    exit_code = 1
    try:
        with open(run_dir / "samples.jsonl", "w") as out:
            chunks = split_chunks(samples, cfg.trainer.batch_size)
            for index, chunk in enumerate(tqdm(chunks, desc=f"{run_dir.name} ({sampler.name})")):
                for record in _sample_chunk(guidance, index, chunk, sampler, run_dir, device):
                    out.write(json_text(finite_or_none(record)) + "\n")
                    records[record["index"]] = record
        logger.log_samples(run_dir, records)
        exit_code = 0
    finally:
        logger.finish(exit_code=exit_code)
    return run_dir


def exact_samples(guidance, chunk) -> torch.Tensor:
    """One exact sample of p(x | caption) per sample, each from its own seed: (B, *sample_shape)."""
    if not hasattr(guidance, "mixture_for"):
        raise ValueError(f"sampler.name=exact needs an exact prior (guidance=shapes or points2d), not {type(guidance)}")
    shape = guidance.sample_shape()
    draws = [
        guidance.mixture_for(s.caption).sample(1, torch.Generator().manual_seed(s.stream_seed(INIT))).reshape(shape)
        for s in chunk
    ]
    return torch.stack(draws).float().to(guidance.alphas_cumprod.device)


def guidance_rows(sampler) -> int:
    """Rows of the model one sample costs: DDIM's steps (twice with CFG: ε(y) and ε(∅)); none for exact samples."""
    if sampler.name == "exact":
        return 0
    return int(sampler.num_steps) * (1 if float(sampler.guidance_scale) == 1.0 else 2)


def _sample_chunk(guidance, index: int, chunk, sampler, run_dir: Path, device) -> list[dict]:
    start = time.perf_counter()
    prompts = [s.caption for s in chunk]
    if sampler.name == "exact":
        x = exact_samples(guidance, chunk)
    elif sampler.name == "ddim":
        x_T = torch.stack([initial_noise(s, guidance.sample_shape()) for s in chunk]).to(device)
        # guidance_scale 1: ε(y) alone, one row per sample; else CFG ε(∅) + s·(ε(y) − ε(∅)) in one call per step
        x = ddim_sample(guidance, x_T, prompts, int(sampler.num_steps), float(sampler.guidance_scale))
    else:
        raise ValueError(f"sampler.name must be ddim or exact, got {sampler.name!r}")
    rgb = guidance.decode(x)
    seconds = (time.perf_counter() - start) / len(chunk)
    evidence = _evaluate(guidance, x, prompts)
    records = []
    for i, s in enumerate(chunk):
        image = save_png(rgb[i : i + 1], run_dir / "samples" / f"{s.index:05d}.png")
        records.append(
            {
                "index": s.index,
                "chunk": index,
                "prompt": s.caption,
                "seed": s.seed,
                "steps": int(sampler.num_steps),
                "seconds": seconds,
                "guidance_rows": guidance_rows(sampler),
                "image": str(image.relative_to(run_dir)),
                "eval": evidence[i],
            }
        )
    return records


def _evaluate(guidance, x: torch.Tensor, prompts: list[str]) -> list[dict]:
    """guidance.evaluate per sample (one call per distinct prompt), per-row values as one-element lists, the schema
    of the trainer's samples.jsonl (a list per metric, one entry per row of the sample)."""
    out: list[dict] = [{} for _ in prompts]
    for prompt in dict.fromkeys(prompts):
        rows = [i for i, p in enumerate(prompts) if p == prompt]
        metrics = guidance.evaluate(x[rows], prompt)
        for j, i in enumerate(rows):
            out[i] = {k: [v[j]] if isinstance(v, list) else v for k, v in metrics.items()}
    return out
