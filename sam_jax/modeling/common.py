"""Building blocks shared by the encoder and decoder (reference `modeling/common.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * Phi(x), written as torch's `nn.GELU()` computes it: x/2 (1 + erf(x/sqrt2)).

    (`nn.gelu` defaults to the tanh approximation; its exact form goes through erfc, which
    XLA evaluates more slowly on CPU.)
    """
    return 0.5 * x * (1 + jax.lax.erf(x * np.asarray(1 / np.sqrt(2), x.dtype)))


def layer_norm(eps: float, name: str | None = None, dtype: Any = None) -> nn.LayerNorm:
    """LayerNorm over the channel (last) axis.

    The reference `LayerNorm2d` normalises NCHW over C; in NHWC that is a plain LayerNorm.
    `use_fast_variance=False` computes E[(x - mean)^2] like torch rather than E[x^2] - mean^2,
    which loses precision when the mean is large.
    """
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


class Dense(nn.Dense):
    """`nn.Dense` (same parameters) applied to the input flattened to (N, features).

    Why: XLA's CPU backend lowers the weight gradient of a dense layer on a 4-D input
    through a transposed copy of the output gradient and a slow dot; flattened, both
    gradients are plain matrix products.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        lead = x.shape[:-1]
        return super().__call__(x.reshape(-1, x.shape[-1])).reshape(*lead, self.features)


class MLPBlock(nn.Module):
    """`lin2(act(lin1(x)))` (reference `MLPBlock`)."""

    mlp_dim: int
    act: Callable[[jax.Array], jax.Array] = gelu
    dtype: Any = None  # compute dtype; None follows the inputs and (float32) params

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        x = Dense(self.mlp_dim, dtype=self.dtype, name="lin1")(x)
        return Dense(dim, dtype=self.dtype, name="lin2")(self.act(x))


def relu(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, 0)


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weight of torch's linear interpolation with align_corners=False.

    Reference: ATen `area_pixel_compute_source_index`: src = max(scale * (dst + 0.5) - 0.5, 0)
    with scale = in / out; the two taps are floor(src) and its right neighbour (clamped).
    Computed with numpy at trace time, so they are constants of the compiled program.
    """
    # float32 arithmetic, as ATen does for float tensors, so the weights round the same way.
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    i0 = np.minimum(src.astype(np.int32), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0.astype(np.float32)
    return i0, i1, w1


def linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of torch's linear interpolation (align_corners=False):
    `matrix @ x` resizes x's first axis. Two non-zero taps per row, from `_linear_taps`."""
    i0, i1, w1 = _linear_taps(in_size, out_size)
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), 1 - w1.astype(np.float64))
    np.add.at(matrix, (rows, i1), w1.astype(np.float64))
    return matrix


def interpolate_linear(x: jax.Array, size: int, axis: int) -> jax.Array:
    """Resizes one axis like torch `F.interpolate(mode="linear"/"bilinear", align_corners=False)`.

    No antialiasing, as torch's default; `jax.image.resize` antialiases when shrinking.
    Applying it to two axes in turn is torch's bilinear mode up to float rounding.
    """
    axis = axis % x.ndim
    if x.shape[axis] == size:
        return x
    i0, i1, w1 = _linear_taps(x.shape[axis], size)
    shape = [1] * x.ndim
    shape[axis] = size
    w1 = w1.reshape(shape).astype(x.dtype)
    return jnp.take(x, i0, axis=axis) * (1 - w1) + jnp.take(x, i1, axis=axis) * w1
