"""Binary masks as data, shared by automatic masks, evaluation, training, the demo and the
server: IoU, bounding boxes and run-length encodings (uncompressed, and COCO's compressed
form via pycocotools).

Masks are (..., H, W) bool; boxes XYXY with inclusive pixel indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def iou(pred: Any, target: Any) -> Any:
    """IoU of boolean masks over the last two axes -> (...); 1 where both are empty.

    Plain arithmetic, so numpy arrays give numpy and jax arrays (also under `jit`) give jax.
    """
    inter = (pred & target).sum(axis=(-2, -1))
    union = (pred | target).sum(axis=(-2, -1))
    empty = union == 0
    return (inter + empty) / (union + empty)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """XYXY box (inclusive pixel indices, int64) around a mask; zeros for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return np.zeros(4, np.int64)
    return np.asarray([cols[0], rows[0], cols[-1], rows[-1]], np.int64)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed RLE of an (H, W) mask, as pycocotools expects it: column-major runs,
    starting with a (possibly empty) run of zeros."""
    h, w = mask.shape
    flat = np.asarray(mask, bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [h * w]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [h, w], "counts": counts}


def placed_mask_to_rle(mask: np.ndarray, y0: int, x0: int, size: tuple[int, int]) -> dict[str, Any]:
    """Uncompressed RLE (as `mask_to_rle`) of an (h, w) mask placed with its pixel (0, 0) at
    (y0, x0) of an otherwise empty (H, W) = `size` mask, without making the (H, W) mask: the
    runs are found in the small mask and moved to their column-major place in the large one.

    Raises:
        ValueError: the placed mask does not lie inside `size`.
    """
    big_h, big_w = (int(v) for v in size)
    h, w = mask.shape
    if y0 < 0 or x0 < 0 or y0 + h > big_h or x0 + w > big_w:
        raise ValueError(f"a {w}x{h} mask at ({x0}, {y0}) does not fit in a {big_w}x{big_h} image")
    # Each column padded with a zero above and below, so no run crosses from one column into the next.
    cols = np.zeros((w, h + 2), np.int8)
    cols[:, 1:-1] = np.asarray(mask, bool).T
    change = np.diff(cols, axis=1)  # +1 where a run starts, -1 one past where it ends
    c_on, r_on = np.nonzero(change == 1)
    c_off, r_off = np.nonzero(change == -1)
    starts = (x0 + c_on).astype(np.int64) * big_h + y0 + r_on
    ends = (x0 + c_off).astype(np.int64) * big_h + y0 + r_off
    # A run that ends on the last row continues in the next column when that starts on row 0.
    joined = starts[1:] == ends[:-1]
    starts = np.concatenate([starts[:1], starts[1:][~joined]])
    ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
    bounds = np.empty(2 * len(starts) + 2, np.int64)
    bounds[0], bounds[-1] = 0, big_h * big_w
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    counts = np.diff(bounds)
    if len(counts) > 1 and counts[-1] == 0:  # ends on a run of ones: no closing run of zeros, as `mask_to_rle`
        counts = counts[:-1]
    return {"size": [big_h, big_w], "counts": counts.tolist()}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """(H, W) bool mask from an uncompressed RLE."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], np.int64)
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """COCO compressed RLE (counts as a str, so it serialises to JSON) from an uncompressed one."""
    from pycocotools import mask as mask_utils

    h, w = uncompressed_rle["size"]
    rle = mask_utils.frPyObjects(uncompressed_rle, h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def masks_to_coco_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLE (counts as a str) of (N, H, W) bool masks, straight from the bitmaps."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(np.moveaxis(np.asarray(masks), 0, -1).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in encoded]
