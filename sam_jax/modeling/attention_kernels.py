"""The image encoder's attention as one fused kernel, for accelerators.

`ImageEncoderViT`'s attention (with the reference's decomposed relative positions) runs one
of these paths, chosen once per compiled program by `attention_path` from the model's
`SamParams.attention` ("auto", or a path's name to force it):

- "blocked": `image_encoder.attention_rows`, plain XLA ops a block of query rows at a time
  (the CPU's fastest; float32 on every backend; TPUs).
- "fused-cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's flash
  attention on NVIDIA GPUs (bfloat16 / float16 only): no logits are ever written to memory.
- "fused-xla": the same fused form through XLA's own `dot_product_attention` (any backend;
  it writes the full (B, heads, HW, HW) logits: for tests and comparisons).
- "fused-cudnn-bias", "fused-xla-bias": the relative positions as an additive
  (B, heads, HW, HW) bias instead of folded into q and k (written out; for comparisons).

The fused forms fold the relative positions into the queries and keys (as
segment-anything-fast does), so the kernel needs no bias: with q' = [q * scale,
rel_h(q), rel_w(q)] and k' = [k, onehot(key row), onehot(key column)],
q' . k' = scale * q . k + rel_h[query, key row] + rel_w[query, key column], the
reference's logit, and the kernel runs with scale 1. cuDNN wants the head dimension a
multiple of 8 (at most 128, or 256 from Hopper on), so q', k' and v are zero-padded to it;
vit_b's global blocks attend with 64 + 64 + 64 = 192 dims, vit_h's with 80 + 128 -> 208.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

PATHS = ("blocked", "fused-cudnn", "fused-xla", "fused-cudnn-bias", "fused-xla-bias")
CHOICES = ("auto", *PATHS)  # what `SamParams.attention` may say
FUSED_DTYPES = (jnp.bfloat16, jnp.float16)  # what cuDNN's flash attention takes


def check_attention(value: object, name: str = "attention") -> str:
    """Returns `value` if it is one of `CHOICES`; raises naming `name` otherwise."""
    if not isinstance(value, str) or value not in CHOICES:
        raise ValueError(f"{name} must be one of {', '.join(CHOICES)}, got {value!r}")
    return value


@functools.cache
def cuda_compute_capability() -> tuple[int, int] | None:
    """(major, minor) of the default backend's first device when it is an NVIDIA GPU, else None."""
    if jax.default_backend() != "gpu":
        return None
    capability = getattr(jax.devices()[0], "compute_capability", None)
    try:
        major, minor = (int(part) for part in str(capability).split("."))
    except ValueError:  # ROCm devices name their architecture instead (gfx90a, ...)
        return None
    return major, minor


def fused_head_dim(head_dim: int, size: tuple[int, int], rel_pos: bool) -> int:
    """Head dimension of the fused form: [q, rel_h, rel_w] rounded up to a multiple of 8."""
    dim = head_dim + (size[0] + size[1] if rel_pos else 0)
    return dim + (-dim % 8)


def attention_path(
    dtype: jnp.dtype, head_dim: int, size: tuple[int, int], rel_pos: bool, requested: str = "auto"
) -> str:
    """The attention path for one attention call (see the module docstring).

    Args:
        dtype: the queries' dtype; head_dim: per head.
        size: the (H, W) grid of queries and keys (a window, or the whole image).
        rel_pos: whether relative positions are added.
        requested: "auto", or a path of `PATHS` to use whatever the backend (tests, benchmarks).
    Returns:
        `requested` unless "auto"; else "fused-cudnn" on an NVIDIA GPU (compute capability
        8.0 and up) for bfloat16 / float16 when the fused head dimension fits cuDNN, and
        "blocked" otherwise (CPU, TPU, float32).
    """
    if check_attention(requested, "requested") != "auto":
        return requested
    capability = cuda_compute_capability()
    if capability is None or capability < (8, 0) or jnp.dtype(dtype) not in [jnp.dtype(d) for d in FUSED_DTYPES]:
        return "blocked"
    limit = 256 if capability >= (9, 0) else 128
    return "fused-cudnn" if fused_head_dim(head_dim, size, rel_pos) <= limit else "blocked"


def fused_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_terms: tuple[jax.Array, jax.Array] | None,
    path: str,
) -> jax.Array:
    """Softmax(q . k * scale + relative positions) v in one fused attention call.

    Why: on GPUs one flash-attention kernel never writes the (B, heads, HW, HW) logits that
    the blocked path computes and reads back a block at a time.

    Args:
        q, k, v: (B, heads, HW, head_dim), unscaled queries (scale = head_dim ** -0.5).
        rel_terms: (rel_h (B, heads, H, W, H), rel_w (B, heads, H, W, W)) from
            `image_encoder.decomposed_rel_pos_terms`, or None.
        path: one of `PATHS` but "blocked".
    Returns:
        (B, heads, HW, head_dim) in v's dtype.
    """
    if path not in PATHS[1:]:
        raise ValueError(f"path must be one of {', '.join(PATHS[1:])}, got {path!r}")
    b, heads, t, d = q.shape
    scale = d**-0.5
    implementation: Literal["xla", "cudnn"] = "xla" if path.startswith("fused-xla") else "cudnn"
    if path.endswith("-bias") or rel_terms is None:
        bias = None
        if rel_terms is not None:
            rel_h, rel_w = rel_terms
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, t, t).astype(q.dtype)
        pad = -d % 8
        qp, kp, vp = (jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad))) for x in (q, k, v))
        qt, kt, vt = (x.transpose(0, 2, 1, 3) for x in (qp, kp, vp))
        out = jax.nn.dot_product_attention(qt, kt, vt, bias=bias, scale=scale, implementation=implementation)
        return out[..., :d].transpose(0, 2, 1, 3)
    rel_h, rel_w = rel_terms
    key_rows, key_cols = rel_h.shape[-1], rel_w.shape[-1]
    # Constants of the program: key token i lies in row i // W and column i % W.
    index = np.arange(k.shape[2])
    onehot = np.concatenate(
        [index[:, None] // key_cols == np.arange(key_rows), index[:, None] % key_cols == np.arange(key_cols)], axis=1
    )
    dim = fused_head_dim(d, (key_rows, key_cols), rel_pos=True)
    pad = dim - (d + key_rows + key_cols)
    q_aug = jnp.concatenate(
        [
            q * jnp.asarray(scale, q.dtype),
            rel_h.reshape(b, heads, t, key_rows).astype(q.dtype),
            rel_w.reshape(b, heads, t, key_cols).astype(q.dtype),
            jnp.zeros((b, heads, t, pad), q.dtype),
        ],
        axis=-1,
    )
    k_side = np.concatenate([onehot, np.zeros((k.shape[2], pad))], axis=1)
    k_aug = jnp.concatenate([k, jnp.broadcast_to(jnp.asarray(k_side, k.dtype), (*k.shape[:3], k_side.shape[1]))], -1)
    v_aug = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, dim - d)))
    out = jax.nn.dot_product_attention(
        q_aug.transpose(0, 2, 1, 3),
        k_aug.transpose(0, 2, 1, 3),
        v_aug.transpose(0, 2, 1, 3),
        scale=1.0,
        implementation=implementation,
    )
    return out[..., :d].transpose(0, 2, 1, 3)
