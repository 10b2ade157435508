"""`segment_anything.utils.amg`: the reference's helpers for automatic masks, same names,
arguments and results, over sam-jax's own (`sam_jax.amg.utils`, `sam_jax.masks`). Where the
reference takes torch tensors these take any array and return the kind given
(`compat.arrays`). The reference's `MaskData` container is not provided: `generate_masks`
returns the records it would hold.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import jax.numpy as jnp
import numpy as np

from sam_jax import masks as mask_utils
from sam_jax.amg import scoring
from sam_jax.amg import utils as amg_utils
from sam_jax.compat.arrays import as_kind, device_of, kind_of, to_numpy

build_point_grid = amg_utils.build_point_grid
build_all_layer_point_grids = amg_utils.build_all_layer_point_grids
remove_small_regions = amg_utils.remove_small_regions
rle_to_mask = mask_utils.rle_to_mask
area_from_rle = mask_utils.area_from_rle
coco_encode_rle = mask_utils.coco_encode_rle


def _same_kind(result: Any, *inputs: Any) -> Any:
    return as_kind(result, kind_of(*inputs), device_of(*inputs))


def generate_crop_boxes(
    im_size: tuple[int, ...], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY) of each layer and their layer index (the reference's lists)."""
    boxes, layers = amg_utils.generate_crop_boxes((int(im_size[0]), int(im_size[1])), n_layers, overlap_ratio)
    return [list(map(int, b)) for b in boxes], [int(i) for i in layers]


def is_box_near_crop_edge(boxes: Any, crop_box: list[int], orig_box: list[int], atol: float = 20.0) -> Any:
    """(N,) bool: boxes (crop frame) touching the crop's edge where it is not the image's."""
    return _same_kind(amg_utils.is_box_near_crop_edge(to_numpy(boxes), crop_box, orig_box, atol), boxes)


def box_xyxy_to_xywh(box_xyxy: Any) -> Any:
    return _same_kind(amg_utils.box_xyxy_to_xywh(to_numpy(box_xyxy)), box_xyxy)


def batch_iterator(batch_size: int, *args: Any) -> Generator[list[Any], None, None]:
    """Successive batches of `batch_size` items of each argument (all of one length)."""
    if not args or any(len(a) != len(args[0]) for a in args):
        raise ValueError("batch_iterator takes arguments of one length")
    for b in range(len(args[0]) // batch_size + int(len(args[0]) % batch_size != 0)):
        yield [arg[b * batch_size : (b + 1) * batch_size] for arg in args]


def mask_to_rle_pytorch(tensor: Any) -> list[dict[str, Any]]:
    """(B, H, W) masks -> their uncompressed RLEs (column-major, as pycocotools)."""
    return [mask_utils.mask_to_rle(m) for m in np.asarray(to_numpy(tensor), bool)]


def calculate_stability_score(masks: Any, mask_threshold: float, threshold_offset: float) -> Any:
    """(..., H, W) logits -> (...) IoU of the masks thresholded at threshold +- offset."""
    return _same_kind(scoring.stability_score(jnp.asarray(to_numpy(masks)), mask_threshold, threshold_offset), masks)


def uncrop_boxes_xyxy(boxes: Any, crop_box: list[int]) -> Any:
    return _same_kind(amg_utils.uncrop_boxes_xyxy(to_numpy(boxes), crop_box), boxes)


def uncrop_points(points: Any, crop_box: list[int]) -> Any:
    return _same_kind(amg_utils.uncrop_points(to_numpy(points), crop_box), points)


def uncrop_masks(masks: Any, crop_box: list[int], orig_h: int, orig_w: int) -> Any:
    """(..., h, w) crop masks placed in zero (..., orig_h, orig_w) masks."""
    arr = to_numpy(masks)
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    out = np.zeros((*arr.shape[:-2], orig_h, orig_w), arr.dtype)
    out[..., y0:y1, x0:x1] = arr
    return _same_kind(out, masks)


def batched_mask_to_box(masks: Any) -> Any:
    """(..., H, W) bool masks -> (..., 4) XYXY boxes of inclusive pixel indices; zeros if empty."""
    boxes = np.asarray(scoring.masks_to_boxes(jnp.asarray(to_numpy(masks), bool))).astype(np.int64)
    return _same_kind(boxes, masks)


__all__ = [
    "area_from_rle",
    "batch_iterator",
    "batched_mask_to_box",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "calculate_stability_score",
    "coco_encode_rle",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_rle_pytorch",
    "remove_small_regions",
    "rle_to_mask",
    "uncrop_boxes_xyxy",
    "uncrop_masks",
    "uncrop_points",
]
