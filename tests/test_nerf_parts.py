"""The NeRF's parts on known fields: the occupancy grid, shading, mesh export and 3D sketches."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scoredist.renderers.cameras import eye_positions, orbit_cameras, sample_lights
from scoredist.renderers.mesh import extract_mesh
from scoredist.renderers.nerf import NeRFRenderer
from scoredist.renderers.occupancy import OccupancyGrid
from scoredist.renderers.shading import density_normals, shade
from scoredist.renderers.sketch import EXAMPLES, occupancy_grid, sample_grid

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(num_levels=4, log2_hashmap_size=12, base_resolution=8, max_resolution=64, encoding_backend="torch")


def ball_density(points: torch.Tensor, radius: float = 0.5, inside: float = 30.0) -> torch.Tensor:
    """σ = 30 inside a ball of radius 0.5, 0 outside, smooth over 0.02."""
    return inside * torch.sigmoid((radius - points.norm(dim=-1)) / 0.02)


def known_field_renderer(**kwargs) -> NeRFRenderer:
    """A renderer whose field is the ball above with a colour that varies in space (the MLPs are bypassed)."""
    torch.manual_seed(0)
    r = NeRFRenderer(height=24, width=24, distance_range=(2.6, 2.6), fovy_range=(40.0, 40.0), **SMALL, **kwargs)
    r.density = ball_density
    r.field = lambda p: (ball_density(p), torch.stack([p[:, 0] + 0.5, p[:, 1] * 0 + 0.3, 0.5 - p[:, 2]], -1))
    return r


# ---------------------------------------------------------------------------------------------------------------------
# Occupancy grid
# ---------------------------------------------------------------------------------------------------------------------


def test_the_grid_marks_the_cells_of_a_known_ball():
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=16)
    torch.manual_seed(0)
    for step in range(0, 16 * 30, 16):  # one random point per cell and update: the moving maximum sees them all
        grid.update_every_n_steps(step, lambda x: ball_density(x) * 0.01, warmup_steps=1000)
    centres = (grid.grid_coords.float() + 0.5) / 16 * 2 - 1
    distance = centres.norm(dim=-1)
    occupied = grid.binaries.flatten()
    cell = 2 / 16 * math.sqrt(3) / 2  # half a cell diagonal: a cell this close to the sphere may go either way
    halo = 0.02 * math.log(30)  # beyond this σ · 0.01 < 0.01, the threshold: the sigmoid's tail is empty space
    assert occupied[distance < 0.5 - cell].all() and not occupied[distance > 0.5 + cell + halo].any()
    assert occupied.sum() > 0


def test_the_grid_update_is_an_exponential_moving_maximum_with_nerfaccs_threshold():
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=4)
    grid.update_every_n_steps(0, lambda x: torch.full((len(x),), 0.2))
    torch.testing.assert_close(grid.occs, torch.full((64,), 0.2))
    grid.update_every_n_steps(5, lambda x: torch.zeros(len(x)))  # not a multiple of n = 16: nothing happens
    torch.testing.assert_close(grid.occs, torch.full((64,), 0.2))
    grid.update_every_n_steps(16, lambda x: (x[:, 0] > 0).float() * 0.001, ema_decay=0.5)
    expected = torch.where(((grid.grid_coords[:, 0] + 0.5) / 4 * 2 - 1) > 0, torch.tensor(0.1), torch.tensor(0.1))
    torch.testing.assert_close(grid.occs, expected)  # max(0.5 · 0.2, occ ≤ 0.001) = 0.1 everywhere
    # threshold min(mean, 0.01) = 0.01 < 0.1: all occupied
    assert grid.binaries.all()


def test_skipping_empty_and_hidden_space_keeps_the_rendered_colour_of_a_known_field():
    """A hard-edged ball (a soft edge's faint halo, σ · step under the grid's threshold, is skipped by design, as in
    nerfacc): the image through the grid and the visibility pruning equals the dense one but for the quadrature of
    the edge, whose samples sit at other distances along the rays."""
    hard = lambda p: 30.0 * (p.norm(dim=-1) < 0.5).float()
    colour = lambda p: torch.stack([p[:, 0] + 0.5, p[:, 1] * 0 + 0.3, 0.5 - p[:, 2]], -1)
    dense = known_field_renderer(estimator="dense", num_samples=1024)
    skipping = known_field_renderer(estimator="occupancy", num_samples=1024)
    for r in (dense, skipping):
        r.density, r.field = hard, lambda p: (hard(p), colour(p))
    for step in range(0, 16 * 30, 16):  # grid updates (training mode), one random point per cell each
        skipping.at_step(step)
    cams = orbit_cameras(3, 20.0, 2.6, 40.0)
    with torch.no_grad():
        reference = dense.render(cams, 24, 24, stratified=False)
        skipped = skipping.render(cams, 24, 24, stratified=False)
    assert skipped.samples_per_ray < reference.samples_per_ray / 10  # most of the ray is empty or hidden
    for mine, theirs in ((skipped.rgb, reference.rgb), (skipped.opacity, reference.opacity)):
        assert (mine - theirs).abs().mean() < 0.003 and (mine - theirs).abs().max() < 0.1


def test_the_estimator_path_and_the_dense_path_agree_when_nothing_is_skipped():
    """With every cell occupied and no visibility pruning, the occupancy sampler marches with the dense sampler's
    step: the same intervals, so the same image up to the last interval's cut at the box."""
    dense = known_field_renderer(estimator="dense", num_samples=256)
    grid = known_field_renderer(estimator="occupancy", num_samples=256, alpha_threshold=0.0, early_stop_eps=0.0)
    cams = orbit_cameras(2, 10.0, 2.6, 40.0)
    with torch.no_grad():
        a = dense.render(cams, 16, 16, stratified=False)
        b = grid.render(cams, 16, 16, stratified=False)
    torch.testing.assert_close(a.rgb, b.rgb, rtol=0, atol=0.02)


