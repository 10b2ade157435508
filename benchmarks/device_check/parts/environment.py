"""The environment part: versions, the device, the attention paths; the cuDNN probe."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

import sam_jax
from sam_jax.modeling import attention_kernels

from ..harness import Check, attention_path_of
from ..plan import Plan

# vit_b's attention shapes (batch, heads, grid side, head dim): a global block of one image, its windows.
PROBE_SHAPES = {"global block": (1, 12, 64, 64), "windows": (25, 12, 14, 64)}
PROBE_LIMITS = {"forward": 2e-2, "backward": 5e-2}  # bfloat16 inputs, two summation orders


def device_name(plan: Plan) -> str:
    """What the results files are named after: the accelerator's kind (e.g. "NVIDIA H200")."""
    dev = jax.devices()[0]
    name = dev.device_kind if jax.default_backend() == "gpu" else f"{platform.machine()} {jax.default_backend()}"
    return f"{name} dry-run" if plan.name == "dry-run" else name


def part_environment(ck: Check) -> None:
    info = environment_info(ck.attention)
    ck.rec.meta["environment"] = info
    for key, value in info.items():
        ck.rec.row("environment", key, "", None, None, value=str(value).replace("\n", " "))
    probe_fused_attention(ck)


def environment_info(attention: str) -> dict[str, Any]:
    """Versions, the device, and the attention path each dtype takes (as `attention` asks)."""
    dev = jax.devices()[0]
    vit_b = sam_jax.get_config("vit_b")
    info: dict[str, Any] = {
        "jax / jaxlib": f"{jax.__version__} / {importlib.metadata.version('jaxlib')}",
        "jax backend": f"{jax.default_backend()}, {jax.device_count()} device(s): {dev.device_kind}",
        "compute capability": getattr(dev, "compute_capability", "n/a"),
        "torch (CUDA / cuDNN)": f"{torch.__version__} ({torch.version.cuda} / {torch.backends.cudnn.version()})",
        "torch device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "segment-anything / numpy / python": (
            f"{importlib.metadata.version('segment-anything')} / {np.__version__} / {platform.python_version()}"
        ),
        "attention path, bfloat16 (vit_b global block)": attention_path_of(vit_b, "bfloat16", attention),
        "attention path, float32": attention_path_of(vit_b, "float32", attention),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
    }
    for plugin in ("jax-cuda13-plugin", "jax-cuda12-plugin"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[plugin] = importlib.metadata.version(plugin)
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw"
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        info[f"nvidia-smi ({query})"] = (result.stdout or result.stderr).strip()
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        info["JAX allocator limit"] = f"{stats['bytes_limit'] / 1e9:.1f} GB"
    return info


def probe_fused_attention(ck: Check, shapes: dict[str, tuple[int, int, int, int]] = PROBE_SHAPES) -> None:
    """cuDNN's fused attention against XLA's on the encoder's shapes, forward, then backward.
    If a forward pass fails, the rest of the run (unless a path was forced) takes the blocked
    path, so the encoder rows still measure something; a failed backward pass is recorded
    (the training rows cannot be told to fall back: `train_step` takes no attention path)."""
    if attention_kernels.cuda_compute_capability() is None:
        ck.rec.skip("environment", "cuDNN fused attention probe", "no NVIDIA GPU")
        return
    for label, (b, heads, side, d) in shapes.items():
        what = f"cuDNN fused attention probe, {label} {(b, heads, side * side, d)}"
        inputs = probe_inputs(b, heads, side, d)
        for stage, limit in PROBE_LIMITS.items():
            try:
                err = probe_error(stage, *inputs)
            except Exception as e:
                traceback.print_exc()
                ck.rec.error("environment", f"{what} {stage}", e, fall_back_to_blocked(ck, stage))
                break
            status = "pass" if err < limit else "FAIL"
            measure = "worst error vs XLA / max magnitude"
            ck.rec.row("environment", f"{what} {stage}", "", None, err, status=status, measure=measure, limit=limit)
        if ck.rec.meta.get("attention_forced"):
            return


def probe_inputs(b: int, heads: int, side: int, d: int) -> tuple[jax.Array, jax.Array, jax.Array, tuple]:
    """q, k, v and the relative-position terms of one attention call, random bfloat16 (drawn
    by numpy: JAX's eager random calls compile a program each, seconds on a CPU)."""
    rng = np.random.default_rng(7)

    def normal(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape, np.float32), jnp.bfloat16)

    q, k, v = (normal(b, heads, side * side, d) for _ in range(3))
    return q, k, v, (normal(b, heads, side, side, side), normal(b, heads, side, side, side))


def probe_error(stage: str, q: jax.Array, k: jax.Array, v: jax.Array, rel: tuple) -> float:
    """cuDNN's result against XLA's (forward: the attention; backward: the gradient of a loss
    with respect to q): the worst error over XLA's largest magnitude."""
    cudnn, xla = (np.asarray(probe_program(stage, p, k, v, rel)(q), np.float32) for p in ("fused-cudnn", "fused-xla"))
    return float(np.abs(cudnn - xla).max() / np.abs(xla).max())


def probe_program(stage: str, path: str, k: jax.Array, v: jax.Array, rel: tuple) -> Any:
    def forward(q: jax.Array) -> jax.Array:
        return attention_kernels.fused_attention(q, k, v, rel, path)

    if stage == "forward":
        return jax.jit(forward)
    return jax.jit(jax.grad(lambda q: jnp.sum(forward(q).astype(jnp.float32) ** 2)))


def fall_back_to_blocked(ck: Check, stage: str) -> str:
    """After a failed forward pass, the rest of the run asks for the blocked path (unless a
    path was forced already); returns what the error row adds."""
    if stage != "forward" or ck.attention != "auto":
        return ""
    ck.attention = "blocked"
    ck.rec.meta["attention_forced"] = "blocked (the cuDNN probe failed)"
    return "; the run continues with the blocked path"
