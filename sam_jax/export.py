"""The mask decoder as a portable artifact, with the reference `SamOnnxModel`'s interface.

Inputs (names, shapes and dtypes of the reference's ONNX export):
    image_embeddings (1, C, E, E) float32 NCHW, point_coords (1, N, 2) float32 in the model
    input frame (after `ResizeLongestSide`), point_labels (1, N) float32 (-1 not-a-point,
    0 background, 1 foreground, 2 / 3 box corners; the caller appends the padding point
    when there is no box, as the reference's notebook does), mask_input (1, 1, 4E, 4E)
    float32, has_mask_input (1,) float32 (1: use mask_input), orig_im_size (2,) float32 (H, W).
Outputs:
    masks (1, M, H, W) float32 logits at the original size, iou_predictions (1, M),
    low_res_masks (1, M, 4E, 4E); with `return_extra_metrics`: masks, iou_predictions,
    stability_scores (1, M), areas (1, M) int, low_res_masks. M is 4 (every mask token),
    or 1 with `return_single_mask`.

Two artifacts:
- `export_jax`: a serialized `jax.export` program (StableHLO with the weights inside) that
  any JAX can deserialize and call without this package. JAX arrays cannot take a shape
  from an input's values, so where the ONNX model reads the original size from the values
  of `orig_im_size`, the JAX program reads it from its *shape*: pass any (H, W) array, e.g.
  `np.zeros(image.shape[:2], np.uint8)`. N is symbolic (at most `max_points`).
- `export_onnx`: an ONNX graph (opset 17) written from the weights by `sam_jax.onnx_graph`,
  that onnxruntime runs with the reference's inputs as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.amg.scoring import pixel_count, stability_score
from sam_jax.modeling.cross_attention import BLOCK_DIAGONAL_MIN_RATIO
from sam_jax.modeling.sam import SamParams, predict_low_res_slots

INPUT_NAMES = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
STABILITY_SCORE_OFFSET = 1.0  # the reference `SamOnnxModel.stability_score_offset`
MASK_THRESHOLD = 0.0
# `SamOnnxModel.select_masks`: the single-mask output wins from 3 points on (the padding
# point counts), through a large score added to it rather than control flow.
SINGLE_MASK_REWEIGHT = 1000.0
SINGLE_MASK_POINTS = 2.5
FORMATS = ("onnx", "jax")


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """The reference `SamOnnxModel` options.

    Attributes:
        return_single_mask: return only the best mask (the reference's rule: the single-mask
            output for 3 or more points, else the multimask output with the best score).
        use_stability_score: replace the predicted IoU by the low-res masks' stability score.
        return_extra_metrics: also return the masks' stability scores and areas.
    """

    return_single_mask: bool = False
    use_stability_score: bool = False
    return_extra_metrics: bool = False

    def output_names(self) -> tuple[str, ...]:
        if self.return_extra_metrics:
            return ("masks", "iou_predictions", "stability_scores", "areas", "low_res_masks")
        return ("masks", "iou_predictions", "low_res_masks")


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
    options: ExportOptions,
    image_embeddings: jax.Array,
    point_coords: jax.Array,
    point_labels: jax.Array,
    mask_input: jax.Array,
    has_mask_input: jax.Array,
    orig_hw: tuple[Any, Any],
) -> tuple[jax.Array, ...]:
    """The reference `SamOnnxModel.forward` on our decoder (inputs as the module docstring;
    `orig_hw` the original (H, W) as ints or symbolic dimensions)."""
    embedding = jnp.transpose(image_embeddings[0], (1, 2, 0))  # NCHW -> (E, E, C)
    labels = jnp.round(point_labels).astype(jnp.int32)
    mask_nhwc = jnp.moveaxis(mask_input, 1, -1)
    low_res, scores = predict_low_res_slots(params, embedding, point_coords, labels, mask_nhwc, has_mask_input)
    if options.use_stability_score:
        scores = stability_score(low_res, MASK_THRESHOLD, STABILITY_SCORE_OFFSET)
    if options.return_single_mask:
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
    tokens, out = cfg.embedding_size**2, cfg.num_mask_tokens + 1
    limit = tokens // (BLOCK_DIAGONAL_MIN_RATIO * cfg.decoder_num_heads) - out
    return limit if limit >= 1 else min(64, tokens - out - 1)


def export_jax(params: SamParams, options: ExportOptions = ExportOptions(), max_points: int | None = None) -> bytes:
    """Serializes the decoder as a `jax.export` program (see the module docstring).

    Args:
        params: the model (only the prompt encoder and mask decoder weights are used).
        options: the reference `SamOnnxModel` options.
        max_points: the largest N the program takes; default `max_points_default(params)`.
    Returns:
        The bytes of `jax.export.Exported.serialize()`: `jax.export.deserialize(bytearray(b))
        .call(image_embeddings, point_coords, point_labels, mask_input, has_mask_input,
        np.zeros((H, W), np.uint8))`.
    """
    cfg = params.config
    if max_points is None:
        max_points = max_points_default(params)
    n, h, w = jax.export.symbolic_shape("N, H, W", constraints=[f"N <= {int(max_points)}"])
    e, c, low = cfg.embedding_size, cfg.prompt_embed_dim, cfg.low_res_mask_size
    f32 = jnp.float32
    specs = (
        jax.ShapeDtypeStruct((1, c, e, e), f32),
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

    return bytes(jax.export.export(jax.jit(program))(*specs).serialize())


def export_onnx(params: SamParams, options: ExportOptions = ExportOptions()) -> bytes:
    """The decoder as a serialized ONNX model (see the module docstring and `sam_jax.onnx_graph`)."""
    from sam_jax import onnx_graph

    return onnx_graph.build_decoder(params, options).SerializeToString()


EXPORTERS: dict[str, Callable[[SamParams, ExportOptions], bytes]] = {"onnx": export_onnx, "jax": export_jax}


def export_decoder(params: SamParams, fmt: str = "onnx", options: ExportOptions = ExportOptions()) -> bytes:
    """The decoder artifact's bytes in `fmt` ("onnx" or "jax")."""
    if not isinstance(params, SamParams):
        raise TypeError(f"params must be SamParams (from sam_jax.load or sam_jax.init), got {type(params).__name__}")
    if fmt not in EXPORTERS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return EXPORTERS[fmt](params, options)


def reference_inputs(
    embedding: np.ndarray,
    points: np.ndarray,
    labels: np.ndarray,
    mask_input: np.ndarray | None,
    orig_hw: tuple[int, int],
) -> dict[str, np.ndarray]:
    """The ONNX model's inputs as the reference notebook builds them, for tests and demos.

    Args:
        embedding: (E, E, C) our NHWC image embedding.
        points: (N, 2) coordinates already in the model input frame; labels (N,).
        mask_input: (1, 4E, 4E) or None.
        orig_hw: the original image size.
    """
    low = embedding.shape[0] * 4
    return {
        "image_embeddings": np.ascontiguousarray(np.transpose(np.asarray(embedding, np.float32), (2, 0, 1))[None]),
        "point_coords": np.asarray(points, np.float32)[None],
        "point_labels": np.asarray(labels, np.float32)[None],
        "mask_input": np.zeros((1, 1, low, low), np.float32)
        if mask_input is None
        else np.asarray(mask_input, np.float32).reshape(1, 1, low, low),
        "has_mask_input": np.asarray([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.asarray(orig_hw, np.float32),
    }