# ---------------------------------------------------------------------------------------------------------------------
# Shading
# ---------------------------------------------------------------------------------------------------------------------


def test_the_normals_of_a_ball_point_outward():
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)
    points = directions * 0.5  # on the surface
    normals = density_normals(ball_density, points, eps=0.01)
    assert ((normals * directions).sum(-1) > 0.999).all()


def test_lambertian_and_textureless_shading_by_hand():
    albedo = torch.tensor([[0.8, 0.4, 0.2]])
    normal = torch.tensor([[0.0, 0.0, 1.0]])
    light = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0, 1.0]]), dim=-1)  # 45° from the normal
    diffuse = 0.1 + 0.9 * math.cos(math.radians(45))
    torch.testing.assert_close(shade(albedo, normal, light, "lambertian"), albedo * diffuse)
    torch.testing.assert_close(shade(albedo, normal, light, "textureless"), torch.full((1, 3), diffuse))
    torch.testing.assert_close(shade(albedo, normal, -light, "lambertian"), albedo * 0.1)  # lit from behind
    torch.testing.assert_close(shade(albedo, None, None, "albedo"), albedo)


def test_random_lights_are_drawn_on_the_device_of_the_eyes_and_on_the_cpu_as_before():
    eyes = eye_positions(orbit_cameras(3, 20.0, 2.6, 40.0)).float()
    torch.manual_seed(5)
    lights = sample_lights(eyes, (0.8, 1.5), perturb=0.5)
    torch.manual_seed(5)
    noise, distance = torch.randn(3, 3), 0.8 + 0.7 * torch.rand(3)  # the CPU stream's draws, in this order
    torch.testing.assert_close(lights, torch.nn.functional.normalize(eyes + 0.5 * noise, dim=-1) * distance[:, None])
    meta = sample_lights(torch.ones(2, 3, device="meta"))  # drawn where the eyes are: no tensor from the host
    assert meta.device.type == "meta" and meta.shape == (2, 3)


