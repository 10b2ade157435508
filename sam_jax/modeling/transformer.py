"""The two-way transformer of the mask decoder (reference `modeling/transformer.py`).

Prompt tokens attend to themselves and to the image; the image attends back to the
tokens. Positional encodings are re-added to queries and keys at every attention.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.modeling.common import MLPBlock, layer_norm, relu
from sam_jax.modeling.cross_attention import ImageProjections, Projection, attend, project_image

DECODER_LN_EPS = 1e-5  # torch's nn.LayerNorm default, used by the reference decoder


class Attention(nn.Module):
    """Multi-head attention whose inner width can be reduced by `downsample_rate`
    (reference `Attention`): project q, k and v to the inner width, split heads, softmax of
    q k^T / sqrt(head dim) over the keys, weighted sum of v, merge heads, project back.
    The products are arranged for few tokens against many image tokens in
    `cross_attention.attend`."""

    num_heads: int
    downsample_rate: int = 1

    @nn.compact
    def __call__(
        self,
        q: jax.Array | None,
        k: jax.Array | None,
        v: jax.Array | None,
        key_mask: jax.Array | None = None,
        image: ImageProjections | None = None,
    ) -> jax.Array:
        """q (B, Nq, C), k and v (B, Nk, C) -> (B, Nq, C); either side may have batch 1.

        `key_mask` (B, Nk) bool, True where a key takes part: keys marked False get zero
        weight (empty prompt slots of a static prompt layout), as if they were absent.
        `image`: the image side already projected (`project_image`), its inputs given as None.
        """
        dim = (q if q is not None else k).shape[-1]  # type: ignore[union-attr]
        inner = dim // self.downsample_rate
        w = {name: Projection(inner, name=name)(dim) for name in ("q_proj", "k_proj", "v_proj")}
        w["out_proj"] = Projection(dim, name="out_proj")(inner)
        return attend(q, k, v, w, self.num_heads, key_mask, image)


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
        image: FirstLayerImage | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """`token_mask` (B, N) bool: tokens marked False are left out wherever they would be keys.
        `image`: `keys` and `key_pe`'s projections made beforehand (`first_layer_image`)."""
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

        to_image = Attention(self.num_heads, rate, name="cross_attn_token_to_image")
        if image is None:
            queries = queries + to_image(queries + query_pe, keys + key_pe, keys)
        else:
            queries = queries + to_image(queries + query_pe, None, None, image=image.token_to_image)
        queries = layer_norm(self.layer_norm_eps, "norm2")(queries)

        queries = queries + MLPBlock(self.mlp_dim, act=relu, name="mlp")(queries)
        queries = layer_norm(self.layer_norm_eps, "norm3")(queries)

        q = queries + query_pe
        to_tokens = Attention(self.num_heads, rate, name="cross_attn_image_to_token")
        if image is None:
            keys = keys + to_tokens(keys + key_pe, q, queries, token_mask)
        else:
            keys = keys + to_tokens(None, q, queries, token_mask, image=image.image_to_token)
        keys = layer_norm(self.layer_norm_eps, "norm4")(keys)
        return queries, keys


class FirstLayerImage(NamedTuple):
    """The first block's image side for prompts without a mask, whose image tokens are the
    same for every prompt (`first_layer_image`): made once per image, it takes the 4096
    image tokens' projections and positional sums out of each click's program, which then
    runs the first block's cross-attention as per-head products against them."""

    keys: jax.Array  # (1, N, C) the image tokens: embedding plus the no-mask embedding
    key_pe: jax.Array  # (1, N, C) their positional encoding
    token_to_image: ImageProjections  # keys from keys + key_pe, values from keys
    image_to_token: ImageProjections  # queries from keys + key_pe


