"""Metrics of scoredist.eval: Fréchet distances against closed forms and a library, exact mixture moments by hand,
prompt fidelity and artifact rate on planted samples, images read back from run folders."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from omegaconf import OmegaConf

from scoredist.eval.collect import read_run
from scoredist.eval.exact import ShapesMetrics, fidelity_and_artifacts, log_density, summarise_records
from scoredist.eval.folders import quantise, read_images, read_rgb
from scoredist.eval.frechet import MixtureMoments, Moments, SampleMoments, frechet_distance
from scoredist.guidance.exact.mixture import GaussianMixture
from scoredist.guidance.exact.shapes import ShapesPrior
from scoredist.guidance.exact.world import corrupt
from scoredist.images import save_png
from scoredist.loggers import run_name, run_tags

# A small shapes world: 16×16 renders, 2 views per caption, 16 variants each (fast to build, same code).
TINY_PRIOR = dict(resolution=16, num_azimuths=2, elevations=(15.0,))


@pytest.fixture(scope="module")
def prior():
    return ShapesPrior(**TINY_PRIOR)


def scipy_fd(mu1, cov1, mu2, cov2) -> float:
    """The textbook formula with scipy's matrix square root (what pytorch-fid and clean-fid compute)."""
    covmean = scipy.linalg.sqrtm(cov1.numpy() @ cov2.numpy()).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1.numpy() + cov2.numpy() - 2 * covmean))


def test_frechet_distance_of_two_known_gaussians_is_the_closed_form():
    # diagonal: ‖Δμ‖² + Σ (√a_i − √b_i)² = (1 + 0 + 4) + (1 − 2)² + (2 − 1)² + (3 − 1)² = 11
    p = Moments(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.diag(torch.tensor([1.0, 4.0, 9.0])).double())
    q = Moments(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), torch.diag(torch.tensor([4.0, 1.0, 1.0])).double())
    assert frechet_distance(p, q) == pytest.approx(11.0, abs=1e-10)
    # full, non-commuting covariances: against scipy's sqrtm
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov1, cov2 = a @ a.T + 0.1 * torch.eye(5), b @ b.T + 0.1 * torch.eye(5)
    mu1, mu2 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    expected = scipy_fd(mu1, cov1, mu2, cov2)
    assert frechet_distance(Moments(mu1, cov1), Moments(mu2, cov2)) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(Moments(mu2, cov2), Moments(mu1, cov1)) == pytest.approx(expected, rel=1e-8)


def test_a_sample_set_against_itself_is_zero_and_samples_match_their_explicit_moments():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = SampleMoments.of(x)
    assert abs(frechet_distance(s, s)) < 1e-9
    explicit = Moments(x.mean(0), torch.cov(x.T))
    assert abs(frechet_distance(s, explicit)) < 1e-9
    y = x + 0.5
    assert frechet_distance(s, SampleMoments.of(y)) == pytest.approx(6 * 0.25, rel=1e-9)  # a pure shift: ‖Δμ‖²


def test_fewer_samples_than_dimensions_agree_with_the_library_on_explicit_covariances():
    # the low-rank form (an n × n eigenproblem) against torchmetrics' FID statistic on the full D × D matrices
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 30, generator=g, dtype=torch.float64)
    means = torch.randn(4, 30, generator=g, dtype=torch.float64)
    ref = MixtureMoments(
        means, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), torch.full((4,), 0.05).double()
    )
    library = float(_compute_fid(x.mean(0), torch.cov(x.T), ref.mean, ref.covariance()))
    assert frechet_distance(SampleMoments.of(x), ref) == pytest.approx(library, rel=1e-6)


