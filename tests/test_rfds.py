"""RFDS (scoredist/losses/rfds.py) on the exact flow prior: its direction is the velocity gap û_cfg − (ε − x) of the
flow model itself, i.e. (ε̂_cfg − ε)/(1 − σ) on the flow path, times the authors' random factor; settings literal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from scoredist.guidance.base import cfg
from scoredist.guidance.exact.flow import ShapesFlowPrior
from scoredist.losses.rfds import RFDS
from scoredist.prompts import Prompt

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def prior():
    return ShapesFlowPrior(resolution=16)


def draw(prior, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = prior.reference_image("a red cube")[None].repeat(n, 1, 1, 1) + 0.1 * torch.randn(n, 3, 16, 16, generator=g)
    t = torch.tensor([20, 500, 980][:n])
    return x, t, torch.randn(n, 3, 16, 16, generator=g), [Prompt("a red cube")] * n


def test_the_direction_is_the_flow_models_own_velocity_gap(prior):
    x, t, noise, prompts = draw(prior)
    g, _ = RFDS(guidance_scale=50.0, random_weight=False).direction(prior, x, t, noise, prompts, step=0)
    # the flow model on its own path, without the conversion layer: x_s = (1 − σ) x + σ ε, û from predict_velocity
    s = prior.noise_path.sigma[t].view(-1, 1, 1, 1)
    x_s = (1 - s) * x.double() + s * noise.double()
    u_cond = prior.predict_velocity(x_s, t, ["a red cube"] * 3)
    u_neg = prior.predict_velocity(x_s, t, [""] * 3)
    expected = cfg(u_neg, u_cond, 50.0) - (noise.double() - x.double())
    torch.testing.assert_close(g.double(), expected, rtol=1e-3, atol=2e-3 * expected.abs().max().item())


def test_the_direction_is_the_noise_gap_over_one_minus_sigma_times_one_random_factor(prior):
    x, t, noise, prompts = draw(prior)
    plain, _ = RFDS(guidance_scale=50.0, random_weight=False).direction(prior, x, t, noise, prompts, step=0)
    x_t = prior.noise_path.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1).float() * x
    x_t = x_t + (1 - prior.noise_path.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1).float() * noise
    eps = prior.predict_noise(torch.cat([x_t, x_t]), t.repeat(2), ["a red cube"] * 3 + [""] * 3)
    eps_cfg = cfg(eps[3:], eps[:3], 50.0)
    s = prior.noise_path.sigma[t].view(-1, 1, 1, 1).float()
    torch.testing.assert_close(plain, (eps_cfg - noise) / (1 - s), rtol=1e-4, atol=1e-4)
    torch.manual_seed(3)
    weighted, logs = RFDS(guidance_scale=50.0).direction(prior, x, t, noise, prompts, step=0)
    torch.manual_seed(3)
    factor = torch.sigmoid(torch.randn(3)).mean()  # what the loss draws: one factor for the batch
    torch.testing.assert_close(weighted, factor * plain)
    assert 0 < float(logs["random_weight"]) < 1 and float(logs["random_weight"]) == pytest.approx(float(factor))


def test_the_loss_reduces_over_a_rows_entries_without_a_timestep_weight(prior):
    x, t, noise, prompts = draw(prior)
    loss = RFDS(guidance_scale=50.0, random_weight=False)
    weighted, _ = loss(prior, x, t, noise, prompts, step=0)
    g, _ = loss.direction(prior, x, t, noise, prompts, step=0)
    torch.testing.assert_close(weighted, g / x[0].numel())  # F.mse_loss(..., "mean"), no w(t)


def test_the_config_holds_the_authors_settings_and_the_2d_overlay_composes_their_prompt():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loss = instantiate(compose("train", overrides=["loss=rfds"]).loss)
        overlay = compose("train", overrides=["+experiment=t2i_rfds"])
    assert (loss.guidance_scale, loss.negative_prompt, loss.suffix, loss.random_weight) == (50.0, "", "", True)
    assert (loss.weighting, loss.reduction) == ("uniform", "mean")
    rfds = instantiate(overlay.loss)
    assert [text for _, text in rfds.conditioning_texts([Prompt("a hamburger")])] == ["a hamburger, front view", ""]
    assert overlay.guidance._target_.endswith("StableDiffusion3")
    assert overlay.optimizer.lr == 0.03 and overlay.trainer.max_steps == 800


def test_on_a_vp_model_the_direction_is_the_velocity_gap_too():
    """The factor 1 + sqrt((1 − ᾱ)/ᾱ) is path-free: on the ε prior, (ε̂_cfg − x̂0) − (ε − x) with x̂0 from ε̂_cfg."""
    from scoredist.guidance.exact.shapes import ShapesPrior
    from scoredist.guidance.predictions import to_x0

    prior = ShapesPrior(resolution=16)
    x, t, noise, prompts = draw(prior)
    g, _ = RFDS(guidance_scale=7.5, random_weight=False).direction(prior, x, t, noise, prompts, step=0)
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x_t = a * x + s * noise
    eps = prior.predict_noise(torch.cat([x_t, x_t]), t.repeat(2), ["a red cube"] * 3 + [""] * 3)
    eps_cfg = cfg(eps[3:], eps[:3], 7.5)
    expected = (eps_cfg - to_x0(eps_cfg, x_t, a, s, "epsilon")) - (noise - x)
    torch.testing.assert_close(g, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
