"""The encoder part (images/s, ours beside the reference's) and the attention part (the
encoder's attention paths side by side)."""

from __future__ import annotations

import contextlib
import copy
import math
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from common import model_config, timed

import sam_jax
from sam_jax.config import SamConfig
from sam_jax.modeling import attention_kernels
from sam_jax.modeling.sam import image_encoder_forward, normalize_and_pad

from ..harness import Check, attention_path_of, release_torch_memory, torch_device
from .peak import bf16_peaks

TARGETS_IMG_S = {"vit_b": 400.0, "vit_h": 80.0}  # issue 21: bfloat16 encoder on one H200
ATTENTION_PATHS = {
    "bfloat16": ("blocked", "fused-cudnn", "fused-cudnn-bias", "fused-xla"),
    "float32": ("fused-xla",),  # cuDNN's flash attention takes no float32
}


def encoder_flops(config: SamConfig) -> float:
    """Matmul FLOPs (2 per multiply-add) of one image through the image encoder (a ViT).

    Patch embedding, qkv / projection / attention / relative positions per block (windowed
    blocks on their zero-padded windows, as the reference computes them), the MLPs and the
    neck. vit_b: 972.1 GFLOP, the figure the reference's torch FLOP counter gives (972).
    """
    vit = config.image_encoder
    e, c, p = config.embedding_size, vit.embed_dim, vit.patch_size
    n = e * e
    total = n * c * p * p * 3 * 2
    for i in range(vit.depth):
        if i in vit.global_attn_indexes:
            tokens, side = n, e
        else:
            ws = vit.window_size
            tokens, side = math.ceil(e / ws) ** 2 * ws * ws, ws
        total += tokens * c * 3 * c * 2 + tokens * c * c * 2  # qkv, proj
        total += tokens * side * side * c * 2 * 2  # q.k and weights.v within each window (or the grid)
        if vit.use_rel_pos:
            total += tokens * 2 * side * c * 2  # q against both relative-position tables
        total += n * c * int(vit.mlp_ratio * c) * 2 * 2
    out = config.prompt_embed_dim
    return float(total + n * c * out * 2 + n * out * out * 9 * 2)


def encode_fn(params: sam_jax.SamParams, images: jax.Array, input_hw: jax.Array) -> jax.Array:
    """uint8 padded images -> embeddings, as `sam_jax.encode` runs them on the device."""
    return image_encoder_forward(params, normalize_and_pad(params.config, images, input_hw))


