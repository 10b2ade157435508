"""The decoder as a serialized `jax.export` program: StableHLO with the weights inside, that
any JAX can deserialize and call without this package. JAX arrays cannot take a shape from
an input's values, so where the ONNX model reads the original size from the values of
`orig_im_size`, the JAX program reads it from its *shape*: pass any (H, W) array, e.g.
`np.zeros(image.shape[:2], np.uint8)`. N is symbolic (at most `max_points`). A SAM-HQ
model's program takes `interm_embeddings` second, as segment_anything_hq's `SamOnnxModel`,
with a symbolic leading axis (it reads the first entry)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sam_jax.amg.scoring import pixel_count, stability_score
from sam_jax.export.interface import (
    MASK_THRESHOLD,
    SINGLE_MASK_POINTS,
    SINGLE_MASK_REWEIGHT,
    STABILITY_SCORE_OFFSET,
    AnyExportOptions,
    HQExportOptions,
    resolve_options,
)
from sam_jax.modeling.cross_attention import BLOCK_DIAGONAL_MIN_RATIO
from sam_jax.modeling.mask_decoder_hq import select_hq_outputs
from sam_jax.modeling.sam import SamParams, predict_low_res_slots


def select_masks(masks: jax.Array, scores: jax.Array, num_points: Any) -> tuple[jax.Array, jax.Array]:
    """The reference `SamOnnxModel.select_masks`: (1, T, ...) masks and (1, T) scores -> the
    best one, (1, 1, ...) and (1, 1)."""
    reweight = jnp.zeros(scores.shape[1], jnp.float32).at[0].set(SINGLE_MASK_REWEIGHT)
    n = jnp.asarray(num_points, jnp.float32)
    best = jnp.argmax(scores + (n - SINGLE_MASK_POINTS) * reweight, axis=1)
    pick = jax.vmap(lambda x, i: x[i][None])
    return pick(masks, best), pick(scores, best)


def resize_linear(x: jax.Array, axis: int, in_size: Any, out_size: Any) -> jax.Array:
    """torch `F.interpolate(mode="bilinear", align_corners=False)` along one axis, reading
    only x's first `in_size` entries (a crop), to `out_size` entries.

    Args:
        x: any array; `axis` the axis to resize.
        in_size: int or traced integer scalar: the (cropped) input length.
        out_size: int or a symbolic dimension (shape-polymorphic export): the output length.
    """
    scale = jnp.asarray(in_size, jnp.float32) / jnp.asarray(out_size, jnp.float32)
    src = jnp.maximum((jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = src.astype(jnp.int32)  # floor: src >= 0
    i1 = jnp.minimum(i0 + 1, jnp.asarray(in_size, jnp.int32) - 1)
    w1 = src - i0.astype(jnp.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    w1 = w1.reshape(shape)
    return jnp.take(x, i0, axis=axis) * (1 - w1) + jnp.take(x, i1, axis=axis) * w1


def postprocess_masks(low_res: jax.Array, image_size: int, orig_hw: tuple[Any, Any]) -> jax.Array:
    """The reference `SamOnnxModel.mask_postprocessing`: (..., L, L) logits -> (..., H, W):
    upsample to the input frame, crop its padding, resize to the original size.

    Args:
        orig_hw: (H, W) ints or symbolic dimensions.
    """
    x = resize_linear(resize_linear(low_res, -1, low_res.shape[-1], image_size), -2, low_res.shape[-2], image_size)
    size = jnp.stack([jnp.asarray(orig_hw[0], jnp.float32), jnp.asarray(orig_hw[1], jnp.float32)])
    h, w = jnp.floor(image_size / jnp.max(size) * size + 0.5).astype(jnp.int32)  # `resize_longest_image_size`
    return resize_linear(resize_linear(x, -1, w, orig_hw[1]), -2, h, orig_hw[0])


def decoder_forward(
    params: SamParams,
    options: AnyExportOptions,
    image_embeddings: jax.Array,
    point_coords: jax.Array,
    point_labels: jax.Array,
    mask_input: jax.Array,
    has_mask_input: jax.Array,
    orig_hw: tuple[Any, Any],
    interm_embeddings: jax.Array | None = None,
) -> tuple[jax.Array, ...]:
    """The reference `SamOnnxModel.forward` on our decoder (inputs as the module docstring;
    `orig_hw` the original (H, W) as ints or symbolic dimensions); for a SAM-HQ model,
    segment_anything_hq's, with `interm_embeddings` (L, 1, E, E, D) and `HQExportOptions`."""
    embedding = jnp.transpose(image_embeddings[0], (1, 2, 0))  # NCHW -> (E, E, C)
    labels = jnp.round(point_labels).astype(jnp.int32)
    mask_nhwc = jnp.moveaxis(mask_input, 1, -1)
    early = None if interm_embeddings is None else interm_embeddings[0, 0]  # the first: (E, E, D)
    low_res, scores = predict_low_res_slots(
        params, embedding, point_coords, labels, mask_nhwc, has_mask_input, early_features=early
    )
    if options.use_stability_score:
        scores = stability_score(low_res, MASK_THRESHOLD, STABILITY_SCORE_OFFSET)
    if isinstance(options, HQExportOptions):
        # SAM's scores only: a stability score was computed for the HQ mask too.
        scores = scores[:, : params.config.num_mask_tokens]
        low_res, scores = select_hq_outputs(low_res, scores, options.multimask_output, options.hq_token_only)
    elif options.return_single_mask:
        low_res, scores = select_masks(low_res, scores, point_coords.shape[1])
    masks = postprocess_masks(low_res, params.config.image_size, orig_hw)
    if options.return_extra_metrics:
        stability = stability_score(masks, MASK_THRESHOLD, STABILITY_SCORE_OFFSET)
        areas = pixel_count(masks > MASK_THRESHOLD)
        return masks, scores, stability, areas, low_res
    return masks, scores, low_res


