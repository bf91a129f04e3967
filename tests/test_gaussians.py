"""renderer=gaussians (scoredist/renderers/gaussians.py, densify.py): cameras, density control on planted statistics,
the optimizer's state through it, resume after densification, .ply export/import, the mesh field, and gsplat against
the pure-PyTorch rasteriser where CUDA and gsplat exist."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from scoredist.checkpoint import load_checkpoint
from scoredist.renderers.base import ModelSpace
from scoredist.renderers.cameras import Cameras, camera_rays, orbit_cameras
from scoredist.renderers.densify import plan
from scoredist.renderers.gaussian_ply import read_ply
from scoredist.renderers.gaussians import GaussianRenderer, camera_matrices, expon_lr, gsplat_available
from scoredist.renderers.splatting import covariances, project
from scoredist.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"


def bound(renderer: GaussianRenderer, size: int = 16) -> GaussianRenderer:
    renderer.bind(ModelSpace(3, 1, (size, size), lambda x: x), [0])
    return renderer


def test_a_point_on_a_pixels_ray_projects_to_that_pixels_centre():
    """camera_matrices is the pinhole camera_rays traces (the NeRF's), so Gaussians and NeRFs see the same views."""
    cams = Cameras(*(torch.tensor([v]) for v in (37.0, 22.0, 2.6, 40.0)))
    height, width = 12, 20
    eye, dirs = camera_rays(cams, height, width)
    view, K = camera_matrices(cams, height, width)
    for i, j in [(0, 0), (5, 13), (11, 19)]:
        point = eye[0] + 1.7 * dirs[0, i * width + j]
        cam = view[0, :3, :3] @ point + view[0, :3, 3]
        assert cam[2] > 0  # in front (OpenCV: +z forward)
        pixel = (K[0] @ cam)[:2] / cam[2]
        torch.testing.assert_close(pixel, torch.tensor([j + 0.5, i + 0.5]), atol=1e-4, rtol=0)


def test_projection_and_colours_equal_gsplats_own_pytorch_reference():
    """gsplat's pure-PyTorch reference (gsplat.cuda._torch_impl, what its CUDA kernels are tested against) on the
    same Gaussians and cameras: the projected centres, depths and conics of splatting.project, and the degree-1
    spherical-harmonic colours of GaussianRenderer.colours. Its compositing needs CUDA; ours is tested by hand."""
    ref = pytest.importorskip("gsplat.cuda._torch_impl")
    torch.manual_seed(0)
    r = bound(GaussianRenderer(num_points=300, sh_degree=1, distance_range=(2.5, 2.5)), 32)
    with torch.no_grad():
        r.log_scales += torch.randn_like(r.log_scales)
        r.quats.normal_()
        r.sh_rest.normal_()
    cams = orbit_cameras(3, 25.0, 2.5, 49.1)
    view, K = camera_matrices(cams, 32, 48)
    covs = covariances(r.quats, r.log_scales.exp()).detach()
    _, means2d, depths, conics, _ = ref._fully_fused_projection(r.means.detach(), covs, view, K, 48, 32)
    for i in range(len(cams)):
        ours = project(r.means.detach(), covs, view[i], K[i], 48, 32)
        torch.testing.assert_close(ours[0], means2d[i], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ours[2], depths[i])
        torch.testing.assert_close(ours[1], conics[i], atol=1e-6, rtol=1e-4)
        eye = torch.linalg.inv(view[i])[:3, 3]
        coeffs = torch.cat([r.sh_dc[:, None], r.sh_rest], dim=1).detach()
        theirs = (ref._spherical_harmonics(1, r.means.detach() - eye, coeffs) + 0.5).clamp_min(0)
        torch.testing.assert_close(r.colours(eye).detach(), theirs)


def test_the_centres_rate_decays_log_linearly_as_3dgs_schedules_it():
    assert expon_lr(0, 0.01, 0.0002, 300) == pytest.approx(0.01)
    assert expon_lr(150, 0.01, 0.0002, 300) == pytest.approx(math.sqrt(0.01 * 0.0002))
    assert expon_lr(300, 0.01, 0.0002, 300) == expon_lr(1000, 0.01, 0.0002, 300) == pytest.approx(0.0002)


def test_the_rule_clones_small_splits_large_and_prunes_faint_gaussians():
    grads = torch.tensor([0.02, 0.02, 0.001, 0.02, 0.001])
    scales = torch.tensor([0.01, 0.1, 0.1, 0.5, 0.01])
    opac = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.005])
    screen = torch.zeros(5)
    rule = plan(grads, scales, opac, screen, 0.01, 0.01, 4.0, 0.01, max_world_size=0.4)
    assert rule.clone.tolist() == [0] and rule.split.tolist() == [1, 3]
    assert rule.keep.tolist() == [True, False, True, False, False]  # split → replaced; 3 also too big; 4 faint
    off = plan(grads, scales, opac, screen, 0.01, 0.01, 4.0, 0.01, densify=False)
    assert len(off.clone) == len(off.split) == 0 and off.keep.tolist() == [True, True, True, True, False]