def first_layer_image(weights: Any, keys: jax.Array, key_pe: jax.Array, num_heads: int) -> FirstLayerImage:
    """`FirstLayerImage` of (1, N, C) image tokens and their positional encoding, with a
    `TwoWayTransformer`'s weights (its params tree); the projections are the blocks' own."""
    layer = weights["layers_0"]

    def attention_weights(name: str) -> dict[str, tuple[jax.Array, jax.Array]]:
        return {p: (layer[name][p]["kernel"], layer[name][p]["bias"]) for p in ("q_proj", "k_proj", "v_proj")}

    with_pe = (keys + key_pe)[0]
    return FirstLayerImage(
        keys,
        key_pe,
        project_image(attention_weights("cross_attn_token_to_image"), num_heads, keys=with_pe, values=keys[0]),
        project_image(attention_weights("cross_attn_image_to_token"), num_heads, queries=with_pe),
    )


def moved_first_layer(
    weights: Any, first: FirstLayerImage, keys: jax.Array, features: jax.Array, basis: jax.Array, offset: jax.Array
) -> FirstLayerImage:
    """`first`, made for image tokens K, moved to one prompt's image tokens `keys` =
    K + `features` @ `basis` + `offset` (a mask prompt's embedding against `no_mask`'s).

    The projections are linear, so each moves by `features` @ (`basis` W) + `offset` W: for
    a SAM mask, (N, 16) by (16, I) products, where projecting `keys` anew costs (N, C) by
    (C, I) for C = 256. Results equal the projections of `keys` up to summation order.

    Args:
        weights: the `TwoWayTransformer`'s params tree.
        keys: (1, N, C) the prompt's image tokens; features (N, r), basis (r, C), offset (C,).
    """
    layer = weights["layers_0"]
    to_image, to_token = first.token_to_image, first.image_to_token
    assert to_image.k is not None and to_image.v is not None and to_token.q is not None
    heads, d, n = to_image.k.shape

    def change(name: str, proj: str) -> jax.Array:  # (N, I): what the projection moves by
        kernel = layer[name][proj]["kernel"]
        return features @ (basis @ kernel) + offset @ kernel

    k, v = change("cross_attn_token_to_image", "k_proj"), change("cross_attn_token_to_image", "v_proj")
    return FirstLayerImage(
        keys,
        first.key_pe,
        ImageProjections(
            k=to_image.k + k.T.reshape(heads, d, n), v=to_image.v + v.reshape(n, heads, d).transpose(1, 0, 2)
        ),
        ImageProjections(q=to_token.q + change("cross_attn_image_to_token", "q_proj")),
    )


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
        first_layer: FirstLayerImage | None = None,
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
            first_layer: the image side made beforehand (`first_layer_image`) from this
                `image_embedding` and `image_pe`, which are then not read.
        Returns:
            queries: (B, num_outputs or N, C) processed tokens.
            keys: (B, H * W, C) processed image tokens.
        """
        if first_layer is None:
            bi, h, w, c = image_embedding.shape
            keys = image_embedding.reshape(bi, h * w, c)
            key_pe = jnp.broadcast_to(image_pe, (1, h, w, c)).reshape(1, h * w, c)
        else:
            keys, key_pe = first_layer.keys, first_layer.key_pe
        queries = point_embedding
        for i in range(self.depth):
            queries, keys = TwoWayAttentionBlock(
                self.num_heads,
                self.mlp_dim,
                self.attention_downsample_rate,
                skip_first_layer_pe=i == 0,
                layer_norm_eps=self.layer_norm_eps,
                name=f"layers_{i}",
            )(queries, keys, point_embedding, key_pe, token_mask, first_layer if i == 0 else None)
        if num_outputs is not None:
            queries, point_embedding = queries[:, :num_outputs], point_embedding[:, :num_outputs]
        q, k = queries + point_embedding, keys + key_pe
        attn = Attention(self.num_heads, self.attention_downsample_rate, name="final_attn_token_to_image")
        queries = queries + attn(q, k, keys)
        keys = jnp.broadcast_to(keys, (queries.shape[0], *keys.shape[1:]))  # depth 0 leaves them shared
        return layer_norm(DECODER_LN_EPS, "norm_final_attn")(queries), keys
