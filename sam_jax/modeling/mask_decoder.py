"""The mask decoder (reference `modeling/mask_decoder.py`).

Output tokens (one IoU token, `num_multimask_outputs + 1` mask tokens) run through the
two-way transformer with the prompt tokens; each mask token becomes, through its own
hypernetwork MLP, the weights of a dot product with the upscaled image embedding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.config import SamConfig
from sam_jax.modeling.common import Dense, gelu, layer_norm, relu
from sam_jax.modeling.transformer import FirstLayerImage, TwoWayTransformer

LAYER_NORM_2D_EPS = 1e-6


class MLP(nn.Module):
    """`num_layers` Dense layers with ReLU between them (reference `MLP`)."""

    hidden_dim: int
    output_dim: int
    num_layers: int
    sigmoid_output: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = Dense(self.output_dim if last else self.hidden_dim, name=f"layers_{i}")(x)
            x = x if last else relu(x)
        return jax.nn.sigmoid(x) if self.sigmoid_output else x


class ConvTranspose2x2(nn.Module):
    """torch `ConvTranspose2d(kernel_size=2, stride=2)`: each pixel becomes a 2x2 block.

    Kernel layout (2, 2, in, out); the converter transposes torch's (in, out, 2, 2).
    The 2x2 block is returned as two new axes before the channels, (..., C) -> (..., 2, 2, O),
    rather than interleaved into the spatial axes: `interleave_subpixels` does that once, at
    the end, on the far smaller mask logits (every op in between acts per pixel).
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return jnp.einsum("...c,ijco->...ijo", x, kernel) + bias


def interleave_subpixels(x: jax.Array) -> jax.Array:
    """(B, H, W, i1, j1, i2, j2, M) sub-pixel blocks of two 2x2 upscalings, masks last ->
    (B, M, 4H, 4W), the pixel (4h + 2 i1 + i2, 4w + 2 j1 + j2)."""
    b, h, w, m = x.shape[0], x.shape[1], x.shape[2], x.shape[-1]
    return jnp.transpose(x, (0, 7, 1, 3, 5, 2, 4, 6)).reshape(b, m, 4 * h, 4 * w)


def interleave_features(x: jax.Array) -> jax.Array:
    """(B, H, W, i1, j1, i2, j2, C) sub-pixel blocks -> (B, 4H, 4W, C), channels kept last."""
    b, h, w, c = x.shape[0], x.shape[1], x.shape[2], x.shape[-1]
    return jnp.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7)).reshape(b, 4 * h, 4 * w, c)


