"""renderer=nerf: the hash grid, the compositing, cameras and their view phrases, the regularisers, and a short run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from hydra import compose, initialize_config_dir

from scoredist.checkpoint import load_checkpoint
from scoredist.renderers.cameras import Cameras, camera_rays, orbit_cameras, ray_box, sample_cameras, view_suffix
from scoredist.renderers.hashgrid import PRIMES, HashGrid, level_resolutions
from scoredist.renderers.nerf import NeRFRenderer, composite, composite_torch
from scoredist.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = dict(num_levels=4, log2_hashmap_size=12, base_resolution=8, max_resolution=64, num_samples=24)


def small_renderer(**kwargs) -> NeRFRenderer:
    torch.manual_seed(0)
    args = {**SMALL, "height": 16, "width": 16, "distance_range": (2.6, 2.6), "fovy_range": (40.0, 40.0), **kwargs}
    return NeRFRenderer(encoding_backend="torch", **args)


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


def test_pure_pytorch_compositing_equals_nerfacc_on_cpu_values_and_gradients():
    pytest.importorskip("nerfacc")
    torch.manual_seed(0)
    edges = torch.rand(64, 33).cumsum(-1)
    t_starts, t_ends = edges[:, :-1].contiguous(), edges[:, 1:].contiguous()
    sigmas = (torch.rand(64, 32) * 3).requires_grad_()
    colours = torch.rand(64, 32, 3)
    results = []
    for backend in ("torch", "nerfacc"):
        weights, trans, alphas = composite(t_starts, t_ends, sigmas, backend)
        rgb = (weights[..., None] * colours).sum(1)
        (grad,) = torch.autograd.grad(rgb.sum(), sigmas)
        results.append((weights, trans, alphas, rgb, grad))
    for mine, theirs in zip(*results):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


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
        (45, 10, ", front view"),
        (-44, 30, ", front view"),
        (370, 0, ", front view"),
        (46, 10, ", side view"),
        (-90, 0, ", side view"),
        (134, 0, ", side view"),
        (135, 0, ", back view"),
        (180, 0, ", back view"),
        (-170, 20, ", back view"),
        (0, 60, ", overhead view"),
        (180, 80, ", overhead view"),
    ],
)
def test_view_suffix_by_azimuth_and_elevation(azimuth, elevation, suffix):
    assert view_suffix(azimuth, elevation) == suffix


def test_render_suffixes_follow_the_sampled_cameras():
    r = small_renderer(batch_size=16, height=4, width=4, elevation_range=(-10.0, 45.0))
    torch.manual_seed(3)
    render = r()
    torch.manual_seed(3)
    cams = sample_cameras(16, **r.camera_ranges)
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
        rgb, opacity = r.render(orbit_cameras(2, 15.0, 2.6, 40.0), 17, 17, stratified=False)
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
    assert render.regularization is None and set(render.logs) == {"nerf/mean_opacity", "nerf/opacity_entropy"}


def test_eval_mode_renders_fixed_front_first_cameras_without_jitter():
    r = small_renderer(batch_size=2, height=8, width=8, elevation_range=(10.0, 45.0))
    r.eval()
    first, second = r(), r()
    torch.testing.assert_close(first.x, second.x, rtol=0, atol=0)
    assert first.views == [", front view", ", back view"]  # azimuths 0° and 180°
    r.train()
    assert (r().x - r().x).abs().max() > 1e-3  # random cameras while training


def test_param_groups_have_the_two_learning_rates_and_cover_every_parameter_once():
    r = small_renderer(encoding_lr=0.01, network_lr=0.001)
    groups = r.param_groups(lr=123.0)  # the trainer's lr is not used
    assert [g["lr"] for g in groups] == [0.01, 0.001]
    assert groups[0]["params"] == [r.encoding.table]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in r.parameters()) and len(set(ids)) == len(ids)


def test_regularizer_is_the_weighted_sum_of_its_logs_and_is_differentiable():
    r = small_renderer(sparsity_weight=2.0, opacity_weight=0.5, height=8, width=8)
    render = r()
    expected = float(2.0 * render.logs["nerf/mean_opacity"] + 0.5 * render.logs["nerf/opacity_entropy"])
    assert torch.isfinite(render.regularization) and render.regularization.item() == pytest.approx(expected, rel=1e-5)
    render.regularization.backward()
    assert r.encoding.table.grad.abs().sum() > 0 and r.density_net[0].weight.grad.abs().sum() > 0
    # sparsity alone pushes density down: its gradient on the blob's density bias path is positive for the MLP bias
    r.zero_grad()
    r.sparsity_weight, r.opacity_weight = 1.0, 0.0
    r().regularization.backward()
    assert r.density_net[-1].bias.grad.item() > 0


def test_write_artifacts_writes_turntable_and_views(tmp_path):
    r = small_renderer(turntable_views=8, turntable_size=16)
    paths = r.write_artifacts(tmp_path, decode=None)
    assert {p.name for p in paths} == {"views.png", "turntable.mp4"}
    strip = iio.imread(tmp_path / "views.png")
    assert strip.shape == (128, 8 * 128, 3)
    assert (tmp_path / "turntable.mp4").read_bytes()[4:8] == b"ftyp"  # an MP4 container


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
                "renderer.height=32",
                "renderer.width=32",
                "renderer.distance_range=[2.6,2.6]",
                "renderer.fovy_range=[40.0,40.0]",
                "renderer.elevation_range=[10.0,45.0]",
                "renderer.turntable_views=4",
                "renderer.sparsity_weight=1.0",
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


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nerf") / "straight"
    result = train(run_config(run_dir, "trainer.max_steps=10"))
    return result.run_dir


def test_a_short_nerf_run_writes_final_image_turntable_and_logs(straight_run):
    for name in ("final.png", "views.png", "turntable.mp4", "eval.json", "progress.png"):
        assert (straight_run / name).is_file(), name
    final = iio.imread(straight_run / "final.png")
    assert final.shape == (128, 128, 3) and final.std() > 0
    records = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))
    assert all(0 < r["nerf/mean_opacity"] < 1 for r in records)
    assert "nearest_component" in json.loads((straight_run / "eval.json").read_text())


def test_nerf_resume_equals_a_straight_run(straight_run, tmp_path):
    half = train(run_config(tmp_path / "half", "trainer.max_steps=5")).run_dir
    halfway = load_checkpoint(half / "checkpoints" / "last.pt")["renderer"]
    train(run_config(tmp_path / "half", "trainer.max_steps=10", f"trainer.resume={half}"))
    resumed = load_checkpoint(half / "checkpoints" / "last.pt")["renderer"]
    straight = load_checkpoint(straight_run / "checkpoints" / "last.pt")["renderer"]
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)
    assert (resumed["encoding.table"] - halfway["encoding.table"]).abs().max() > 1e-4  # the second half moved it


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
    render = t()
    render.x.sum().backward()
    assert render.x.shape == (1, 3, 16, 16) and t.encoding.encoding.params.grad.abs().sum() > 0
