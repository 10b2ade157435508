"""The peak part: matmul rates on random data, the ceilings the encoder rows are read against."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from common import timed

from ..harness import Check, torch_device

# Dense bfloat16 matmul peaks from the vendor's datasheets (TFLOP/s), by device-name fragment.
NOMINAL_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
# Measured on this workplace's H200s (device docs, KINDS.md: 8192^3 bf16 products through PyTorch).
DOCUMENTED_BF16_TFLOPS = {"H200": 790.0}
CASES = [("bfloat16", None), ("float32", "highest"), ("float32", None)]


def part_peak(ck: Check) -> None:
    """Matmul rates (JAX and torch): bfloat16, float32 at full precision, XLA's default float32."""
    n = ck.plan.matmul_side
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    for dtype, precision in CASES:
        label = f"{dtype} {n}^3 matmul" + (", precision highest" if precision else "")

        def run(dtype: str = dtype, precision: str | None = precision, label: str = label) -> None:
            matmul_row(ck, label, a, b, dtype, precision)

        ck.measure("peak", label, "peak", 2.0, run)


def matmul_row(ck: Check, label: str, a: np.ndarray, b: np.ndarray, dtype: str, precision: str | None) -> None:
    flops = 2.0 * a.shape[0] ** 3
    x, y = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    fn = jax.jit(lambda u, v: jnp.matmul(u, v, precision=precision))
    _, ours = timed(lambda: fn(x, y), ck.plan.repeats, ck.plan.min_seconds)
    ref = None
    if dtype == "bfloat16" or precision:  # torch's float32 is full precision here (TF32 off)
        tx, ty = (torch.as_tensor(m).to(torch_device(), getattr(torch, dtype)) for m in (a, b))
        _, ref_s = timed(lambda: torch.matmul(tx, ty), ck.plan.repeats, ck.plan.min_seconds)
        ref = flops / ref_s / 1e12
    note = {} if precision or dtype == "bfloat16" else {"note": "XLA default: TF32 on NVIDIA"}
    ck.rec.row("peak", label, "TFLOP/s", ref, flops / ours / 1e12, **note)
    if dtype == "bfloat16":
        ck.rec.meta["measured_bf16_TFLOPs"] = max(flops / ours / 1e12, ref or 0.0)


def bf16_peaks(ck: Check) -> dict[str, float]:
    """The bfloat16 peaks (TFLOP/s) the encoder rows are read against, by source."""
    name = ck.rec.meta.get("device_name", "")
    peaks = {}
    for source, table in [("nominal", NOMINAL_BF16_TFLOPS), ("documented", DOCUMENTED_BF16_TFLOPS)]:
        for fragment, tflops in table.items():
            if fragment in name:
                peaks[f"{source}_bf16_peak"] = tflops
    if ck.rec.meta.get("measured_bf16_TFLOPs"):
        peaks["measured_bf16_peak"] = ck.rec.meta["measured_bf16_TFLOPs"]
    return peaks
