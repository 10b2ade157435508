"""Automatic mask generation: "segment everything" (reference `SamAutomaticMaskGenerator`).

A grid of single-point prompts is decoded over the image (and over crops of it), low-quality
and duplicate masks are filtered out, and the survivors are returned as records with the
reference's keys. Results match the reference's; the work is arranged differently:

- the decoder runs on a whole batch of points in one compiled call (the last batch is
  padded, so one program serves every batch);
- the predicted-IoU threshold is applied first: the decoder's mask stage runs only for
  prompts with a candidate left (`MaskDecoder.predict_masks`), and only surviving
  candidates are upsampled; upsampling, stability scores and mask boxes run on the device,
  a cache-sized chunk of candidates at a time, and only masks that pass every filter and
  box NMS come back to the host;
- run-length encoding happens after non-maximum suppression, for the masks that are kept.

Usage:
    records = sam_jax.generate_masks(params, image, points_per_side=32)
    generator = SamAutomaticMaskGenerator(params, pred_iou_thresh=0.8); generator.generate(image)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import amg, transforms
from sam_jax.modeling.mask_decoder import select_outputs
from sam_jax.modeling.sam import SamParams, mask_decoder_masks, mask_decoder_tokens, prompt_encoder_forward
from sam_jax.predictor import MASK_THRESHOLD, _check_params, check_image, encode

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclasses.dataclass(frozen=True)
class AmgOptions:
    """The reference generator's options, same names and defaults (tuned there for ViT-H).

    Attributes:
        points_per_side: the grid has points_per_side**2 points; None when `point_grids` is given.
        points_per_batch: points decoded in one call (more is faster and uses more memory).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables).
        stability_score_offset: the logit shift used by the stability score.
        box_nms_thresh: box IoU above which the lower-scored of two masks of a crop is dropped.
        crop_n_layers: extra layers of crops; layer i has (2**i)**2 crops.
        crop_nms_thresh: box IoU for suppression across crops (smaller crops win).
        crop_overlap_ratio: overlap of first-layer crops, as a fraction of the short side.
        crop_n_points_downscale_factor: layer i uses points_per_side / factor**i points per side.
        point_grids: explicit (N, 2) grids in [0, 1] (x, y), one per crop layer.
        min_mask_region_area: if > 0, fill holes and remove islands smaller than this (pixels).
        output_mode: "binary_mask", "uncompressed_rle" or "coco_rle".
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[np.ndarray, ...] | None = None
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        def integer(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int >= {low}, got {v!r}")
            if v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v}")

        def number(name: str, low: float, high: float | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"{name} must be a number, got {v!r}")
            if not np.isfinite(v) or v < low or (high is not None and v > high):
                bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"{name} must be a number {bounds}, got {v}")

        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError("give exactly one of points_per_side or point_grids")
        if self.points_per_side is not None:
            integer("points_per_side", 1)
        integer("points_per_batch", 1)
        integer("crop_n_layers", 0)
        integer("crop_n_points_downscale_factor", 1)
        integer("min_mask_region_area", 0)
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            number(name, 0.0, 1.0)
        number("stability_score_offset", 0.0)
        number("crop_overlap_ratio", 0.0, 1.0)
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {self.output_mode!r}")
        if self.points_per_side is not None:
            for layer in range(1, self.crop_n_layers + 1):
                if int(self.points_per_side / self.crop_n_points_downscale_factor**layer) < 1:
                    raise ValueError(
                        f"crop_n_points_downscale_factor {self.crop_n_points_downscale_factor} leaves no points in "
                        f"crop layer {layer} (points_per_side {self.points_per_side} / "
                        f"{self.crop_n_points_downscale_factor}**{layer} < 1); use a smaller factor or fewer layers"
                    )
        if self.point_grids is not None:
            if isinstance(self.point_grids, (str, bytes, np.ndarray)) or not isinstance(self.point_grids, Sequence):
                raise TypeError(
                    "point_grids must be a list of (N, 2) arrays, one per crop layer, "
                    f"got {type(self.point_grids).__name__}"
                )
            grids = []
            for i, g in enumerate(self.point_grids):
                arr = np.asarray(g)
                if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                    raise TypeError(f"point_grids[{i}] must be an array of numbers of shape (N, 2), got {arr.dtype}")
                if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
                    raise ValueError(f"point_grids[{i}] must have shape (N, 2) with N >= 1, got {arr.shape}")
                if not np.all((arr >= 0) & (arr <= 1)):
                    raise ValueError(f"point_grids[{i}] must hold (x, y) coordinates normalised to [0, 1]")
                grids.append(arr.astype(np.float64))
            if len(grids) < self.crop_n_layers + 1:
                raise ValueError(
                    f"point_grids must hold one grid per crop layer ({self.crop_n_layers + 1}), got {len(grids)}"
                )
            object.__setattr__(self, "point_grids", tuple(grids))

    def layer_point_grids(self) -> tuple[np.ndarray, ...]:
        if self.point_grids is not None:
            return self.point_grids
        assert self.points_per_side is not None
        return tuple(
            amg.build_all_layer_point_grids(
                self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
            )
        )


