"""iRFDS (scoredist/losses/irfds.py): its direction is the gradient of the authors' loss, written with the flow model's
own velocity on the flow path, and its outputs are the flow sampled from the inverted noise."""

from __future__ import annotations

import pytest
import torch

from scoredist.guidance.exact.flow import ShapesFlowPrior
from scoredist.losses.irfds import IRFDS, mean_variance_gradient
from scoredist.prompts import Prompt


@pytest.fixture(scope="module")
def prior():
    return ShapesFlowPrior(resolution=16)


def test_the_regulariser_gradient_is_autograd_of_mean_squared_plus_variance_gap_squared():
    z = (torch.randn(2, 3, 4, 4, dtype=torch.float64) * 1.3 + 0.2).requires_grad_(True)
    n = z[0].numel()
    loss = sum(row.mean() ** 2 + (row.var() - 1) ** 2 for row in z)  # torch.var: unbiased, as theirs
    (grad,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(mean_variance_gradient(z.detach()), n / 2 * grad)


def test_the_step_is_the_gradient_of_their_loss_with_the_flow_models_velocity(prior, tmp_path):
    from scoredist.images import save_png

    reference = tmp_path / "red.png"
    save_png(prior.decode(prior.reference_image("a red cube")[None]), reference, min_size=16)
    loss = IRFDS(reference=str(reference))
    z0 = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    loss.attach(prior, z0)
    t = torch.tensor([600])
    step, _ = loss(prior, z0, t, torch.zeros_like(z0), [Prompt("a red cube")], step=0)
    # their loss: ½ [ mse(z, sg(û + x0)) + mean(z)² + (var(z) − 1)² ], û the velocity at x_s = (1 − σ) x0 + σ z
    z = z0.double().requires_grad_(True)
    x0 = loss.x0.double()
    s = prior.noise_path.sigma[t].view(-1, 1, 1, 1)
    u = prior.predict_velocity((1 - s) * x0 + s * z.detach(), t, ["a red cube"])
    their = 0.5 * (((z - (u + x0)) ** 2).mean() + z.mean() ** 2 + (z.var() - 1) ** 2)
    (grad,) = torch.autograd.grad(their, z)
    torch.testing.assert_close(step.double(), grad, rtol=2e-4, atol=1e-7)


def test_without_a_reference_or_with_cameras_it_says_what_to_pass(prior):
    with pytest.raises(ValueError, match="loss.reference=IMAGE"):
        IRFDS().attach(prior, torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="renderer=image"):
        IRFDS(reference="x.png").check_rows([Prompt("a red cube", camera=(0.0, 15.0, 2.6, 40.0))])


def test_outputs_sample_the_flow_from_the_noise_under_the_caption_and_the_edit_prompt(prior):
    from scoredist.guidance.base import ddim_sample

    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    found = IRFDS(reference="x.png", edit_prompt="a blue cube").outputs(prior, z, ["a red cube", "a red cube"])
    assert list(found) == ["inversion.png", "edit.png"]
    assert found["edit.png"][1] == ["a blue cube", "a blue cube"]
    torch.testing.assert_close(found["inversion.png"][0], ddim_sample(prior, z, ["a red cube"] * 2, 15, 2.0))
