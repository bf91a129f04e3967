"""The exact multi-view prior (scoredist/guidance/exact/multiview.py) and the Janus-prone single-view prior
(ShapesPrior's front_weight): ε against autograd of the closed-form joint log-density, one view = the single-view prior
at that view, evidence shared across the views of one object, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from scoredist.guidance.exact.mixture import GaussianMixture
from scoredist.guidance.exact.multiview import ShapesMultiviewPrior
from scoredist.guidance.exact.shapes import ShapesPrior
from scoredist.guidance.exact.world import VARIANT_NAMES
from scoredist.prompts import Condition

WORLD = dict(resolution=16, num_azimuths=4, elevations=[15.0], supersample=1)


@pytest.fixture(scope="module")
def prior2():
    return ShapesMultiviewPrior(views_per_object=2, **WORLD)


def rows(*items):
    """Conditions from (text, azimuth, elevation) triples at the bank's distance and fovy."""
    return [Condition(text, (az, el, 2.6, 40.0)) for text, az, el in items]


def test_the_camera_picks_the_nearest_bank_view(prior2):
    cams = torch.tensor([[10.0, 20.0], [100.0, 15.0], [-100.0, 30.0], [170.0, 80.0]], dtype=torch.float64)
    assert [prior2.bank_views[int(j)][0] for j in prior2.bank_view_of(cams)] == [0.0, 90.0, 270.0, 180.0]


def test_eps_is_minus_sqrt_one_minus_abar_times_the_score_of_the_joint_density(prior2):
    torch.manual_seed(0)
    prompts = rows(("a red cube", 0.0, 15.0), ("a red cube", 90.0, 15.0), ("", 180.0, 15.0), ("", 45.0, 15.0))
    t = torch.tensor([200, 650, 400, 900])
    x_t = torch.randn(4, 3, 16, 16, dtype=torch.float64).requires_grad_()
    log_p = prior2.group_log_density(x_t, t, prompts)
    assert log_p.shape == (2,)
    (grad,) = torch.autograd.grad(log_p.sum(), x_t)
    abar = prior2._abar64[t].view(-1, 1, 1, 1)
    expected = -(1 - abar).sqrt() * grad
    torch.testing.assert_close(prior2.exact_eps(x_t.detach(), t, prompts), expected, rtol=1e-9, atol=1e-11)


def test_one_view_is_the_single_view_prior_restricted_to_the_view_the_camera_sees():
    single = ShapesMultiviewPrior(views_per_object=1, **WORLD)
    plain = ShapesPrior(**WORLD)
    torch.manual_seed(1)
    x_t = torch.randn(3, 3, 16, 16)
    t = torch.tensor([100, 500, 850])
    prompts = rows(("a red cube", 80.0, 10.0), ("a blue sphere, blurry", 185.0, 20.0), ("", 0.0, 15.0))
    got = single.exact_eps(x_t, t, prompts)
    n_var = len(VARIANT_NAMES)
    for i, (p, view) in enumerate(zip(prompts, [1, 2, 0])):  # azimuths 90°, 180°, 0° of the 4-view bank
        captions, mask = plain._selection(str(p))
        in_view = mask & (plain._view_of == view)
        means = torch.cat([plain.bank(*c)[in_view] for c in captions])
        logw = plain._component_logw[in_view].repeat(len(captions))
        mixture = GaussianMixture(means, logw, plain.variance)
        expected = mixture.predict_noise(x_t[i : i + 1].reshape(1, -1).double(), plain._abar64[t[i : i + 1]])
        torch.testing.assert_close(got[i].reshape(1, -1), expected, rtol=1e-10, atol=1e-12)
        assert in_view.sum() == n_var or "blurry" in str(p)


def test_the_views_of_one_object_share_their_evidence(prior2):
    """Under ∅ a view at t = 950 alone says almost nothing about the object; beside a clean view of a red cube it is
    denoised towards the red cube as its own camera sees it."""
    clean = prior2.bank("red", "cube").view(4, len(VARIANT_NAMES), -1)[:, 0]  # clean red cube, bank views 0°…270°
    torch.manual_seed(2)
    t = torch.tensor([950, 30])
    abar = prior2._abar64[t].view(-1, 1)
    x0 = torch.stack([clean[2], clean[0]])  # views at 180° and 0°
    x_t = (abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn_like(x0)).view(2, 3, 16, 16)
    eps = prior2.exact_eps(x_t, t, rows(("", 180.0, 15.0), ("", 0.0, 15.0)))
    x0_hat = (x_t.view(2, -1) - (1 - abar).sqrt() * eps.view(2, -1)) / abar.sqrt()
    label = prior2.nearest_component(x0_hat[:1].view(1, 3, 16, 16).float())[0]
    assert (label.caption, label.azimuth) == ("red cube", 180.0)
    alone = ShapesMultiviewPrior(views_per_object=1, **WORLD).exact_eps(x_t[:1], t[:1], rows(("", 180.0, 15.0)))
    x0_alone = (x_t[:1].view(1, -1) - (1 - abar[:1]).sqrt() * alone.view(1, -1)) / abar[:1].sqrt()
    assert (x0_alone - clean[2]).norm() > 3 * (x0_hat[0] - clean[2]).norm()