# ----------------------------------------------------------------------------- device side


@jax.jit
def _decode_tokens(
    params: SamParams, image_embedding: jax.Array, points: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(B, 1, 2) foreground points on one (E, E, C) embedding -> the decoder's first stage:
    mask tokens, image tokens and the multimask outputs' predicted IoU (B, M)."""
    labels = jnp.ones(points.shape[:2], jnp.int32)
    sparse, dense, dense_pe = prompt_encoder_forward(params, points, labels, None, None)
    tokens, src, iou_pred = mask_decoder_tokens(params, image_embedding[None], dense_pe, sparse, dense)
    return tokens, src, select_outputs(iou_pred, True)


@jax.jit
def _predict_masks(params: SamParams, tokens: jax.Array, src: jax.Array, prompts: jax.Array | None) -> jax.Array:
    """The decoder's second stage for the prompts at rows `prompts` (None: all, without
    copying the image tokens) -> (P, M, L, L) logits."""
    if prompts is not None:
        tokens, src = jnp.take(tokens, prompts, axis=0), jnp.take(src, prompts, axis=0)
    return mask_decoder_masks(params, tokens, src, True)


def pixel_count(masks: jax.Array) -> jax.Array:
    """(..., H, W) bool -> (...) int32 count of True pixels.

    Rows first, as float sums of 0/1 (exact: a row has far fewer than 2^24 pixels), then the
    rows in int32. XLA's CPU backend fuses the compare that makes `masks` into the row sums;
    an int32 count over both axes at once materialised an int32 copy of every
    full-resolution candidate first (a third of the upsample-and-score time).
    """
    rows = jnp.sum(jnp.where(masks, 1.0, 0.0), axis=-1)
    return jnp.sum(rows.astype(jnp.int32), axis=-1)


def stability_score(logits: jax.Array, mask_threshold: float, offset: float | jax.Array) -> jax.Array:
    """IoU of the masks thresholded at `mask_threshold + offset` and `- offset` (SAM paper, §B).

    The high-threshold mask lies inside the low one, so the IoU is a ratio of pixel counts.
    Args:
        logits: (..., H, W) mask logits.
    Returns:
        (...) float32; NaN where both masks are empty (the reference's 0/0, filtered out).
    """
    high = pixel_count(logits > mask_threshold + offset)
    return high.astype(jnp.float32) / pixel_count(logits > mask_threshold - offset).astype(jnp.float32)


def masks_to_boxes(masks: jax.Array) -> jax.Array:
    """XYXY boxes (inclusive pixel indices, int32) around (..., H, W) bool masks; zeros if empty."""
    h, w = masks.shape[-2:]
    rows, cols = jnp.any(masks, axis=-1), jnp.any(masks, axis=-2)
    ys, xs = jnp.arange(h), jnp.arange(w)
    bottom = jnp.max(jnp.where(rows, ys, -1), axis=-1)
    top = jnp.min(jnp.where(rows, ys, h), axis=-1)
    right = jnp.max(jnp.where(cols, xs, -1), axis=-1)
    left = jnp.min(jnp.where(cols, xs, w), axis=-1)
    boxes = jnp.stack([left, top, right, bottom], axis=-1)
    return jnp.where((bottom >= top)[..., None], boxes, 0).astype(jnp.int32)


# Full-resolution logits scored per compiled loop step: 8 MB of fp32, which stays in the
# CPU's cache between the product that writes it and the compares and counts that read it.
# All at once, XLA wrote every candidate's logits plus two fp32 0/1 copies for its
# reduction library, and read them back: 192 candidates at 192x256 took 34 ms, in chunks of
# 32 candidates 13-16 ms (bit-identical).
SCORE_CHUNK_PIXELS = 2**21


def score_chunk_size(candidates: int, pixels: int) -> int:
    """Candidates per loop step: the largest power of two that divides `candidates` and
    keeps a step within `SCORE_CHUNK_PIXELS` full-resolution logits (at least 1)."""
    chunk = 1
    while candidates % (chunk * 2) == 0 and chunk * 2 * pixels <= SCORE_CHUNK_PIXELS:
        chunk *= 2
    return chunk


@functools.partial(jax.jit, static_argnames=("input_size", "crop_size", "image_size", "as_levels"))
def _upsample_and_score(
    low_res: jax.Array,
    rows: jax.Array,
    offset: jax.Array,
    input_size: tuple[int, int],
    crop_size: tuple[int, int],
    image_size: int,
    as_levels: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array] | jax.Array:
    """Selected low-res logits (rows of the flattened (N, L, L)) -> masks at the crop's size,
    their stability scores and boxes.

    That is for small L: the resize as matrix products, whose output the compares and
    counts read, a chunk of candidates at a time (`SCORE_CHUNK_PIXELS`). With `as_levels`
    (large L: the official models' 256) it returns only the first half, the resize as
    gathers of its taps with each upsampled logit written once as an int8 level (how many
    of the thresholds `mask_threshold` -/+ `offset`, offset >= 0, it exceeds), for
    `_score_levels` to finish in a second call: inside one program XLA fused the gathers
    into each count reading them (6.2 s per 192 vit_b candidates at 1024x768, against
    0.96 s for the products and 0.58 s for the two calls).
    """
    low_res = jnp.take(low_res.reshape(-1, *low_res.shape[-2:]), rows, axis=0)
    if as_levels:
        logits = transforms.postprocess_masks(low_res, input_size, crop_size, image_size, gather=True)
        thresholds = (MASK_THRESHOLD - offset, MASK_THRESHOLD, MASK_THRESHOLD + offset)
        return sum((logits > t).astype(jnp.int8) for t in thresholds)

    def score(chunk: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        logits = transforms.postprocess_masks(chunk, input_size, crop_size, image_size, gather=False)
        masks = logits > MASK_THRESHOLD
        return masks, stability_score(logits, MASK_THRESHOLD, offset), masks_to_boxes(masks)

    chunk = score_chunk_size(low_res.shape[0], crop_size[0] * crop_size[1])
    masks, stability, boxes = jax.lax.map(score, low_res.reshape(-1, chunk, *low_res.shape[1:]))
    return masks.reshape(-1, *crop_size), stability.reshape(-1), boxes.reshape(-1, 4)


@jax.jit
def _score_levels(levels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Level maps from `_upsample_and_score(..., as_levels=True)` -> masks, stability scores
    and boxes, a chunk of candidates at a time (192 vit_b candidates at 1024x768: 383 ms at
    once, 154 ms in chunks of 2)."""

    def score(chunk: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        masks = chunk >= 2
        stability = pixel_count(chunk >= 3).astype(jnp.float32) / pixel_count(chunk >= 1).astype(jnp.float32)
        return masks, stability, masks_to_boxes(masks)

    n, h, w = levels.shape
    masks, stability, boxes = jax.lax.map(score, levels.reshape(-1, score_chunk_size(n, h * w), h, w))
    return masks.reshape(n, h, w), stability.reshape(n), boxes.reshape(n, 4)


@jax.jit
def _take_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
    return jnp.take(x, rows, axis=0)


def _fetch_rows(parts: list[jax.Array], part: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Rows `row[i]` of `parts[part[i]]`, in that order, on the host: only the masks that
    pass every filter and box NMS leave the device (with every candidate passing, copying
    and concatenating all of them on the host took 0.1-0.3 s per image at 192x256)."""
    out = np.empty((len(part), *parts[0].shape[1:]), parts[0].dtype)
    for p in np.unique(part):
        where = np.flatnonzero(part == p)
        out[where] = np.asarray(_take_rows(parts[p], _padded_rows(row[where], parts[p].shape[0])))[: len(where)]
    return out


def _bucket(n: int, cap: int) -> int:
    """Pads a count to a power of two (at least 8, at most `cap`): few compiled shapes."""
    return min(max(8, 1 << (n - 1).bit_length()), max(cap, n))


def _padded_rows(rows: np.ndarray, cap: int) -> jax.Array:
    out = np.zeros(_bucket(len(rows), cap), np.int32)
    out[: len(rows)] = rows
    return jnp.asarray(out)


# ----------------------------------------------------------------------------- one crop


def _process_crop(
    params: SamParams,
    image: np.ndarray,
    crop_box: list[int],
    points01: np.ndarray,
    opts: AmgOptions,
) -> dict[str, Any]:
    """Masks of one crop that survive the thresholds, the edge filter and box NMS.

    Returns a dict of per-mask arrays in image coordinates: `rles` (list), `boxes` (N, 4) XYXY,
    `iou_preds`, `stability_score`, `points` (N, 2), `crop_boxes` (N, 4).
    """
    x0, y0, x1, y1 = crop_box
    orig_h, orig_w = image.shape[:2]
    crop = image[y0:y1, x0:x1]
    crop_size = crop.shape[:2]
    cfg = params.config
    size = cfg.image_size
    embedding = encode(params, crop)

    points = points01 * np.asarray(crop_size)[None, ::-1]  # (x, y) in crop pixels, float64
    batch = opts.points_per_batch
    n_masks = cfg.num_multimask_outputs
    n_candidates = batch * n_masks
    offset = jnp.float32(opts.stability_score_offset)
    fields = ("part", "row", "iou_preds", "stability_score", "boxes", "points")
    kept: dict[str, list[np.ndarray]] = {k: [] for k in fields}
    mask_parts: list[jax.Array] = []  # per batch, its candidates' masks, left on the device
    for start in range(0, len(points), batch):
        chunk = points[start : start + batch]
        padded = np.zeros((batch, 1, 2), np.float32)
        padded[: len(chunk), 0] = transforms.apply_coords(chunk, crop_size, size)
        tokens, src, iou_preds = _decode_tokens(params, embedding.image_embedding, padded)
        iou_np = np.asarray(iou_preds)[: len(chunk)].reshape(-1)
        point_rows = np.repeat(chunk, n_masks, axis=0)
        keep = iou_np > opts.pred_iou_thresh if opts.pred_iou_thresh > 0 else np.ones(iou_np.shape, bool)
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            continue
        # Masks only for the prompts with a candidate left, then only those candidates upsampled.
        prompts, slot = np.unique(rows // n_masks, return_inverse=True)
        every = len(prompts) == batch
        low_res = _predict_masks(params, tokens, src, None if every else _padded_rows(prompts, batch))
        picked = slot * n_masks + rows % n_masks  # the kept candidates' rows in `low_res`
        as_levels = low_res.shape[-1] >= transforms.GATHER_MIN_LOW_RES
        upsampled = _upsample_and_score(
            low_res, _padded_rows(picked, n_candidates), offset, embedding.input_size, crop_size, size, as_levels
        )
        masks, stability, boxes = _score_levels(upsampled) if as_levels else upsampled
        stability_np = np.asarray(stability)[: len(rows)]
        boxes_np = np.asarray(boxes)[: len(rows)].astype(np.int64)
        keep2 = np.ones(len(rows), bool)
        if opts.stability_score_thresh > 0:
            keep2 &= stability_np >= opts.stability_score_thresh
        keep2 &= ~amg.is_box_near_crop_edge(boxes_np, crop_box, [0, 0, orig_w, orig_h])
        sel = np.flatnonzero(keep2)
        if sel.size == 0:
            continue
        kept["part"].append(np.full(len(sel), len(mask_parts)))
        kept["row"].append(sel)
        mask_parts.append(masks)
        kept["iou_preds"].append(iou_np[rows[sel]])
        kept["stability_score"].append(stability_np[sel])
        kept["boxes"].append(boxes_np[sel])
        kept["points"].append(point_rows[rows[sel]])
    if not mask_parts:
        return _empty_crop_data()
    data = {k: np.concatenate(v) for k, v in kept.items()}
    order = amg.box_nms(data["boxes"], data["iou_preds"], opts.box_nms_thresh)
    data = {k: v[order] for k, v in data.items()}
    masks = _fetch_rows(mask_parts, data.pop("part"), data.pop("row"))
    data["rles"] = [amg.mask_to_rle(amg.uncrop_mask(m, crop_box, orig_h, orig_w)) for m in masks]
    data["boxes"] = amg.uncrop_boxes_xyxy(data["boxes"], crop_box)
    data["points"] = amg.uncrop_points(data["points"], crop_box)
    data["crop_boxes"] = np.tile(np.asarray(crop_box, np.int64), (len(order), 1))
    return data


def _empty_crop_data() -> dict[str, Any]:
    return {
        "rles": [],
        "boxes": np.zeros((0, 4), np.int64),
        "iou_preds": np.zeros(0, np.float32),
        "stability_score": np.zeros(0, np.float32),
        "points": np.zeros((0, 2), np.float64),
        "crop_boxes": np.zeros((0, 4), np.int64),
    }


def _select(data: dict[str, Any], index: np.ndarray) -> dict[str, Any]:
    return {k: [v[i] for i in index] if isinstance(v, list) else v[index] for k, v in data.items()}


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        k: [rle for p in parts for rle in p[k]] if k == "rles" else np.concatenate([p[k] for p in parts])
        for k in parts[0]
    }


def _remove_small_regions(data: dict[str, Any], min_area: int, nms_thresh: float) -> dict[str, Any]:
    """Fills small holes and removes small islands, then suppresses new duplicates, preferring
    masks that did not change (reference `postprocess_small_regions`)."""
    if not data["rles"]:
        return data
    masks, unchanged = [], []
    for rle in data["rles"]:
        mask = amg.rle_to_mask(rle)
        mask, changed_holes = amg.remove_small_regions(mask, min_area, mode="holes")
        mask, changed_islands = amg.remove_small_regions(mask, min_area, mode="islands")
        masks.append(mask)
        unchanged.append(float(not (changed_holes or changed_islands)))
    boxes = np.stack([amg.mask_to_box(m) for m in masks])
    keep = amg.box_nms(boxes, np.asarray(unchanged, np.float32), nms_thresh)
    data = {k: list(v) if isinstance(v, list) else v.copy() for k, v in data.items()}
    for i in keep:
        if unchanged[i] == 0.0:
            data["rles"][i] = amg.mask_to_rle(masks[i])
            data["boxes"][i] = boxes[i]
    return _select(data, keep)


# ----------------------------------------------------------------------------- API


def _generate(params: SamParams, image: np.ndarray, opts: AmgOptions) -> list[dict[str, Any]]:
    orig_size = image.shape[:2]
    crop_boxes, layer_idxs = amg.generate_crop_boxes(orig_size, opts.crop_n_layers, opts.crop_overlap_ratio)
    for (x0, y0, x1, y1), layer in zip(crop_boxes, layer_idxs, strict=True):
        if x1 <= x0 or y1 <= y0:
            raise ValueError(
                f"an image of {orig_size[1]}x{orig_size[0]} pixels is too small for crop_n_layers="
                f"{opts.crop_n_layers}: its layer-{layer} crops are empty; use fewer crop layers"
            )
    grids = opts.layer_point_grids()
    crops = zip(crop_boxes, layer_idxs, strict=True)
    data = _concat([_process_crop(params, image, box, grids[layer], opts) for box, layer in crops])
    if len(crop_boxes) > 1 and data["rles"]:
        # Across crops, prefer masks from smaller crops (they saw the object at a higher resolution).
        scores = 1 / amg.box_area(data["crop_boxes"]).astype(np.float32)
        data = _select(data, amg.box_nms(data["boxes"], scores, opts.crop_nms_thresh))
    if opts.min_mask_region_area > 0:
        data = _remove_small_regions(data, opts.min_mask_region_area, max(opts.box_nms_thresh, opts.crop_nms_thresh))
    return [_record(data, i, opts.output_mode) for i in range(len(data["rles"]))]


def _record(data: dict[str, Any], i: int, output_mode: str) -> dict[str, Any]:
    rle = data["rles"][i]
    if output_mode == "coco_rle":
        segmentation: Any = amg.coco_encode_rle(rle)
    elif output_mode == "binary_mask":
        segmentation = amg.rle_to_mask(rle)
    else:
        segmentation = rle
    return {
        "segmentation": segmentation,
        "area": amg.area_from_rle(rle),
        "bbox": amg.box_xyxy_to_xywh(data["boxes"][i]).tolist(),
        "predicted_iou": float(data["iou_preds"][i]),
        "point_coords": [data["points"][i].tolist()],
        "stability_score": float(data["stability_score"][i]),
        "crop_box": amg.box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
    }


def generate_masks(params: SamParams, image: Any, **options: Any) -> list[dict[str, Any]]:
    """Segments everything in an image (reference `SamAutomaticMaskGenerator.generate`).

    Args:
        params: model weights and config.
        image: (H, W, 3) uint8 RGB.
        **options: the fields of `AmgOptions` (the reference's names and defaults).
    Returns:
        A list of records, one per mask, each a dict with:
            segmentation: (H, W) bool array, or an RLE dict (`output_mode`);
            area: int, pixels in the mask;
            bbox: [x, y, w, h] of the mask (ints);
            predicted_iou: float, the model's estimate of the mask's quality;
            point_coords: [[x, y]], the prompt that produced it (image pixels);
            stability_score: float;
            crop_box: [x, y, w, h] of the crop it was found in.
        An empty list when no mask survives the filters.
    """
    return SamAutomaticMaskGenerator(params, **options).generate(image)


class SamAutomaticMaskGenerator:
    """The reference class's shape, for code being ported: options once, `generate` per image.

    Args:
        params: model weights and config (`sam_jax.load`).
        **options: the fields of `AmgOptions`.
    """

    def __init__(self, params: SamParams, **options: Any) -> None:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(AmgOptions)})
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; see sam_jax.AmgOptions for the accepted ones")
        self.params = _check_params(params)
        self.options = AmgOptions(**options)

    def generate(self, image: Any) -> list[dict[str, Any]]:
        """See `generate_masks`."""
        return _generate(self.params, check_image(image), self.options)


__all__: Sequence[str] = [
    "AmgOptions",
    "SamAutomaticMaskGenerator",
    "generate_masks",
    "masks_to_boxes",
    "stability_score",
]
