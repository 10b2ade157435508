"""The two-way transformer of the mask decoder (reference `modeling/transformer.py`).

Prompt tokens attend to themselves and to the image; the image attends back to the
tokens. Positional encodings are re-added to queries and keys at every attention.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.modeling.common import MLPBlock, layer_norm, relu

DECODER_LN_EPS = 1e-5  # torch's nn.LayerNorm default, used by the reference decoder


# Cross-attention between a few prompt tokens and many image tokens is computed with the
# few side's heads laid out block-diagonally (below) when the many side has at least this
# many times more rows than the few side has (token, head) pairs.
BLOCK_DIAGONAL_MIN_RATIO = 16
# The few side is padded with zero tokens to a multiple of this, so the block-diagonal
# products have heads * 8 columns (64 for SAM's 7 tokens and 8 heads rather than 56:
# XLA's CPU matmuls ran the 4096 x 256 x 56 products ~1.5x slower than 4096 x 256 x 64).
TOKEN_MULTIPLE = 8


def head_block_diagonal(x: jax.Array, num_heads: int) -> jax.Array:
    """(..., N, heads * D) -> (..., heads * N, heads * D): row (h, n) holds token n's head-h
    features in column block h and zeros elsewhere.

    Multiplying the many side's (B, M, heads * D) features by it (or by its transpose)
    computes every head's products in one plain matmul over the features as they lie, so
    the large side is never transposed into a (B, heads, D, M) copy, which is what XLA's CPU
    backend does for the per-head product (1.5-1.8x slower for SAM's decoder at 64 x 64).
    The zeros cost `heads` times the (small) attention products; sums with exact zeros are
    exact, so results equal the per-head products up to summation order.
    """
    *lead, n, c = x.shape
    eye = jnp.eye(num_heads, dtype=x.dtype)
    split = x.reshape(*lead, n, num_heads, c // num_heads)
    return jnp.einsum("...nhd,gh->...gnhd", split, eye).reshape(*lead, num_heads * n, c)


class Projection(nn.Module):
    """The parameters of a dense layer (`kernel` (in, out), `bias`: `nn.Dense`'s names and
    initialisers), returned rather than applied, for products that fold them in."""

    features: int

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features))
        return kernel, self.param("bias", nn.initializers.zeros, (self.features,))


def dense(x: jax.Array, weights: tuple[jax.Array, jax.Array]) -> jax.Array:
    """`Dense` with given weights: on the input flattened to 2-D (see `common.Dense`)."""
    kernel, bias = weights
    return (x.reshape(-1, x.shape[-1]) @ kernel + bias).reshape(*x.shape[:-1], kernel.shape[1])


class Attention(nn.Module):
    """Multi-head attention whose inner width can be reduced by `downsample_rate`.

    Between a few prompt tokens and the many image tokens (the decoder's cross-attentions
    on large grids) the heads of the few side are laid out block-diagonally
    (`head_block_diagonal`) so every product is a plain matmul over the image features as
    they lie; where the image side is per prompt, its projections are folded into the
    tokens' side: (x W) t = x (W t) costs the image side one product with a few dozen
    columns instead of a full projection (the attention work drops about 3x for vit_b).
    """

    num_heads: int
    downsample_rate: int = 1

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """q (B, Nq, C), k and v (B, Nk, C) -> (B, Nq, C); either side may have batch 1.

        `key_mask` (B, Nk) bool, True where a key takes part: keys marked False get zero
        weight (empty prompt slots of a static prompt layout), as if they were absent.
        """
        dim = q.shape[-1]
        inner = dim // self.downsample_rate
        heads = self.num_heads
        w = {n: Projection(inner, name=n)(dim) for n in ("q_proj", "k_proj", "v_proj")}
        w["out_proj"] = Projection(dim, name="out_proj")(inner)
        scale = jnp.sqrt(jnp.float32(inner // heads)).astype(q.dtype)
        # A side with batch 1 is shared by every prompt of the batch (the image before the
        # first image update): it is projected once and enters the products without a batch.
        batch = max(q.shape[0], k.shape[0])
        qb, kb = ("b" if q.shape[0] == batch else ""), ("b" if k.shape[0] == batch else "")
        q, k, v = (x if spec else x[0] for x, spec in ((q, qb), (k, kb), (v, kb)))
        nq, nk = q.shape[-2], k.shape[-2]
        if nk >= BLOCK_DIAGONAL_MIN_RATIO * heads * nq:
            if key_mask is not None:
                raise ValueError("key_mask applies to prompt tokens as keys, not to image tokens")
            out = _tokens_to_image(dense(q, w["q_proj"]), k, v, w, heads, scale, qb, kb)
        elif nq >= BLOCK_DIAGONAL_MIN_RATIO * heads * nk:
            k, v = dense(k, w["k_proj"]), dense(v, w["v_proj"])
            return _image_to_tokens(q, k, v, w, heads, scale, qb, kb, key_mask)
        else:
            k, v = dense(k, w["k_proj"]), dense(v, w["v_proj"])
            out = _per_head(dense(q, w["q_proj"]), k, v, heads, scale, qb, kb, key_mask)
        return dense(out, w["out_proj"])


def _per_head(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    heads: int,
    scale: jax.Array,
    qb: str,
    kb: str,
    key_mask: jax.Array | None = None,
) -> jax.Array:
    """Projected (B?, Nq, I), (B?, Nk, I) -> (B, Nq, I): attention with heads as an axis;
    keys where `key_mask` (B, Nk) is False get zero weight."""
    qh, kh, vh = (x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads) for x in (q, k, v))
    # Where the image attends to a few tokens (Nk << Nq), keeping queries outermost avoids
    # transposing the large (B, heads, Nq, Nk) weights: 1.6-3.6x faster on CPU (XLA).
    layout = "bqnk" if k.shape[-2] < q.shape[-2] else "bnqk"
    logits = jnp.einsum(f"{qb}qnd,{kb}knd->{layout}", qh, kh) / scale
    if key_mask is not None:  # both layouts have the keys last and the batch first
        logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
    attn = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum(f"{layout},{kb}knd->bqnd", attn, vh)
    return out.reshape(*out.shape[:2], -1)


def _pad_tokens(x: jax.Array, multiple: int = TOKEN_MULTIPLE) -> jax.Array:
    """(..., N, C) -> (..., N', C) with zero rows up to a multiple of `multiple` tokens."""
    extra = -x.shape[-2] % multiple
    if isinstance(extra, int) and extra == 0:  # a symbolic count (shape-polymorphic export) is always padded
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, extra), (0, 0)])