def planted(optimizer_too: bool = True):
    """Four Gaussians with planted statistics: 0 small and hot (clone), 1 large and hot (split), 2 cold, 3 faint."""
    torch.manual_seed(0)
    r = bound(GaussianRenderer(height=16, width=16, num_points=4, scene_extent=4.0, max_world_size=None))
    with torch.no_grad():
        r.means.copy_(torch.tensor([[0.0, 0, 0], [0.3, 0, 0], [0, 0.3, 0], [0, 0, 0.3]]))
        r.log_scales.copy_(torch.tensor([0.01, 0.2, 0.01, 0.01]).log()[:, None].repeat(1, 3))
        r.logit_opacities.copy_(torch.logit(torch.tensor([0.5, 0.5, 0.5, 0.005])))
        r.stats.grad_sum.copy_(torch.tensor([0.06, 0.06, 0.01, 0.0]))
        r.stats.views.copy_(torch.tensor([3.0, 3.0, 3.0, 0.0]))
    opt = torch.optim.Adam(r.param_groups(0.0)) if optimizer_too else None
    if opt is not None:
        for p in r.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
    return r, opt


def test_densify_on_planted_statistics_does_what_the_rule_says_and_keeps_adam_in_step():
    r, opt = planted()
    before = {name: p.detach().clone() for name, p in r.params().items()}
    moments = {name: opt.state[p]["exp_avg"].clone() for name, p in r.params().items()}
    r.densify(opt)
    # kept: 0 and 2 (in order), then the clone of 0, then 1's two children; 3 (faint) and 1 (split) are gone
    assert r.count == 5
    torch.testing.assert_close(r.means[:2], before["means"][[0, 2]])
    torch.testing.assert_close(r.means[2], before["means"][0])
    torch.testing.assert_close(r.log_scales[3:], (before["log_scales"][[1, 1]].exp() / 1.6).log())
    assert ((r.means[3:] - before["means"][1]).norm(dim=-1) < 1.0).all()  # drawn from the split Gaussian
    torch.testing.assert_close(r.logit_opacities[3:], before["logit_opacities"][[1, 1]])
    for name, p in r.params().items():
        assert any(q is p for g in opt.param_groups for q in g["params"]), name  # the optimizer has the new tensor
        avg = opt.state[p]["exp_avg"]
        assert avg.shape == p.shape
        torch.testing.assert_close(avg[:2], moments[name][[0, 2]])
        assert (avg[2:] == 0).all()
    assert r.stats.grad_sum.shape == (5,) and (r.stats.views == 0).all()
    # and the optimizer steps the new set
    before_step = r.means.detach().clone()
    for p in r.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert (r.means - before_step).abs().min() > 0


def test_a_faint_gaussian_is_not_copied_and_split_children_still_too_large_are_dropped():
    """3DGS prunes after densifying, over the copies too."""
    grads, opac, screen = torch.tensor([0.02, 0.02, 0.02]), torch.tensor([0.005, 0.005, 0.5]), torch.zeros(3)
    rule = plan(grads, torch.tensor([0.01, 0.1, 0.01]), opac, screen, 0.01, 0.01, 4.0, 0.01)
    # hot but faint: neither cloned (0, small) nor split (1, large); the opaque one (2) is cloned
    assert rule.clone.tolist() == [2] and len(rule.split) == 0 and rule.keep.tolist() == [False, False, True]
    r, opt = planted()
    r.rule["max_world_size"] = 0.1  # Gaussian 1 (scale 0.2) splits into two of 0.125: still too large, both dropped
    r.densify(opt)
    assert r.count == 3 and (r.log_scales.exp().amax(-1) <= 0.1).all()


