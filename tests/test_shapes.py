"""The shapes world (renderer, corruptions, prompts) and its exact mixture prior ShapesPrior."""

import importlib.util
import math
import time
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from scoredist.guidance.base import add_noise
from scoredist.guidance.exact.mixture import GaussianMixture
from scoredist.guidance.exact.shapes import ShapesPrior, render_caption, view_name
from scoredist.guidance.exact.vocabulary import parse_prompt
from scoredist.guidance.exact.world import (
    BACKGROUND_RGB,
    COLOUR_RGB,
    MIRROR,
    SHAPE_SDFS,
    VARIANT_NAMES,
    corrupt,
    render,
    render_views,
)
from scoredist.prompts import NFSD_NEGATIVE, SRC_SUFFIX, TGT_SUFFIX

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_prior():
    """4 azimuths × 1 elevation: the world is 30 captions × 4 views × 16 variants = 1920 components."""
    return ShapesPrior(resolution=32, num_azimuths=4, elevations=(20.0,))


@pytest.fixture(scope="module")
def cube():
    """A clean red cube, (3, 32, 32) in [0, 1]."""
    return render("cube", "red", azimuth=30.0, elevation=25.0, resolution=32)


# ---------------------------------------------------------------------------------------------------------------------
# Renderer
# ---------------------------------------------------------------------------------------------------------------------


def test_renderer_is_deterministic_and_draws_the_object(cube):
    again = render("cube", "red", azimuth=30.0, elevation=25.0, resolution=32)
    assert torch.equal(cube, again)
    assert cube.shape == (3, 32, 32) and cube.min() >= 0 and cube.max() <= 1
    torch.testing.assert_close(cube[:, 0, 0], torch.tensor(BACKGROUND_RGB))  # corner = plain background
    centre = cube[:, 14:18, 14:18].mean((1, 2))
    assert centre[0] > 0.3 and centre[0] > 3 * centre[1] and centre[0] > 3 * centre[2]  # red dominates
    object_fraction = ((cube - torch.tensor(BACKGROUND_RGB)[:, None, None]).abs().sum(0) > 0.05).float().mean()
    assert 0.1 < object_fraction < 0.7


def test_every_caption_renders_a_distinct_image():
    images = torch.stack([render(s, c, 30.0, 25.0, resolution=32) for c in COLOUR_RGB for s in SHAPE_SDFS]).flatten(
        1
    )  # (30, D)
    d = torch.cdist(images, images) + torch.eye(len(images)) * 1e9
    assert d.min() > 1.0  # every pair differs by more than 1 in L2 over 3072 values in [0, 1]


def test_views_and_resolutions():
    imgs = render_views("cone", "blue", [0.0, 90.0, 180.0], [20.0, 20.0, 20.0], resolution=64)
    assert imgs.shape == (3, 3, 64, 64)
    # The key light is in front: the front view of the object is brighter than the back view.
    mask = (imgs - torch.tensor(BACKGROUND_RGB)[:, None, None]).abs().sum(1) > 0.05
    front, back = imgs[0][:, mask[0]].mean(), imgs[2][:, mask[2]].mean()
    assert front > back + 0.05


def test_rendering_a_bank_is_fast():
    start = time.perf_counter()
    render_views("torus", "purple", list(range(0, 360, 45)) * 2, [15.0] * 8 + [40.0] * 8, resolution=32)
    assert time.perf_counter() - start < 3.0  # measured ~0.06 s single-threaded


# ---------------------------------------------------------------------------------------------------------------------
# Corruptions
# ---------------------------------------------------------------------------------------------------------------------


def _saturation(img):
    return (img.amax(0) - img.amin(0)).mean().item()


def _high_freq(img):
    return ((img[:, 1:, :] - img[:, :-1, :]) ** 2).mean().item() + ((img[:, :, 1:] - img[:, :, :-1]) ** 2).mean().item()