def test_exact_moments_of_a_two_component_mixture_by_hand():
    # μ1 = (1, 0), μ2 = (−1, 2), π = (1/4, 3/4), σ² = 1/2:
    # μ = (1/4 − 3/4, 3/2) = (−1/2, 3/2); Σ = σ² I + π1 π2 (μ1 − μ2)(μ1 − μ2)ᵀ = 1/2 I + 3/16 [[4, −4], [−4, 4]]
    mixture = GaussianMixture(torch.tensor([[1.0, 0.0], [-1.0, 2.0]]), torch.tensor([0.25, 0.75]).log(), variances=0.5)
    m = MixtureMoments.of(mixture)
    assert torch.allclose(m.mean, torch.tensor([-0.5, 1.5], dtype=torch.float64))
    expected = torch.tensor([[1.25, -0.75], [-0.75, 1.25]], dtype=torch.float64)
    assert torch.allclose(m.covariance(), expected, atol=1e-12)
    assert m.trace() == pytest.approx(2.5)
    # and the distance to it equals the explicit-moment one (traces ≈ 2.5 each: 1e-8 is rounding)
    x = mixture.sample(50, torch.Generator().manual_seed(3))
    assert frechet_distance(SampleMoments.of(x), m) == pytest.approx(
        frechet_distance(SampleMoments.of(x), Moments(m.mean, expected)), abs=1e-8
    )


def test_log_density_is_the_diffused_gaussian_in_the_samples_scale():
    mu = torch.tensor([[0.5, -1.0, 2.0]])
    mixture = GaussianMixture(mu, torch.zeros(1), variances=0.04)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.5, -1.0, 2.0]])
    abar = 0.9
    var = 0.04 + (1 - abar) / abar
    expected = -0.5 * ((x - mu) ** 2).sum(1) / var - 1.5 * math.log(2 * math.pi * var)
    assert torch.allclose(log_density(mixture, x, abar), expected.double(), atol=1e-10)


def planted(prior, caption: str, variants: list[str], noise: float = 0.02, seed: int = 0) -> torch.Tensor:
    """Component means of `caption` (view k for the k-th variant), corrupted as named, plus a little noise."""
    colour, shape = caption.split()
    az = [a for a, _ in prior.bank_views]
    clean = torch.stack(
        [prior.reference_image(f"a {caption}", az[k % len(az)], prior.bank_views[0][1]) for k in range(len(variants))]
    )
    images = torch.stack([corrupt((c + 1) / 2, v) * 2 - 1 for c, v in zip(clean, variants)])
    return images + noise * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))


def test_fidelity_and_artifact_rate_of_planted_samples(prior):
    samples = {
        "a red cube": planted(prior, "red cube", ["clean", "clean", "blurry", "foggy"]),
        "a blue sphere": planted(prior, "green sphere", ["clean", "low contrast"]),  # the wrong colour
    }
    result = ShapesMetrics()(prior, samples)
    assert result["fidelity"] == pytest.approx(4 / 6)
    assert result["artifact_rate"] == pytest.approx(3 / 6)
    assert result["artifacts"] == pytest.approx({"blurry": 1 / 6, "foggy": 1 / 6, "low contrast": 1 / 6})
    variants = [e["nearest_variant"] for e in result["per_sample"]]
    assert variants == ["clean", "clean", "blurry", "foggy", "clean", "low contrast"]
    # the clean red cubes are likelier under the clean distribution than the foggy one
    density = [e["log_density"] for e in result["per_sample"]]
    assert min(density[:2]) > density[3] + 0.1


def test_exact_samples_are_closer_to_the_prompt_than_a_grey_set(prior):
    prompt = "a red cube"
    exact = prior.mixture_for(prompt).sample(64, torch.Generator().manual_seed(4)).float().reshape(64, 3, 16, 16)
    grey = 0.05 * torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    metrics = ShapesMetrics()
    fd_exact = metrics(prior, {prompt: exact})["fd_pixels"]
    fd_grey = metrics(prior, {prompt: grey})["fd_pixels"]
    assert fd_exact < 0.1 * fd_grey
    # the clean-only reference: the exact mixture of all variants is farther from it than from its own prompt
    assert metrics(prior, {prompt: exact})["fd_pixels_clean"] > fd_exact


def test_feature_distance_uses_the_feature_net_on_exact_references(prior):
    class MeanColour(torch.nn.Module):  # a fixed 3-feature "network": the mean colour of the image
        def forward(self, rgb):
            return rgb.mean(dim=(2, 3))

    metrics = ShapesMetrics(feature_net=MeanColour())
    red = planted(prior, "red cube", ["clean"] * 4, seed=1)
    blue = planted(prior, "blue cube", ["clean"] * 4, seed=2)
    near = metrics(prior, {"a red cube": red})["fd_features"]
    far = metrics(prior, {"a red cube": blue})["fd_features"]
    assert 0 <= near < far
    refs = metrics.reference_features(prior, "a red cube", 4)
    assert refs.shape == (4, 3) and torch.equal(refs, metrics.reference_features(prior, "a red cube", 4))


