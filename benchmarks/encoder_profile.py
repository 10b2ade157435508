"""Where the vit_b image encoder's time goes on this machine, against XLA's own float32 matmul
rate (issue 34: "the encoder at >= 90% of the matmul rate, or a profile that shows where the
rest goes"): not a test.

Each part of the encoder is compiled as its own program on the shapes it has inside the
encoder (1024 x 1024 input, batch 1: a 64 x 64 grid of 768 features) and timed warm (median);
its FLOPs are counted by hand from the shapes (multiply-adds x 2). The rate is XLA's fp32
matmul at the MLP's shape (as `bench.py --only matmul`), measured in turns with the parts.

    python benchmarks/encoder_profile.py            # vit_b, ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("SAM_JAX_COMPILATION_CACHE", "off")

import jax
import jax.numpy as jnp
import numpy as np

import sam_jax
from sam_jax.modeling.common import MLPBlock, gelu, layer_norm
from sam_jax.modeling.image_encoder import (
    ENCODER_LN_EPS,
    Attention,
    Block,
    query_rows_per_chunk,
    window_partition,
    window_unpartition,
)
from sam_jax.modeling.sam import encoder_outputs, init_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = sam_jax.get_config("vit_b")
    vit = config.image_encoder
    params = init_params(config, 0)
    w = params.weights["image_encoder"]
    dim, heads, grid, win = vit.embed_dim, vit.num_heads, config.embedding_size, vit.window_size
    tokens = grid * grid
    mlp = int(dim * vit.mlp_ratio)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, grid, grid, dim)).astype(np.float32))
    images = jnp.asarray(rng.normal(size=(1, config.image_size, config.image_size, 3)).astype(np.float32))
    windowed, global_ = 0, vit.global_attn_indexes[0]
    pad = -grid % win
    n_windows = ((grid + pad) // win) ** 2
    block_kwargs = dict(num_heads=heads, mlp_ratio=vit.mlp_ratio, qkv_bias=vit.qkv_bias, use_rel_pos=vit.use_rel_pos)

    def block(i: int, window: int) -> Callable[[jax.Array], jax.Array]:
        module = Block(**block_kwargs, window_size=window, grid_size=(grid, grid))
        return jax.jit(lambda x: module.apply({"params": w[f"blocks_{i}"]}, x))

    def attention(i: int, window: int) -> Callable[[jax.Array], jax.Array]:
        size = (window, window) if window else (grid, grid)
        module = Attention(heads, vit.qkv_bias, vit.use_rel_pos, size)

        def run(x: jax.Array) -> jax.Array:
            if not window:
                return module.apply({"params": w[f"blocks_{i}"]["attn"]}, x)
            parts, pad_hw = window_partition(x, window)
            return window_unpartition(
                module.apply({"params": w[f"blocks_{i}"]["attn"]}, parts), window, pad_hw, (grid, grid)
            )

        return jax.jit(run)

    def dense(n: int, k: int, m: int) -> Callable[[], jax.Array]:
        a = jnp.asarray(rng.normal(size=(n, k)).astype(np.float32))
        b = jnp.asarray(rng.normal(size=(k, m)).astype(np.float32))
        f = jax.jit(jnp.matmul)
        return lambda: f(a, b)

    norm = layer_norm(ENCODER_LN_EPS)
    norm_w = w[f"blocks_{global_}"]["norm1"]
    mlp_module = MLPBlock(mlp)
    attn_flops_global = 2 * 2 * heads * tokens * tokens * (dim // heads)
    attn_flops_window = 2 * 2 * heads * n_windows * (win * win) ** 2 * (dim // heads)
    linear = 2 * tokens * dim * (3 * dim + dim + 2 * mlp)
    whole = jax.jit(lambda im: encoder_outputs(params, im)[0])
    windowed_block, global_block = block(windowed, win), block(global_, 0)
    windowed_attention, global_attention = attention(windowed, win), attention(global_, 0)
    mlp_fn = jax.jit(lambda x: mlp_module.apply({"params": w[f"blocks_{global_}"]["mlp"]}, x))
    lin1, lin2 = dense(tokens, dim, mlp), dense(tokens, mlp, dim)
    gelu_fn, hidden = jax.jit(gelu), jnp.asarray(rng.normal(size=(tokens, mlp)), jnp.float32)
    norm_fn = jax.jit(lambda x: norm.apply({"params": norm_w}, x))
    # The global attention's two products alone, in the blocks of query rows the encoder uses.
    rows = query_rows_per_chunk(heads, grid, grid)
    qkv_heads = [jnp.asarray(rng.normal(size=(heads, tokens, dim // heads)), jnp.float32) for _ in range(3)]

    @jax.jit
    def products(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        def block(r0: jax.Array) -> jax.Array:
            qb = jax.lax.dynamic_slice_in_dim(q, r0 * grid, rows * grid, axis=1)
            return jnp.einsum("nqk,nkd->nqd", jnp.einsum("nqd,nkd->nqk", qb, k), v)

        return jax.lax.map(block, jnp.arange(0, grid, rows))

    rate_name = "matmul 4096x768 @ 768x3072 (the rate)"
    parts: dict[str, tuple[Callable[[], Any], float]] = {
        rate_name: (dense(4096, 768, 3072), 2 * 4096 * 768 * 3072),
        "whole encoder": (
            lambda: whole(images),
            12 * linear
            + (12 - len(vit.global_attn_indexes)) * attn_flops_window
            + len(vit.global_attn_indexes) * attn_flops_global,
        ),
        "windowed block": (lambda: windowed_block(x), linear + attn_flops_window),
        "global block": (lambda: global_block(x), linear + attn_flops_global),
        "  windowed attention (qkv, attention, proj)": (
            lambda: windowed_attention(x),
            2 * tokens * dim * 4 * dim + attn_flops_window,
        ),
        "  global attention (qkv, attention, proj)": (
            lambda: global_attention(x),
            2 * tokens * dim * 4 * dim + attn_flops_global,
        ),
        "    its QK^T and AV products alone": (lambda: products(*qkv_heads), attn_flops_global),
        "  qkv matmul 4096x768 @ 768x2304": (dense(tokens, dim, 3 * dim), 2 * tokens * dim * 3 * dim),
        "  proj matmul 4096x768 @ 768x768": (dense(tokens, dim, dim), 2 * tokens * dim * dim),
        "  MLP (lin1, GELU, lin2)": (lambda: mlp_fn(x), 2 * tokens * dim * 2 * mlp),
        "    lin1 + lin2 matmuls alone": (lambda: (lin1(), lin2()), 2 * tokens * dim * 2 * mlp),
        "    GELU on 4096 x 3072": (lambda: gelu_fn(hidden), 0.0),
        "  layer norm": (lambda: norm_fn(x), 0.0),
    }

    # In turns: every part once per round, so that a change of the machine's speed during the
    # run touches every part alike.
    times: dict[str, list[float]] = {name: [] for name in parts}
    for fn, _ in parts.values():
        jax.block_until_ready(fn())  # compile and warm
    for _ in range(args.repeats):
        for name, (fn, _) in parts.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    rate = parts[rate_name][1] / seconds[rate_name]
    device = jax.devices()[0].device_kind
    print(f"vit_b at {config.image_size}, batch 1; {device}; XLA fp32 matmul {rate / 1e9:.0f} GFLOP/s")
    print("| part | ms | GFLOP | GFLOP/s | of the matmul rate |")
    print("|---|---:|---:|---:|---:|")
    for name, (_, flops) in parts.items():
        s = seconds[name]
        figures = f"{flops / 1e9:.1f} | {flops / s / 1e9:.0f} | {flops / s / rate:.0%}" if flops else "| |"
        print(f"| {name} | {s * 1e3:.1f} | {figures} |")


if __name__ == "__main__":
    main()