def test_a_shaded_render_has_an_orientation_term_and_a_lit_side():
    r = NeRFRenderer(
        height=12,
        width=12,
        distance_range=(2.6, 2.6),
        fovy_range=(40.0, 40.0),
        shading="lambertian",
        orient_weight=1.0,
        export_mesh=None,
        **SMALL,
    )
    render = r()
    assert "nerf/orientation" in render.logs and torch.isfinite(render.regularization)
    render.regularization.backward()
    assert r.encoding.table.grad.abs().sum() > 0


def test_an_mlp_background_depends_on_the_direction_and_a_solid_one_does_not():
    r = NeRFRenderer(height=8, width=8, background="mlp", blob_density=0.0, export_mesh=None, **SMALL)
    with torch.no_grad():
        image = r.render(orbit_cameras(1, 0.0, 2.6, 60.0), 8, 8, stratified=False).rgb
    assert image.std() > 1e-4  # empty scene: the background alone, which varies with the ray
    r = NeRFRenderer(height=8, width=8, background=(0.2, 0.4, 0.6), export_mesh=None, **SMALL)
    r.field = lambda p: (torch.zeros(len(p)), torch.zeros(len(p), 3))  # an empty scene
    with torch.no_grad():
        image = r.render(orbit_cameras(1, 0.0, 2.6, 60.0), 8, 8, stratified=False).rgb
    torch.testing.assert_close(image[0, :, 3, 3], torch.tensor([0.2, 0.4, 0.6]), rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# Mesh export
# ---------------------------------------------------------------------------------------------------------------------


def test_the_mesh_of_a_ball_has_its_radius_and_is_watertight():
    mesh = extract_mesh(
        ball_density, lambda p: torch.full((len(p), 3), 0.5), bound=1.0, resolution=64, threshold=15.0
    )  # σ = 15 at the sigmoid's middle: radius 0.5
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert mesh.is_watertight and abs(radius.mean() - 0.5) < 0.01 and radius.std() < 0.01
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.03)  # outward-facing: positive volume
    assert (mesh.visual.vertex_colors[:, :3] == 128).all()


def test_floaters_smaller_than_min_part_are_dropped_and_the_body_kept():
    floater = torch.tensor([0.8, 0.8, 0.8])
    density = lambda p: torch.maximum(ball_density(p), 30.0 * ((p - floater).norm(dim=-1) < 0.1).float())
    everything = extract_mesh(density, None, bound=1.0, resolution=48, threshold=15.0)
    body = extract_mesh(density, None, bound=1.0, resolution=48, threshold=15.0, min_part=0.05)
    assert len(everything.split(only_watertight=False)) == 2 and len(body.split(only_watertight=False)) == 1
    assert everything.bounds[1].min() > 0.85  # the floater stretches the box to ~0.9
    np.testing.assert_allclose(body.bounds, [[-0.5] * 3, [0.5] * 3], atol=0.03)  # the ball alone
    assert body.is_watertight and body.volume > 0


def test_an_empty_or_nan_field_is_an_error_with_the_range_and_a_threshold_to_try():
    with pytest.raises(ValueError, match=r"densities range from 0 to 30.*Try --threshold 15"):
        extract_mesh(lambda p: ball_density(p).clamp(max=30.0) * (p.norm(dim=-1) < 0.5), None, 1.0, 16, 40.0)
    with pytest.raises(ValueError, match="NaN at 4096 of 4096 grid points"):
        extract_mesh(lambda p: torch.full((len(p),), float("nan")), None, 1.0, 16, 1.0)


def test_mesh_advice_names_the_callers_own_setting_export_flags_or_train_keys():
    from scoredist.renderers.mesh import check_density
    from scoredist.renderers.scene import run_setting

    sigma = torch.tensor([0.0, 10.0, 30.0])  # a threshold to try: halfway from the median to the maximum, 20
    with pytest.raises(ValueError) as from_export:
        check_density(sigma, 40.0)
    assert str(from_export.value).endswith("no mesh written. Try --threshold 20")
    with pytest.raises(ValueError) as from_a_run:
        check_density(sigma, 40.0, run_setting(Path("outputs/run")))
    assert str(from_a_run.value).endswith(
        "Try renderer.mesh_threshold=20 (or, for this run: python scripts/export.py outputs/run --threshold 20)"
    )


