"""renderer=nerf: the hash grid, the compositing, cameras and their view phrases, the regularisers, and a short run."""

from __future__ import annotations

import json
import math
import re
import signal
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from scoredist.checkpoint import load_checkpoint
from scoredist.renderers.cameras import (
    Cameras,
    camera_rays,
    orbit_cameras,
    ray_box,
    reachable_view_suffixes,
    sample_cameras,
    view_suffix,
)
from scoredist.renderers.hashgrid import PRIMES, HashGrid, level_resolutions
from scoredist.renderers.nerf import NeRFRenderer
from scoredist.renderers.volume import accumulate, composite_packed_torch, composite_torch
from scoredist.schedules import Ramp
from scoredist.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = dict(num_levels=4, log2_hashmap_size=12, base_resolution=8, max_resolution=64, num_samples=24)


def small_renderer(**kwargs) -> NeRFRenderer:
    torch.manual_seed(0)
    args = {**SMALL, "height": 16, "width": 16, "distance_range": (2.6, 2.6), "fovy_range": (40.0, 40.0)}
    return NeRFRenderer(encoding_backend="torch", **{**args, "export_mesh": None, **kwargs})


# ---------------------------------------------------------------------------------------------------------------------
# Hash grid
# ---------------------------------------------------------------------------------------------------------------------


def test_level_resolutions_span_base_to_max():
    res = level_resolutions(16, 16, 4096)
    assert res[0] == 16 and res[-1] == 4096 and len(res) == 16
    assert all(a < b for a, b in zip(res, res[1:]))


def test_hash_grid_output_shape_and_levels():
    grid = HashGrid(num_levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=4, max_resolution=32)
    assert grid(torch.rand(100, 3)).shape == (100, 8)
    assert grid.resolutions == [4, 8, 16, 32]
    # 5³ = 125 and 9³ = 729 vertices fit in 2^10 rows (dense, no collisions); 17³ and 33³ do not (hashed)
    assert grid.hashed == [False, False, True, True]
    assert grid.table.shape == (125 + 729 + 1024 + 1024, 2)


def one_level(resolution: int, log2_size: int = 10) -> HashGrid:
    torch.manual_seed(0)
    grid = HashGrid(1, 2, log2_size, resolution, resolution)
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)
    return grid


