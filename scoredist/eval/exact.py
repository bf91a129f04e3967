"""Distribution metrics that the exact shapes prior makes exact (design.md §5).

For the samples of one method, grouped by prompt:

- Fréchet distance in pixel space to the prompt's distribution p(x | y), against the exact mean and covariance of
  its mixture (`mixture_for(y)`), averaged over prompts; and the same to the prompt's clean distribution
  p(x | y + TGT_SUFFIX) (in this world the target suffix's words select exactly the clean renders, the analogue of
  the real photos a zero-shot FID compares with).
- Fréchet distance in a fixed feature space (the FID Inception network) between all samples and as many exact
  samples of the prompts' distributions (seeded per prompt, saved to 8 bits like the samples were).
- Prompt fidelity: the fraction of samples whose nearest component (in the whole world) has the prompt's caption.
- Artifact rate: the fraction whose nearest component is a corrupted variant, and which variants.
- Mean log-density of the samples under the prompt's clean distribution diffused to a small t, per dimension:
  log Σ_k π_k N(x; μ_k, (σ² + (1 − ᾱ_t)/ᾱ_t) I) / D, the density of x_t/sqrt(ᾱ_t); a small t keeps it finite and
  informative for images that are near, but not on, a component.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from scoredist.eval.features import features
from scoredist.eval.folders import quantise, read_images
from scoredist.eval.frechet import MIN_SAMPLES, MixtureMoments, SampleMoments, frechet_distance, too_few_samples
from scoredist.guidance.base import scaled_linear_alphas_cumprod
from scoredist.guidance.exact.vocabulary import parse_prompt
from scoredist.prompts import TGT_SUFFIX


def log_density(mixture, x: torch.Tensor, abar: float) -> torch.Tensor:
    """log p_t(x) per sample, (N,) float64: the mixture diffused to ᾱ_t, as a density of x = x_t / sqrt(ᾱ_t)."""
    flat = x.reshape(x.shape[0], -1).double().to(mixture.means.device)
    abar_t = torch.full((flat.shape[0],), abar, dtype=torch.float64, device=flat.device)
    logw = mixture.log_weights.expand(flat.shape[0], -1)
    log_pt = torch.logsumexp(mixture.log_posterior(math.sqrt(abar) * flat, abar_t, logw), dim=1)
    return log_pt + 0.5 * flat.shape[1] * math.log(abar)  # change of variables x_t = sqrt(ᾱ) x


def on_caption(nearest_caption: str, prompt: str) -> bool:
    """Does a nearest component's caption ("red cube") show what the prompt asks for (its colour and its shape, where
    the prompt names them)?"""
    asked, got = parse_prompt(prompt), parse_prompt(nearest_caption)
    colour_ok = not asked.colours or set(got.colours) <= set(asked.colours)
    return colour_ok and (not asked.shapes or set(got.shapes) <= set(asked.shapes))


def fidelity_and_artifacts(evidence: list[dict]) -> dict:
    """Prompt fidelity, artifact rate and the artifacts' shares, from per-sample evidence dicts with "prompt",
    "nearest_caption" and "nearest_variant" (ShapesPrior.evaluate's words, which samples.jsonl records too)."""
    n = len(evidence)
    variants = Counter(e["nearest_variant"] for e in evidence if e["nearest_variant"] != "clean")
    return {
        "fidelity": sum(on_caption(e["nearest_caption"], e["prompt"]) for e in evidence) / n,
        "artifact_rate": sum(variants.values()) / n,
        "artifacts": {v: c / n for v, c in variants.most_common()},
    }


class ShapesMetrics:
    """Exact metrics of samples against the shapes prior (see the module docstring).

    Args:
        log_density_t: the timestep index at which the clean log-density is taken (20: ᾱ ≈ 0.98, diffusion noise of
            std ≈ 0.14 in [−1, 1] pixels, about the prior's own component std 0.1), on the ε prior's schedule for
            every row: a row distilled on the flow prior (whose index 20 is another noise level) is measured alike.
        feature_net: a module mapping RGB (N, 3, H, W) in [0, 1] to features (N, F) — the FID Inception network
            (`scoredist.eval.features.PackagedInception`) in the benchmark — or None for no feature-space distance.
        reference_seed: seeds the exact reference samples of the feature-space distance (per prompt).
    """

    columns = (
        # key, header, format, direction (↓ lower is better, ↑ higher is better)
        ("fd_pixels", "FD pixels", "{:.1f}", "↓"),
        ("fd_pixels_clean", "FD pixels (clean)", "{:.1f}", "↓"),
        ("fd_features", "FD Inception", "{:.1f}", "↓"),
        ("fidelity", "prompt fidelity", "{:.0%}", "↑"),
        ("artifact_rate", "artifact rate", "{:.0%}", "↓"),
        ("artifacts", "main artifacts", "{}", ""),
        ("log_density", "log p clean (nats/dim)", "{:.2f}", "↑"),
    )

    def __init__(self, log_density_t: int = 20, feature_net=None, reference_seed: int = 0):
        self.log_density_t = int(log_density_t)
        self.feature_net = feature_net
        self.reference_seed = int(reference_seed)
        self._reference_features: dict[tuple, torch.Tensor] = {}
        self._priors: dict[str, object] = {}

    def __call__(self, prior, samples: dict[str, torch.Tensor]) -> dict:
        """Metrics of one method: `samples` maps each prompt to its samples in model space (n, 3, R, R). A distance
        that too few samples leave undefined is None, and "missing" says why (the table's footnotes)."""
        per_prompt = {p: self.prompt_metrics(prior, p, x) for p, x in samples.items()}
        evidence = [e for m in per_prompt.values() for e in m.pop("evidence")]
        missing = self.missing(samples)
        fd_features = None
        if self.feature_net is not None and "fd_features" not in missing:
            fd_features = self.feature_distance(prior, samples)
        return {
            "fd_pixels": _mean([m["fd_pixels"] for m in per_prompt.values()]),
            "fd_pixels_clean": _mean([m["fd_pixels_clean"] for m in per_prompt.values()]),
            "fd_features": fd_features,
            "missing": missing,
            **fidelity_and_artifacts(evidence),
            "log_density": sum(e["log_density"] for e in evidence) / len(evidence),
            "samples": len(evidence),
            "prompts": len(samples),
            "per_prompt": per_prompt,
            "per_sample": evidence,
        }

    def missing(self, samples: dict[str, torch.Tensor]) -> dict[str, str]:
        """{column: why it is empty} for the distances these samples are too few for: the pixel distances are per
        prompt (averaged over the prompts with enough samples), the feature distance pools every sample."""
        missing = {}
        per_prompt = too_few_samples(max(x.shape[0] for x in samples.values()), "per prompt")
        if per_prompt:
            missing["fd_pixels"] = missing["fd_pixels_clean"] = per_prompt
        pooled = too_few_samples(sum(x.shape[0] for x in samples.values()), "per run")
        if pooled and self.feature_net is not None:
            missing["fd_features"] = pooled
        return missing

    def prompt_metrics(self, prior, prompt: str, x: torch.Tensor) -> dict:
        mixture = prior.mixture_for(prompt)
        clean = prior.mixture_for(prompt + TGT_SUFFIX)
        labels = prior.nearest_component(x)
        abar = float(scaled_linear_alphas_cumprod()[self.log_density_t])
        density = log_density(clean, x, abar) / x[0].numel()
        evidence = [
            {
                "prompt": prompt,
                "nearest_component": str(label),
                "nearest_caption": label.caption,
                "nearest_variant": label.variant,
                "log_density": float(d),
            }
            for label, d in zip(labels, density)
        ]
        enough = x.shape[0] >= MIN_SAMPLES
        return {
            "fd_pixels": frechet_distance(SampleMoments.of(x), MixtureMoments.of(mixture)) if enough else None,
            "fd_pixels_clean": frechet_distance(SampleMoments.of(x), MixtureMoments.of(clean)) if enough else None,
            "samples": x.shape[0],
            "evidence": evidence,
        }

    def feature_distance(self, prior, samples: dict[str, torch.Tensor]) -> float:
        """FD between the features of all samples and of as many exact samples of the same prompts."""
        ours = torch.cat([features(self.feature_net, prior.decode(x)) for x in samples.values()])
        refs = torch.cat([self.reference_features(prior, p, x.shape[0]) for p, x in samples.items()])
        return frechet_distance(SampleMoments.of(ours), SampleMoments.of(refs))

    def reference_features(self, prior, prompt: str, n: int) -> torch.Tensor:
        """Features of n exact samples of p(x | prompt), seeded by the prompt (cached: every method shares them)."""
        key = (prompt, n, prior.resolution)
        if key not in self._reference_features:
            generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()) + self.reference_seed)
            x = prior.mixture_for(prompt).sample(n, generator).float().reshape(n, *prior.sample_shape())
            self._reference_features[key] = features(self.feature_net, quantise(prior.decode(x)))
        return self._reference_features[key]

    def evaluate_run(self, run) -> dict:
        """The metrics of a finished run folder (`scoredist.eval.collect.RunFolder`), read from its saved images,
        against the prior its own config names."""
        prior = self.prior_of(run.config)
        size = tuple(prior.sample_shape()[-2:])
        samples = {p: prior.encode(read_images(run.images_of(p), size)) for p in run.prompts()}
        return self(prior, samples)

    def prior_of(self, config):
        """The run's guidance, instantiated once per distinct guidance config (every method shares one)."""
        key = OmegaConf.to_yaml(config.guidance)
        if key not in self._priors:
            self._priors[key] = instantiate(config.guidance, device="cpu", precision="fp32")
        return self._priors[key]


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def eval_rows(metrics: dict) -> list[dict]:
    """A sample's eval values (samples.jsonl: a list per metric, one entry per final row or view of the sample, or a
    scalar for the whole sample) as one dict per row, scalars repeated on every row."""
    lengths = {len(v) for v in metrics.values() if isinstance(v, list)}
    if len(lengths) > 1:
        raise ValueError(f"eval lists of different lengths {sorted(lengths)}: {sorted(metrics)}")
    rows = lengths.pop() if lengths else 1
    return [{k: v[i] if isinstance(v, list) else v for k, v in metrics.items()} for i in range(rows)]


def summarise_records(records: list[dict]) -> dict:
    """One run's samples.jsonl records as summary values for a tracker: prompt fidelity, artifact rate and each
    artifact's share where the records say what each sample became (the shapes prior), the mean of every numeric
    eval value, and the time per sample."""
    evals = [{**row, "prompt": r["prompt"]} for r in records if r.get("eval") for row in eval_rows(r["eval"])]
    summary: dict = {}
    if evals and all("nearest_caption" in e and "nearest_variant" in e for e in evals):
        found = fidelity_and_artifacts(evals)
        summary["eval/prompt_fidelity"] = found["fidelity"]
        summary["eval/artifact_rate"] = found["artifact_rate"]
        summary.update({f"eval/artifact/{v}": share for v, share in found["artifacts"].items()})
    keys = {k for e in evals for k, v in e.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for k in sorted(keys):
        values = [e[k] for e in evals if isinstance(e.get(k), (int, float))]
        summary[f"eval/{k}_mean"] = sum(values) / len(values)
    if records:
        summary["seconds_per_sample"] = sum(float(r["seconds"]) for r in records) / len(records)
    return summary