def run_script(name: str, *args: str):
    """A script's main() in this process (the CLI itself is tested by test_export_and_render_command_lines)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(args))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from scoredist.train import train
    from tests.test_nerf import run_config

    folder = tmp_path_factory.mktemp("export") / "run"
    return train(run_config(folder, "trainer.max_steps=2", "renderer.export_mesh=null")).run_dir


def test_export_and_render_scripts_on_a_finished_run(finished_run, capsys):
    import trimesh

    path = run_script("export", str(finished_run), "--format", "glb", "--resolution", "24", "--threshold", "5")
    assert path == finished_run / "model.glb" and "watertight True" in capsys.readouterr().out
    mesh = trimesh.load(path, force="mesh")
    assert np.abs(mesh.bounds).max() < 0.5  # the blob's surface σ = 5 sits at radius ≈ 0.25
    with pytest.raises(SystemExit) as stop:
        run_script("export", str(finished_run), "--threshold", "1e6")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "no surface at density threshold 1e+06" in err
    assert "no mesh written. Try --threshold " in err and "renderer.mesh_threshold" not in err  # export.py's own flag
    assert not (finished_run / "model.obj").exists()
    out = run_script("render", str(finished_run), "--views", "3", "--size", "16")
    assert sorted(p.name for p in out.glob("*.png")) == ["000.png", "001.png", "002.png", "views.png"]


@pytest.mark.slow
def test_export_and_render_command_lines(finished_run):
    run_dir = finished_run
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "export.py"),
            str(run_dir),
            "--format",
            "ply",
            "--resolution",
            "24",
            "--threshold",
            "5",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / "model.ply").is_file() and "watertight True" in done.stdout
    failed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "export.py"), str(run_dir), "--threshold", "1e6"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert failed.returncode == 2 and "no surface at density threshold 1e+06" in failed.stderr
    assert not (run_dir / "model.obj").exists()
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render.py"), str(run_dir), "--views", "3", "--size", "16"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (run_dir / "render").glob("*.png")) == ["000.png", "001.png", "002.png", "views.png"]


# ---------------------------------------------------------------------------------------------------------------------
# 3D sketches
# ---------------------------------------------------------------------------------------------------------------------


def test_sketch_occupancy_of_a_box_and_of_overlapping_primitives():
    import trimesh

    box = trimesh.creation.box(extents=(1.0, 0.6, 0.8))
    ball = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    ball.apply_translation((0.5, 0.0, 0.0))  # half inside the box: the union needs no boolean operation
    union = trimesh.util.concatenate([box, ball])
    grid = occupancy_grid(torch.as_tensor(union.vertices).float(), torch.as_tensor(union.faces), 1.0, 41)
    probe = torch.tensor([[0.0, 0.0, 0.0], [0.45, 0.0, 0.0], [0.7, 0.0, 0.0], [0.0, 0.45, 0.0], [0.9, 0.9, 0.9]])
    torch.testing.assert_close(sample_grid(grid, probe, 1.0), torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))


def test_the_density_after_a_sketch_init_is_high_inside_the_sketch_and_low_outside(tmp_path):
    path = tmp_path / "rough_box.obj"
    EXAMPLES["rough_box"]().export(path)
    r = NeRFRenderer(
        height=8, width=8, init_shape=str(path), init_shape_resolution=32, sketch_weight=1.0, export_mesh=None, **SMALL
    )
    inside = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.2, -0.2], [0.3, 0.32, 0.25]])  # centre, off-centre, the lump
    outside = torch.tensor([[0.0, 0.7, 0.0], [0.8, 0.0, 0.0], [-0.6, -0.6, 0.6]])
    with torch.no_grad():
        assert (r.density(inside) > 9.0).all() and (r.density(outside) < 0.01).all()
    render = r()
    assert "nerf/sketch" in render.logs and torch.isfinite(render.regularization)
    # the sketch term's points: uniform in the box, from the global RNG of the renderer's device (here the CPU's)
    torch.manual_seed(3)
    term = r.sketch_term()
    torch.manual_seed(3)
    points = torch.rand(r.sketch_points, 3) * 2 - 1
    target = sample_grid(r.sketch, points, 1.0)
    occupied = (1 - torch.exp(-r.density(points) * r.render_step_size)).clamp(1e-5, 1 - 1e-5)
    bce = torch.nn.functional.binary_cross_entropy(occupied, (target > 0.5).float(), reduction="none")
    torch.testing.assert_close(term, (bce * (2 * target - 1).abs()).mean())


def test_the_shipped_sketches_are_what_the_code_builds():
    import trimesh

    for name, build in EXAMPLES.items():
        shipped = trimesh.load(ROOT / "assets" / "sketches" / f"{name}.obj", force="mesh")
        built = build()
        assert shipped.is_watertight or name == "flower"  # the flower's parts overlap
        np.testing.assert_allclose(shipped.bounds, built.bounds, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nerfaccs_cuda_estimator_the_torch_grid_and_tcnn_agree_on_a_fixed_field():
    """The same grid state in nerfacc's CUDA OccGridEstimator and in OccupancyGrid on the CPU: the same image of a
    hard ball (up to where along the rays each marches), and nerfacc's packed CUDA weights equal the PyTorch ones."""
    pytest.importorskip("nerfacc")
    hard = lambda p: 30.0 * (p.norm(dim=-1) < 0.5).float()
    colour = lambda p: torch.stack([p[:, 0] + 0.5, p[:, 1] * 0 + 0.3, 0.5 - p[:, 2]], -1)
    cpu = known_field_renderer(estimator="occupancy", num_samples=1024)
    gpu = known_field_renderer(estimator="occupancy", num_samples=1024)
    for r in (cpu, gpu):
        r.density, r.field = hard, lambda p: (hard(p), colour(p))
    for step in range(0, 16 * 30, 16):
        cpu.at_step(step)
    gpu.use_device(torch.device("cuda"))
    gpu.to("cuda")
    assert type(gpu.estimator).__name__ == "OccGridEstimator"
    gpu.estimator.load_state_dict({k: v.cuda() for k, v in cpu.estimator.state_dict().items()})
    cams = orbit_cameras(3, 20.0, 2.6, 40.0)
    with torch.no_grad():
        a = cpu.render(cams, 24, 24, stratified=False)
        b = gpu.render(cams, 24, 24, stratified=False)
    assert abs(a.samples_per_ray - b.samples_per_ray) < 0.2 * a.samples_per_ray
    diff = (a.rgb - b.rgb.cpu()).abs()
    assert diff.mean() < 0.003 and diff.max() < 0.1
    import nerfacc

    from scoredist.renderers.volume import composite_packed_torch

    torch.manual_seed(0)
    ray_indices = torch.sort(torch.randint(0, 50, (400,))).values
    t_starts = torch.rand(400)
    t_ends, sigmas = t_starts + torch.rand(400) * 0.1, torch.rand(400) * 5
    mine = composite_packed_torch(t_starts, t_ends, sigmas, ray_indices, 50)
    theirs = nerfacc.render_weight_from_density(
        t_starts.cuda(), t_ends.cuda(), sigmas.cuda(), ray_indices=ray_indices.cuda(), n_rays=50
    )
    for m, t in zip(mine, theirs):
        torch.testing.assert_close(m, t.cpu(), rtol=1e-4, atol=1e-5)
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        pytest.skip("tiny-cuda-nn not installed")
    t = NeRFRenderer(height=16, width=16, export_mesh=None, **{**SMALL, "encoding_backend": "tcnn"}).cuda()
    t.use_device(torch.device("cuda"))
    t.to("cuda")
    t.at_step(0)
    render = t()
    render.x.sum().backward()
    assert torch.isfinite(render.x).all() and t.encoding.encoding.params.grad.abs().sum() > 0