def _luma(img):
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def test_corruptions_change_the_image_in_the_expected_direction(cube):
    c = {name: corrupt(cube, name) for name in VARIANT_NAMES}
    assert _saturation(c["oversaturated"]) > 1.3 * _saturation(cube)
    assert _high_freq(c["smooth"]) < 0.7 * _high_freq(cube)
    assert _high_freq(c["blurry"]) < 0.6 * _high_freq(c["smooth"])  # measured 0.51
    assert _high_freq(c["noisy"]) > 2.0 * _high_freq(cube)
    for name in ("foggy", "hazy", "low contrast", "dull"):
        assert _luma(c[name]).std() < 0.7 * _luma(cube).std(), name
    assert c["foggy"].mean() > cube.mean()  # fog is white
    for name in ("dark", "gloomy"):
        assert c[name].mean() < 0.6 * cube.mean(), name
    assert _saturation(c["dull"]) < 0.5 * _saturation(cube)
    # pixelated: 4×4 blocks constant at 32²
    blocks = c["pixelated"].reshape(3, 8, 4, 8, 4)
    assert torch.allclose(blocks, blocks[:, :, :1, :, :1].expand_as(blocks), atol=1e-6)
    clean_blocks = cube.reshape(3, 8, 4, 8, 4)
    assert not torch.allclose(clean_blocks, clean_blocks[:, :, :1, :, :1].expand_as(clean_blocks), atol=1e-2)
    # cartoon: posterised (4 levels per channel) with black outlines
    levels = torch.unique((c["cartoon"] * 3).round() / 3 - c["cartoon"])
    assert levels.abs().max() < 1e-6
    assert (c["cartoon"].sum(0) == 0).float().mean() > 0.02
    # bad structure permutes tiles: the same pixel values, in other places
    assert torch.equal(c["bad structure"].flatten().sort().values, cube.flatten().sort().values)
    assert (c["bad structure"] - cube).abs().mean() > 0.05
    # malformed: a geometric warp, no noise added
    assert (c["malformed"] - cube).abs().mean() > 0.02
    assert _high_freq(c["malformed"]) < 1.5 * _high_freq(cube)


def test_corruptions_are_pure_deterministic_and_distinct(cube):
    other = render("cube", "red", azimuth=120.0, elevation=25.0, resolution=32)
    batch = torch.stack([cube, other])
    outs = []
    for name in VARIANT_NAMES:
        once = corrupt(cube, name)
        assert torch.equal(once, corrupt(cube, name)), name  # deterministic (noise seeded from the image)
        assert torch.equal(corrupt(batch, name)[0], once), name  # batched = one by one
        if name.startswith(MIRROR):  # the corruption reflected through the clean image, not clipped
            torch.testing.assert_close(once, 2 * cube - corrupt(cube, name.removeprefix(MIRROR)), rtol=0, atol=1e-6)
        else:
            assert once.min() >= 0 and once.max() <= 1, name
        outs.append(once.flatten())
    d = torch.cdist(torch.stack(outs), torch.stack(outs)) + torch.eye(len(outs)) * 1e9
    assert d.min() > 1.0  # every variant is its own mixture mean
    # noise differs between views (it is seeded by the image, not a single global pattern)
    n0, n1 = corrupt(cube, "noisy") - cube, corrupt(other, "noisy") - other
    assert (n0 - n1).abs().mean() > 0.05


def test_render_caption_applies_descriptors(cube):
    img = render_caption("a red cube", azimuth=30.0, elevation=25.0, resolution=32)
    assert torch.equal(img, cube)
    assert torch.equal(render_caption("a red cube, blurry", 30.0, 25.0, 32), corrupt(cube, "blurry"))
    with pytest.raises(ValueError, match="exactly one colour and one shape"):
        render_caption("a cube")


