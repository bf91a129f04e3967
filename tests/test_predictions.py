"""The prediction-type layer (scoredist/guidance/predictions.py) against exact models of a Gaussian data distribution.

For data x0 ~ N(m, v I) on any path x = α x0 + σ ε the posterior is Gaussian, so each parametrisation of the optimal
model is known by hand:
    x̂0 = m + α v (x − α m) / (α² v + σ²),   ε̂ = (x − α x̂0) / σ,
    epsilon → ε̂,  sample → x̂0,  v_prediction → α ε̂ − σ x̂0,  flow → ε̂ − x̂0.
Each model is evaluated on its own path and converted; all must give the ε-model's ε̂ (and x̂0) of the VP path.
"""

from __future__ import annotations

import pytest
import torch

from scoredist.guidance.base import scaled_linear_alphas_cumprod
from scoredist.guidance.predictions import (
    PREDICTIONS,
    NoisePath,
    flow_sigmas,
    from_eps_x0,
    shift_sigmas,
    to_eps,
    to_x0,
)

MEAN, VAR = 0.3, 0.25


def optimal(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε̂, x̂0) of the Bayes-optimal denoiser for N(MEAN, VAR) data on the path x = α x0 + σ ε (written by hand)."""
    x0 = MEAN + alpha * VAR * (x - alpha * MEAN) / (alpha**2 * VAR + sigma**2)
    return (x - alpha * x0) / sigma, x0


def native_output(prediction: str, eps, x0, alpha, sigma):
    """What the optimal model of each type outputs, written out by hand (not through from_eps_x0)."""
    return {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0, "flow": eps - x0}[prediction]


PATHS = {
    "vp": NoisePath.variance_preserving(scaled_linear_alphas_cumprod()),
    "flow": NoisePath.rectified_flow(flow_sigmas(1000, shift=1.0)),
    "flow_shift3": NoisePath.rectified_flow(flow_sigmas(1000, shift=3.0)),
}


@pytest.mark.parametrize("path_name", list(PATHS))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_parametrisation_on_every_path_gives_the_eps_model_of_the_same_signal_to_noise(path_name, prediction):
    path = PATHS[path_name]
    t = torch.arange(0, 1000, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    x_vp = torch.randn(1000, 5, generator=g, dtype=torch.float64)
    # reference: the ε-model on the VP path with the same ᾱ
    abar = path.alphas_cumprod[t][:, None]
    eps_ref, x0_ref = optimal(x_vp, abar.sqrt(), (1 - abar).sqrt())
    # the model on its own path, fed r_t x_t as a guidance model does
    alpha, sigma = path.coefficients(t, x_vp)
    x_model = path.scale(t, x_vp) * x_vp
    eps, x0 = optimal(x_model, alpha, sigma)
    out = native_output(prediction, eps, x0, alpha, sigma)
    torch.testing.assert_close(path.eps_from_output(out, x_model, t, prediction), eps_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(to_x0(out, x_model, alpha, sigma, prediction), x0_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(from_eps_x0(eps, x0, alpha, sigma, prediction), out)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_conversions_hold_in_float32_to_float_tolerance(prediction):
    path = PATHS["flow_shift3"]
    t = torch.arange(0, 1000, 7)
    x_vp = torch.randn(len(t), 16)
    alpha, sigma = path.coefficients(t, x_vp)
    x_model = path.scale(t, x_vp) * x_vp
    eps, x0 = optimal(x_model, alpha, sigma)
    out = native_output(prediction, eps, x0, alpha, sigma)
    eps_back = to_eps(out, x_model, alpha, sigma, prediction)
    torch.testing.assert_close(eps_back, eps, rtol=1e-4, atol=1e-4)


def test_flow_sigmas_are_the_shifted_scheduler_grid_with_the_pure_noise_end_kept_below_one():
    s = flow_sigmas(1000, shift=3.0)
    # index t ↦ s = (t + 1)/1000 shifted: t = 499 is s = 0.5 ↦ 3·0.5/(1 + 2·0.5) = 0.75
    assert s[499].item() == pytest.approx(0.75, abs=1e-12)
    assert s[0].item() == pytest.approx(3 * 0.001 / (1 + 2 * 0.001), abs=1e-15)
    assert s[-1].item() == pytest.approx(3 * 0.9995 / (1 + 2 * 0.9995), abs=1e-12) and s[-1] < 1
    assert torch.all(s[1:] > s[:-1])
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert torch.equal(shift_sigmas(ends, 3.0), ends)


def test_a_flow_path_is_a_rescaled_vp_path_with_the_same_noise():
    path = PATHS["flow_shift3"]
    abar = path.alphas_cumprod
    s = flow_sigmas(1000, 3.0)
    torch.testing.assert_close(abar, (1 - s) ** 2 / ((1 - s) ** 2 + s**2))
    assert torch.all(abar[1:] < abar[:-1]) and abar[-1] > 0


def test_an_unknown_prediction_type_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="expected one of"):
        to_eps(torch.zeros(1), torch.zeros(1), 1.0, 1.0, "velocity")