class MaskDecoder(nn.Module):
    """Two stages, callable apart (`apply(..., method=...)`): `decode_tokens` runs the
    two-way transformer and the IoU head, `predict_masks` turns mask tokens into masks.
    Automatic mask generation runs the second only for prompts whose predicted IoU passes
    its threshold."""

    config: SamConfig

    def setup(self) -> None:
        cfg = self.config
        dim = cfg.prompt_embed_dim
        n_tokens = cfg.num_mask_tokens
        self.iou_token = nn.Embed(1, dim)
        self.mask_tokens = nn.Embed(n_tokens, dim)
        self.transformer = TwoWayTransformer(
            cfg.decoder_depth,
            cfg.decoder_num_heads,
            cfg.decoder_mlp_dim,
            cfg.attention_downsample_rate,
            layer_norm_eps=cfg.decoder_layer_norm_eps,
        )
        self.output_upscaling_0 = ConvTranspose2x2(dim // 4)
        self.output_upscaling_1 = layer_norm(LAYER_NORM_2D_EPS)
        self.output_upscaling_3 = ConvTranspose2x2(dim // 8)
        self.output_hypernetworks_mlps = [MLP(dim, dim // 8, 3) for _ in range(n_tokens)]
        self.iou_prediction_head = MLP(cfg.iou_head_hidden_dim, n_tokens, cfg.iou_head_depth)

    def __call__(
        self,
        image_embedding: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool,
    ) -> tuple[jax.Array, jax.Array]:
        """Predicts masks for B prompts on one or B images.

        Args:
            image_embedding: (1 or B, E, E, C), broadcast over prompts when 1.
            image_pe: (E, E, C) dense positional encoding.
            sparse_prompt_embeddings: (B, N, C).
            dense_prompt_embeddings: (1 or B, E, E, C); both at 1: the first layer is shared.
            multimask_output: return the `num_multimask_outputs` masks, else the single one.
        Returns:
            masks: (B, M, 4E, 4E) low-res logits; iou_pred: (B, M).
        """
        mask_tokens_out, src, iou_pred = self.decode_tokens(
            image_embedding, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        masks = self.predict_masks(mask_tokens_out, src, multimask_output)
        return masks, select_outputs(iou_pred, multimask_output)

    def decode_tokens(
        self,
        image_embedding: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        prompt_mask: jax.Array | None = None,
        first_layer: FirstLayerImage | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The first stage (arguments as `__call__`); `prompt_mask` (B, N) bool marks the
        sparse prompt tokens that take part (False: an empty slot, attended by nothing).
        `first_layer`: for prompts without a mask, the transformer's image side made
        beforehand (`sam_jax.modeling.sam.decoder_first_layer`); `image_pe` and
        `dense_prompt_embeddings` are then not read, `image_embedding` only for its shape.

        Returns:
            mask_tokens_out: (B, num_output_tokens - 1, C), every token but the IoU token;
            src: (B, E, E, C) the image tokens after the transformer; iou_pred:
            (B, num_mask_tokens), every output's.
        """
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = self.output_tokens()
        output_tokens = jnp.broadcast_to(output_tokens, (b, *output_tokens.shape))
        tokens = jnp.concatenate([output_tokens, sparse_prompt_embeddings], axis=1)
        # (1, ...) when both are shared by the B prompts
        src = image_embedding if first_layer is not None else image_embedding + dense_prompt_embeddings
        token_mask = None
        if prompt_mask is not None:  # the output tokens always take part
            token_mask = jnp.concatenate([jnp.ones((b, output_tokens.shape[1]), bool), prompt_mask], axis=1)
        hs, src = self.transformer(src, image_pe, tokens, token_mask, output_tokens.shape[1], first_layer)
        mask_tokens_out = hs[:, 1 : output_tokens.shape[1], :]
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        return mask_tokens_out, src.reshape(b, *image_embedding.shape[1:3], src.shape[-1]), iou_pred

    def output_tokens(self) -> jax.Array:
        """The decoder's own tokens, (num_output_tokens, C): IoU, then the mask tokens."""
        return jnp.concatenate([self.iou_token.embedding, self.mask_tokens.embedding])

    def upscale(self, src: jax.Array) -> jax.Array:
        """(B, H, W, C) image tokens -> (B, H, W, 2, 2, 2, 2, C/8): two 2x upscalings, as
        sub-pixel blocks (`ConvTranspose2x2`)."""
        x = self.output_upscaling_0(src)  # (B, H, W, 2, 2, C/4)
        x = gelu(self.output_upscaling_1(x))
        return gelu(self.output_upscaling_3(x))

    def predict_masks(self, mask_tokens_out: jax.Array, src: jax.Array, multimask_output: bool | None) -> jax.Array:
        """The second stage: (B, num_mask_tokens, C) tokens and (B, E, E, C) image tokens from
        `decode_tokens` -> (B, M, 4E, 4E) low-res mask logits (M: see `select_outputs`)."""
        upscaled = self.upscale(src)
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1
        )
        # Masks last: the product reads `upscaled` in its own layout (channels minor); with the
        # masks first XLA copies the whole (B, C/8, 16 E^2) tensor to transpose it, where
        # this way only the few mask logits move.
        hyper_in = select_outputs(hyper_in, multimask_output)
        return interleave_subpixels(jnp.einsum("bhwijxyc,bkc->bhwijxyk", upscaled, hyper_in))


def select_outputs(x: jax.Array, multimask_output: bool | None) -> jax.Array:
    """Axis 1 over the mask tokens -> the multimask outputs (tokens 1..) or the single one (0);
    None keeps every token's output (the choice is then made by the caller)."""
    if multimask_output is None:
        return x
    return x[:, 1:] if multimask_output else x[:, :1]
