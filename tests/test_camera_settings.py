"""MVDream's and Stable-Zero123's settings: shared timesteps and delayed decays of the timestep schedule, grouped and
relative-radius cameras, SDS's negative prompt and x0-reconstruction form with std rescaling, and the NeRF's
image-to-3D reference view."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scoredist.guidance.base import scaled_linear_alphas_cumprod
from scoredist.losses.sds import SDS
from scoredist.renderers.cameras import sample_cameras
from scoredist.renderers.nerf import NeRFRenderer
from scoredist.schedules import AnnealedSchedule, DecaySchedule, TimestepSchedule

ROOT = Path(__file__).resolve().parents[1]
TORUS = ROOT / "assets" / "references" / "yellow_torus_rgba.png"
SMALL = dict(num_levels=2, log2_hashmap_size=8, max_resolution=16, encoding_backend="torch")
RECON = "sqrt((1-abar)/abar)"

# ---------------------------------------------------------------------------------------------------------------------
# Timestep schedules: shared t, delayed decay
# ---------------------------------------------------------------------------------------------------------------------


def reference_draws(first: int, last: int, stride: int, n: int, seed: int) -> torch.Tensor:
    """The draws of the schedule before shared_t existed: one uniform index of the allowed grid per row."""
    g = torch.Generator().manual_seed(seed)
    return first + stride * torch.randint(0, (last - first) // stride + 1, (n,), generator=g)


@pytest.mark.parametrize(
    "schedule",
    [
        TimestepSchedule(0.02, 0.98),
        TimestepSchedule(0.02, 0.98, grid=500),
        AnnealedSchedule(0.02, 0.98, t_max_after=0.5, anneal_step=10),
        DecaySchedule(0.02, 0.98, t_max_end=0.5, max_steps=100, decay_fraction=0.3),
    ],
    ids=["uniform", "grid", "annealed", "decay"],
)
def test_per_row_draws_are_unchanged_by_the_shared_t_option(schedule):
    """shared_t=False (the default) must keep every earlier run's timesteps: the draws equal, bit for bit, the old
    expression first + stride · randint(0, n, (B,)) on an identically seeded generator, at several steps."""
    for step in (0, 20, 50):
        first, last, stride = schedule.index_range(step, 1000)
        g = torch.Generator().manual_seed(7)
        t = schedule.sample(step, 16, 1000, "cpu", generator=g)
        expected = reference_draws(first, last, stride, 16, seed=7)
        assert t.dtype == torch.long and torch.equal(t, expected)
        assert len(t.unique()) > 8  # one draw per row: 16 draws from ≥ 240 values are almost surely distinct


@pytest.mark.parametrize(
    "make",
    [
        lambda: TimestepSchedule(0.02, 0.98, shared_t=True),
        lambda: TimestepSchedule(0.02, 0.98, grid=500, shared_t=True),
        lambda: AnnealedSchedule(0.02, 0.98, t_max_after=0.5, anneal_step=10, shared_t=True),
        lambda: DecaySchedule(0.02, 0.98, t_max_end=0.5, max_steps=100, decay_fraction=0.3, shared_t=True),
    ],
    ids=["uniform", "grid", "annealed", "decay"],
)
def test_shared_t_gives_every_row_one_draw(make):
    """shared_t=True (MVDream's four views share one t): the B rows are B copies of the FIRST draw the old expression
    makes from the same generator (one draw, not B), an independent tensor (not a view), and over many steps the shared
    t still covers the allowed range uniformly."""
    schedule = make()
    assert schedule.shared_t is True
    for step in (0, 20, 50):
        first, last, stride = schedule.index_range(step, 1000)
        t = schedule.sample(step, 8, 1000, "cpu", generator=torch.Generator().manual_seed(3))
        assert t.shape == (8,) and (t == t[0]).all()
        assert t[0] == reference_draws(first, last, stride, 1, seed=3)[0]
        t[1] = -1  # a clone, not an expanded view: writing one row leaves the others alone
        assert t[0] != -1
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([schedule.sample(0, 4, 1000, "cpu", generator=g)[0] for _ in range(4000)]).float()
    # uniform over [20, 980]: mean 500, standard error 277 / √4000 ≈ 4.4
    assert draws.min() >= 20 and draws.max() <= 980 and abs(draws.mean().item() - 500) < 20


def test_shared_t_draws_from_the_global_rng_without_a_generator():
    """generator=None: the one shared draw comes from torch's global RNG, the same value a seeded randint gives."""
    schedule = TimestepSchedule(0.02, 0.98, shared_t=True)
    torch.manual_seed(11)
    t = schedule.sample(0, 4, 1000, "cpu")
    torch.manual_seed(11)
    assert t.tolist() == [20 + torch.randint(0, 961, (1,)).item()] * 4


def test_stable_zero123_decay_starts_late_and_stops_early():
    """threestudio's Stable-Zero123 schedule: t_min 0.7 → 0.3 and t_max 0.98 → 0.8 from step 50 to step 200 of 600
    (decay_start = 50/600, decay_fraction = 200/600). Before 50 the start values, linear in between (step 125 is the
    midpoint: 0.5 and 0.89), the end values from 200 on."""
    schedule = DecaySchedule(
        t_min=0.7,
        t_max=0.98,
        t_min_end=0.3,
        t_max_end=0.8,
        max_steps=600,
        decay_start=50 / 600,
        decay_fraction=200 / 600,
    )
    expected = {
        0: (0.7, 0.98),
        49: (0.7, 0.98),
        50: (0.7, 0.98),
        80: (0.62, 0.944),  # 30 / 150 = 0.2 of the way: 0.7 − 0.2·0.4, 0.98 − 0.2·0.18
        125: (0.5, 0.89),
        200: (0.3, 0.8),
        600: (0.3, 0.8),
        5000: (0.3, 0.8),
    }
    for step, bounds in expected.items():
        assert schedule.bounds(step) == pytest.approx(bounds, abs=1e-12), step
    # the integer range the sampler uses follows the bounds: step 125 draws from [500, 890]
    assert schedule.index_range(125, 1000) == (500, 890, 1)


def test_decay_start_zero_keeps_the_ism_warm_up():
    """decay_start=0 (the default) is the schedule as before: ISM's t_max 0.98 → 0.5 over 0.3 of 1000 steps is 0.74 at
    step 150 (the midpoint), 0.5 from step 300 on, with t_min fixed at 0.02."""
    default = DecaySchedule(0.02, 0.98, t_min_end=0.02, t_max_end=0.5, max_steps=1000, decay_fraction=0.3)
    explicit = DecaySchedule(
        0.02, 0.98, t_min_end=0.02, t_max_end=0.5, max_steps=1000, decay_fraction=0.3, decay_start=0.0
    )
    for step, t_max in {0: 0.98, 75: 0.86, 150: 0.74, 300: 0.5, 1000: 0.5}.items():
        assert default.bounds(step) == pytest.approx((0.02, t_max), abs=1e-12)
        assert explicit.bounds(step) == default.bounds(step)


@pytest.mark.parametrize("start, end", [(0.5, 0.5), (0.6, 0.3), (-0.1, 0.5)])
def test_a_decay_that_starts_at_or_after_its_end_is_refused(start, end):
    """decay_start must lie in [0, decay_fraction): otherwise the decay has no length (or a negative one)."""
    with pytest.raises(ValueError, match="decay_start"):
        DecaySchedule(decay_start=start, decay_fraction=end)


# ---------------------------------------------------------------------------------------------------------------------
# Cameras: groups of views, relative distance
# ---------------------------------------------------------------------------------------------------------------------

RANGES = dict(azimuth_range=(-180.0, 180.0), elevation_range=(0.0, 30.0), distance_range=(0.8, 1.0))


def test_one_view_per_group_draws_the_old_cameras():
    """views_per_group=1 must draw what the code drew before groups existed: azimuth, elevation, distance, fovy, each
    lo + (hi − lo)·rand(n), in that order from the global RNG — so seeded runs keep their cameras."""
    torch.manual_seed(5)
    cams = sample_cameras(6, (-180.0, 180.0), (-10.0, 45.0), (1.0, 1.5), (40.0, 70.0))
    torch.manual_seed(5)
    expected = [lo + (hi - lo) * torch.rand(6) for lo, hi in ((-180.0, 180.0), (-10.0, 45.0), (1.0, 1.5), (40.0, 70.0))]
    for got, want in zip((cams.azimuth, cams.elevation, cams.distance, cams.fovy), expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("azimuth_range", [(-180.0, 180.0), (-30.0, 30.0)])
def test_groups_of_four_views_are_a_quarter_turn_apart(azimuth_range):
    """views_per_group=4, n=8 (MVDream's cameras): two groups; in each, consecutive azimuths a quarter of the range
    apart (up to float32 rounding) from a first azimuth lo + u·(hi − lo)/4, u ∈ [0, 1) (MVDream-threestudio's
    random_multiview.py); elevation, distance and fovy shared within a group and inside their ranges; the two groups
    drawn independently."""
    torch.manual_seed(0)
    fovy_range = (15.0, 60.0)
    cams = sample_cameras(8, azimuth_range, RANGES["elevation_range"], RANGES["distance_range"], fovy_range, 4)
    az = cams.azimuth.view(2, 4).double()
    lo, hi = azimuth_range
    quarter = (hi - lo) / 4
    assert torch.allclose(az.diff(dim=1), torch.full((2, 3), quarter, dtype=torch.float64), atol=1e-4)
    assert ((az[:, 0] >= lo) & (az[:, 0] < lo + quarter)).all()
    for values, (low, high) in zip(
        (cams.elevation, cams.distance, cams.fovy), (RANGES["elevation_range"], RANGES["distance_range"], fovy_range)
    ):
        groups = values.view(2, 4)
        assert (groups == groups[:, :1]).all()  # one value per group
        assert ((groups >= low) & (groups <= high)).all()
        assert groups[0, 0] != groups[1, 0]  # two groups, two draws
    assert az[0, 0] != az[1, 0]


def test_grouped_offsets_are_uniform_over_a_quarter_turn():
    """The group's random offset u is uniform on [0, 1): over 2000 groups the first azimuth's mean is lo + 45°
    (standard error 26° / √2000 ≈ 0.6°) and it fills [lo, lo + 90)."""
    torch.manual_seed(1)
    cams = sample_cameras(8000, views_per_group=4, **RANGES)
    first = cams.azimuth.view(-1, 4)[:, 0]
    assert abs(first.mean().item() - (-180 + 45)) < 3
    assert first.min().item() < -178 and first.max().item() > -92


def test_relative_distance_divides_by_tan_half_fovy():
    """relative_distance (MVDream-threestudio's relative_radius): distance = r / tan(fovy / 2) with r drawn from
    distance_range, so distance · tan(fovy/2) lies in the range; with the same seed every other quantity is the draw
    without it, and the distance is that draw's divided by tan(fovy / 2)."""
    for views in (1, 4):
        torch.manual_seed(2)
        plain = sample_cameras(8, fovy_range=(15.0, 60.0), views_per_group=views, **RANGES)
        torch.manual_seed(2)
        rel = sample_cameras(8, fovy_range=(15.0, 60.0), views_per_group=views, relative_distance=True, **RANGES)
        r = rel.distance * torch.tan(torch.deg2rad(rel.fovy) / 2)
        assert ((r >= 0.8 - 1e-6) & (r <= 1.0 + 1e-6)).all()
        assert torch.allclose(r, plain.distance, atol=1e-6)
        assert torch.equal(rel.fovy, plain.fovy) and torch.equal(rel.azimuth, plain.azimuth)
        assert (rel.distance > 1.38).all()  # tan(30°) = 0.577 at most: every distance is at least 0.8 / 0.577 = 1.386


def test_cameras_not_in_whole_groups_are_refused():
    """n must be a multiple of views_per_group (and views_per_group ≥ 1)."""
    with pytest.raises(ValueError, match="views_per_group"):
        sample_cameras(6, views_per_group=4)
    with pytest.raises(ValueError, match="views_per_group"):
        sample_cameras(4, views_per_group=0)


def test_the_renderer_refuses_a_group_size_that_does_not_divide_a_stage():
    """A NeRF with 6 cameras per step cannot hold groups of 4; nor can a later stage of 6 after a first of 8. 8 cameras
    in groups of 4 train, and its training cameras come in quarter-turn groups."""
    with pytest.raises(ValueError, match="views_per_group"):
        NeRFRenderer(height=8, width=8, batch_size=6, views_per_group=4, **SMALL)
    with pytest.raises(ValueError, match="views_per_group"):
        NeRFRenderer(
            height=8,
            width=8,
            batch_size=8,
            views_per_group=4,
            stages=[{"step": 5, "height": 8, "width": 8, "batch_size": 6}],
            **SMALL,
        )
    renderer = NeRFRenderer(height=8, width=8, batch_size=8, views_per_group=4, **SMALL)
    renderer.train()
    torch.manual_seed(0)
    cams = renderer.cameras()
    assert len(cams) == 8
    assert torch.allclose(cams.azimuth.view(2, 4).diff(dim=1).double(), torch.tensor(90.0).double(), atol=1e-4)
    assert (cams.fovy.view(2, 4) == cams.fovy.view(2, 4)[:, :1]).all()


def test_the_eval_orbit_uses_the_relative_distance():
    """The eval orbit's distance with relative_distance and no eval_distance is mid(distance_range) / tan(mid(fovy)/2):
    0.9 / tan(18.75°) for (0.8, 1.0) and (15°, 60°); an explicit eval_distance is used as given; without
    relative_distance the middle of the range."""
    kwargs = dict(height=8, width=8, distance_range=(0.8, 1.0), fovy_range=(15.0, 60.0), **SMALL)
    relative = NeRFRenderer(relative_distance=True, **kwargs).orbit(4)
    expected = 0.9 / math.tan(math.radians(37.5) / 2)  # 2.6456
    assert relative.distance.tolist() == pytest.approx([expected] * 4, rel=1e-6)
    assert relative.fovy.tolist() == pytest.approx([37.5] * 4)
    assert NeRFRenderer(relative_distance=True, eval_distance=2.0, **kwargs).orbit(4).distance.tolist() == [2.0] * 4
    assert NeRFRenderer(**kwargs).orbit(4).distance.tolist() == pytest.approx([0.9] * 4)


# ---------------------------------------------------------------------------------------------------------------------
# SDS: negative prompt, MVDream's x0 reconstruction and std rescaling
# ---------------------------------------------------------------------------------------------------------------------


class FakeMultiview:
    """A guidance stand-in: ε̂ = (0.3 + 0.02·L)·x_t + 0.1·L per row, L the length of the row's prompt text, so the
    conditional, empty and negative prompts give different predictions (and different spreads of x̂0); it records
    the prompts and timesteps of each call."""

    views_per_object = 4

    def __init__(self):
        self.alphas_cumprod = scaled_linear_alphas_cumprod().float()
        self.calls: list[tuple[list, torch.Tensor]] = []

    @staticmethod
    def eps(x_t: torch.Tensor, text: str) -> torch.Tensor:
        n = len(text)
        return (0.3 + 0.02 * n) * x_t + 0.1 * n

    def predict_noise(self, x_t, t, prompts):
        self.calls.append((list(prompts), t.clone()))
        return torch.stack([self.eps(row, str(p)) for row, p in zip(x_t, prompts)])


def sds_inputs():
    """x, t (one t per group of 4 rows: 300 and 700), ε and eight rows of "a red cube"."""
    torch.manual_seed(0)
    x = torch.randn(8, 4, 8, 8)
    noise = torch.randn(8, 4, 8, 8)
    t = torch.tensor([300] * 4 + [700] * 4)
    return x, t, noise, ["a red cube"] * 8


def by_hand(guidance, x, t, noise, scale, negative=""):
    """x_t, ᾱ (broadcast), ε_cfg and ε_cond computed from the fake model's formula, not through the loss."""
    abar = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x + (1 - abar).sqrt() * noise
    eps_c, eps_u = FakeMultiview.eps(x_t, "a red cube"), FakeMultiview.eps(x_t, negative)
    return x_t, abar, eps_u + scale * (eps_c - eps_u), eps_c


def test_negative_prompt_fills_the_unconditional_rows():
    """The guidance sees ONE call of 16 rows: the 8 conditional rows first, then 8 rows of the negative prompt ("ugly"),
    or of the empty prompt by default; the timesteps are repeated for both halves."""
    x, t, noise, prompts = sds_inputs()
    for negative, expected in (("ugly", "ugly"), ("", "")):
        guidance = FakeMultiview()
        loss = SDS(7.5, negative_prompt=negative) if negative else SDS(7.5)
        loss.direction(guidance, x, t, noise, prompts, step=0)
        assert len(guidance.calls) == 1
        seen, seen_t = guidance.calls[0]
        assert [str(p) for p in seen] == ["a red cube"] * 8 + [expected] * 8
        assert torch.equal(seen_t, t.repeat(2))


def test_negative_prompt_changes_the_direction_by_the_cfg_formula():
    """With negative "ugly" the direction is ε(∅→ugly) + s(ε(y) − ε(ugly)) − ε, which differs from the empty one's."""
    x, t, noise, prompts = sds_inputs()
    guidance = FakeMultiview()
    g_neg, _ = SDS(7.5, negative_prompt="ugly").direction(guidance, x, t, noise, prompts, step=0)
    _, _, eps_cfg, _ = by_hand(guidance, x, t, noise, 7.5, negative="ugly")
    assert torch.allclose(g_neg, eps_cfg - noise, atol=1e-4)
    g_empty, _ = SDS(7.5).direction(guidance, x, t, noise, prompts, step=0)
    assert (g_neg - g_empty).abs().max() > 0.1


def test_plain_sds_is_the_x0_reconstruction_form():
    """recon_std_rescale=0: g = ε_cfg − ε by hand, and the same as MVDream's x0 form (x − x̂0)·√ᾱ/√(1 − ᾱ) with
    x̂0 = (x_t − √(1 − ᾱ)·ε_cfg)/√ᾱ: algebraically √ᾱ(x − x̂0) = √(1 − ᾱ)(ε_cfg − ε)."""
    x, t, noise, prompts = sds_inputs()
    guidance = FakeMultiview()
    g, logs = SDS(7.5, weighting=RECON).direction(guidance, x, t, noise, prompts, step=0)
    x_t, abar, eps_cfg, _ = by_hand(guidance, x, t, noise, 7.5)
    assert torch.allclose(g, eps_cfg - noise, atol=1e-4)
    x0 = (x_t - (1 - abar).sqrt() * eps_cfg) / abar.sqrt()
    assert torch.allclose(g, (x - x0) * abar.sqrt() / (1 - abar).sqrt(), atol=1e-4)
    assert logs["guidance_scale"] == 7.5


def mvdream_rescaled_x0(x0_cfg, x0_cond, r, views=4):
    """MVDream-threestudio's recon_std_rescale, written as there: factor = (std(x̂0_nocfg) + 1e-8) / (std(x̂0) + 1e-8)
    over each object's views (dims 1..4 of the (objects, views, C, H, W) view, unbiased), then
    r · x̂0 · factor + (1 − r) · x̂0."""
    nocfg = x0_cond.view(-1, views, *x0_cond.shape[1:])
    recon = x0_cfg.view(-1, views, *x0_cfg.shape[1:])
    factor = (nocfg.std([1, 2, 3, 4], keepdim=True) + 1e-8) / (recon.std([1, 2, 3, 4], keepdim=True) + 1e-8)
    adjust = x0_cfg.clone() * factor.squeeze(1).repeat_interleave(views, dim=0)
    return r * adjust + (1 - r) * x0_cfg, factor.flatten()


def test_std_rescaled_direction_matches_mvdreams_formula():
    """recon_std_rescale=0.5: the direction is (x − x̂0)·√ᾱ/√(1 − ᾱ) with MVDream's rescaled x̂0, computed per group of
    4 rows (each group its own factor; here ≈ 4.5 and 0.7, far from 1, so the rescaling is exercised); the loss's
    weighted output w(t)·g with w = √((1 − ᾱ)/ᾱ) is exactly x − x̂0, the gradient of MVDream's 0.5‖x − x̂0‖²."""
    x, t, noise, prompts = sds_inputs()
    guidance = FakeMultiview()
    loss = SDS(7.5, weighting=RECON, recon_std_rescale=0.5)
    g, _ = loss.direction(guidance, x, t, noise, prompts, step=0)
    x_t, abar, eps_cfg, eps_cond = by_hand(guidance, x, t, noise, 7.5)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x0, factor = mvdream_rescaled_x0((x_t - s * eps_cfg) / a, (x_t - s * eps_cond) / a, 0.5)
    assert (factor - 1).abs().min() > 0.2 and (factor[0] - factor[1]).abs() > 1
    expected = (x - x0) * a / s
    assert torch.allclose(g, expected, rtol=1e-4, atol=1e-4)
    assert (g - (eps_cfg - noise)).abs().max() > 1  # not plain SDS
    weighted, _ = loss(guidance, x, t, noise, prompts, step=0)
    assert torch.allclose(weighted, x - x0, rtol=1e-4, atol=1e-4)


def test_full_rescaling_gives_the_unguided_spread():
    """recon_std_rescale=1: each object's rescaled x̂0 = x̂0_cfg · std(x̂0_cond)/std(x̂0_cfg), so its std over the
    object's views equals the conditional prediction's (the point of the rescaling: CFG's spread undone)."""
    x, t, noise, prompts = sds_inputs()
    guidance = FakeMultiview()
    weighted, _ = SDS(7.5, weighting=RECON, recon_std_rescale=1.0)(guidance, x, t, noise, prompts, step=0)
    x0 = x - weighted
    x_t, abar, _, eps_cond = by_hand(guidance, x, t, noise, 7.5)
    x0_cond = (x_t - (1 - abar).sqrt() * eps_cond) / abar.sqrt()
    spread = lambda y: y.view(2, -1).std(1)
    assert torch.allclose(spread(x0), spread(x0_cond), rtol=1e-3)


def test_without_views_per_object_all_rows_are_one_object():
    """A guidance without views_per_object: the rescaling treats every row as one object (one factor for all 8)."""
    x, t, noise, prompts = sds_inputs()
    guidance = FakeMultiview()
    guidance.views_per_object = None
    g, _ = SDS(7.5, weighting=RECON, recon_std_rescale=0.5).direction(guidance, x, t, noise, prompts, step=0)
    x_t, abar, eps_cfg, eps_cond = by_hand(guidance, x, t, noise, 7.5)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x0, _ = mvdream_rescaled_x0((x_t - s * eps_cfg) / a, (x_t - s * eps_cond) / a, 0.5, views=8)
    assert torch.allclose(g, (x - x0) * a / s, rtol=1e-4, atol=1e-4)
    guidance.views_per_object = 3  # 8 rows are not groups of 3
    with pytest.raises(ValueError, match="groups of 3"):
        SDS(7.5, weighting=RECON, recon_std_rescale=0.5).direction(guidance, x, t, noise, prompts, step=0)


def test_rescaling_needs_the_x0_weighting_and_a_fraction():
    """recon_std_rescale > 0 is only MVDream's loss under w = √((1 − ᾱ)/ᾱ): another weighting is refused, naming both;
    r outside [0, 1] is refused; r = 0 accepts any weighting."""
    with pytest.raises(ValueError, match=r"sqrt\(\(1-abar\)/abar\).*'1-abar'"):
        SDS(50.0, weighting="1-abar", recon_std_rescale=0.5)
    with pytest.raises(ValueError, match="recon_std_rescale"):
        SDS(50.0, weighting=RECON, recon_std_rescale=1.5)
    assert SDS(50.0, weighting="1-abar", recon_std_rescale=0.0).recon_std_rescale == 0.0


def test_conditioning_texts_name_the_negative_prompt():
    """What the trainer checks before training: with a negative prompt, the prompts and ("the negative prompt", text);
    with a suffix only, the suffixed prompts and the empty prompt; with neither, exactly the base class's list."""
    prompts = ["a red cube", "a blue ball"]
    negative = SDS(7.5, negative_prompt="ugly").conditioning_texts(prompts)
    assert [(k, str(v)) for k, v in negative] == [
        ("the prompt (prompt + loss.suffix)", "a red cube"),
        ("the prompt (prompt + loss.suffix)", "a blue ball"),
        ("the negative prompt", "ugly"),
    ]
    suffixed = SDS(7.5, suffix=", .").conditioning_texts(prompts)
    assert [str(v) for _, v in suffixed] == ["a red cube, .", "a blue ball, .", ""]
    assert suffixed[-1] == ("the empty prompt", "")
    plain = SDS(7.5).conditioning_texts(prompts)
    assert [(k, str(v)) for k, v in plain] == [
        ("the prompt", "a red cube"),
        ("the prompt", "a blue ball"),
        ("the empty prompt", ""),
    ]


# ---------------------------------------------------------------------------------------------------------------------
# NeRF: the image-to-3D reference view
# ---------------------------------------------------------------------------------------------------------------------


def reference_nerf(**kwargs) -> NeRFRenderer:
    torch.manual_seed(0)
    settings = dict(
        height=16,
        width=16,
        num_levels=4,
        log2_hashmap_size=12,
        max_resolution=64,
        num_samples=32,
        estimator="dense",
        bound=1.0,
        background=[1.0, 1.0, 1.0],
        encoding_backend="torch",
        reference_image=str(TORUS),
        reference_camera=[0.0, 5.0, 2.6, 40.0],
        reference_rgb_weight=1.0,
        reference_mask_weight=1.0,
    )
    return NeRFRenderer(**{**settings, **kwargs})


def test_a_missing_reference_image_stops_the_run_at_construction(tmp_path):
    """A reference path that does not exist raises FileNotFoundError when the renderer is built, not at step 1; a
    reference camera that is not 4 numbers is refused."""
    with pytest.raises(FileNotFoundError, match="missing.png"):
        NeRFRenderer(height=8, width=8, reference_image=str(tmp_path / "missing.png"), **SMALL)
    with pytest.raises(ValueError, match="reference_camera"):
        NeRFRenderer(height=8, width=8, reference_image=str(TORUS), reference_camera=(0, 5, 2.6), **SMALL)


def test_reference_target_is_the_area_mean_and_a_binary_mask():
    """The target at 16²: rgb is the 16×16-block mean of the 256² image (area resize, as threestudio's INTER_AREA), the
    mask is (block-mean alpha > 0.5), binary; its foreground fraction (0.203) is close to the full image's alpha > 0.5
    fraction (0.208) and in 0.1–0.35 for this torus."""
    renderer = reference_nerf()
    rgb, mask = renderer.reference_target(16, 16)
    assert rgb.shape == (1, 3, 16, 16) and mask.shape == (1, 1, 16, 16)
    image = np.asarray(Image.open(TORUS).convert("RGBA"), dtype=np.float64) / 255.0
    blocks = torch.from_numpy(image.reshape(16, 16, 16, 16, 4).mean(axis=(1, 3))).float()  # (16, 16, 4)
    assert torch.allclose(rgb[0].permute(1, 2, 0), blocks[..., :3], atol=1e-5)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(mask[0, 0], (blocks[..., 3] > 0.5).float())
    full = float((image[..., 3] > 0.5).mean())
    assert 0.1 < mask.mean().item() < 0.35 and abs(mask.mean().item() - full) < 0.03


def test_reference_terms_enter_the_regularizer_while_training_only():
    """regularizers() adds rgb_weight · rgb term + mask_weight · mask term (weights 2 and 0.5, the other weights 0)
    while training, logging both terms; in eval mode there is no reference term and nothing to add (None)."""
    renderer = reference_nerf(height=8, width=8, reference_rgb_weight=2.0, reference_mask_weight=0.5)
    renderer.train()
    frame = renderer.render(renderer.reference_cameras(), 8, 8, stratified=False)
    torch.manual_seed(1)
    total, logs = renderer.regularizers(frame)
    torch.manual_seed(1)  # the reference render is stratified: the same jitter
    rgb_term, mask_term = renderer.reference_terms()
    assert torch.allclose(total, 2.0 * rgb_term + 0.5 * mask_term)
    assert logs["nerf/reference_rgb"] == pytest.approx(rgb_term.item())
    assert logs["nerf/reference_mask"] == pytest.approx(mask_term.item())
    assert rgb_term.item() > 1e-3 and mask_term.item() > 1e-3  # an untrained blob does not already match the torus
    renderer.eval()
    total, logs = renderer.regularizers(frame)
    assert total is None and "nerf/reference_rgb" not in logs and "nerf/reference_mask" not in logs


def test_optimising_the_reference_terms_fits_the_reference_view():
    """60 Adam steps (lr 0.01) on the reference terms alone of a small dense NeRF make the render at the reference
    camera reproduce the yellow torus on white: measured 0.036 → 4.0e-4 (rgb, ≈ 90×) and 0.067 → 3.2e-5 (mask,
    ≈ 2100×); required: both fall at least 10× (mean of the last 5 steps against the first)."""
    renderer = reference_nerf()
    renderer.train()
    optimizer = torch.optim.Adam(renderer.parameters(), lr=0.01)
    history = []
    for _ in range(60):
        optimizer.zero_grad()
        rgb_term, mask_term = renderer.reference_terms()
        (rgb_term + mask_term).backward()
        optimizer.step()
        history.append((rgb_term.item(), mask_term.item()))
    first, last = torch.tensor(history[0]), torch.tensor(history[-5:]).mean(0)
    factors = first / last
    assert (factors > 10).all(), f"rgb and mask terms fell by {factors.tolist()} (first {first}, last {last})"


def test_gaussians_fit_the_reference_view_too():
    """The same reference-view terms on renderer=gaussians (its colour on its background, its alpha against the
    mask): 80 Adam steps on them alone, 300 Gaussians at 16², measured 0.034 → 0.0054 (rgb, 6×) and 0.065 → 0.0037
    (mask, 18×); required 3× and 8×. While training the terms enter the render's regularization and its logs."""
    from scoredist.renderers.base import ModelSpace
    from scoredist.renderers.gaussians import GaussianRenderer

    torch.manual_seed(0)
    renderer = GaussianRenderer(
        height=16,
        width=16,
        num_points=300,
        background=[1.0, 1.0, 1.0],
        densify_until=0,
        reference_image=str(TORUS),
        reference_camera=[0.0, 5.0, 2.6, 40.0],
        reference_rgb_weight=2.0,
        reference_mask_weight=0.5,
    )
    renderer.bind(ModelSpace(3, 1, (16, 16), lambda x: x), [0])
    renderer.train()
    optimizer = torch.optim.Adam(renderer.param_groups(0.01))
    history = []
    for _ in range(80):
        rgb_term, mask_term = renderer.reference_terms()
        history.append((rgb_term.item(), mask_term.item()))
        optimizer.zero_grad()
        (rgb_term + mask_term).backward()
        optimizer.step()
    (rgb0, mask0), (rgb1, mask1) = history[0], history[-1]
    assert rgb1 < rgb0 / 3 and mask1 < mask0 / 8, history[::10]
    render = renderer()
    assert {"gaussians/reference_rgb", "gaussians/reference_mask"} <= set(render.logs)
    expected = 2.0 * render.logs["gaussians/reference_rgb"] + 0.5 * render.logs["gaussians/reference_mask"]
    assert render.regularization.item() == pytest.approx(expected.item(), rel=1e-5)
    renderer.eval()
    assert renderer().regularization is None
