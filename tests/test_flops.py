"""scoredist/eval/flops.py: the FLOP count of a small conv + attention block against a count by hand, and the matmul
throughput as a sane, repeatable number."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scoredist.eval.flops import ComputeBound, count_flops, matmul_throughput

C_IN, C_OUT, K, H, W = 4, 8, 3, 16, 16
D = 16  # width of the single attention head (query, key and value alike, as in a UNet's heads)
N = H * W  # one attention position per pixel


class ConvAttention(nn.Module):
    """A Conv2d, then one attention head over its H·W positions (the shape of a UNet's conv + attention pair)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C_IN, C_OUT, K, padding=1)
        self.q = nn.Linear(C_OUT, D)
        self.k = nn.Linear(C_OUT, D)
        self.v = nn.Linear(C_OUT, D)
        self.out = nn.Linear(D, C_OUT)

    def forward(self, x):
        h = self.conv(x).flatten(2).transpose(1, 2)  # (1, N, C_OUT)
        q, k, v = (proj(h).unsqueeze(1) for proj in (self.q, self.k, self.v))  # (1, 1, N, width): one head
        return self.out(F.scaled_dot_product_attention(q, k, v).squeeze(1))


def hand_count() -> dict[str, int]:
    """2 FLOPs per multiply-add; biases, softmax and the reshapes are not counted (nor by the counter)."""
    return {
        # every output pixel (C_OUT·H·W of them) sums C_IN·K² products
        "conv": 2 * C_OUT * C_IN * K**2 * H * W,
        # a projection d_in → d_out of N rows: 2·N·d_in·d_out
        "q": 2 * N * C_OUT * D,
        "k": 2 * N * C_OUT * D,
        "v": 2 * N * C_OUT * D,
        "out": 2 * N * D * C_OUT,
        # scores S = Q·Kᵀ: N×N entries, each a D-long dot product; then softmax(S)·V: N×D entries, N-long each
        "qk": 2 * N * N * D,
        "av": 2 * N * N * D,
    }


def test_the_counter_matches_a_hand_count_of_a_conv_and_attention_block():
    torch.manual_seed(0)
    block = ConvAttention()
    x = torch.randn(1, C_IN, H, W)
    expected = hand_count()
    assert expected == {
        "conv": 147_456,
        "q": 65_536,
        "k": 65_536,
        "v": 65_536,
        "out": 65_536,
        "qk": 2_097_152,
        "av": 2_097_152,
    }  # the formulas above, evaluated once by hand
    with torch.no_grad():
        assert count_flops(lambda: block(x)) == sum(expected.values())


@pytest.mark.parametrize(
    "d_v, backward_products",
    [(D, 3 * D + 2 * D), (12, 2 * D + 2 * 12)],
    ids=["fused CPU kernel", "bmm fallback"],
)
def test_attention_counts_on_either_cpu_kernel_forward_and_backward(d_v, backward_products):
    """With equal head widths the CPU runs a fused kernel that PyTorch's counter has no formula for (without the one
    flops.py adds, attention would count zero); its backward recomputes S, then dP, dV (value width) and dQ, dK (key
    width). With a value width of its own it falls back to plain bmm products, which the counter knows: the forward
    is the same count, the backward one product less (S is kept, not recomputed)."""
    rows = 2 * 3  # batch × heads
    q, k = (torch.randn(2, 3, N, D, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 3, N, d_v, requires_grad=True)
    forward = 2 * rows * N * N * (D + d_v)
    backward = 2 * rows * N * N * backward_products
    with torch.no_grad():
        assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == forward
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == forward + backward


def test_the_bound_is_flops_over_throughput():
    bound = ComputeBound(flops=3_000_000_000, flop_per_s=1.5e9)
    assert bound.seconds == 2.0 and bound.gflops == 3.0


def test_matmul_throughput_is_positive_finite_and_repeatable():
    # 1024: ~15 ms a product on a 2-core CPU, so two measurements take well under a second
    first = matmul_throughput("cpu", torch.float32, size=1024, repeats=5)
    second = matmul_throughput("cpu", torch.float32, size=1024, repeats=5)
    for rate in (first, second):
        assert math.isfinite(rate) and rate > 0
    assert 1 / 4 < first / second < 4  # a shared machine moves it, but not by more than a few times