def test_opacity_reset_caps_at_one_percent_and_zeroes_the_moments():
    r, opt = planted()
    before = r.opacities().detach()
    assert before[3] < 0.01 < before[:3].min()
    r.reset_opacities(opt)
    torch.testing.assert_close(r.opacities(), torch.tensor([0.01, 0.01, 0.01, before[3].item()]))
    assert (opt.state[r.logit_opacities]["exp_avg"] == 0).all()


def test_growth_stops_at_max_gaussians_but_pruning_goes_on():
    r, opt = planted()
    r.max_gaussians = 4
    r.densify(opt)
    assert r.count == 3  # nothing cloned or split; the faint one pruned


def test_the_centres_rate_is_the_schedules_at_the_iteration_it_is_used_for():
    r = bound(GaussianRenderer(num_points=8, position_lr=0.01, position_lr_final=0.0001, position_lr_steps=10))
    opt = torch.optim.Adam(r.param_groups(0.0))
    means = next(g for g in opt.param_groups if g["name"] == "means")
    assert means["lr"] == pytest.approx(expon_lr(1, 0.01, 0.0001, 10))  # iteration 1 is step 0
    r.after_update(0, opt)
    assert means["lr"] == pytest.approx(expon_lr(2, 0.01, 0.0001, 10))


def test_view_space_gradients_reach_the_statistics_once_per_view_seen():
    torch.manual_seed(0)
    r = bound(GaussianRenderer(height=16, width=16, batch_size=3, num_points=50, distance_range=(2.6, 2.6)))
    r.train()
    render = r()
    render.x.sum().backward()
    r.after_update(0, torch.optim.Adam(r.param_groups(0.0)))
    assert r.stats.views.max() == 3 and (r.stats.grad_sum > 0).sum() > 25
    assert (r.stats.grad_sum[r.stats.views == 0] == 0).all()


def test_the_mesh_field_of_one_gaussian_is_its_opacity_times_the_gaussian():
    r = bound(GaussianRenderer(num_points=1))
    with torch.no_grad():
        r.means.zero_()
        r.log_scales.copy_(torch.tensor([[0.2, 0.1, 0.05]]).log())
        r.logit_opacities.fill_(torch.logit(torch.tensor(0.8)))
    points = torch.tensor([[0.0, 0, 0], [0.2, 0, 0], [0, 0.1, 0], [0, 0, 0.1]])
    expected = 0.8 * torch.exp(-0.5 * torch.tensor([0.0, 1.0, 1.0, 4.0]))
    torch.testing.assert_close(r.density(points), expected)


def test_a_mesh_initialisation_puts_every_gaussian_on_the_surface(tmp_path):
    import trimesh

    trimesh.creation.box(extents=(0.6, 0.6, 0.6)).export(tmp_path / "box.obj")
    torch.manual_seed(0)
    r = bound(GaussianRenderer(num_points=500, init_shape=str(tmp_path / "box.obj")))
    torch.testing.assert_close(r.means.abs().amax(-1), torch.full((500,), 0.3))
    assert r.means.std(0).min() > 0.1  # spread over the faces, not one corner


def test_a_written_ply_starts_a_renderer_with_the_same_gaussians(tmp_path):
    torch.manual_seed(0)
    r = bound(GaussianRenderer(num_points=64, sh_degree=1))
    with torch.no_grad():
        r.sh_rest.normal_()
    path = r.write_ply(tmp_path / "g.ply")
    assert read_ply(path)["sh_rest"].shape == (64, 3, 3)
    again = bound(GaussianRenderer(num_points=7, sh_degree=1, init_shape=str(path)))
    for name, p in r.params().items():
        assert torch.equal(getattr(again, name), p), name


