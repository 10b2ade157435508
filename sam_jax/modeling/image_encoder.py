"""The image encoder: a windowed ViT with decomposed relative positions (reference
`modeling/image_encoder.py`, after ViTDet, Li et al. 2022, arXiv:2203.16527).

Arrays are NHWC throughout. Input: normalised, padded images (B, S, S, 3) with S the
config's `image_size`; output: image embeddings (B, S/16, S/16, out_chans).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.config import ViTConfig
from sam_jax.modeling import attention_kernels
from sam_jax.modeling.common import Dense, MLPBlock, interpolate_linear, layer_norm

ENCODER_LN_EPS = 1e-6


def window_partition(x: jax.Array, window_size: int) -> tuple[jax.Array, tuple[int, int]]:
    """Splits (B, H, W, C) into non-overlapping windows, zero-padding H and W to a multiple.

    Padded tokens are zeros and take part in attention as keys, as in the reference.

    Returns:
        windows: (B * num_windows, window_size, window_size, C).
        (Hp, Wp): the padded height and width.
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(windows: jax.Array, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> jax.Array:
    """Inverse of `window_partition`: (B * num_windows, ws, ws, C) -> (B, H, W, C), unpadded."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.reshape(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


def get_rel_pos(q_size: int, k_size: int, rel_pos: jax.Array) -> jax.Array:
    """Relative-position embeddings for every (query, key) pair along one axis.

    Args:
        q_size, k_size: query and key lengths along the axis.
        rel_pos: the stored table (L, head_dim). When L differs from 2 * max(q, k) - 1
            (a table trained at another resolution) it is linearly interpolated, as the
            reference does.
    Returns:
        (q_size, k_size, head_dim).
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    rel_pos = interpolate_linear(rel_pos, max_rel_dist, axis=0)
    # Scale coordinates with the shorter side when q and k differ (reference get_rel_pos);
    # torch does this arithmetic in float32, so we do too.
    q_coords = np.arange(q_size, dtype=np.float32)[:, None] * np.float32(max(k_size / q_size, 1.0))
    k_coords = np.arange(k_size, dtype=np.float32)[None, :] * np.float32(max(q_size / k_size, 1.0))
    relative = (q_coords - k_coords) + np.float32((k_size - 1) * max(q_size / k_size, 1.0))
    return rel_pos[relative.astype(np.int64)]


def decomposed_rel_pos_terms(
    q: jax.Array,
    rel_pos_h: jax.Array,
    rel_pos_w: jax.Array,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
    q_rows: tuple[jax.Array | int, int] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """MViTv2's decomposed relative-position terms (arXiv:2112.01526), not yet broadcast.

    Args:
        q: unscaled queries (..., q_h * q_w, head_dim), or only the `q_rows` block's.
        rel_pos_h, rel_pos_w: tables (L_h, head_dim), (L_w, head_dim).
        q_size, k_size: spatial (h, w) of queries and keys.
        q_rows: (first row, number of rows) when q holds a block of query rows.
    Returns:
        rel_h (..., q_h, q_w, k_h) = q . R_h[qh - kh] and rel_w (..., q_h, q_w, k_w) =
        q . R_w[qw - kw]; the logit of (query, key) gains rel_h[..., kh] + rel_w[..., kw].
    """
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h)
    r_w = get_rel_pos(q_w, k_w, rel_pos_w)
    if q_rows is not None:
        row0, q_h = q_rows
        r_h = jax.lax.dynamic_slice_in_dim(r_h, row0, q_h, axis=0)
    r_q = q.reshape(*q.shape[:-2], q_h, q_w, q.shape[-1])
    return jnp.einsum("...hwc,hkc->...hwk", r_q, r_h), jnp.einsum("...hwc,wkc->...hwk", r_q, r_w)


# Largest attention-logit block (elements) computed at once; 2**23 float32 = 32 MB.
MAX_LOGITS_PER_BLOCK = 2**23


def query_rows_per_chunk(batch_heads: int, h: int, w: int) -> int:
    """Rows of queries per attention block so that a block's (batch*heads, rows*w, h*w)
    logits stay under `MAX_LOGITS_PER_BLOCK`; a divisor of h (h when everything fits)."""
    rows = h
    while rows > 1 and batch_heads * rows * w * h * w > MAX_LOGITS_PER_BLOCK:
        rows -= 1
        while h % rows:
            rows -= 1
    return rows


def attention_rows(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_pos: tuple[jax.Array, jax.Array] | None,
    size: tuple[int, int],
    row0: jax.Array | int,
    rows: int,
) -> jax.Array:
    """Attention for the queries of grid rows [row0, row0 + rows) against all keys.

    Args:
        q, k, v: (B, heads, H * W, head_dim).
        rel_pos: (rel_pos_h, rel_pos_w) tables, or None for no relative positions.
        size: the grid (H, W) of queries and keys.
    Returns:
        (B, heads, rows * W, head_dim).
    """
    h, w = size
    b, heads, _, head_dim = q.shape
    if rows < h:
        q = jax.lax.dynamic_slice_in_dim(q, row0 * w, rows * w, axis=2)
    # Softmax in float32 whatever the compute dtype: bf16 logits lose the small weights.
    attn = jnp.einsum("bnqd,bnkd->bnqk", q * head_dim**-0.5, k).astype(jnp.float32)
    attn = attn.reshape(b, heads, rows, w, h, w)  # (query row, col, key row, col)
    if rel_pos is not None:
        # The relative-position terms stay two small (rows, W, H) and (rows, W, W) tables,
        # broadcast inside the softmax's fusions: the biased logits are never written out
        # (the reference materialises a (B * heads, HW, HW) bias).
        rel_h, rel_w = decomposed_rel_pos_terms(q, *rel_pos, (h, w), (h, w), q_rows=(row0, rows))
        attn = attn + rel_h[..., :, None].astype(jnp.float32) + rel_w[..., None, :].astype(jnp.float32)
    # Softmax with the normalisation after the weighted sum: the division touches the
    # (rows * W, head_dim) output instead of the (rows * W, HW) weights.
    weights = jnp.exp(attn - jax.lax.stop_gradient(jnp.max(attn, axis=(-2, -1), keepdims=True)))
    weights = weights.reshape(b, heads, rows * w, h * w)
    out = jnp.einsum("bnqk,bnkd->bnqd", weights.astype(v.dtype), v)
    return (out / jnp.sum(weights, axis=-1, keepdims=True)).astype(v.dtype)


class Attention(nn.Module):
    """Multi-head self attention with optional decomposed relative positions.

    Attributes:
        num_heads: attention heads.
        qkv_bias: whether the fused qkv projection has a bias.
        use_rel_pos: whether to add relative positions.
        rel_pos_size: (h, w) the tables are sized for at initialisation (the window, or
            the whole grid for global blocks). Loaded tables of another length are
            interpolated at call time.
        attention: "auto" or a path of `attention_kernels.PATHS` (see there).
    """

    num_heads: int
    qkv_bias: bool = True
    use_rel_pos: bool = True
    rel_pos_size: tuple[int, int] = (14, 14)
    dtype: Any = None
    attention: str = "auto"

    def _rel_pos_table(self, name: str, length: int, head_dim: int) -> jax.Array:
        # A loaded table is used whatever its length (`self.param` would insist on the
        # init shape): one trained at another resolution is interpolated by get_rel_pos.
        if self.has_variable("params", name):
            return self.get_variable("params", name)
        return self.param(name, nn.initializers.zeros, (length, head_dim))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = Dense(3 * dim, use_bias=self.qkv_bias, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, HW, head_dim)
        tables = None
        if self.use_rel_pos:
            rel_pos_h = self._rel_pos_table("rel_pos_h", 2 * self.rel_pos_size[0] - 1, head_dim)
            rel_pos_w = self._rel_pos_table("rel_pos_w", 2 * self.rel_pos_size[1] - 1, head_dim)
            tables = (rel_pos_h.astype(q.dtype), rel_pos_w.astype(q.dtype))
        path = attention_kernels.attention_path(q.dtype, head_dim, (h, w), self.use_rel_pos, self.attention)
        rows = query_rows_per_chunk(b * self.num_heads, h, w)
        if path != "blocked":
            # Accelerators: one fused attention kernel (see attention_kernels).
            rel = None if tables is None else decomposed_rel_pos_terms(q, *tables, (h, w), (h, w))
            out = attention_kernels.fused_attention(q, k, v, rel, path)
        elif rows >= h:
            out = attention_rows(q, k, v, tables, (h, w), 0, h)
        else:
            # Global attention over a large grid: the (B, heads, HW, HW) logits (and the
            # reference's bias of the same size) would be GBs per layer at 64 x 64 tokens, so
            # the queries go through in blocks of rows and only one block's logits exist at a
            # time. Same arithmetic per query; the backward pass recomputes per block too.
            starts = jnp.arange(0, h, rows)
            blocks = jax.lax.map(lambda r0: attention_rows(q, k, v, tables, (h, w), r0, rows), starts)
            out = jnp.moveaxis(blocks, 0, 2).reshape(b, self.num_heads, h * w, head_dim)
        out = out.transpose(0, 2, 1, 3).reshape(b, h, w, dim)
        return Dense(dim, dtype=self.dtype, name="proj")(out)


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention when `window_size` > 0, else global."""

    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    use_rel_pos: bool
    window_size: int
    grid_size: tuple[int, int]
    dtype: Any = None
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = layer_norm(ENCODER_LN_EPS, "norm1", self.dtype)(x)
        rel_pos_size = (self.window_size, self.window_size) if self.window_size else self.grid_size
        attn = Attention(
            self.num_heads, self.qkv_bias, self.use_rel_pos, rel_pos_size, self.dtype, self.attention, name="attn"
        )
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = window_unpartition(attn(x), self.window_size, pad_hw, (h, w))
        else:
            x = attn(x)
        x = shortcut + x
        mlp = MLPBlock(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp")
        return x + mlp(layer_norm(ENCODER_LN_EPS, "norm2", self.dtype)(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, H, W, 3) -> (B, H/p, W/p, embed_dim)."""

    embed_dim: int
    patch_size: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch_size
        return nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj")(x)


class ImageEncoderViT(nn.Module):
    """ViT image encoder with a convolutional neck to `out_chans` channels.

    Attributes:
        config: the architecture (`ViTConfig`).
        image_size: side of the square inputs; the grid is image_size // patch_size.
        out_chans: channels of the embedding (the config's `prompt_embed_dim`).
        dtype: compute dtype (float32 default; bfloat16 for speed). Parameters stay float32
            and the output embedding is float32 whatever the compute dtype.
        remat: recompute each block's activations in the backward pass instead of storing
            them (gradient checkpointing): less memory for training, same values.
        attention: the attention path, "auto" or one of `attention_kernels.PATHS`.
        early_features: also return the output of `config.early_block` (SAM-HQ's decoder
            reads it); a plain SAM's program does not compute it as an output.
    """

    config: ViTConfig
    image_size: int
    out_chans: int
    dtype: Any = jnp.float32
    remat: bool = False
    attention: str = "auto"
    early_features: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Normalised images (B, S, S, 3) -> embeddings (B, S/p, S/p, out_chans) float32;
        with `early_features`, (embeddings, (B, S/p, S/p, embed_dim) float32)."""
        cfg = self.config
        p = cfg.patch_size
        x = PatchEmbed(cfg.embed_dim, p, self.dtype, name="patch_embed")(x.astype(self.dtype))
        grid = (cfg.embedding_size(self.image_size),) * 2
        if cfg.use_abs_pos:
            pos_embed = self.param("pos_embed", nn.initializers.zeros, (1, *grid, cfg.embed_dim))
            x = x + pos_embed.astype(self.dtype)
        block_cls = nn.remat(Block) if self.remat else Block
        for i in range(cfg.depth):
            window = 0 if i in cfg.global_attn_indexes else cfg.window_size
            x = block_cls(
                num_heads=cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                use_rel_pos=cfg.use_rel_pos,
                window_size=window,
                grid_size=grid,
                dtype=self.dtype,
                attention=self.attention,
                name=f"blocks_{i}",
            )(x)
            if i == cfg.early_block:
                early = x.astype(jnp.float32)
        out = self.out_chans
        x = nn.Conv(out, (1, 1), use_bias=False, dtype=self.dtype, name="neck_0")(x)
        x = layer_norm(ENCODER_LN_EPS, "neck_1", self.dtype)(x)
        x = nn.Conv(out, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype, name="neck_2")(x)
        x = layer_norm(ENCODER_LN_EPS, "neck_3", jnp.float32)(x)
        return (x, early) if self.early_features else x