def test_fidelity_summary_from_records():
    records = [
        {
            "prompt": "a red cube",
            "seconds": 1.0,
            "eval": {"nearest_caption": "red cube", "nearest_variant": "clean", "nearest_rms": 0.1},
        },
        {
            "prompt": "a red cube",
            "seconds": 3.0,
            "eval": {"nearest_caption": "red cube", "nearest_variant": "dull", "nearest_rms": 0.3},
        },
        {
            "prompt": "a blue cone",
            "seconds": 2.0,
            "eval": {"nearest_caption": "blue cube", "nearest_variant": "dull", "nearest_rms": 0.2},
        },
    ]
    summary = summarise_records(records)
    assert summary["eval/prompt_fidelity"] == pytest.approx(2 / 3)
    assert summary["eval/artifact_rate"] == pytest.approx(2 / 3)
    assert summary["eval/artifact/dull"] == pytest.approx(2 / 3)
    assert summary["eval/nearest_rms_mean"] == pytest.approx(0.2)
    assert summary["seconds_per_sample"] == pytest.approx(2.0)
    evidence = [{**r["eval"], "prompt": r["prompt"]} for r in records]
    assert fidelity_and_artifacts(evidence)["artifacts"] == {"dull": pytest.approx(2 / 3)}


def test_saved_samples_read_back_exactly_up_to_8_bits(tmp_path):
    rgb = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    path = save_png(rgb, tmp_path / "s.png")  # upscaled ×16 with nearest neighbour, as the trainer saves samples
    back = read_rgb(path, (8, 8))
    assert back.shape == (3, 8, 8)
    assert torch.allclose(back, quantise(rgb)[0], atol=1e-6)
    assert read_images([path, path], (4, 4)).shape == (2, 3, 4, 4)  # any other size: resized