def run_config(run_dir: Path, *overrides: str):
    """A short SDS run on the 16² shapes world (no schedule of max_steps: a resume with a larger max_steps continues
    the same run), densifying every 3 steps and resetting opacities every 5."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "guidance=shapes",
                "loss=sds",
                "renderer=gaussians",
                "logger=none",
                "prompt=a red cube",
                "guidance.resolution=16",
                "guidance.num_azimuths=4",
                "guidance.elevations=[15.0]",
                "guidance.supersample=1",
                "renderer.height=16",
                "renderer.width=16",
                "renderer.distance_range=[2.6,2.6]",
                "renderer.fovy_range=[40.0,40.0]",
                "renderer.num_points=200",
                "renderer.densify_every=3",
                "renderer.densify_grad_threshold=0.001",
                "renderer.opacity_reset_every=5",
                "renderer.turntable_views=2",
                "renderer.eval_views=2",
                "renderer.export_mesh=null",
                "trainer.batch_size=2",
                "trainer.device=cpu",
                "trainer.precision=fp32",
                "trainer.log_every=1",
                *overrides,
            ],
        )
    cfg.trainer.run_dir = str(run_dir)
    return cfg


def test_a_run_resumed_after_densification_equals_a_straight_run(tmp_path):
    straight = train(run_config(tmp_path / "straight", "trainer.max_steps=8")).run_dir
    half = train(run_config(tmp_path / "half", "trainer.max_steps=4")).run_dir  # densified at step 3 (1-based)
    halfway = load_checkpoint(half / "checkpoints" / "last.pt")
    train(run_config(tmp_path / "half", "trainer.max_steps=8", f"trainer.resume={half}"))
    resumed = load_checkpoint(half / "checkpoints" / "last.pt")["renderer"]
    end = load_checkpoint(straight / "checkpoints" / "last.pt")["renderer"]
    assert halfway["renderer"]["means"].shape[0] > 200  # it had grown before the checkpoint
    assert end["means"].shape[0] > halfway["renderer"]["means"].shape[0]  # and grew again at step 6
    assert resumed.keys() == end.keys()
    for key in end:
        if torch.is_tensor(end[key]):
            assert torch.equal(resumed[key], end[key]), key
    for name in ("views.png", "turntable.mp4", "gaussians.ply", "final.png", "eval.json"):
        assert (straight / name).is_file(), name


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and gsplat_available()), reason="needs CUDA and gsplat")
def test_gsplat_and_the_pytorch_rasteriser_agree_on_images_and_gradients():
    """The stated tolerance: images within 2e-3 (mean 1e-4) of each other; gradients of the centres within 5 % of
    their scale. They differ only at a Gaussian's box edge (gsplat evaluates whole 16-pixel tiles) and in float
    order."""
    torch.manual_seed(0)
    r = bound(GaussianRenderer(height=64, width=64, num_points=2000, backend="torch"), 64).cuda()
    cams = orbit_cameras(3, 15.0, 2.5, 49.1)
    results = {}
    for backend in ("torch", "gsplat"):
        r.backend = backend
        r.means.grad = None
        rgb, _ = r.render(cams, 64, 64)
        rgb.square().sum().backward()
        results[backend] = (rgb.detach(), r.means.grad.clone())
    (a, ga), (b, gb) = results["torch"], results["gsplat"]
    assert (a - b).abs().max() < 2e-3 and (a - b).abs().mean() < 1e-4
    assert (ga - gb).norm() < 0.05 * gb.norm()
    # density control's statistics: the same views, gradients and sizes from both backends
    r.train()
    stats = {}
    for backend in ("torch", "gsplat"):
        r.backend = backend
        r.stats.reset(r.count, r.device)
        rgb, _ = r.render(cams, 64, 64, keep_stats=True)
        rgb.square().sum().backward()
        r.after_update(10**6, torch.optim.Adam(r.param_groups(0.0)))  # past the densify window: statistics only
        stats[backend] = (r.stats.views.clone(), r.stats.grad_sum.clone())
    assert (stats["torch"][0] != stats["gsplat"][0]).float().mean() < 0.01
    assert (stats["torch"][1] - stats["gsplat"][1]).norm() < 0.05 * stats["gsplat"][1].norm()
