"""A compute bound for a step: the FLOPs it runs, and the FLOP/s this process gets from a plain matmul.

    count_flops(fn)                      FLOPs of everything fn() runs (forward, and backward if fn calls it)
    matmul_throughput(device, dtype)     FLOP/s of one large square matmul, measured here and now
    ComputeBound(flops, flop_per_s)      the two together; .seconds = flops / flop_per_s

What is counted is PyTorch's own counter (torch.utils.flop_counter.FlopCounterMode): matrix products (mm, addmm, bmm,
baddbmm, hence linear layers and einsum/matmul), convolutions and their backward, and attention (QKᵀ and AV; a fused
kernel's backward recomputes QKᵀ, so five products, an unfused bmm backward four), at 2 FLOPs per multiply-add.
Everything else is not counted: elementwise ops, activations, norms, softmax, reductions, copies and casts, sampling.
So FLOPs / throughput is a LOWER bound on the time of fn(): it leaves out all the memory-bound work and assumes every
product runs at the speed of one big, well-shaped matmul. A ratio time ÷ bound says how far a step is from pure
matmul-rate compute, not an efficiency in the hardware's sense (the throughput is measured, not the vendor's peak).

One gap of the counter is filled here: on the CPU, `F.scaled_dot_product_attention` runs
`aten._scaled_dot_product_flash_attention_for_cpu` (and its backward), which the counter's table does not know, so a
CPU count would silently drop every attention product; the formulas for those two ops are added below, the same
products as for the CUDA kernels, so a model counts the same on either device.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

aten = torch.ops.aten


@dataclass(frozen=True)
class ComputeBound:
    """FLOPs of some work and the measured matmul rate: `seconds` is the least time that work can take here."""

    flops: int
    flop_per_s: float

    @property
    def seconds(self) -> float:
        return self.flops / self.flop_per_s

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def _attention_products(query_shape, key_shape, value_shape) -> tuple[int, int]:
    """(multiply-adds of one Q·Kᵀ-shaped product, of one P·V-shaped product) for (B, H, N, d) shaped q, k, v.

    Key/value may have fewer heads than the query (grouped-query attention); the kernel repeats them, so the
    products run at the query's head count."""
    *batch, n_q, d_qk = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    rows = math.prod(batch)
    return rows * n_q * n_k * d_qk, rows * n_q * n_k * d_v


def _cpu_attention_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """S = Q·Kᵀ, then O = softmax(S)·V: one product of each kind."""
    qk, pv = _attention_products(query_shape, key_shape, value_shape)
    return 2 * (qk + pv)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """Flash-style backward: S is recomputed (Q·Kᵀ), then dP = dO·Vᵀ and dV = Pᵀ·dO (value-width products), and
    dQ = dS·K and dK = dSᵀ·Q (key-width products)."""
    qk, pv = _attention_products(query_shape, key_shape, value_shape)
    return 2 * (3 * qk + 2 * pv)


# Only the ops the installed torch has and its counter lacks (the table grows between releases; never override it).
_EXTRA_FORMULAS = {
    getattr(aten, name): formula
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_attention_forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_attention_backward),
    )
    if hasattr(aten, name)
}


def _missing_formulas() -> dict:
    """Checked at each count, not at import: a formula registered later (by torch or by the user) wins."""
    return {op: f for op, f in _EXTRA_FORMULAS.items() if op not in flop_registry}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of every matmul, convolution and attention that `fn()` runs, forward and backward (2 per multiply-add).

        Elementwise ops, norms, softmax and the like count zero (module docstring): divided by a matmul throughput, the
        count gives a lower bound on the time of fn(). fn runs once, for real (its side effects happen, gradients
        accumulate). A torch.compile'd module still counts (checked with a compiled Linear on the CPU): under the
    counter's dispatch mode its ops are seen one by one."""
    with FlopCounterMode(display=False, custom_mapping=_missing_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def default_matmul_size(device: torch.device | str) -> int:
    """A square size whose matmul takes ~0.1 s on a 2-core CPU (≈160 GFLOP/s fp32 at n=2048) and ~1 ms on a
    datacenter GPU: large enough to reach the BLAS's full rate, small enough to be measured in a second."""
    return 8192 if torch.device(device).type == "cuda" else 2048


def matmul_throughput(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    repeats: int = 5,
) -> float:
    """FLOP/s of an n×n by n×n matmul (2n³ FLOPs) in `dtype` on `device`, measured in this process.

    One untimed product first (thread pools, cuBLAS handles and kernel choice), then the median of `repeats` timed
    ones: a median because a shared machine stalls a few of them. On CUDA every timing synchronizes before and after.
    Measured with the process's current thread count, as the work it is compared with runs with it."""
    device = torch.device(device)
    n = size or default_matmul_size(device)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    out = torch.empty(n, n, device=device, dtype=dtype)  # reused: the allocation is not part of the rate

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.mm(a, b, out=out)
    seconds = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(seconds)