def test_trilinear_interpolation_at_a_corner_and_the_midpoint_of_a_dense_level():
    grid = one_level(4)  # R = 4: vertices 0..4 per axis, row = x + 5 y + 25 z
    row = lambda x, y, z: grid.table[x + 5 * y + 25 * z]
    corner = grid(torch.tensor([[1 / 4, 2 / 4, 3 / 4]]))[0]
    torch.testing.assert_close(corner, row(1, 2, 3))
    mid = grid(torch.tensor([[1.5 / 4, 2.5 / 4, 3.5 / 4]]))[0]
    eight = torch.stack([row(1 + a, 2 + b, 3 + c) for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    torch.testing.assert_close(mid, eight.mean(0))
    # an off-centre point: weights (1 − f) or f per axis, f = (0.25, 0.5, 0.9)
    f = (0.25, 0.5, 0.9)
    point = grid(torch.tensor([[(1 + f[0]) / 4, (2 + f[1]) / 4, (3 + f[2]) / 4]]))[0]
    expected = sum(
        (f[0] if a else 1 - f[0]) * (f[1] if b else 1 - f[1]) * (f[2] if c else 1 - f[2]) * row(1 + a, 2 + b, 3 + c)
        for a in (0, 1)
        for b in (0, 1)
        for c in (0, 1)
    )
    torch.testing.assert_close(point, expected)
    # the far corner x = 1 is the last vertex, not off the grid
    torch.testing.assert_close(grid(torch.ones(1, 3))[0], row(4, 4, 4))


def test_a_hashed_level_reads_the_spatial_hash_row():
    grid = one_level(64, log2_size=10)  # 65³ vertices > 1024 rows: hashed
    assert grid.hashed == [True]
    c = (10, 33, 57)
    row = (c[0] * PRIMES[0] ^ c[1] * PRIMES[1] ^ c[2] * PRIMES[2]) % 1024
    torch.testing.assert_close(grid(torch.tensor([[c[0] / 64, c[1] / 64, c[2] / 64]]))[0], grid.table[row])


def test_hash_grid_is_continuous_across_points_and_cell_faces():
    grid = HashGrid(num_levels=3, features_per_level=2, log2_hashmap_size=10, base_resolution=8, max_resolution=32)
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)
    x = torch.rand(2000, 3) * 0.98 + 0.01
    step = torch.nn.functional.normalize(torch.randn(2000, 3), dim=-1) * 1e-4
    near = (grid(x + step) - grid(x)).abs().max()
    far = (grid(torch.rand(2000, 3)) - grid(x)).abs().mean()
    # Lipschitz bound: |Δf| ≤ Σ_axes R · |Δx_d| · max|Δtable| ≤ 32 · 3e-4 · 2 ≈ 0.02 on the finest level
    assert near < 0.02 and far > 0.3, (near, far)
    # both sides of the cell face x = 5/32 of the finest level agree
    face = torch.tensor([[5 / 32, 0.4, 0.6]])
    eps = torch.tensor([[1e-6, 0.0, 0.0]])
    assert (grid(face - eps) - grid(face + eps)).abs().max() < 1e-3


def test_hash_grid_gradient_reaches_only_the_touched_rows():
    grid = one_level(4)
    grid(torch.tensor([[1.5 / 4, 2.5 / 4, 3.5 / 4]])).sum().backward()
    touched = (grid.table.grad.abs().sum(-1) > 0).nonzero().flatten().tolist()
    expected = sorted((1 + a) + 5 * (2 + b) + 25 * (3 + c) for a in (0, 1) for b in (0, 1) for c in (0, 1))
    assert touched == expected
    torch.testing.assert_close(grid.table.grad[expected], torch.full((8, 2), 1 / 8))


# ---------------------------------------------------------------------------------------------------------------------
# Compositing
# ---------------------------------------------------------------------------------------------------------------------


def test_compositing_equals_the_transmittance_formula_by_hand():
    t_starts = torch.tensor([[0.0, 0.5, 0.75]])
    t_ends = torch.tensor([[0.5, 0.75, 1.75]])
    sigmas = torch.tensor([[1.0, 2.0, 0.5]])  # optical depths σδ = 0.5 each
    weights, trans, alphas = composite_torch(t_starts, t_ends, sigmas)
    a = 1 - math.exp(-0.5)
    torch.testing.assert_close(alphas, torch.full((1, 3), a))
    torch.testing.assert_close(trans, torch.tensor([[1.0, math.exp(-0.5), math.exp(-1.0)]]))
    torch.testing.assert_close(weights, torch.tensor([[a, math.exp(-0.5) * a, math.exp(-1.0) * a]]))
    torch.testing.assert_close(weights.sum(), torch.tensor(1 - math.exp(-1.5)))


def test_packed_compositing_equals_nerfacc_dense_values_and_gradients():
    """Rays with 5, 0, 32 and 17 samples, packed; nerfacc's dense layout (plain PyTorch, runs on CPU) on the same
    samples padded with empty intervals must give the same weights, transmittance, alphas and gradients."""
    pytest.importorskip("nerfacc")
    torch.manual_seed(0)
    counts = [5, 0, 32, 17]
    edges = torch.rand(len(counts), 33).cumsum(-1)
    dense_sigmas = (torch.rand(len(counts), 32) * 3).requires_grad_()
    keep = torch.arange(32)[None] < torch.tensor(counts)[:, None]  # (R, 32)
    t_starts, t_ends = edges[:, :-1] * keep, edges[:, 1:] * keep  # pads: empty intervals at 0
    ray_indices = keep.nonzero()[:, 0]
    packed = composite_packed_torch(t_starts[keep], t_ends[keep], dense_sigmas[keep], ray_indices, len(counts))
    (packed_grad,) = torch.autograd.grad((packed[0] * torch.arange(len(ray_indices))).sum(), dense_sigmas)
    import nerfacc

    dense = nerfacc.render_weight_from_density(t_starts, t_ends, dense_sigmas)
    order = torch.zeros(len(counts), 32)
    order[keep] = torch.arange(len(ray_indices)).float()
    (dense_grad,) = torch.autograd.grad((dense[0] * order).sum(), dense_sigmas)
    for mine, theirs in zip(packed, dense):
        torch.testing.assert_close(mine, theirs[keep], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(packed_grad, dense_grad, rtol=1e-5, atol=1e-6)


def test_accumulate_sums_weighted_values_per_ray():
    weights = torch.tensor([0.5, 0.25, 1.0, 0.1])
    values = torch.tensor([[1.0, 0.0], [2.0, 4.0], [3.0, 3.0], [10.0, 0.0]])
    ray_indices = torch.tensor([0, 0, 2, 2])
    torch.testing.assert_close(accumulate(weights, values, ray_indices, 3), torch.tensor([[1.0, 1.0], [0, 0], [4, 3]]))
    torch.testing.assert_close(accumulate(weights, None, ray_indices, 3), torch.tensor([[0.75], [0.0], [1.1]]))


# ---------------------------------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------------------------------


def test_camera_rays_look_at_the_origin_with_y_up():
    cams = Cameras(
        torch.tensor([0.0, 90.0]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 3.0]), torch.tensor([60.0] * 2)
    )
    origins, dirs = camera_rays(cams, 3, 3)
    torch.testing.assert_close(origins, torch.tensor([[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]]))
    torch.testing.assert_close(dirs[0, 4], torch.tensor([0.0, 0.0, -1.0]))  # centre pixel of the front camera
    torch.testing.assert_close(dirs[1, 4], torch.tensor([-1.0, 0.0, 0.0]))
    assert dirs[0, 1, 1] > 0 and dirs[0, 7, 1] < 0  # top row looks up, bottom row down
    # top-centre pixel: v = tan(30°) · 2/3 at unit depth
    v = math.tan(math.radians(30)) * 2 / 3
    torch.testing.assert_close(dirs[0, 1], torch.tensor([0.0, v, -1.0]) / math.hypot(v, 1.0))


def test_ray_box_entry_exit_and_misses():
    origins = torch.tensor([[0.0, 0.0, 2.0], [0.0, 5.0, 2.0], [0.0, 0.0, 0.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    near, far = ray_box(origins, dirs, bound=1.0)
    torch.testing.assert_close(near, torch.tensor([1.0, near[1].item(), 0.01]))
    torch.testing.assert_close(far, torch.tensor([3.0, near[1].item(), 1.0]))  # the miss has an empty interval


@pytest.mark.parametrize(
    "azimuth, elevation, suffix",
    [
        (0, 0, ", front view"),
        (44.9, 10, ", front view"),
        (-44, 30, ", front view"),
        (370, 0, ", front view"),
        (45, 10, ", side view"),  # threestudio's comparisons are strict: the threshold itself is a side view
        (-90, 0, ", side view"),
        (135, 0, ", side view"),
        (135.1, 0, ", back view"),
        (180, 0, ", back view"),
        (-170, 20, ", back view"),
        (0, 60, ", front view"),  # overhead needs elevation > 60
        (0, 60.1, ", overhead view"),
        (180, 80, ", overhead view"),
    ],
)
def test_view_suffix_by_azimuth_and_elevation(azimuth, elevation, suffix):
    assert view_suffix(azimuth, elevation) == suffix


@pytest.mark.parametrize(
    "azimuth, suffix",
    [
        (29.9, ", front view"),
        (30, ", side view"),
        (-29.9, ", front view"),
        (150, ", side view"),
        (150.1, ", back view"),
    ],
)
def test_view_suffix_with_the_papers_30_degree_thresholds(azimuth, suffix):
    assert view_suffix(azimuth, 10.0, 30.0, 30.0, 60.0) == suffix


def test_reachable_view_suffixes_follow_the_camera_ranges():
    assert reachable_view_suffixes((-180, 180), (10, 45)) == [", back view", ", front view", ", side view"]
    assert ", overhead view" in reachable_view_suffixes((-180, 180), (-10, 90), 30, 30)
    assert reachable_view_suffixes((-20, 20), (0, 10)) == [", front view"]
    assert reachable_view_suffixes((-20, 20), (70, 80)) == [", overhead view"]


def test_render_suffixes_follow_the_sampled_cameras():
    r = small_renderer(batch_size=16, height=4, width=4, elevation_range=(-10.0, 45.0))
    torch.manual_seed(3)
    render = r()
    torch.manual_seed(3)
    cams = sample_cameras(16, **r.camera_sampling)
    expected = [view_suffix(a, e) for a, e in zip(cams.azimuth.tolist(), cams.elevation.tolist())]
    assert render.views == expected
    assert {", front view", ", side view", ", back view"} <= set(expected)
    assert r.__class__(view_dependent_prompt=False, **SMALL).suffixes(cams) == [""] * 16


# ---------------------------------------------------------------------------------------------------------------------
# The renderer
# ---------------------------------------------------------------------------------------------------------------------


def test_initial_blob_is_opaque_and_bright_at_the_centre_and_clear_at_the_corners():
    r = small_renderer(background=(0.0, 0.0, 0.0), height=17, width=17)
    with torch.no_grad():
        frame = r.render(orbit_cameras(2, 15.0, 2.6, 40.0), 17, 17, stratified=False)
    rgb, opacity = frame.rgb, frame.opacity
    assert rgb.shape == (2, 3, 17, 17) and opacity.shape == (2, 1, 17, 17)
    corners = opacity[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (opacity[:, 0, 8, 8] > 0.95).all() and (corners < 1e-3).all()
    # black background: colour ≈ sigmoid(MLP) ≈ 0.5 where opaque, ≈ 0 where clear
    assert (rgb[:, :, 8, 8] > 0.3).all() and (rgb[:, :, [0, -1], [0, -1]] < 1e-3).all()


def test_forward_is_an_rgb_batch_with_the_background_where_empty():
    r = small_renderer(batch_size=2, height=8, width=8, distance_range=(2.0, 2.0), fovy_range=(90.0, 90.0))
    render = r()
    assert render.x.shape == (2, 3, 8, 8) and render.x.min() >= 0 and render.x.max() <= 1
    torch.testing.assert_close(render.x[:, :, 0, 0], torch.full((2, 3), 0.85), atol=1e-3, rtol=0)
    assert render.regularization is None
    assert {"nerf/mean_opacity", "nerf/opacity_entropy", "nerf/sparsity", "nerf/samples_per_ray"} == set(render.logs)


def test_eval_mode_renders_fixed_front_first_cameras_without_jitter():
    r = small_renderer(batch_size=2, height=8, width=8, elevation_range=(10.0, 45.0), eval_views=4)
    r.eval()
    first, second = r(), r()
    torch.testing.assert_close(first.x, second.x, rtol=0, atol=0)
    assert first.views == [", front view", ", side view", ", back view", ", side view"]  # 0°, 90°, 180°, 270°
    r.train()
    assert not torch.equal(r().cameras, r().cameras)  # random cameras while training


def test_param_groups_have_the_two_learning_rates_and_cover_every_parameter_once():
    r = small_renderer(encoding_lr=0.01, network_lr=0.001, background="mlp")
    groups = r.param_groups(lr=123.0)  # the trainer's lr is not used
    assert [g["lr"] for g in groups] == [0.01, 0.001]
    assert groups[0]["params"] == [r.encoding.table]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in r.parameters()) and len(set(ids)) == len(ids)
    assert any(p is r.background.net[0].weight for p in groups[1]["params"])  # the background learns at network_lr


def test_regularizer_is_the_weighted_sum_of_its_logs_and_is_differentiable():
    r = small_renderer(sparsity_weight=2.0, opacity_weight=0.5, height=8, width=8)
    render = r()
    expected = float(2.0 * render.logs["nerf/sparsity"] + 0.5 * render.logs["nerf/opacity_entropy"])
    assert torch.isfinite(render.regularization) and render.regularization.item() == pytest.approx(expected, rel=1e-5)
    # threestudio's forms: sparsity = mean √(o² + 0.01) ≥ mean opacity, entropy clamped at 1e-3
    assert float(render.logs["nerf/sparsity"]) >= float(render.logs["nerf/mean_opacity"])
    render.regularization.backward()
    assert r.encoding.table.grad.abs().sum() > 0 and r.density_net[0].weight.grad.abs().sum() > 0
    # sparsity alone pushes density down: its gradient on the blob's density bias path is positive for the MLP bias
    r.zero_grad()
    r.sparsity_weight, r.opacity_weight = 1.0, 0.0
    r().regularization.backward()
    assert r.density_net[-1].bias.grad.item() > 0


def test_a_weight_schedule_switches_the_opaque_term_on_at_its_step():
    ramp = Ramp(start=0.0, end=1000.0, start_step=10000, end_step=10001)  # the paper's lambda_opaque
    r = small_renderer(opacity_weight=ramp, height=8, width=8)
    r.at_step(10000)
    assert r().regularization is None
    r.at_step(10001)
    render = r()
    assert render.regularization.item() == pytest.approx(1000.0 * float(render.logs["nerf/opacity_entropy"]), rel=1e-5)


def test_write_artifacts_writes_turntable_views_and_mesh(tmp_path):
    r = small_renderer(turntable_views=8, turntable_size=16, export_mesh="obj", mesh_resolution=24, mesh_threshold=5.0)
    paths = r.write_artifacts(tmp_path, decode=None)
    assert {p.name for p in paths} == {"views.png", "turntable.mp4", "model.obj"}
    strip = iio.imread(tmp_path / "views.png")
    assert strip.shape == (128, 8 * 128, 3)
    assert (tmp_path / "turntable.mp4").read_bytes()[4:8] == b"ftyp"  # an MP4 container
    import trimesh

    mesh = trimesh.load(tmp_path / "model.obj")
    # the initial blob σ = softplus(10 (1 − |x| / 0.5)) = 5 where 10 (1 − r / 0.5) ≈ 4.99: r ≈ 0.25
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert mesh.is_watertight and abs(radius.mean() - 0.25) < 0.02


def test_an_unwritable_mesh_is_a_warning_at_the_end_of_a_run_not_a_crash(tmp_path):
    r = small_renderer(turntable_views=2, turntable_size=8, export_mesh="obj", mesh_resolution=16)  # σ ≤ 10 < 25
    with pytest.warns(UserWarning, match="no mesh written: no surface at density threshold 25") as warned:
        paths = r.write_artifacts(tmp_path, decode=None)
    # train.py's key for the next run, and the export command (with its own flag) for this one
    advice = r"Try renderer\.mesh_threshold=(\S+) \(or, for this run: python scripts/export\.py (\S+) --threshold \1\)$"
    found = re.search(advice, str(warned[0].message))
    assert found and found.group(2) == str(tmp_path), str(warned[0].message)
    assert not (tmp_path / "model.obj").exists() and {p.name for p in paths} == {"views.png", "turntable.mp4"}


def test_resolution_schedule_renders_each_stage_at_its_size_and_resizes_to_the_model():
    r = small_renderer(
        height=8, width=8, batch_size=2, stages=[{"step": 5, "height": 16, "width": 16, "batch_size": 1}]
    )
    assert [r.stage_at(s) for s in (0, 4, 5, 6)] == [0, 0, 1, 1]  # the milestone step is already in stage 2
    r.at_step(4)
    assert r.render_size == (8, 8) and r().x.shape == (2, 3, 8, 8)
    r.at_step(5)
    assert r.render_size == (16, 16) and r().x.shape == (1, 3, 16, 16)
    r.model_size = (32, 32)  # what bind() learns from the model: renders are resized to it
    assert r().x.shape == (1, 3, 32, 32) and r.height == 32
    r.at_step(0)
    x = r().x
    assert x.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="renderer.stages must start at increasing steps after 0"):
        small_renderer(stages=[{"step": 5, "height": 8, "width": 8}, {"step": 5, "height": 16, "width": 16}])
    with pytest.raises(ValueError, match="need step, height, width"):
        small_renderer(stages=[{"step": 5, "size": 8}])


def test_the_step_and_its_stage_travel_with_the_state_dict():
    stages = [{"step": 5, "height": 16, "width": 16}]
    trained = small_renderer(height=8, width=8, stages=stages, eval_views=2)
    trained.at_step(5)  # the first step of the 16² stage
    state = trained.state_dict()
    assert state["_extra_state"] == {"step": 5, "stage": 1}
    fresh = small_renderer(height=8, width=8, stages=stages, eval_views=2)
    assert fresh.render_size == (8, 8)
    fresh.load_state_dict(state)
    fresh.eval()  # no at_step: the size comes from the checkpoint
    assert (fresh.step, fresh.stage, fresh.render_size) == (5, 1, (16, 16))
    with torch.no_grad():
        assert fresh().x.shape == (2, 3, 16, 16) and fresh.turntable(views=1).shape == (1, 3, 16, 16)
    # the stage is derived from the step with the loading config's stages
    later = small_renderer(height=8, width=8, stages=[{"step": 6, "height": 12, "width": 12}])
    later.load_state_dict(state)
    assert (later.step, later.render_size) == (5, (8, 8))
    # a checkpoint written before the step was part of the state still loads (and keeps the renderer's own step)
    old = small_renderer(height=8, width=8, stages=stages)
    old.load_state_dict({k: v for k, v in state.items() if k != "_extra_state"})
    assert (old.step, old.render_size) == (0, (8, 8))
    torch.testing.assert_close(old.encoding.table, trained.encoding.table)


def test_view_phrases_of_a_config_are_what_its_cameras_get():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        demo = compose("train", overrides=["+experiment=nerf_demo"]).renderer
        high = compose("train", overrides=["+experiment=nerf_demo", "renderer.elevation_range=[10.0,70.0]"]).renderer
        plain = compose("train", overrides=["+experiment=nerf_demo", "renderer.view_dependent_prompt=false"]).renderer
        image = compose("train", overrides=["renderer=image"]).renderer
    phrases = NeRFRenderer.view_phrases(demo)
    assert phrases == [", back view", ", front view", ", side view"]  # elevations 10–45°: never overhead
    torch.manual_seed(0)
    cams = sample_cameras(4000, azimuth_range=demo.azimuth_range, elevation_range=demo.elevation_range)
    assert sorted(set(small_renderer().suffixes(cams))) == phrases  # the renderer's own phrases, all reached
    assert NeRFRenderer.view_phrases(high) == [", back view", ", front view", ", overhead view", ", side view"]
    assert NeRFRenderer.view_phrases(plain) == [""]
    assert get_class(image._target_).view_phrases(image) == [""]  # the base class: no view phrases
    # keys a config leaves out take the renderer's defaults: overhead above 60° (strict), azimuths all round
    assert NeRFRenderer.view_phrases({}) == [", back view", ", front view", ", side view"]
    assert NeRFRenderer.view_phrases({"elevation_range": [0.0, 60.0]}) == [", back view", ", front view", ", side view"]
    assert ", overhead view" in NeRFRenderer.view_phrases({"elevation_range": [0.0, 60.5]})
    assert NeRFRenderer.view_phrases({"azimuth_range": [-30.0, 30.0], "front_threshold": 40.0}) == [", front view"]


def test_resize_to_model_is_bilinear_up_and_antialiased_down():
    r = small_renderer()
    image = torch.rand(1, 3, 8, 8)
    r.model_size = (16, 16)
    up = F.interpolate(image, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(r.to_model_size(image), up)
    r.model_size = (2, 2)
    down = r.to_model_size(image)
    torch.testing.assert_close(down, F.interpolate(image, size=(2, 2), mode="bilinear", antialias=True))
    aliased = F.interpolate(image, size=(2, 2), mode="bilinear", align_corners=False)  # reads 4 of 64 pixels only
    assert (down - image.mean((-1, -2), keepdim=True)).abs().mean() < (
        aliased - image.mean((-1, -2), keepdim=True)
    ).abs().mean()


# ---------------------------------------------------------------------------------------------------------------------
# End to end through the trainer
# ---------------------------------------------------------------------------------------------------------------------


def run_config(run_dir: Path, *overrides: str):
    small = [f"renderer.{k}={v}" for k, v in SMALL.items()]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "logger=none",
                "trainer.device=cpu",
                "trainer.precision=fp32",
                "guidance=shapes",
                "renderer=nerf",
                "renderer.encoding_backend=torch",
                "renderer.height=16",  # 16² renders upsampled to the prior's 32², then 48² shrunk to 32²
                "renderer.width=16",
                "renderer.stages=[{step: 6, height: 48, width: 48}]",
                "renderer.distance_range=[2.6,2.6]",
                "renderer.fovy_range=[40.0,40.0]",
                "renderer.elevation_range=[10.0,45.0]",
                "renderer.turntable_views=4",
                "renderer.eval_views=2",
                "renderer.sparsity_weight=1.0",
                "renderer.grid_update_every=2",
                "renderer.mesh_resolution=32",
                "renderer.mesh_threshold=5.0",
                "prompt=a red cube",
                "loss=sds",
                "trainer.log_every=1",
                "trainer.image_every=5",
                *small,
                *overrides,
            ],
        )
    cfg.trainer.run_dir = str(run_dir)
    return cfg


def test_dds_on_a_nerf_without_a_reference_stops_with_one_line_before_a_step_is_trained(tmp_path):
    with pytest.raises(ValueError, match=r"loss=dds on a renderer with cameras .* pass loss.reference=IMAGE"):
        train(run_config(tmp_path / "run", "loss=dds", "loss.source_prompt=a blue cube"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nerf") / "straight"
    result = train(run_config(run_dir, "trainer.max_steps=10"))
    return result.run_dir


def test_a_short_nerf_run_across_the_resolution_switch_writes_images_turntable_and_mesh(straight_run):
    for name in ("final.png", "views.png", "turntable.mp4", "eval.json", "progress.png", "model.obj"):
        assert (straight_run / name).is_file(), name
    final = iio.imread(straight_run / "final.png")
    assert final.shape == (128, 2 * 128, 3) and final.std() > 0  # two eval views at the prior's 32², upsampled
    records = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))
    assert all(0 < r["nerf/mean_opacity"] < 1 and r["nerf/samples_per_ray"] > 0 for r in records)
    assert len(json.loads((straight_run / "eval.json").read_text())["nearest_component"]) == 2
    import trimesh

    assert len(trimesh.load(straight_run / "model.obj").faces) > 0


def test_nerf_resume_across_the_resolution_switch_equals_a_straight_run(straight_run, tmp_path):
    half = train(run_config(tmp_path / "half", "trainer.max_steps=4")).run_dir  # stops in the 16² stage
    halfway = load_checkpoint(half / "checkpoints" / "last.pt")["renderer"]
    train(run_config(tmp_path / "half", "trainer.max_steps=10", f"trainer.resume={half}"))
    resumed = load_checkpoint(half / "checkpoints" / "last.pt")["renderer"]
    straight = load_checkpoint(straight_run / "checkpoints" / "last.pt")["renderer"]
    assert resumed.keys() == straight.keys() and "estimator.occs" in straight
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)
    assert (resumed["encoding.table"] - halfway["encoding.table"]).abs().max() > 1e-4  # the second half moved it


def test_a_run_that_ends_at_a_stage_boundary_renders_and_exports_at_its_last_trained_stage(tmp_path, monkeypatch):
    from scoredist.renderers.loading import renderer_from_run

    # the switch is at step 6 (16² → 48²): a 6-step run trains steps 0–5, all of them at 16²
    six = train(run_config(tmp_path / "six", "trainer.max_steps=6", "renderer.export_mesh=null")).run_dir
    assert iio.imread(six / "views.png").shape[0] == 128  # 16² turntable frames, upsampled ×8
    renderer, step = renderer_from_run(six, "cpu")
    assert step == 6 and renderer.render_size == (16, 16) and not renderer.training

    # a stop signal during the last step of a 7-step run (step 6, the first at 48²): a checkpoint at 7 of 7 and no
    # final outputs; resumed, the run has no step left to train and renders at 48² all the same
    at_step = NeRFRenderer.at_step

    def stop_during_step_6(self, step):
        if step == 6:
            signal.raise_signal(signal.SIGINT)
        at_step(self, step)

    monkeypatch.setattr(NeRFRenderer, "at_step", stop_during_step_6)
    stopped = train(run_config(tmp_path / "seven", "trainer.max_steps=7", "renderer.export_mesh=null"))
    monkeypatch.undo()
    assert stopped.interrupted and stopped.step == 7 and not (stopped.run_dir / "views.png").exists()
    calls = []
    monkeypatch.setattr(NeRFRenderer, "at_step", lambda self, step: calls.append(step) or at_step(self, step))
    resumed = train(run_config(tmp_path / "seven", "trainer.max_steps=7", f"trainer.resume={stopped.run_dir}"))
    assert not resumed.interrupted and calls == []  # nothing trained
    assert iio.imread(stopped.run_dir / "views.png").shape[0] == 144  # 48² frames, upsampled ×3
    renderer, step = renderer_from_run(stopped.run_dir, "cpu")
    assert step == 7 and renderer.render_size == (48, 48)


def test_sampler_benchmark_reports_fewer_samples_and_the_quality_of_each_sampler(straight_run, capsys):
    from scoredist.renderers.benchmark import SAMPLERS, main

    rows = main([str(straight_run), "--rounds", "2", "--steps", "1", "--reference-samples", "96"])
    assert [r["sampler"] for r in rows] == [name for name, _, _ in SAMPLERS]
    dense, fine, coarse = rows
    assert dense["samples_per_ray"] == 48.0  # every interval of every ray
    assert coarse["samples_per_ray"] < fine["samples_per_ray"] < dense["samples_per_ray"]
    assert all(r["seconds"] > 0 and 0 <= r["mean_abs_diff"] < 0.1 for r in rows)
    assert "samples/ray" in capsys.readouterr().out


def test_a_nerf_run_on_the_tiny_sd_pipeline_switches_resolution_and_goes_through_the_vae(tiny_sd_path, tmp_path):
    cfg = run_config(
        tmp_path / "sd",
        "guidance=sd",
        f"guidance.pretrained={tiny_sd_path}",
        "prompt=a hamburger",
        "trainer.max_steps=8",
        "renderer.height=8",
        "renderer.width=8",
        "renderer.stages=[{step: 4, height: 16, width: 16}]",
        "renderer.export_mesh=glb",
        "renderer.mesh_threshold=3.0",
    )
    run_dir = train(cfg).run_dir
    for name in ("final.png", "turntable.mp4", "model.glb"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(math.isfinite(r["objective"]) for r in records)


# ---------------------------------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_render_matches_cpu_compositing_and_tcnn_encoding_runs():
    r = small_renderer(height=16, width=16).cuda()
    with torch.no_grad():
        gpu, _ = r.render(orbit_cameras(2, 15.0, 2.6, 40.0), 16, 16, stratified=False)
        cpu, _ = r.cpu().render(orbit_cameras(2, 15.0, 2.6, 40.0), 16, 16, stratified=False)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        pytest.skip("tiny-cuda-nn not installed")
    t = NeRFRenderer(encoding_backend="tcnn", **SMALL, height=16, width=16).cuda()
    t.at_step(0)
    render = t()
    render.x.sum().backward()
    assert render.x.shape == (1, 3, 16, 16) and t.encoding.encoding.params.grad.abs().sum() > 0
