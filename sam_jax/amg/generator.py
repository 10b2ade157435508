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

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import masks as mask_utils
from sam_jax import transforms, vectors
from sam_jax.amg import scoring, utils
from sam_jax.amg.options import AmgOptions, options_from
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import check_image, check_params, encode, hq_features


def _process_crop(
    params: SamParams,
    image: np.ndarray,
    crop_box: list[int],
    points01: np.ndarray,
    opts: AmgOptions,
    multimask_output: bool = True,
    batch_done: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Masks of one crop that survive the thresholds, the edge filter and box NMS.
    `batch_done` is called after each batch of points (its results on the host).

    Returns a dict of per-mask arrays in image coordinates: `rles` (list), `boxes` (N, 4) XYXY,
    `iou_preds`, `stability_score`, `points` (N, 2), `crop_boxes` (N, 4).
    """
    x0, y0, x1, y1 = crop_box
    orig_h, orig_w = image.shape[:2]
    crop = image[y0:y1, x0:x1]
    crop_size = crop.shape[:2]
    cfg = params.config
    size = cfg.image_size
    embedding = encode(params, crop, prepare=False)  # decoded in batches

    points = points01 * np.asarray(crop_size)[None, ::-1]  # (x, y) in crop pixels, float64
    batch = opts.points_per_batch
    n_masks = scoring.candidates_per_prompt(cfg, multimask_output)
    hq = hq_features(params, embedding)  # once per crop, for every batch of points (SAM-HQ)
    n_candidates = batch * n_masks
    offset = jnp.float32(opts.stability_score_offset)
    fields = ("part", "row", "iou_preds", "stability_score", "boxes", "points")
    kept: dict[str, list[np.ndarray]] = {k: [] for k in fields}
    mask_parts: list[jax.Array] = []  # per batch, its candidates' masks, left on the device
    for i, start in enumerate(range(0, len(points), batch)):
        if batch_done is not None and i:  # the batch before this one is done (its loop may `continue`)
            batch_done()
        chunk = points[start : start + batch]
        padded = np.zeros((batch, 1, 2), np.float32)
        padded[: len(chunk), 0] = transforms.apply_coords(chunk, crop_size, size, params.config.coordinate_scale)
        tokens, src, every_iou, iou_preds = scoring.decode_tokens(
            params, embedding.image_embedding, padded, multimask_output
        )
        iou_np = np.asarray(iou_preds)[: len(chunk)].reshape(-1)
        point_rows = np.repeat(chunk, n_masks, axis=0)
        keep = iou_np > opts.pred_iou_thresh if opts.pred_iou_thresh > 0 else np.ones(iou_np.shape, bool)
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            continue
        # Masks only for the prompts with a candidate left, then only those candidates upsampled.
        prompts, slot = np.unique(rows // n_masks, return_inverse=True)
        every = len(prompts) == batch
        rows_of = None if every else scoring.padded_rows(prompts, batch)
        low_res = scoring.predict_masks(params, tokens, src, rows_of, every_iou, hq, multimask_output)
        picked = slot * n_masks + rows % n_masks  # the kept candidates' rows in `low_res`
        as_levels = low_res.shape[-1] >= transforms.GATHER_MIN_LOW_RES
        upsampled = scoring.upsample_and_score(
            low_res, scoring.padded_rows(picked, n_candidates), offset, embedding.input_size, crop_size, size, as_levels
        )
        masks, stability, boxes = scoring.score_levels(upsampled) if as_levels else upsampled
        stability_np = np.asarray(stability)[: len(rows)]
        boxes_np = np.asarray(boxes)[: len(rows)].astype(np.int64)
        keep2 = np.ones(len(rows), bool)
        if opts.stability_score_thresh > 0:
            keep2 &= stability_np >= opts.stability_score_thresh
        keep2 &= ~utils.is_box_near_crop_edge(boxes_np, crop_box, [0, 0, orig_w, orig_h])
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
    if batch_done is not None and len(points):
        batch_done()
    if not mask_parts:
        return _empty_crop_data()
    data: dict[str, Any] = {k: np.concatenate(v) for k, v in kept.items()}
    order = utils.box_nms(data["boxes"], data["iou_preds"], opts.box_nms_thresh)
    data = {k: v[order] for k, v in data.items()}
    masks = scoring.fetch_rows(mask_parts, data.pop("part"), data.pop("row"))
    data["rles"] = [mask_utils.mask_to_rle(utils.uncrop_mask(m, crop_box, orig_h, orig_w)) for m in masks]
    data["boxes"] = utils.uncrop_boxes_xyxy(data["boxes"], crop_box)
    data["points"] = utils.uncrop_points(data["points"], crop_box)
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
        mask = mask_utils.rle_to_mask(rle)
        mask, changed_holes = utils.remove_small_regions(mask, min_area, mode="holes")
        mask, changed_islands = utils.remove_small_regions(mask, min_area, mode="islands")
        masks.append(mask)
        unchanged.append(float(not (changed_holes or changed_islands)))
    boxes = np.stack([mask_utils.mask_to_box(m) for m in masks])
    keep = utils.box_nms(boxes, np.asarray(unchanged, np.float32), nms_thresh)
    data = {k: list(v) if isinstance(v, list) else v.copy() for k, v in data.items()}
    for i in keep:
        if unchanged[i] == 0.0:
            data["rles"][i] = mask_utils.mask_to_rle(masks[i])
            data["boxes"][i] = boxes[i]
    return _select(data, keep)


# ----------------------------------------------------------------------------- API


def generate(
    params: SamParams,
    image: np.ndarray,
    opts: AmgOptions,
    multimask_output: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """`generate_masks` with checked arguments: an (H, W, 3) uint8 image and `AmgOptions`
    (for callers that check once and run many images, as the batch job does).
    `multimask_output=False` takes each point's single-mask output (`segment_anything_hq`'s
    generator has the switch; SAM's always takes the multimask outputs).
    `progress(done, total)` is called with the batches of points decoded so far over all
    crops; an exception it raises stops the work there (how a server cancels it)."""
    orig_size = image.shape[:2]
    cfg = params.config
    opts.check_memory(cfg.embedding_size, cfg.prompt_embed_dim, cfg.low_res_mask_size)
    layer = utils.first_empty_crop_layer(orig_size, opts.crop_n_layers, opts.crop_overlap_ratio)
    if layer is not None:  # found from the layers' sizes, before any crop box is made
        raise ValueError(
            f"an image of {orig_size[1]}x{orig_size[0]} pixels is too small for crop_n_layers="
            f"{opts.crop_n_layers}: its layer-{layer} crops are empty; use fewer crop layers"
        )
    crop_boxes, layer_idxs = utils.generate_crop_boxes(orig_size, opts.crop_n_layers, opts.crop_overlap_ratio)
    grids = opts.layer_point_grids()
    crops = list(zip(crop_boxes, layer_idxs, strict=True))
    batch_done: Callable[[], None] | None = None
    if progress is not None:
        report = progress
        total = sum(math.ceil(len(grids[layer]) / opts.points_per_batch) for _, layer in crops)
        done = [0]

        def tick() -> None:
            done[0] += 1
            report(done[0], total)

        batch_done = tick
        report(0, total)
    parts = [
        _process_crop(params, image, box, grids[layer], opts, multimask_output, batch_done) for box, layer in crops
    ]
    data = _concat(parts)
    if any(not part["rles"] for part in parts):
        # The reference makes an empty crop's boxes `torch.tensor([])`, a float tensor: joined
        # to the others it turns every crop box into floats, which its records and
        # `metadata.csv` then show ("0.0,0.0,800.0,534.0"). The same values, the same types.
        data["crop_boxes"] = np.asarray(data["crop_boxes"], np.float32)
    if len(crop_boxes) > 1 and data["rles"]:
        # Across crops, prefer masks from smaller crops (they saw the object at a higher resolution).
        scores = 1 / utils.box_area(data["crop_boxes"]).astype(np.float32)
        data = _select(data, utils.box_nms(data["boxes"], scores, opts.crop_nms_thresh))
    if opts.min_mask_region_area > 0:
        data = _remove_small_regions(data, opts.min_mask_region_area, max(opts.box_nms_thresh, opts.crop_nms_thresh))
    return [_record(data, i, opts.output_mode) for i in range(len(data["rles"]))]


def _record(data: dict[str, Any], i: int, output_mode: str) -> dict[str, Any]:
    rle = data["rles"][i]
    if output_mode == "coco_rle":
        segmentation: Any = mask_utils.coco_encode_rle(rle)
    elif output_mode == "binary_mask":
        segmentation = mask_utils.rle_to_mask(rle)
    elif output_mode == "polygons":
        segmentation = {"size": rle["size"], "polygons": vectors.mask_to_polygons(mask_utils.rle_to_mask(rle))}
    elif output_mode == "geojson":
        polygons = vectors.mask_to_polygons(mask_utils.rle_to_mask(rle))
        segmentation = vectors.polygons_to_geojson_geometry(polygons)
    else:
        segmentation = rle
    return {
        "segmentation": segmentation,
        "area": mask_utils.area_from_rle(rle),
        "bbox": utils.box_xyxy_to_xywh(data["boxes"][i]).tolist(),
        "predicted_iou": float(data["iou_preds"][i]),
        "point_coords": [data["points"][i].tolist()],
        "stability_score": float(data["stability_score"][i]),
        "crop_box": utils.box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
    }


def generate_masks(
    params: SamParams, image: Any, *, progress: Callable[[int, int], None] | None = None, **options: Any
) -> list[dict[str, Any]]:
    """Segments everything in an image (reference `SamAutomaticMaskGenerator.generate`).

    Args:
        params: model weights and config.
        image: (H, W, 3) uint8 RGB.
        progress: called as `progress(done, total)` with the batches of points decoded so
            far (first with done 0); an exception it raises stops the work and propagates.
        **options: the fields of `AmgOptions` (the reference's names and defaults).
    Returns:
        A list of records, one per mask, each a dict with:
            segmentation: (H, W) bool array, an RLE dict, polygons or a GeoJSON geometry
                (`output_mode`; `sam_jax.vectors.records_to_geojson` takes any of them);
            area: int, pixels in the mask;
            bbox: [x, y, w, h] of the mask (ints);
            predicted_iou: float, the model's estimate of the mask's quality;
            point_coords: [[x, y]], the prompt that produced it (image pixels);
            stability_score: float;
            crop_box: [x, y, w, h] of the crop it was found in.
        An empty list when no mask survives the filters.
    """
    return generate(check_params(params), check_image(image), options_from(kwargs=options), progress=progress)