def max_points_default(params: SamParams) -> int:
    """The most points (N) for which the decoder's attention takes one path for every N, as a
    shape-polymorphic program needs: tokens at most image tokens / (16 heads) for the
    block-diagonal path (`BLOCK_DIAGONAL_MIN_RATIO`; N <= 27 for the official models), else
    fewer tokens than image tokens, and at most 64 points."""
    cfg = params.config
    tokens, out = cfg.embedding_size**2, cfg.num_output_tokens
    limit = tokens // (BLOCK_DIAGONAL_MIN_RATIO * cfg.decoder_num_heads) - out
    return limit if limit >= 1 else min(64, tokens - out - 1)


def export_jax(params: SamParams, options: AnyExportOptions | None = None, max_points: int | None = None) -> bytes:
    """Serializes the decoder as a `jax.export` program (see the module docstring).

    Args:
        params: the model (only the prompt encoder and mask decoder weights are used).
        options: the reference `SamOnnxModel` options (`ExportOptions`, or `HQExportOptions`
            for a SAM-HQ model; `resolve_options`); None: the defaults.
        max_points: the largest N the program takes; default `max_points_default(params)`.
    Returns:
        The bytes of `jax.export.Exported.serialize()`: `jax.export.deserialize(bytearray(b))
        .call(image_embeddings, point_coords, point_labels, mask_input, has_mask_input,
        np.zeros((H, W), np.uint8))`; a SAM-HQ model's takes `interm_embeddings`
        (L, 1, E, E, D) second.
    """
    cfg = params.config
    options = resolve_options(cfg, options)
    if max_points is None:
        max_points = max_points_default(params)
    early = cfg.early_features_shape  # SAM-HQ's: its `interm_embeddings` input, L symbolic
    dims = "N, H, W" if early is None else "N, H, W, L"
    n, h, w, *layers = jax.export.symbolic_shape(dims, constraints=[f"N <= {int(max_points)}"])
    e, c, low = cfg.embedding_size, cfg.prompt_embed_dim, cfg.low_res_mask_size
    f32 = jnp.float32
    specs = (
        jax.ShapeDtypeStruct((1, c, e, e), f32),
        *([] if early is None else [jax.ShapeDtypeStruct((*layers, 1, *early), f32)]),
        jax.ShapeDtypeStruct((1, n, 2), f32),
        jax.ShapeDtypeStruct((1, n), f32),
        jax.ShapeDtypeStruct((1, 1, low, low), f32),
        jax.ShapeDtypeStruct((1,), f32),
        jax.ShapeDtypeStruct((h, w), jnp.uint8),
    )

    def program(
        image_embeddings: jax.Array,
        point_coords: jax.Array,
        point_labels: jax.Array,
        mask_input: jax.Array,
        has_mask_input: jax.Array,
        orig_im_size: jax.Array,
    ) -> tuple[jax.Array, ...]:
        return decoder_forward(
            params,
            options,
            image_embeddings,
            point_coords,
            point_labels,
            mask_input,
            has_mask_input,
            (orig_im_size.shape[0], orig_im_size.shape[1]),
        )

    # Named parameters (not *args): the program keeps them as its inputs' names.
    def program_hq(
        image_embeddings: jax.Array,
        interm_embeddings: jax.Array,
        point_coords: jax.Array,
        point_labels: jax.Array,
        mask_input: jax.Array,
        has_mask_input: jax.Array,
        orig_im_size: jax.Array,
    ) -> tuple[jax.Array, ...]:
        return decoder_forward(
            params,
            options,
            image_embeddings,
            point_coords,
            point_labels,
            mask_input,
            has_mask_input,
            (orig_im_size.shape[0], orig_im_size.shape[1]),
            interm_embeddings,
        )

    return bytes(jax.export.export(jax.jit(program if early is None else program_hq))(*specs).serialize())