def compiled_encoder(params: sam_jax.SamParams, batch: int) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """A freshly traced and compiled encoder program, its inputs, and what XLA says of it."""
    size = params.config.image_size
    images = jnp.asarray(np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    hw = jnp.full((batch, 2), size, jnp.int32)

    def program(p: sam_jax.SamParams, i: jax.Array, h: jax.Array) -> jax.Array:
        return encode_fn(p, i, h)  # a new function per call: every row's compile_s is a real compile

    t0 = time.perf_counter()
    compiled = jax.jit(program).lower(params, images, hw).compile()
    info: dict[str, Any] = {"compile_s": time.perf_counter() - t0}
    with contextlib.suppress(Exception):  # not every backend reports these
        mem = compiled.memory_analysis()
        info["xla_temp_GB"] = mem.temp_size_in_bytes / 1e9
        info["xla_total_GB"] = (
            mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
        ) / 1e9
    with contextlib.suppress(Exception):
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and cost.get("flops"):
            # Custom calls (cuDNN's attention) are not counted by XLA.
            info["xla_GFLOP_per_img"] = float(cost["flops"]) / batch / 1e9
    return compiled, (params, images, hw), info


def reference_encoder_rate(
    ck: Check, refs: dict[str, torch.nn.Module], name: str, dtype: str, batch: int, notes: dict[str, Any]
) -> float | None:
    """The reference encoder's images/s on the same device (None, noted why, where it would not fit)."""
    config = model_config(name)
    elt = 2 if dtype == "bfloat16" else 4
    # Per global block it holds logits, biased logits and softmax of (B, heads, HW, HW).
    estimate = 3 * batch * config.image_encoder.num_heads * config.embedding_size**4 * elt / 1e9
    if estimate > ck.plan.reference_memory_gb:
        notes["reference"] = f"not run (~{estimate:.0f} GB of attention)"
        return None
    encoder = reference_encoder(ck, refs, name, dtype)
    size = config.image_size
    x = torch.randn(batch, 3, size, size, device=torch_device()).to(next(encoder.parameters()).dtype)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _, ref_s = timed(lambda: encoder(x), ck.plan.repeats, ck.plan.min_seconds)
    except torch.cuda.OutOfMemoryError:
        notes["reference"] = "out of memory"
        return None
    finally:
        if torch.cuda.is_available():
            notes["ref_peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
        release_torch_memory()
    return batch / ref_s


def reference_encoder(ck: Check, refs: dict[str, torch.nn.Module], name: str, dtype: str) -> torch.nn.Module:
    """The reference's encoder of `name` in `dtype`, kept in `refs` (its bfloat16 is its float32
    model cast with `.to(torch.bfloat16)`); one model's encoders on the device at a time."""
    key = f"{name} {dtype}"
    if key not in refs:
        for other in [k for k in refs if not k.startswith(name + " ")]:
            del refs[other]
        release_torch_memory()
        base = refs.get(f"{name} float32") or ck.reference_encoder(name)
        refs[f"{name} float32"] = base
        refs[key] = base if dtype == "float32" else copy.deepcopy(base).to(torch.bfloat16)
    return refs[key]


def encoder_row(
    ck: Check,
    part: str,
    what: str,
    name: str,
    dtype: str,
    batch: int,
    refs: dict | None,
    attention: str | None = None,
) -> None:
    """Our encoder's images/s (a fresh program, AOT-compiled and timed), beside the reference's
    when `refs` is given; `attention` forces a path on the run's params."""
    config = model_config(name)
    flops = encoder_flops(config)
    params = ck.params(name).with_compute_dtype(dtype)
    params = params.with_attention(attention) if attention else params
    compiled, args, info = compiled_encoder(params, batch)
    _, ours = timed(lambda: compiled(*args), ck.plan.repeats, ck.plan.min_seconds)
    rate = batch / ours
    notes: dict[str, Any] = {"attention": attention_path_of(config, dtype, params.attention), **info}
    notes["TFLOP/s"] = flops * rate / 1e12
    for label, peak in bf16_peaks(ck).items():
        notes[f"of_{label}"] = flops * rate / (peak * 1e12)
    if name in TARGETS_IMG_S and dtype == "bfloat16" and ck.plan.name == "gpu":
        notes["target"] = f">= {TARGETS_IMG_S[name]:.0f} img/s: {'met' if rate >= TARGETS_IMG_S[name] else 'not met'}"
    ref_rate = None if refs is None else reference_encoder_rate(ck, refs, name, dtype, batch, notes)
    ck.rec.row(part, what, "img/s", ref_rate, rate, **notes)


def part_encoder(ck: Check) -> None:
    """Images/s of the image encoder on preprocessed uint8 batches, ours beside the reference's
    (the same device; the reference's bfloat16 is its model cast with `.to(torch.bfloat16)`).
    The parity model has the parity weights on both sides, the others random ones (speed only)."""
    refs: dict[str, torch.nn.Module] = {}
    for dtype in ck.plan.dtypes:
        for name in ck.plan.encoder_models:
            default = first_row_estimate(ck, name)
            for batch in ck.plan.batches:
                measure_encoder(ck, refs, name, dtype, batch, default)
    refs.clear()
    release_torch_memory()


def first_row_estimate(ck: Check, name: str) -> float:
    """A model's first row is estimated from the first model's first row, by the square root
    of their FLOPs (compiling grows with depth, running with depth and width)."""
    first = ck.plan.encoder_models[0]
    scale = math.sqrt(encoder_flops(model_config(name)) / encoder_flops(model_config(first)))
    return ck.costs.get(f"encoder first {first}", 5.0) * scale


def measure_encoder(ck: Check, refs: dict, name: str, dtype: str, batch: int, default: float) -> None:
    """One encoder row within the part's time; a model's first row (compiling included) is
    costed apart from its later ones."""
    key = f"encoder {name}" if f"encoder {name}" in ck.costs else f"encoder first {name}"
    what = f"{name} {dtype} batch {batch}"
    ck.measure("encoder", what, key, default, lambda: encoder_row_or_blocked(ck, refs, what, name, dtype, batch))
    if key.startswith("encoder first") and key in ck.costs:
        ck.costs[f"encoder {name}"] = ck.costs[key]


def encoder_row_or_blocked(ck: Check, refs: dict, what: str, name: str, dtype: str, batch: int) -> None:
    try:
        encoder_row(ck, "encoder", what, name, dtype, batch, refs)
    except Exception as e:
        if attention_path_of(model_config(name), dtype, ck.attention) == "blocked":
            raise
        # The fused attention failed here: record why, and measure the blocked path.
        traceback.print_exc()
        ck.rec.error("encoder", what, e)
        encoder_row(ck, "encoder", f"{what}, blocked (fused failed)", name, dtype, batch, refs, attention="blocked")


def part_attention(ck: Check) -> None:
    """The encoder's attention paths side by side (attention_kernels): one model at one batch
    size, each path forced through the params; the row marked default is what the run's
    params pick on this backend."""
    name, batch = ck.plan.attention_model, ck.plan.attention_batch
    cudnn = attention_kernels.cuda_compute_capability() is not None
    for dtype, paths in ATTENTION_PATHS.items():
        default = attention_path_of(model_config(name), dtype, ck.attention)
        for path in [default] + [p for p in paths if p != default]:
            what = f"{name} {dtype} batch {batch}, {path}" + (" (default)" if path == default else "")
            if "cudnn" in path and not cudnn:
                ck.rec.skip("attention", what, "cuDNN needs an NVIDIA GPU")
                continue

            def run(path: str = path, dtype: str = dtype, what: str = what) -> None:
                encoder_row(ck, "attention", what, name, dtype, batch, None, attention=path)

            ck.measure("attention", what, "attention", ck.costs.get(f"encoder {name}", 5.0), run)