def test_rows_without_cameras_or_whole_groups_are_refused_in_one_line(prior2):
    x_t, t = torch.zeros(2, 3, 16, 16), torch.tensor([10, 10])
    with pytest.raises(ValueError, match="ShapesMultiviewPrior needs the camera of every row: use it with a 3D"):
        prior2.predict_noise(x_t, t, ["a red cube", "a red cube"])
    with pytest.raises(ValueError, match=r"groups of guidance.views_per_object=2, got 3 rows"):
        prior2.predict_noise(torch.zeros(3, 3, 16, 16), torch.tensor([1, 1, 1]), rows(*[("", 0.0, 15.0)] * 3))
    with pytest.raises(ValueError, match="must share its prompt"):
        prior2.predict_noise(x_t, t, rows(("a red cube", 0.0, 15.0), ("a blue cube", 0.0, 15.0)))
    # view phrases are the cameras' business here: they neither restrict nor fail
    prior2.predict_noise(x_t, t, rows(("a red cube, back view", 0.0, 15.0), ("a red cube, front view", 90.0, 15.0)))


def test_front_weight_makes_the_single_view_prior_prefer_front_views_whatever_the_camera():
    biased = ShapesPrior(front_weight=20.0, **WORLD)
    plain = ShapesPrior(**WORLD)
    view_logw = biased._component_logw.view(4, len(VARIANT_NAMES))[:, 0] - plain._component_logw.view(4, -1)[:, 0]
    # the front view (az 0°) 20 times likelier than each other view, the total still 1
    assert math.exp(view_logw[0] - view_logw[1]) == pytest.approx(20.0)
    assert float(torch.logsumexp(biased._component_logw, 0)) == pytest.approx(0.0, abs=1e-12)
    assert torch.equal(ShapesPrior(front_weight=1.0, **WORLD)._component_logw, plain._component_logw)


def test_a_run_whose_cameras_per_step_do_not_fill_whole_groups_is_refused_before_it_starts():
    from scoredist.train import check_views_per_object

    prior = ShapesMultiviewPrior(views_per_object=4, **WORLD)
    check_views_per_object(prior, [(64, 64, 4), (256, 256, 8)])
    check_views_per_object(ShapesPrior(**WORLD), [(64, 64, 3)])  # single-view: anything goes
    with pytest.raises(ValueError, match=r"renderer has 4, 6 cameras per step: use trainer.batch_size=4"):
        check_views_per_object(prior, [(64, 64, 4), (256, 256, 6)])
    from scoredist.losses.ism import ISM
    from scoredist.losses.sds import SDS

    check_views_per_object(prior, [(64, 64, 4)], SDS())
    with pytest.raises(ValueError, match=r"loss=ism calls the model on some rows .*guidance.views_per_object=1"):
        check_views_per_object(prior, [(64, 64, 4)], ISM())


@pytest.fixture(scope="module")
def image_prior(tmp_path_factory):
    """The image-conditioned prior with a reference that is the bank's own clean blue cone at azimuth 90°."""
    from scoredist.guidance.exact.multiview import ShapesImagePrior
    from scoredist.images import write_image

    world = ShapesPrior(**WORLD)
    clean = world.bank("blue", "cone").view(4, len(VARIANT_NAMES), 3, 16, 16)[1, 0]  # (3, R, R) in [−1, 1]
    path = tmp_path_factory.mktemp("reference") / "cone.png"
    rgb = ((clean + 1) / 2).clamp(0, 1).permute(1, 2, 0).mul(255).round().byte().numpy()
    write_image(path, rgb)
    return ShapesImagePrior(reference=str(path), reference_azimuth=90.0, reference_elevation=15.0, **WORLD)


def test_the_reference_image_decides_the_object_and_each_camera_its_view(image_prior):
    """Given a photo of the blue cone from 90°, a row at 270° under "a cone" (no colour named) denoises at t = 950 to
    the blue cone as seen from 270°; the empty prompt (Zero123's unconditional branch) ignores the photo."""
    torch.manual_seed(3)
    x_t = torch.randn(1, 3, 16, 16)
    t = torch.tensor([950])
    abar = image_prior._abar64[t].view(1, 1)
    for prompt, caption in (("a cone", "blue cone"), ("", None)):
        eps = image_prior.exact_eps(x_t, t, rows((prompt, 270.0, 15.0)))
        x0 = (x_t.view(1, -1).double() - (1 - abar).sqrt() * eps.view(1, -1)) / abar.sqrt()
        label = image_prior.nearest_component(x0.view(1, 3, 16, 16).float())[0]
        if caption is not None:
            assert (label.caption, label.azimuth, label.variant) == (caption, 270.0, "clean")
        else:  # the posterior mean of the whole world: not the blue cone's view in particular
            assert label.caption != "blue cone" or label.azimuth != 270.0


def test_the_image_conditioned_eps_is_the_score_of_its_closed_form_density(image_prior):
    torch.manual_seed(4)
    prompts = rows(("a cone", 0.0, 15.0), ("a cone", 180.0, 15.0))
    t = torch.tensor([300, 800])
    x_t = torch.randn(2, 3, 16, 16, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(image_prior.group_log_density(x_t, t, prompts).sum(), x_t)
    expected = -(1 - image_prior._abar64[t].view(-1, 1, 1, 1)).sqrt() * grad
    torch.testing.assert_close(image_prior.exact_eps(x_t.detach(), t, prompts), expected, rtol=1e-9, atol=1e-11)
