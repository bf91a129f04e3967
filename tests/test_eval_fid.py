"""Zero-shot FID / CLIP-FID (preset=coco) on CPU: tiny feature networks through the same code path as the real ones,
the packaged Inception weights, and the messages when something is missing."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from scoredist.eval import features as features_module
from scoredist.eval.collect import read_run
from scoredist.eval.features import CLIPImageFeatures, PackagedInception, features
from scoredist.eval.fid import ZeroShotFID, read_square_images
from scoredist.eval.frechet import SampleMoments, frechet_distance
from scoredist.images import save_png


class TinyFeatures(torch.nn.Module):
    """A fixed random conv net: RGB of any size → 6 features (the FID contract, small enough for a test)."""

    num_features = 6

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, rgb):
        x = torch.nn.functional.interpolate(rgb, size=(16, 16), mode="bilinear", antialias=True)
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


def write_images(folder, n: int, seed: int, size: int = 24, brightness: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        save_png(torch.rand(1, 3, size, size, generator=g) * brightness, folder / f"{i:05d}.png", min_size=1)
        for i in range(n)
    ]


def write_run(folder, images, prompt="a photo of a cat"):
    """A finished run folder around existing images (what train.py writes, minus the training)."""
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(
        OmegaConf.create(
            {
                "prompt": [f"{prompt} {i}" for i in range(len(images))],
                "samples_per_prompt": 1,
                "trainer": {},
                "loss": {"_target_": "scoredist.losses.sds.SDS"},
            }
        ),
        folder / "config.yaml",
    )
    lines = [
        {"index": i, "prompt": f"{prompt} {i}", "seconds": 1.0, "image": str(p.relative_to(folder))}
        for i, p in enumerate(images)
    ]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return read_run(folder)


def test_missing_reference_images_or_clip_stop_at_once_saying_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmark.metrics.reference_images="):
        ZeroShotFID(reference_images=None, inception=TinyFeatures(), clip="none")
    with pytest.raises(FileNotFoundError, match="benchmark.metrics.clip="):
        ZeroShotFID(reference_images=str(tmp_path), inception=TinyFeatures(), clip=None)
    with pytest.raises(FileNotFoundError, match="has no images"):
        ZeroShotFID(reference_images=str(tmp_path), inception=TinyFeatures(), clip="none")
    with pytest.raises(FileNotFoundError, match="Inception weights .* do not exist"):
        PackagedInception(str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="CLIP folder .* has no config.json"):
        CLIPImageFeatures(str(tmp_path))


def test_fid_on_8_images_end_to_end_with_tiny_feature_networks(tmp_path):
    refs = write_images(tmp_path / "refs", 8, seed=0)
    same = write_run(tmp_path / "same", write_images(tmp_path / "same" / "samples", 8, seed=0))
    dark = write_run(tmp_path / "dark", write_images(tmp_path / "dark" / "samples", 8, seed=1, brightness=0.3))
    inception, clip = TinyFeatures(0), TinyFeatures(1)
    fid = ZeroShotFID(reference_images=str(tmp_path / "refs"), inception=inception, clip=clip, image_size=24)
    identical = fid.evaluate_run(same)
    shifted = fid.evaluate_run(dark)
    assert identical["samples"] == 8 and identical["references"] == 8
    assert abs(identical["fid"]) < 1e-6 and abs(identical["clip_fid"]) < 1e-6  # the same images: distance 0
    assert shifted["fid"] > 1e-3 and shifted["clip_fid"] > 1e-3
    for key in ("fid", "clip_fid"):  # a bootstrap interval over the generated images, around the value
        low, high = shifted[f"{key}_interval"]
        assert low < shifted[key] < high
    assert fid.evaluate_run(dark) == shifted  # seeded: the same interval again
    # torchmetrics' statistic equals the exact low-rank Fréchet distance of the same features
    ref_features = features(inception, read_square_images(refs, 24))
    dark_features = features(inception, read_square_images([dark.path / r["image"] for r in dark.records], 24))
    ours = frechet_distance(SampleMoments.of(dark_features), SampleMoments.of(ref_features))
    assert shifted["fid"] == pytest.approx(ours, rel=1e-4, abs=1e-6)


def test_clip_features_load_from_a_local_folder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=5,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    net = CLIPImageFeatures(str(tmp_path / "clip"), device="cpu")
    rgb = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    out = features(net, rgb)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    assert torch.allclose(features(net, rgb), out)  # a fixed feature space
    refs = write_images(tmp_path / "refs", 4, seed=2)
    fid = ZeroShotFID(str(tmp_path / "refs"), inception=TinyFeatures(), clip=str(tmp_path / "clip"), image_size=24)
    assert abs(fid(refs)["clip_fid"]) < 1e-6


def test_the_packaged_inception_network_loads_checked_and_gives_2048_features(monkeypatch):
    net = PackagedInception(device="cpu")
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = features(net, rgb)
    assert out.shape == (2, 2048) and torch.isfinite(out).all() and out.abs().sum() > 0
    assert torch.equal(features(net, rgb), out)
    monkeypatch.setattr(features_module, "INCEPTION_SHA1", "0" * 40)  # a file that is not the published one
    with pytest.raises(FileNotFoundError, match="SHA-1 mismatch"):
        PackagedInception(device="cpu")


def test_the_plain_table_shows_intervals_and_the_cost_counted_by_the_run(tmp_path):
    from scoredist.eval.table import evaluate_runs, markdown

    refs = write_images(tmp_path / "refs", 8, seed=0)
    run = write_run(tmp_path / "dark", write_images(tmp_path / "dark" / "samples", 8, seed=1, brightness=0.3))
    for record in run.records:
        record["guidance_rows"] = 400.0
    fid = ZeroShotFID(reference_images=str(tmp_path / "refs"), inception=TinyFeatures(), clip="none", image_size=24)
    (row,) = evaluate_runs([run], fid)
    assert row["guidance_rows_per_sample"] == 400.0 and len(refs) == 8
    columns = (*fid.columns, ("guidance_rows_per_sample", "NFE / sample", "{:.0f}", ""))
    table = markdown([row], columns)
    low, high = row["fid_interval"]
    assert f"| {row['fid']:.2f} [{low:.2f}, {high:.2f}] | – | 400 |" in table
