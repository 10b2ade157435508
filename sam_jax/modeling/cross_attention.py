"""The two-way transformer's attention, arranged for a few prompt tokens against many image
tokens: the computation of the reference `Attention` (projections, heads, softmax(q k^T /
sqrt(d)) v, output projection), in products that suit XLA where one side is 4096 tokens.

Why: XLA's CPU backend transposes the large side into a (B, heads, D, 4096) copy for
per-head products and runs a full projection of the image side per prompt; here the few
side's heads are laid out block-diagonally, so every product is a plain matmul over the
image features as they lie, and where the image side is per prompt its projections are
folded into the tokens' side ((x W) t = x (W t)). Results equal the per-head computation up
to summation order (docs/performance.md has the measurements).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

# Cross-attention between a few prompt tokens and many image tokens is computed with the
# few side's heads laid out block-diagonally (below) when the many side has at least this
# many times more rows than the few side has (token, head) pairs.
BLOCK_DIAGONAL_MIN_RATIO = 16
# The few side is padded with zero tokens to a multiple of this, so the block-diagonal
# products have heads * 8 columns (64 for SAM's 7 tokens and 8 heads rather than 56, a
# width XLA's CPU matmuls handle less well).
TOKEN_MULTIPLE = 8


def head_block_diagonal(x: jax.Array, num_heads: int) -> jax.Array:
    """(..., N, heads * D) -> (..., heads * N, heads * D): row (h, n) holds token n's head-h
    features in column block h and zeros elsewhere.

    Multiplying the many side's (B, M, heads * D) features by it (or by its transpose)
    computes every head's products in one plain matmul over the features as they lie, so
    the large side is never transposed into a (B, heads, D, M) copy, which is what XLA's CPU
    backend does for the per-head product.
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


def per_head(
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
    # transposing the large (B, heads, Nq, Nk) weights.
    layout = "bqnk" if k.shape[-2] < q.shape[-2] else "bnqk"
    logits = jnp.einsum(f"{qb}qnd,{kb}knd->{layout}", qh, kh) / scale
    if key_mask is not None:  # both layouts have the keys last and the batch first
        logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
    attn = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum(f"{layout},{kb}knd->bqnd", attn, vh)
    return out.reshape(*out.shape[:2], -1)


def pad_tokens(x: jax.Array, multiple: int = TOKEN_MULTIPLE) -> jax.Array:
    """(..., N, C) -> (..., N', C) with zero rows up to a multiple of `multiple` tokens."""
    extra = -x.shape[-2] % multiple
    if isinstance(extra, int) and extra == 0:  # a symbolic count (shape-polymorphic export) is always padded
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, extra), (0, 0)])


def tokens_to_image(
    q: jax.Array, k: jax.Array, v: jax.Array, w: dict[str, Any], heads: int, scale: jax.Array, qb: str, kb: str
) -> jax.Array:
    """Projected token queries (B?, T, I) attend to unprojected image keys/values (B?, K, C)
    -> (B, T, I), before the output projection."""
    t = q.shape[-2]
    q = pad_tokens(q)  # zero rows, dropped below
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


def image_to_tokens(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    w: dict[str, Any],
    heads: int,
    scale: jax.Array,
    qb: str,
    kb: str,
    key_mask: jax.Array | None = None,
    projected_q: jax.Array | None = None,
) -> jax.Array:
    """Unprojected image queries (B?, Q, C) attend to projected tokens (B?, T, I) -> (B, Q, C),
    output projection included; tokens where `key_mask` (B, T) is False get zero weight.
    `projected_q` (Q, I): the image's queries already projected (then `q` is not read)."""
    t = k.shape[-2]
    k, v = pad_tokens(k), pad_tokens(v)  # zero rows, masked out of the softmax below
    padded = k.shape[-2]
    valid = jnp.arange(padded) < t  # (padded,), or (B, padded) with a key mask
    if key_mask is not None:
        valid = valid & jnp.pad(key_mask, ((0, 0), (0, padded - t)))
    k_blocks, v_blocks = head_block_diagonal(k, heads), head_block_diagonal(v, heads)
    (wq, bq), (wo, bo) = w["q_proj"], w["out_proj"]
    if projected_q is not None:  # the image's queries projected beforehand (`ImageProjections`)
        k = k if kb else k[None]
        logits = projected_image_logits(projected_q, k, heads).reshape(k.shape[0], projected_q.shape[0], -1)
    elif qb:  # per-prompt image: fold q_proj into the keys and out_proj into the values
        logits = jnp.einsum(f"bqc,{kb}cx->bqx", q, jnp.einsum(f"ci,{kb}xi->{kb}cx", wq, k_blocks))
        logits = logits + jnp.einsum(f"i,{kb}xi->{kb}x", bq, k_blocks)[..., None, :]
    else:  # shared image: projected once
        logits = jnp.einsum(f"qi,{kb}xi->bqx", dense(q, w["q_proj"]), k_blocks)
    batch, nq = logits.shape[:2]
    valid = valid[:, None, None, :] if valid.ndim == 2 else valid
    logits = jnp.where(valid, (logits / scale).reshape(batch, nq, heads, padded), -jnp.inf)
    attn = jax.nn.softmax(logits, axis=-1).reshape(batch, nq, heads * padded)
    return jnp.einsum(f"bqx,{kb}xo->bqo", attn, jnp.einsum(f"{kb}xi,io->{kb}xo", v_blocks, wo)) + bo


