"""The prompt encoder (reference `modeling/prompt_encoder.py`).

Points and boxes become sparse tokens (random Fourier features plus learned
embeddings, Tancik et al. 2020, arXiv:2006.10739); a low-res mask becomes a dense
embedding added to the image embedding, or the learned `no_mask` embedding otherwise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.config import SamConfig
from sam_jax.modeling.common import gelu, layer_norm

LAYER_NORM_2D_EPS = 1e-6

# Point labels (reference `_embed_points`; 2 and 3 as the reference `SamOnnxModel` takes
# a box: its corners as points with their own embeddings).
LABEL_PADDING = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3
# An empty slot of a static prompt layout: no token at all (masked out of the decoder).
LABEL_EMPTY_SLOT = -2


class LowRankChange(NamedTuple):
    """A change of image tokens of low rank: `features @ basis + offset` (broadcast over the
    grid), (B, E, E, r) by (r, C) plus (B, C)."""

    features: jax.Array
    basis: jax.Array
    offset: jax.Array


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding by random spatial frequencies (reference `PositionEmbeddingRandom`).

    The Gaussian matrix is a fixed buffer in the reference, not a trained parameter; it
    lives in the params tree so checkpoints carry it, and training freezes it.
    """

    num_pos_feats: int

    def setup(self) -> None:
        self.gaussian = self.param(
            "positional_encoding_gaussian_matrix", nn.initializers.normal(1.0), (2, self.num_pos_feats)
        )

    def encode(self, coords: jax.Array) -> jax.Array:
        """Coordinates normalised to [0, 1] (..., 2) -> features (..., 2 * num_pos_feats)."""
        coords = 2 * coords - 1
        coords = 2 * math.pi * (coords @ self.gaussian)
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def dense(self, size: tuple[int, int]) -> jax.Array:
        """Encoding of every cell centre of an (h, w) grid -> (h, w, C).

        The phase of cell (i, j) is a sum of a row and a column term, so the grid's sines
        and cosines follow from the rows' and columns' by the angle-addition formulas:
        (h + w) * C transcendentals instead of h * w * C. Equal to the per-cell `encode` up
        to float32 rounding of the phase (~1e-6).
        """
        h, w = size
        y = 2 * ((jnp.arange(h, dtype=jnp.float32) + 0.5) / h) - 1
        x = 2 * ((jnp.arange(w, dtype=jnp.float32) + 0.5) / w) - 1
        col = 2 * math.pi * x[:, None] * self.gaussian[0]  # (w, C/2)
        row = 2 * math.pi * y[:, None] * self.gaussian[1]  # (h, C/2)
        tables = jnp.concatenate([jnp.sin(col), jnp.cos(col), jnp.sin(row), jnp.cos(row)])
        # A product with the identity (exact) makes XLA write the small tables once: left
        # to itself it fused their sin and cos into the per-cell products, recomputing four
        # transcendentals per cell (slower than the direct encoding).
        eye = jnp.eye(tables.shape[1], dtype=tables.dtype)
        tables = jnp.dot(tables, eye, precision=jax.lax.Precision.HIGHEST)
        sin_c, cos_c, sin_r, cos_r = jnp.split(tables, [w, 2 * w, 2 * w + h])
        sin_c, cos_c, sin_r, cos_r = sin_c[None], cos_c[None], sin_r[:, None], cos_r[:, None]
        return jnp.concatenate([sin_r * cos_c + cos_r * sin_c, cos_r * cos_c - sin_r * sin_c], axis=-1)

    def with_coords(self, coords: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """Pixel (x, y) coordinates in an (h, w) image -> features (..., C)."""
        h, w = image_size
        return self.encode(coords / jnp.asarray([w, h], dtype=coords.dtype))


class PromptEncoder(nn.Module):
    """Encodes point, box and mask prompts.

    Submodule and parameter names mirror the reference state_dict keys
    (`point_embeddings_0` <-> `point_embeddings.0`), which the converter relies on.
    """

    config: SamConfig

    def setup(self) -> None:
        cfg = self.config
        dim = cfg.prompt_embed_dim
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        # Foreground / background points, then the two box corners.
        self.point_embeddings = [nn.Embed(1, dim, name=f"point_embeddings_{i}") for i in range(4)]
        self.not_a_point_embed = nn.Embed(1, dim)
        self.no_mask_embed = nn.Embed(1, dim)
        c = cfg.mask_in_chans
        self.mask_downscaling = [
            nn.Conv(c // 4, (2, 2), strides=(2, 2), padding="VALID", name="mask_downscaling_0"),
            layer_norm(LAYER_NORM_2D_EPS, "mask_downscaling_1"),
            nn.Conv(c, (2, 2), strides=(2, 2), padding="VALID", name="mask_downscaling_3"),
            layer_norm(LAYER_NORM_2D_EPS, "mask_downscaling_4"),
            nn.Conv(dim, (1, 1), name="mask_downscaling_6"),
        ]

    def _input_image_size(self) -> tuple[int, int]:
        return (self.config.image_size, self.config.image_size)

    def embed_slots(self, points: jax.Array, labels: jax.Array) -> jax.Array:
        """Labelled points (the reference `SamOnnxModel._embed_points`), empty slots zero.

        Args:
            points: (B, S, 2) float (x, y) in the input frame; box corners are points too.
            labels: (B, S) int: -1 not-a-point (the reference's padding point, a real token),
                0 background, 1 foreground, 2 and 3 box corners, -2 an empty slot.
        Returns:
            (B, S, C) sparse tokens, zero in empty slots.
        """
        emb = self.pe_layer.with_coords(points + 0.5, self._input_image_size())
        lab = labels[..., None]
        emb = jnp.where(lab < 0, 0.0, emb)
        emb = emb + jnp.where(lab == LABEL_PADDING, self.not_a_point_embed.embedding[0], 0.0)
        for i, table in enumerate(self.point_embeddings):
            emb = emb + jnp.where(lab == i, table.embedding[0], 0.0)
        return emb

    def embed_flagged_mask(self, masks: jax.Array, has_mask: jax.Array) -> jax.Array:
        """`has_mask * mask embedding + (1 - has_mask) * no_mask` (reference `SamOnnxModel`):
        a mask prompt that is always given, with a (B,) float flag saying whether it counts.
        Exact for flags 0 and 1: the other term is multiplied by an exact zero."""
        return self.flagged_mask_change(masks, has_mask)[0]

    def _embed_masks(self, masks: jax.Array) -> jax.Array:
        return self.mask_downscaling[-1](self._mask_features(masks))

    def _mask_features(self, masks: jax.Array) -> jax.Array:
        """(B, 4E, 4E, 1) -> (B, E, E, mask_in_chans): the mask embedding before its last,
        1x1 convolution."""
        x = masks
        for i, layer in enumerate(self.mask_downscaling[:-1]):
            x = layer(x)
            if i in (1, 3):  # GELU after each LayerNorm2d
                x = gelu(x)
        return x

    def flagged_mask_change(self, masks: jax.Array, has_mask: jax.Array) -> tuple[jax.Array, LowRankChange]:
        """`embed_flagged_mask`, and how it differs from `no_mask` in low-rank form.

        The last layer is a 1x1 convolution from `mask_in_chans` (16) channels, so the mask
        embedding minus `no_mask` is a (B, E, E, 16) by (16, C) product plus a (B, C) offset:
        what the decoder's projections of it cost is then a product over 16 channels, not C.

        Returns:
            dense (B, E, E, C) as `embed_flagged_mask`; its change from `no_mask`.
        """
        features, last, no_mask = self._mask_features(masks), self.mask_downscaling[-1], self.no_mask_embed.embedding[0]
        flag = has_mask[:, None, None, None]
        dense = flag * last(features) + (1 - flag) * no_mask
        kernel, bias = last.variables["params"]["kernel"], last.variables["params"]["bias"]
        change = LowRankChange(flag * features, kernel.reshape(kernel.shape[-2:]), has_mask[:, None] * (bias - no_mask))
        return dense, change

    def __call__(
        self,
        points: jax.Array | None = None,
        labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        masks: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Embeds prompts; every given prompt shares the batch size B.

        Args:
            points: (B, N, 2) float (x, y) in the resized-and-padded input frame.
            labels: (B, N) int, 1 foreground, 0 background, -1 padding.
            boxes: (B, 4) XYXY in the input frame.
            masks: (B, 4E, 4E, 1) low-res mask logits (NHWC).
        Returns:
            sparse: (B, N', C) tokens (N' = N (+1 padding point) (+2 box corners)).
            dense: (B, E, E, C) mask embedding; without masks, `no_mask` as (1, E, E, C): the
                same for every prompt, which lets the decoder share work across prompts.
            dense_pe: (E, E, C) positional encoding of the image embedding grid.
        """
        cfg = self.config
        dim = cfg.prompt_embed_dim
        no_mask = self.no_mask_embed.embedding[0]  # read unconditionally so `init` creates it
        given = [a for a in (points, boxes, masks) if a is not None]
        b = given[0].shape[0] if given else 1
        # The reference's tokens as labelled slots, embedded the one way (`embed_slots`).
        slots, slot_labels = [jnp.zeros((b, 0, 2), jnp.float32)], [jnp.zeros((b, 0), jnp.int32)]
        if points is not None:
            if labels is None:
                raise ValueError("labels must accompany points")
            slots.append(points)
            slot_labels.append(labels.astype(jnp.int32))
            if boxes is None:  # without a box, a padding point is appended (reference `_embed_points`)
                slots.append(jnp.zeros((b, 1, 2), points.dtype))
                slot_labels.append(jnp.full((b, 1), LABEL_PADDING, jnp.int32))
        if boxes is not None:
            slots.append(boxes.reshape(-1, 2, 2))
            slot_labels.append(
                jnp.broadcast_to(jnp.asarray([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], jnp.int32), (b, 2))
            )
        sparse = self.embed_slots(jnp.concatenate(slots, axis=1), jnp.concatenate(slot_labels, axis=1))
        e = cfg.embedding_size
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = jnp.broadcast_to(no_mask, (1, e, e, dim))
        return sparse, dense, self.pe_layer.dense((e, e))

    def encode_dense(self, masks: jax.Array | None, has_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """The dense embedding of a flagged mask prompt and the grid's positional encoding.

        Args:
            masks: (B, 4E, 4E, 1) low-res logits (NHWC) with has_mask (B,) float (0 or 1 as
                `SamOnnxModel`; any value is applied as a weight); or both None: no mask for
                any prompt (`no_mask` shared by all, as `__call__`).
        Returns:
            dense (B or 1, E, E, C), dense_pe (E, E, C).
        """
        e, dim = self.config.embedding_size, self.config.prompt_embed_dim
        no_mask = self.no_mask_embed.embedding[0]
        pe = self.pe_layer.dense((e, e))
        if masks is None or has_mask is None:
            return jnp.broadcast_to(no_mask, (1, e, e, dim)), pe
        b = masks.shape[0]
        # Skip the mask convolutions when every flag is 0: the formula then gives no_mask
        # exactly (0 times a finite embedding), and a click without fed-back logits saves them.
        dense = jax.lax.cond(
            jnp.any(has_mask != 0),
            lambda: self.embed_flagged_mask(masks, has_mask),
            lambda: jnp.broadcast_to(no_mask, (b, e, e, dim)),
        )
        return dense, pe