def _tokens_to_image(
    q: jax.Array, k: jax.Array, v: jax.Array, w: dict[str, Any], heads: int, scale: jax.Array, qb: str, kb: str
) -> jax.Array:
    """Projected token queries (B?, T, I) attend to unprojected image keys/values (B?, K, C)
    -> (B, T, I), before the output projection."""
    t = q.shape[-2]
    q = _pad_tokens(q)  # zero rows, dropped below
    blocks = head_block_diagonal(q, heads)  # (B?, heads * T, I), rows (head, token)
    if kb:  # per-prompt image: fold k_proj into the tokens and v_proj after the weighting
        (wk, bk), (wv, bv) = w["k_proj"], w["v_proj"]
        logits = jnp.einsum(f"bkc,{qb}xc->bkx", k, jnp.einsum(f"{qb}xi,ci->{qb}xc", blocks, wk))
        logits = logits + jnp.einsum(f"{qb}xi,i->{qb}x", blocks, bk)[..., None, :]
        attn = jax.nn.softmax(logits / scale, axis=1)  # over the image tokens
        # The weights sum to one, so v_proj's bias passes through unweighted.
        out = jnp.einsum("bxc,ci->bxi", jnp.einsum("bkx,bkc->bxc", attn, v), wv) + bv
    else:  # shared image: projected once
        logits = jnp.einsum(f"kc,{qb}xc->{qb}kx", dense(k, w["k_proj"]), blocks)
        attn = jax.nn.softmax(logits / scale, axis=1)
        out = jnp.einsum(f"{qb}kx,kc->{qb}xc", attn, dense(v, w["v_proj"]))
    padded, inner = q.shape[-2], q.shape[-1]
    out = out.reshape(-1, heads, padded, heads, inner // heads)
    return jnp.einsum("bhthd->bthd", out).reshape(-1, padded, inner)[:, :t]  # each head's own block


def _image_to_tokens(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    w: dict[str, Any],
    heads: int,
    scale: jax.Array,
    qb: str,
    kb: str,
    key_mask: jax.Array | None = None,
) -> jax.Array:
    """Unprojected image queries (B?, Q, C) attend to projected tokens (B?, T, I) -> (B, Q, C),
    output projection included; tokens where `key_mask` (B, T) is False get zero weight."""
    t = k.shape[-2]
    k, v = _pad_tokens(k), _pad_tokens(v)  # zero rows, masked out of the softmax below
    padded = k.shape[-2]
    valid = jnp.arange(padded) < t  # (padded,), or (B, padded) with a key mask
    if key_mask is not None:
        valid = valid & jnp.pad(key_mask, ((0, 0), (0, padded - t)))
    k_blocks, v_blocks = head_block_diagonal(k, heads), head_block_diagonal(v, heads)
    (wq, bq), (wo, bo) = w["q_proj"], w["out_proj"]
    if qb:  # per-prompt image: fold q_proj into the keys and out_proj into the values
        logits = jnp.einsum(f"bqc,{kb}cx->bqx", q, jnp.einsum(f"ci,{kb}xi->{kb}cx", wq, k_blocks))
        logits = logits + jnp.einsum(f"i,{kb}xi->{kb}x", bq, k_blocks)[..., None, :]
    else:  # shared image: projected once
        logits = jnp.einsum(f"qi,{kb}xi->bqx", dense(q, w["q_proj"]), k_blocks)
    batch, nq = logits.shape[:2]
    valid = valid[:, None, None, :] if valid.ndim == 2 else valid
    logits = jnp.where(valid, (logits / scale).reshape(batch, nq, heads, padded), -jnp.inf)
    attn = jax.nn.softmax(logits, axis=-1).reshape(batch, nq, heads * padded)
    return jnp.einsum(f"bqx,{kb}xo->bqo", attn, jnp.einsum(f"{kb}xi,io->{kb}xo", v_blocks, wo)) + bo


class TwoWayAttentionBlock(nn.Module):
    """Self attention on tokens, token->image and image->token cross attention, token MLP."""

    num_heads: int
    mlp_dim: int
    attention_downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    layer_norm_eps: float = DECODER_LN_EPS

    @nn.compact
    def __call__(
        self,
        queries: jax.Array,
        keys: jax.Array,
        query_pe: jax.Array,
        key_pe: jax.Array,
        token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """`token_mask` (B, N) bool: tokens marked False are left out wherever they would be keys."""
        rate = self.attention_downsample_rate
        self_attn = Attention(self.num_heads, name="self_attn")
        if self.skip_first_layer_pe:
            # The first layer's queries are the prompt embeddings themselves, so their
            # positional part is already in them: no PE added, no residual.
            queries = self_attn(queries, queries, queries, token_mask)
        else:
            q = queries + query_pe
            queries = queries + self_attn(q, q, queries, token_mask)
        queries = layer_norm(self.layer_norm_eps, "norm1")(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = queries + Attention(self.num_heads, rate, name="cross_attn_token_to_image")(q, k, keys)
        queries = layer_norm(self.layer_norm_eps, "norm2")(queries)

        queries = queries + MLPBlock(self.mlp_dim, act=relu, name="mlp")(queries)
        queries = layer_norm(self.layer_norm_eps, "norm3")(queries)

        q, k = queries + query_pe, keys + key_pe
        keys = keys + Attention(self.num_heads, rate, name="cross_attn_image_to_token")(k, q, queries, token_mask)
        keys = layer_norm(self.layer_norm_eps, "norm4")(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    depth: int
    num_heads: int
    mlp_dim: int
    attention_downsample_rate: int = 2
    # The blocks' norms only: the final norm is torch's default in the reference and in transformers.
    layer_norm_eps: float = DECODER_LN_EPS

    @nn.compact
    def __call__(
        self,
        image_embedding: jax.Array,
        image_pe: jax.Array,
        point_embedding: jax.Array,
        token_mask: jax.Array | None = None,
        num_outputs: int | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Runs the two-way transformer.

        Args:
            image_embedding: (B, H, W, C), or (1, H, W, C) shared by all B prompts: the first
                layer then projects it once for all of them (a quarter of the decoder's work
                for a batch of points without mask inputs, as in automatic mask generation).
            image_pe: (H, W, C) or broadcastable to image_embedding.
            point_embedding: (B, N, C) prompt and output tokens.
            token_mask: (B, N) bool or None: False marks empty slots of a static prompt
                layout, left out of every attention in which tokens are keys (their own
                outputs are computed but meaningless).
            num_outputs: only the first `num_outputs` tokens are read afterwards (the
                decoder's IoU and mask tokens): the final attention runs for them alone
                (each query row is independent), which halves its cost for 16 tokens.
        Returns:
            queries: (B, num_outputs or N, C) processed tokens.
            keys: (B, H * W, C) processed image tokens.
        """
        bi, h, w, c = image_embedding.shape
        keys = image_embedding.reshape(bi, h * w, c)
        key_pe = jnp.broadcast_to(image_pe, (1, h, w, c)).reshape(1, h * w, c)
        queries = point_embedding
        for i in range(self.depth):
            queries, keys = TwoWayAttentionBlock(
                self.num_heads,
                self.mlp_dim,
                self.attention_downsample_rate,
                skip_first_layer_pe=i == 0,
                layer_norm_eps=self.layer_norm_eps,
                name=f"layers_{i}",
            )(queries, keys, point_embedding, key_pe, token_mask)
        if num_outputs is not None:
            queries, point_embedding = queries[:, :num_outputs], point_embedding[:, :num_outputs]
        q, k = queries + point_embedding, keys + key_pe
        attn = Attention(self.num_heads, self.attention_downsample_rate, name="final_attn_token_to_image")
        queries = queries + attn(q, k, keys)
        keys = jnp.broadcast_to(keys, (queries.shape[0], *keys.shape[1:]))  # depth 0 leaves them shared
        return layer_norm(DECODER_LN_EPS, "norm_final_attn")(queries), keys
