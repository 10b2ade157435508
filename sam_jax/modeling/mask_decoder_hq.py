"""SAM-HQ's mask decoder (reference `segment_anything_hq/modeling/mask_decoder_hq.py`).

SAM's decoder with one more output token, the HQ token (`hf_token`, with its own
hypernetwork `hf_mlp`). Its mask is read from a finer feature map than SAM's: the upscaled
image tokens through two 3x3 convolutions (`embedding_maskfeature`), plus the HQ features,
which fuse the image embedding (`embedding_encoder`) with the encoder's early features, the
output of its first global-attention block (`compress_vit_feat`). SAM's mask tokens, IoU
head and transformer are SAM's, unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.modeling.common import gelu, layer_norm
from sam_jax.modeling.mask_decoder import (
    LAYER_NORM_2D_EPS,
    MLP,
    ConvTranspose2x2,
    MaskDecoder,
    interleave_features,
    interleave_subpixels,
)


class MaskDecoderHQ(MaskDecoder):
    """`MaskDecoder` with SAM-HQ's token and feature fusion; the two stages as SAM's, the
    second taking the HQ features (`hq_features`) as well."""

    def setup(self) -> None:
        super().setup()
        dim = self.config.prompt_embed_dim
        self.hf_token = nn.Embed(1, dim)
        self.hf_mlp = MLP(dim, dim // 8, 3)
        self.compress_vit_feat_0 = ConvTranspose2x2(dim)
        self.compress_vit_feat_1 = layer_norm(LAYER_NORM_2D_EPS)
        self.compress_vit_feat_3 = ConvTranspose2x2(dim // 8)
        self.embedding_encoder_0 = ConvTranspose2x2(dim // 4)
        self.embedding_encoder_1 = layer_norm(LAYER_NORM_2D_EPS)
        self.embedding_encoder_3 = ConvTranspose2x2(dim // 8)
        same = ((1, 1), (1, 1))
        self.embedding_maskfeature_0 = nn.Conv(dim // 4, (3, 3), padding=same)
        self.embedding_maskfeature_1 = layer_norm(LAYER_NORM_2D_EPS)
        self.embedding_maskfeature_3 = nn.Conv(dim // 8, (3, 3), padding=same)

    def __call__(  # type: ignore[override]
        self,
        image_embedding: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool,
        early_features: jax.Array,
        hq_token_only: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """Predicts one mask per prompt (reference `MaskDecoderHQ.forward`).

        Args:
            image_embedding, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings:
                as `MaskDecoder.__call__`.
            multimask_output: SAM's part is its best multimask output (by predicted IoU),
                else its single-mask output.
            early_features: (1 or B, E, E, D) the encoder's early features.
            hq_token_only: the HQ mask alone, else SAM's mask plus the HQ mask.
        Returns:
            masks: (B, 1, 4E, 4E) low-res logits; iou_pred: (B, 1), SAM's mask's.
        """
        mask_tokens_out, src, iou_pred = self.decode_tokens(
            image_embedding, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        hq = self.hq_features(image_embedding, early_features)
        masks = self.predict_masks(mask_tokens_out, src, None, hq)
        return select_hq_outputs(masks, iou_pred, multimask_output, hq_token_only)

    def output_tokens(self) -> jax.Array:
        """IoU, SAM's mask tokens, then the HQ token."""
        return jnp.concatenate([super().output_tokens(), self.hf_token.embedding])

    def hq_features(self, image_embedding: jax.Array, early_features: jax.Array) -> jax.Array:
        """(B, E, E, C) image embedding and (B, E, E, D) early features -> the HQ features,
        (B, E, E, 2, 2, 2, 2, C/8) in `upscale`'s sub-pixel layout."""
        embedded = self.embedding_encoder_0(image_embedding)
        embedded = self.embedding_encoder_3(gelu(self.embedding_encoder_1(embedded)))
        compressed = self.compress_vit_feat_0(early_features)
        compressed = self.compress_vit_feat_3(gelu(self.compress_vit_feat_1(compressed)))
        return embedded + compressed

    def predict_masks(
        self,
        mask_tokens_out: jax.Array,
        src: jax.Array,
        multimask_output: bool | None = None,
        hq_features: jax.Array | None = None,
    ) -> jax.Array:
        """The second stage: (B, num_mask_tokens + 1, C) tokens and (B, E, E, C) image tokens
        from `decode_tokens`, with `hq_features` (1 or B, ...) -> (B, num_mask_tokens + 1, 4E, 4E)
        low-res logits: SAM's outputs, then the HQ mask. Every output is computed (which SAM
        mask goes with the HQ one depends on the IoU predictions: `select_hq_outputs`)."""
        if multimask_output is not None or hq_features is None:
            raise ValueError("MaskDecoderHQ.predict_masks computes every output and needs hq_features")
        upscaled = self.upscale(src)
        sam_tokens = mask_tokens_out[:, :-1]
        hyper_in = jnp.stack([mlp(sam_tokens[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        masks_sam = interleave_subpixels(jnp.einsum("bhwijxyc,bkc->bhwijxyk", upscaled, hyper_in))
        # The HQ mask reads its features in the image's layout: a 3x3 convolution crosses the
        # sub-pixel blocks.
        upscaled_sam = interleave_features(upscaled)
        x = gelu(self.embedding_maskfeature_1(self.embedding_maskfeature_0(upscaled_sam)))
        upscaled_hq = self.embedding_maskfeature_3(x) + interleave_features(hq_features)
        hq_in = self.hf_mlp(mask_tokens_out[:, -1])
        masks_hq = jnp.einsum("bhwc,bc->bhw", upscaled_hq, hq_in)[:, None]
        return jnp.concatenate([masks_sam, masks_hq], axis=1)


def select_hq_outputs(
    masks: jax.Array, iou_pred: jax.Array, multimask_output: bool, hq_token_only: bool
) -> tuple[jax.Array, jax.Array]:
    """Every output's (B, T + 1, ...) logits and (B, T) IoU -> SAM-HQ's one output per prompt
    (reference `MaskDecoderHQ.forward`): SAM's best multimask output by predicted IoU, or its
    single-mask output, plus the HQ mask (or the HQ mask alone); the IoU is SAM's mask's.

    Returns:
        (B, 1, ...) logits and (B, 1) IoU.
    """
    masks_sam, masks_hq = masks[:, :-1], masks[:, -1:]
    if multimask_output:
        best, iou = best_multimask_output(iou_pred)
        index = best.reshape(-1, *([1] * (masks.ndim - 1)))
        masks_sam = jnp.take_along_axis(masks_sam, index, axis=1)
    else:
        iou, masks_sam = iou_pred[:, :1], masks_sam[:, :1]
    return (masks_hq if hq_token_only else masks_sam + masks_hq), iou


def best_multimask_output(iou_pred: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, T) every SAM output's IoU -> (B,) the token of the multimask output with the
    highest (the first on ties, as torch.max), and (B, 1) its IoU."""
    best = jnp.argmax(iou_pred[:, 1:], axis=1)
    return best + 1, jnp.take_along_axis(iou_pred[:, 1:], best[:, None], axis=1)