class ImageProjections(NamedTuple):
    """One image's side of an attention, projected ahead of the prompts (`project_image`).

    `k` (heads, D, N) and `v` (heads, N, D) where the image is the keys, `q` (N, I) where it
    is the queries; the other fields None. Heads are split out (and the keys transposed)
    once, so each prompt's per-head products read them as they lie.
    """

    q: jax.Array | None = None
    k: jax.Array | None = None
    v: jax.Array | None = None


def project_image(
    w: dict[str, Any],
    heads: int,
    *,
    keys: jax.Array | None = None,
    values: jax.Array | None = None,
    queries: jax.Array | None = None,
) -> ImageProjections:
    """An attention's image-side projections (weights `w` as `attend`'s) of (N, C) image
    tokens: `keys` and `values` where prompt tokens attend to the image, or `queries` where
    the image attends to them."""
    if queries is not None:
        return ImageProjections(q=dense(queries, w["q_proj"]))
    assert keys is not None and values is not None
    k, v = dense(keys, w["k_proj"]), dense(values, w["v_proj"])
    n, inner = k.shape
    return ImageProjections(
        k=k.reshape(n, heads, inner // heads).transpose(1, 2, 0),
        v=v.reshape(n, heads, inner // heads).transpose(1, 0, 2),
    )


def tokens_to_projected_image(q: jax.Array, image: ImageProjections, heads: int, scale: jax.Array) -> jax.Array:
    """Projected token queries (B, T, I) attend to an image's projected keys and values
    (`ImageProjections`) -> (B, T, I), before the output projection: per-head products over
    the D features, a few MFLOP where projecting the image costs hundreds.

    One 2-D product per head: XLA's CPU backend runs the batched (heads) form of these
    products, and the transposes it adds around them, about 2 ms slower per click."""
    assert image.k is not None and image.v is not None
    b, t, inner = q.shape
    d = inner // heads
    rows = q.reshape(b * t, inner)
    out = []
    for h in range(heads):
        logits = rows[:, h * d : (h + 1) * d] @ image.k[h]  # (B T, N)
        out.append(jax.nn.softmax(logits / scale, axis=-1) @ image.v[h])  # (B T, D)
    return jnp.concatenate(out, axis=-1).reshape(b, t, inner)


def projected_image_logits(q: jax.Array, k: jax.Array, heads: int) -> jax.Array:
    """An image's projected queries (Q, I) against projected tokens (B, T, I) -> per-head
    logits (B, Q, heads, T), one 2-D product per head (see `tokens_to_projected_image`)."""
    b, t, inner = k.shape
    d = inner // heads
    logits = [q[:, h * d : (h + 1) * d] @ k[:, :, h * d : (h + 1) * d].reshape(b * t, d).T for h in range(heads)]
    return jnp.stack(logits, axis=1).reshape(q.shape[0], heads, b, t).transpose(2, 0, 1, 3)


def attend(
    q: jax.Array | None,
    k: jax.Array | None,
    v: jax.Array | None,
    w: dict[str, Any],
    heads: int,
    key_mask: jax.Array | None,
    image: ImageProjections | None = None,
) -> jax.Array:
    """Multi-head attention with the projections `w` ({q,k,v,out}_proj: (kernel, bias)):
    q (B, Nq, C), k and v (B, Nk, C) -> (B, Nq, C); either side may have batch 1 (shared by
    every prompt: projected once). `key_mask` (B, Nk) bool marks the keys that take part.

    `image`: the image side's projections made beforehand (`project_image`), for the image
    as keys and values (`k`, `v` not read) or as queries (`q` not read)."""
    inner = w["q_proj"][0].shape[1]
    dtype = (q if q is not None else k).dtype  # type: ignore[union-attr]
    scale = jnp.sqrt(jnp.float32(inner // heads)).astype(dtype)
    if image is not None and image.k is not None:
        assert q is not None
        return dense(tokens_to_projected_image(dense(q, w["q_proj"]), image, heads, scale), w["out_proj"])
    if image is not None:
        assert k is not None and v is not None
        k, v = dense(k, w["k_proj"]), dense(v, w["v_proj"])
        return image_to_tokens(None, k, v, w, heads, scale, "", "b", key_mask, image.q)  # type: ignore[arg-type]
    assert q is not None and k is not None and v is not None
    batch = max(q.shape[0], k.shape[0])
    qb, kb = ("b" if q.shape[0] == batch else ""), ("b" if k.shape[0] == batch else "")
    q, k, v = (x if spec else x[0] for x, spec in ((q, qb), (k, kb), (v, kb)))
    nq, nk = q.shape[-2], k.shape[-2]
    if nk >= BLOCK_DIAGONAL_MIN_RATIO * heads * nq:
        if key_mask is not None:
            raise ValueError("key_mask applies to prompt tokens as keys, not to image tokens")
        out = tokens_to_image(dense(q, w["q_proj"]), k, v, w, heads, scale, qb, kb)
    elif nq >= BLOCK_DIAGONAL_MIN_RATIO * heads * nk:
        k, v = dense(k, w["k_proj"]), dense(v, w["v_proj"])
        return image_to_tokens(q, k, v, w, heads, scale, qb, kb, key_mask)
    else:
        k, v = dense(k, w["k_proj"]), dense(v, w["v_proj"])
        out = per_head(dense(q, w["q_proj"]), k, v, heads, scale, qb, kb, key_mask)
    return dense(out, w["out_proj"])