def test_an_unfinished_run_folder_is_skipped_with_a_warning_naming_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(
        OmegaConf.create(
            {
                "prompt": ["a red cube", "a blue cone"],
                "samples_per_prompt": 2,
                "trainer": {},
                "loss": {"_target_": "scoredist.losses.ours.Ours"},
            }
        ),
        run / "config.yaml",
    )
    lines = [{"index": i, "prompt": "a red cube", "seconds": 1.0, "image": f"samples/{i:05d}.png"} for i in range(3)]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.warns(UserWarning, match=f"skipping unfinished run {run}: 3 of 4"):
        assert read_run(run) is None
    with open(run / "samples.jsonl", "a") as f:
        f.write(json.dumps({**lines[0], "index": 3}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        finished = read_run(run)
    assert finished.method == "ours" and finished.label == "Ours" and len(finished.records) == 4


def test_wandb_names_and_tags_say_what_a_run_is():
    config = {
        "prompt": ["a red cube", "a blue cone", "a green torus"],
        "loss": {"_target_": "scoredist.losses.ours.Ours"},
        "renderer": {"_target_": "scoredist.renderers.image.ImageRenderer"},
        "guidance": {"_target_": "scoredist.guidance.exact.shapes.ShapesPrior"},
        "benchmark": {"name": "shapes"},
    }
    assert run_name(config, "fallback") == "ours | a red cube +2"
    assert run_tags(config) == ["loss:ours", "renderer:image", "guidance:shapes", "benchmark:shapes"]
    assert run_name({**config, "prompt": "a red cube", "sampler": {"name": "ddim"}}, "x") == "ddim | a red cube"


def test_a_16_bit_png_is_refused_by_name_not_read_on_the_wrong_scale(tmp_path):
    """An image of 16-bit values read as if 8-bit would be 257× too bright (the FID silently wrong): every reader
    (metrics, renderer init, DDS reference) goes through the one decoder, which refuses it."""
    import imageio.v3 as iio

    from scoredist.images import read_image

    path = tmp_path / "deep.png"
    iio.imwrite(path, np.full((8, 8), 40000, dtype=np.uint16))  # a 16-bit grey PNG
    assert np.asarray(iio.imread(path)).dtype == np.uint16  # the file really is 16-bit
    for read in (lambda: read_rgb(path), lambda: read_rgb(path, (4, 4)), lambda: read_images([path])):
        with pytest.raises(ValueError, match=r"deep.png is not an 8-bit still image .*uint16"):
            read()
    with pytest.raises(ValueError, match="not an 8-bit still image"):
        read_image(path, 8, 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_rgb(tmp_path / "missing.png")
    grey = tmp_path / "grey.png"
    iio.imwrite(grey, np.full((8, 8), 51, dtype=np.uint8))  # an 8-bit grey image: expanded to RGB, value 51/255
    torch.testing.assert_close(read_rgb(grey), torch.full((3, 8, 8), 0.2))


def test_one_method_name_for_the_table_wandb_and_the_folders():
    """method_of names a run the same from config.yaml (DictConfig) and from wandb's plain dict: the exact-samples
    floor is "exact" in both, not "ddim"."""
    from scoredist.eval.collect import method_of

    base = {"prompt": "a red cube", "loss": {"_target_": "scoredist.losses.ours.Ours"}}
    for config, method in (
        (base, "ours"),
        ({**base, "sampler": {"name": "exact", "num_steps": 50}}, "exact"),
        ({**base, "sampler": {"name": "ddim"}}, "ddim"),
        ({**base, "sampler": {"num_steps": 50}}, "ddim"),
        ({**base, "loss": {"_target_": "scoredist.losses.vsd.VSD"}, "benchmark": {"row": "vsd_exact"}}, "vsd_exact"),
        ({**base, "benchmark": {"row": None}}, "ours"),  # a run of a preset outside scripts/benchmark.py
    ):
        assert method_of(config) == method_of(OmegaConf.create(config)) == method
        assert run_name(config, "x") == f"{method} | a red cube"
        assert run_tags(config)[0] == f"loss:{method}"
    assert method_of({"prompt": "a red cube"}) is None and run_name({"prompt": "a red cube"}, "x") == "x"
    assert method_of({"benchmark": "Benchmark preset=shapes", "runs": []}) is None  # the table's own tracker run


def test_one_sample_leaves_the_frechet_columns_empty_with_a_footnote_saying_why(prior, tmp_path):
    """One sample per prompt (the README's demo sweep): no distance, a reason per column, and the table's footnotes
    name the columns and rows; the zero-shot FID of one image says the same instead of stopping the table."""
    from scoredist.eval.fid import ZeroShotFID
    from scoredist.eval.table import footnotes
    from tests.test_eval_fid import TinyFeatures, write_images

    class MeanColour(torch.nn.Module):
        def forward(self, rgb):
            return rgb.mean(dim=(2, 3))

    one = planted(prior, "red cube", ["clean"], seed=1)
    result = ShapesMetrics(feature_net=MeanColour())(prior, {"a red cube": one, "a blue cube": one})
    assert result["fd_pixels"] is None and result["fd_pixels_clean"] is None and result["fidelity"] == 0.5
    assert result["fd_features"] is not None  # two prompts × one sample: the pooled feature distance has 2
    assert set(result["missing"]) == {"fd_pixels", "fd_pixels_clean"}
    assert result["missing"]["fd_pixels"].startswith("a Fréchet distance needs at least 2 samples per prompt, got 1")
    alone = ShapesMetrics(feature_net=MeanColour())(prior, {"a red cube": one})
    assert alone["fd_features"] is None and "2 samples per run, got 1" in alone["missing"]["fd_features"]

    rows = [{"label": "SDS", **result}, {"label": "Ours", "missing": {}}]
    notes = footnotes(rows, ShapesMetrics.columns)
    assert notes == [
        f"FD pixels: – for SDS: {result['missing']['fd_pixels']}",
        f"FD pixels (clean): – for SDS: {result['missing']['fd_pixels']}",
    ]
    refs = write_images(tmp_path / "refs", 4, seed=0)
    fid = ZeroShotFID(reference_images=str(tmp_path / "refs"), inception=TinyFeatures(), clip="none", image_size=24)
    single = fid(refs[:1])
    assert single["fid"] is None and list(single["missing"]) == ["fid"]
    assert "samples_per_prompt=2 or more" in single["missing"]["fid"]