def test_render_shape_script_writes_png(tmp_path):
    spec = importlib.util.spec_from_file_location("render_shape", ROOT / "scripts" / "render_shape.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["a green torus", str(tmp_path / "ref.png"), "--azimuth", "45", "--resolution", "64"])
    img = iio.imread(out)
    assert img.shape == (64, 64, 3) and img.dtype.name == "uint8"
    expected = render_caption("a green torus", 45.0, 20.0, 64)
    assert abs(img / 255.0 - expected.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


# ---------------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------------


def test_suffix_constants_parse():
    src = parse_prompt("a red cube" + SRC_SUFFIX)
    assert (src.colours, src.shapes, src.views) == (("red",), ("cube",), ())
    expected = "oversaturated, smooth, pixelated, cartoon, foggy, hazy, blurry, bad structure, noisy, malformed"
    assert src.variants == tuple(expected.split(", "))
    assert parse_prompt("a red cube" + TGT_SUFFIX).variants == ("clean",)
    neg = parse_prompt(NFSD_NEGATIVE)
    assert (neg.colours, neg.shapes) == ((), ())
    # 10 words, 9 variants: "blurry" and "out of focus" are one corruption
    assert set(neg.variants) == {
        "cartoon", "blurry", "low quality", "malformed", "low contrast", "dull", "dark", "pixelated", "gloomy",
    }  # fmt: skip


def test_prompt_phrases_fillers_and_views():
    assert parse_prompt("") == parse_prompt("   ")
    assert parse_prompt("").colours == () and parse_prompt("").variants == ()
    p = parse_prompt("A photo of the blue sphere, front view")
    assert (p.colours, p.shapes, p.views) == (("blue",), ("sphere",), ("front view",))
    assert parse_prompt("a cube, out of focus").variants == ("blurry",)  # "of" inside the phrase is not a filler
    assert parse_prompt("low resolution").variants == parse_prompt("low-resolution").variants == ("pixelated",)
    assert parse_prompt("bad structure").variants == ("bad structure",)


def test_unknown_word_lists_the_vocabulary():
    with pytest.raises(ValueError, match="unknown word 'shiny'") as err:
        parse_prompt("a shiny red cube")
    message = str(err.value)
    for word in ("colours: red", "shapes: sphere", "torus", "descriptors:", "bad structure", "views: front view"):
        assert word in message
    with pytest.raises(ValueError, match="unknown word 'structure'"):
        parse_prompt("a red cube, structure")  # half a phrase is not a word


# ---------------------------------------------------------------------------------------------------------------------
# The prior
# ---------------------------------------------------------------------------------------------------------------------


def test_view_names():
    assert [view_name(a, 20) for a in (0, 45, 90, 135, 180, 270, 315)] == [
        "front view", "front view", "side view", "back view", "back view", "side view", "front view",
    ]  # fmt: skip
    assert view_name(0, 70) == "overhead view"


def test_prior_checks(small_prior):
    assert small_prior.sample_shape() == (3, 32, 32)
    small_prior.check_resolution(32, 32)
    with pytest.raises(ValueError, match="32x32"):
        small_prior.check_resolution(64, 64)
    small_prior.check_prompt("a red cube, back view" + SRC_SUFFIX)
    with pytest.raises(ValueError, match="colours: red"):
        small_prior.check_prompt("a red car")
    with pytest.raises(ValueError, match="overhead"):
        small_prior.check_prompt("a red cube, overhead view")  # no bank view has elevation ≥ 60
    with pytest.raises(ValueError, match="precision"):
        ShapesPrior(precision="fp8")
    with_top = ShapesPrior(num_azimuths=2, elevations=(20.0, 70.0))
    _, labels = with_top.components("a red cube, overhead view, sharp")
    assert [(lab.azimuth, lab.elevation, lab.view) for lab in labels] == [
        (0.0, 70.0, "overhead view"),
        (180.0, 70.0, "overhead view"),
    ]


def test_prior_at_64(cube):
    prior = ShapesPrior(resolution=64, num_azimuths=1, elevations=(20.0,))
    x_t = torch.zeros(2, 3, 64, 64)
    eps = prior.predict_noise(x_t, torch.tensor([100, 900]), ["a red cube, pixelated", "a red cube"])
    assert eps.shape == (2, 3, 64, 64) and torch.isfinite(eps).all()
    means, _ = prior.components("a red cube, pixelated")
    blocks = means[0].reshape(3, 8, 8, 8, 8)  # 8×8 blocks at 64²
    assert torch.allclose(blocks, blocks[:, :, :1, :, :1].expand_as(blocks), atol=1e-6)


def test_prompt_selects_components(small_prior):
    _, labels = small_prior.components("a red cube")
    assert len(labels) == 4 * 31 and {lab.caption for lab in labels} == {"red cube"}  # clean, 15 artifacts, mirrors
    _, labels = small_prior.components("a red cube, blurry, noisy")
    assert {lab.variant for lab in labels} == {"blurry", "anti-blurry", "noisy", "anti-noisy"} and len(labels) == 16
    _, labels = small_prior.components("a red cube, front view" + TGT_SUFFIX)
    assert [(lab.variant, lab.azimuth) for lab in labels] == [("clean", 0.0)]
    _, labels = small_prior.components("a cube")
    assert len({lab.colour for lab in labels}) == 6


def test_predict_noise_is_the_exact_mixture_of_the_selection(small_prior):
    """ "a red cube" = its 124 components with weights ½·¼ (clean) and ½·¼/30 (each artifact and mirror)."""
    means, labels = small_prior.components("a red cube")
    weights = torch.tensor([0.5 / 4 if lab.variant == "clean" else 0.5 / 30 / 4 for lab in labels], dtype=torch.float64)
    assert abs(weights.sum().item() - 1.0) < 1e-12
    reference = GaussianMixture(means.double().flatten(1), weights.log(), variances=0.01)
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([50, 300, 700])
    x_t = add_noise(means[[0, 5, 17]], torch.randn(3, 3, 32, 32, generator=gen), t, small_prior.alphas_cumprod)
    got = small_prior.predict_noise(x_t, t, ["a red cube"] * 3)
    abar = small_prior._abar64[t]
    expected = reference.predict_noise(x_t.double().flatten(1), abar).float().reshape(got.shape)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert got.dtype == torch.float32


def test_batched_rows_with_different_prompts_equal_row_by_row(small_prior):
    prompts = [
        "a red cube",
        "",
        "a blue torus, blurry, noisy",
        "a red cube, front view",
        "a green cone" + SRC_SUFFIX,
        "a green cone" + TGT_SUFFIX,
        NFSD_NEGATIVE,
    ]
    gen = torch.Generator().manual_seed(1)
    n = len(prompts)
    t = torch.tensor([10, 100, 250, 400, 600, 800, 990])
    x_t = torch.randn(n, 3, 32, 32, generator=gen)
    batched = small_prior.predict_noise(x_t, t, prompts)
    rows = torch.cat([small_prior.predict_noise(x_t[i : i + 1], t[i : i + 1], [prompts[i]]) for i in range(n)])
    torch.testing.assert_close(batched, rows, rtol=0, atol=1e-5)
    # the prompt matters: conditional and unconditional rows of the same x_t differ
    same = small_prior.predict_noise(x_t[:2], t[[3, 3]], ["a red cube", ""])
    assert (same[0] - same[1]).abs().max() > 0.01


def test_denoising_a_component_mean_recovers_it(small_prior):
    means, labels = small_prior.components("a purple cylinder, side view, hazy")
    t = torch.tensor([100])
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(1, 3, 32, 32, generator=gen)
    x_t = add_noise(means[:1], noise, t, small_prior.alphas_cumprod)
    eps = small_prior.predict_noise(x_t, t, ["a purple cylinder"])
    a, b = small_prior._abar64[100].sqrt().item(), (1 - small_prior._abar64[100]).sqrt().item()
    x0 = (x_t - b * eps) / a
    assert (x0 - means[:1]).pow(2).mean().sqrt() < 0.12  # posterior mean ≈ the component (+ shrunk σ² noise)
    assert str(small_prior.nearest_component(x0)[0]) == str(labels[0])


def test_nearest_component_labels_component_means(small_prior):
    means, labels = small_prior.components("a yellow sphere, dark")
    found = small_prior.nearest_component(means + 0.05 * torch.randn(means.shape, generator=torch.Generator()))
    assert [str(f) for f in found] == [str(lab) for lab in labels]
    assert found[0].caption == "yellow sphere" and found[0].variant == "dark"


def test_sds_distillation_on_the_prior_finds_a_red_cube(small_prior):
    """SDS (diffusers CFG, s = 7.5, w(t) = 1 − ᾱ_t, Adam) from noise converges onto a "red cube" component."""
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.Parameter(0.5 * torch.randn(1, 3, 32, 32, generator=gen))
    opt = torch.optim.Adam([x], lr=0.05)
    abar = small_prior.alphas_cumprod
    for _ in range(150):
        t = torch.randint(20, 981, (1,), generator=gen)
        eps = torch.randn(1, 3, 32, 32, generator=gen)
        x_t = add_noise(x.detach(), eps, t, abar)
        e_uncond, e_cond = small_prior.predict_noise(torch.cat([x_t, x_t]), t.repeat(2), ["", "a red cube"]).chunk(2)
        g = e_uncond + 7.5 * (e_cond - e_uncond) - eps
        opt.zero_grad()
        x.grad = (1 - abar[t]).view(-1, 1, 1, 1) * g
        opt.step()
    label = small_prior.nearest_component(x.detach())[0]
    assert label.caption == "red cube", str(label)
    means, _ = small_prior.components("a red cube")
    rms = (means - x.detach()).flatten(1).pow(2).mean(1).sqrt().min()
    assert rms < 0.15  # close to one mean (measured ~0.09), not a blend of the world


def test_source_model_starts_at_the_prior_and_trains(small_prior):
    source = small_prior.make_source_model()
    n_params = sum(p.numel() for p in source.parameters())
    assert 1_000 < n_params < 100_000
    assert not any(k.startswith("_prior") for k in source.state_dict())
    gen = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 3, 32, 32, generator=gen)
    t = torch.tensor([200, 700])
    prompts = ["a red cube", ""]
    out = source.predict_noise(x_t, t, prompts)
    torch.testing.assert_close(out, small_prior.predict_noise(x_t, t, prompts), rtol=0, atol=0)
    # a denoising step moves it: gradients reach the residual net (the zero-initialised last conv first)
    loss = (out - torch.randn(2, 3, 32, 32, generator=gen)).pow(2).mean()
    loss.backward()
    assert source.conv_out.weight.grad.abs().sum() > 0
    torch.optim.SGD(source.parameters(), lr=0.1).step()
    assert not torch.allclose(source.predict_noise(x_t, t, prompts), out)


def test_default_world_build_time_and_call_cost():
    """The default prior (8 azimuths × 2 elevations): the whole world builds in seconds; report the call costs."""
    prior = ShapesPrior()
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([500, 500])
    prior.predict_noise(x, t, ["a red cube", ""])  # builds all 30 caption banks
    assert len(prior._banks) == 30 and prior.build_seconds < 20.0  # measured ~1 s single-threaded
    timings = {}
    for name, prompts in (("caption", ["a red cube", "a red cube, blurry"]), ("world", ["a red cube", ""])):
        prior.predict_noise(x, t, prompts)
        start = time.perf_counter()
        for _ in range(5):
            prior.predict_noise(x, t, prompts)
        timings[name] = (time.perf_counter() - start) / 5 * 1e3
    print(f"world build {prior.build_seconds:.2f} s; predict_noise N=2: " + str(timings))
    k = prior._mixture(prior.captions, "cpu")[0].means.shape[0]
    assert k == 30 * 16 * 31 and timings["world"] > timings["caption"] > 0


def test_the_source_distribution_is_centred_on_the_clean_image(small_prior):
    """ours' direction g = ε(x_t; y+tgt) − ε(x_t; y+src) vanishes (on average over ε) at a clean render and points from
    an artifact towards the clean render, at low and high noise alike: the fixed point the paper's update relies on."""
    means, labels = small_prior.components("a red cube")
    clean = means[[i for i, lab in enumerate(labels) if lab.variant == "clean" and lab.azimuth == 0.0]]
    artifact = means[[i for i, lab in enumerate(labels) if lab.variant == "oversaturated" and lab.azimuth == 0.0]]
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(8, 3, 32, 32, generator=gen)
    eps = torch.cat([eps, -eps])  # antithetic pairs: the mirrored artifacts cancel exactly under ε → −ε
    prompts = ["a red cube" + TGT_SUFFIX] * 16 + ["a red cube" + SRC_SUFFIX] * 16
    # measured |g(clean)| / |g(artifact)| with 8 antithetic pairs: 0.07 (t=100), 0.08 (t=500), 0.28 (t=900, where
    # other views' components share the posterior and the pairs no longer cancel exactly)
    for t, ratio in ((100, 0.15), (500, 0.15), (900, 0.45)):
        tt = torch.full((32,), t)
        g = {}
        for name, x in (("clean", clean), ("artifact", artifact)):
            x_t = add_noise(x.expand(16, -1, -1, -1), eps, tt[:16], small_prior.alphas_cumprod)
            e = small_prior.predict_noise(torch.cat([x_t, x_t]), tt, prompts)
            g[name] = (e[:16] - e[16:]).mean(0)
        towards_artifact = (artifact - clean).flatten()
        assert g["clean"].norm() < ratio * g["artifact"].norm(), (t, g["clean"].norm() / g["artifact"].norm())
        assert torch.nn.functional.cosine_similarity(g["artifact"].flatten(), towards_artifact, dim=0) > 0.5, t


# ---------------------------------------------------------------------------------------------------------------------
# Speed without changing a number: pruned evaluation, the disk cache of the banks, the batched nearest search
# ---------------------------------------------------------------------------------------------------------------------

FORCE_SCREEN = {"screen": True, "min_components": 0, "screen_below": 1.01}  # screen every row, every t
PRUNE_TIMES = [1, 10, 50, 200, 500, 800, 999]
PRUNE_PROMPTS = [
    "a red cube",
    "a blue torus, blurry, noisy",
    "",
    "blurry, noisy",  # descriptors only: every caption
    NFSD_NEGATIVE,
    "a green cone" + SRC_SUFFIX,
    "a cube",
    "a red cube, front view" + TGT_SUFFIX,
]


@pytest.fixture
def bank_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREDIST_CACHE_DIR", str(tmp_path))
    return tmp_path / "shapes-banks"


def _x0_cases(prior: ShapesPrior, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """x0 of four kinds, (n, 3, R, R): components, midpoints between neighbouring components, uniform noise, grey."""
    means = torch.cat([prior.bank(*c) for c in prior.captions]).float()  # the world, in its canonical order
    idx = torch.randint(0, len(means), (n,), generator=gen)
    dist = torch.cdist(means[idx], means)
    dist[torch.arange(n), idx] = math.inf
    shape = (n, *prior.sample_shape())
    return {
        "component": means[idx].reshape(shape),
        "midpoint": (0.5 * (means[idx] + means[dist.argmin(1)])).reshape(shape),
        "uniform": 2 * torch.rand(shape, generator=gen) - 1,
        "grey": torch.full(shape, 0.2),
    }


def test_pruned_prior_equals_the_reference_everywhere(small_prior):
    """Every prompt kind at every t, in one mixed batch, for x_t near and far from the world: |ε − ε_ref| < 1e-6."""
    forced = ShapesPrior(resolution=32, num_azimuths=4, elevations=(20.0,))
    forced.pruning = FORCE_SCREEN
    gen = torch.Generator().manual_seed(0)
    prompts = [p for p in PRUNE_PROMPTS for _ in PRUNE_TIMES]
    t = torch.tensor(PRUNE_TIMES * len(PRUNE_PROMPTS))
    for kind, x0 in _x0_cases(small_prior, len(prompts), gen).items():
        noise = torch.randn(x0.shape, generator=gen)
        x_t = add_noise(x0, noise, t, small_prior.alphas_cumprod) if kind in ("component", "midpoint") else x0
        ref = small_prior.predict_noise_reference(x_t, t, prompts)
        for prior in (small_prior, forced):
            got = prior.predict_noise(x_t, t, prompts)
            assert (got - ref).abs().max() < 1e-6, (kind, (got - ref).abs().max())
            assert (prior.last_info["error_bound"] <= prior.tol).all()
        if kind == "component":  # the screen did skip: at t ≤ 50 a world row keeps a small part of the world
            world = [i for i, p in enumerate(prompts) if p == "" and t[i] <= 50]
            kept, allowed = forced.last_info["kept"][world], forced.last_info["allowed"][world]
            assert (kept < 0.25 * allowed).all(), kept


def test_skipped_mass_stays_under_the_claimed_bound(small_prior):
    """On the (small) world's own mixture: the posterior mass the screen skipped, computed with the reference's
    posterior, is under the m̂ it reports; its ε error is under κ m̂ ≤ tol."""
    mixture = small_prior._mixture(small_prior.captions, "cpu")[0]
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor(PRUNE_TIMES * 2)
    abar = small_prior._abar64[t]
    for kind, x0 in _x0_cases(small_prior, len(t), gen).items():
        x = x0.flatten(1).double()
        x_t = abar.sqrt()[:, None] * x + (1 - abar).sqrt()[:, None] * torch.randn(x.shape, generator=gen).double()
        got, info = mixture.predict_noise_pruned(x_t, abar, tol=1e-7, **FORCE_SCREEN)
        ref = mixture.predict_noise(x_t, abar)
        posterior = torch.softmax(mixture.log_posterior(x_t, abar, mixture.log_weights.expand(len(t), -1)), dim=1)
        skipped = torch.where(info["kept_mask"], 0.0, posterior).sum(1)
        assert (skipped <= info["skipped_mass_bound"] * (1 + 1e-9)).all(), kind
        assert ((got - ref).abs().amax(1) <= info["error_bound"] + 1e-9).all(), kind
        assert (info["error_bound"] <= 1e-7).all()


def test_pruned_full_world_on_a_benchmark_batch():
    """The default world (14,880 components), with the defaults: a benchmark-like mixed batch, and a low-noise batch
    of empty-prompt rows that the screen prunes to a few components each."""
    prior = ShapesPrior()
    gen = torch.Generator().manual_seed(2)
    prompts = ["a red cube" + TGT_SUFFIX, "a blue sphere" + SRC_SUFFIX, "", NFSD_NEGATIVE] * 3
    t = torch.randint(1, 1000, (len(prompts),), generator=gen)
    x0 = _x0_cases(prior, len(prompts), gen)["component"]
    x_t = add_noise(x0, torch.randn(x0.shape, generator=gen), t, prior.alphas_cumprod)
    got = prior.predict_noise(x_t, t, prompts)
    assert (got - prior.predict_noise_reference(x_t, t, prompts)).abs().max() < 1e-6
    low_t = torch.tensor([1, 10, 50, 100, 200, 300])
    x_t = add_noise(x0[:6], torch.randn(x0[:6].shape, generator=gen), low_t, prior.alphas_cumprod)
    got = prior.predict_noise(x_t, low_t, [""] * 6)
    assert (got - prior.predict_noise_reference(x_t, low_t, [""] * 6)).abs().max() < 1e-6
    assert (prior.last_info["kept"] < 0.05 * prior.last_info["allowed"]).all(), prior.last_info["kept"]


class _NotAllowed:
    """A class a weights_only load refuses to build."""


def test_bank_cache_is_loaded_by_a_second_prior_and_rebuilt_when_wrong(bank_cache_dir, monkeypatch):
    from scoredist.guidance.exact import bank_cache

    settings = {"resolution": 32, "num_azimuths": 2, "elevations": (20.0,)}
    first = ShapesPrior(**settings)
    bank = first.bank("red", "cube")
    (path,) = bank_cache_dir.glob("*-red-cube.pt")
    assert first.build_seconds > 0

    def refuse(*args, **kwargs):
        raise AssertionError("rendered although the bank is cached")

    with monkeypatch.context() as patch:
        patch.setattr(ShapesPrior, "_render_bank", refuse)
        second = ShapesPrior(**settings)
        assert torch.equal(second.bank("red", "cube"), bank)  # bit for bit, and nothing rendered
        assert second.build_seconds == 0 and second.load_seconds > 0
        with pytest.raises(AssertionError, match="rendered although"):  # other settings: another key
            ShapesPrior(resolution=32, num_azimuths=2, elevations=(25.0,)).bank("red", "cube")

    good = path.read_bytes()
    data = torch.load(path, weights_only=True)
    flipped = dict(data, bank=data["bank"].clone())
    flipped["bank"][0, 0, 0, 0, 0] += 0.5  # the checksum no longer matches
    wrong = [
        lambda: path.write_bytes(good[: len(good) // 2]),  # truncated
        lambda: path.write_bytes(b"not a torch file"),
        lambda: torch.save(flipped, path),
        lambda: torch.save(dict(data, key="another world"), path),
        lambda: torch.save(dict(data, bank=data["bank"][:1]), path),  # wrong shape
        lambda: torch.save(dict(data, extra=_NotAllowed()), path),  # not loadable with weights_only=True
    ]
    for write in wrong:
        write()
        again = ShapesPrior(**settings)
        assert torch.equal(again.bank("red", "cube"), bank) and again.build_seconds > 0
        key = again.world_key()
        assert torch.equal(bank_cache.load(path, key, ("red", "cube"), again._bank_shape()), data["bank"])  # rewritten

    monkeypatch.setenv("SCOREDIST_CACHE_DIR", "")  # an empty value: no disk cache
    assert bank_cache.cache_dir() is None
    ShapesPrior(**settings).bank("blue", "cube")
    assert not list(bank_cache_dir.glob("*-blue-cube.pt"))


def test_nearest_component_is_the_brute_force_argmin(small_prior):
    gen = torch.Generator().manual_seed(3)
    cases = _x0_cases(small_prior, 6, gen)
    x = torch.cat([cases["component"] + 0.3 * torch.randn(cases["component"].shape, generator=gen), cases["uniform"]])
    for prompt in ("", "a red cube, blurry", "a cone"):
        means, labels = small_prior.components(prompt)
        captions, mask = small_prior._selection(prompt)
        exact = torch.cat([small_prior.bank(*c)[mask] for c in captions])  # float64, the order of `labels`
        d = torch.cdist(x.flatten(1).double(), exact)
        found, distances = small_prior._nearest(x, prompt)
        assert [str(f) for f in found] == [str(labels[i]) for i in d.argmin(1)]
        torch.testing.assert_close(distances, d.min(1).values, rtol=0, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prior_on_cuda_equals_the_cpu_reference(small_prior):
    """On an accelerator predict_noise is the all-components float64 call (faster there than the pruned path)."""
    prior = ShapesPrior(resolution=32, num_azimuths=4, elevations=(20.0,), device="cuda")
    gen = torch.Generator().manual_seed(4)
    prompts = [p for p in PRUNE_PROMPTS for _ in PRUNE_TIMES]
    t = torch.tensor(PRUNE_TIMES * len(PRUNE_PROMPTS))
    x0 = _x0_cases(small_prior, len(prompts), gen)["component"]
    x_t = add_noise(x0, torch.randn(x0.shape, generator=gen), t, small_prior.alphas_cumprod)
    got = prior.predict_noise(x_t.cuda(), t.cuda(), prompts)
    assert got.device.type == "cuda"
    assert (got.cpu() - small_prior.predict_noise_reference(x_t, t, prompts)).abs().max() < 1e-6
