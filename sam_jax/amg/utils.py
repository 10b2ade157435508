"""Host-side pieces of automatic mask generation (reference `utils/amg.py`).

Point grids, crop boxes, box non-maximum suppression and small-region clean-up, in numpy
(and scipy where it serves). The device-side work (decoding, upsampling, stability scores,
boxes of masks) lives in `sam_jax.amg.scoring`, run-length encoding in `sam_jax.masks`.

Boxes are XYXY unless a name says XYWH; masks are (H, W) bool.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
from scipy import ndimage

# ----------------------------------------------------------------------------- prompts and crops


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) points (x, y) evenly spaced in [0, 1]^2, at the centres of an n x n grid."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has `n_per_side / scale_per_layer**i` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY, ints) and their layer indices: the whole image, then (2^i)^2 per layer i.

    Neighbouring crops of layer i overlap by `overlap_ratio * short_side * 2 / 2^i` pixels.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops)

    for i_layer in range(n_layers):
        n_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_per_side))
        crop_w = crop_len(im_w, n_per_side, overlap)
        crop_h = crop_len(im_h, n_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_per_side)]
        # x-major order, as the reference (it decides the order of equal-scored crops in NMS).
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def first_empty_crop_layer(im_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> int | None:
    """The first layer whose crops (`generate_crop_boxes`) include an empty one, or None;
    found from each layer's first and last crop, without making the 4**i boxes of a layer."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    for i_layer in range(n_layers):
        n_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_per_side))
        for length in (im_w, im_h):
            crop = math.ceil((overlap * (n_per_side - 1) + length) / n_per_side)
            # x0 = (crop - overlap) * i is linear in i: its ends decide whether some crop is empty.
            for i in (0, n_per_side - 1):
                x0 = int((crop - overlap) * i)
                if min(x0 + crop, length) <= x0:
                    return i_layer + 1
    return None


def is_box_near_crop_edge(
    boxes: np.ndarray, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> np.ndarray:
    """(N,) bool: boxes (crop coordinates) that touch the crop's edge where it is not the image's.

    Such masks are likely cut by the crop; another crop sees the whole object.
    """
    crop = np.asarray(crop_box, np.float32)
    orig = np.asarray(orig_box, np.float32)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).astype(np.float32)
    near_crop = np.abs(boxes - crop[None]) <= atol
    near_image = np.abs(boxes - orig[None]) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def uncrop_boxes_xyxy(boxes: np.ndarray, crop_box: list[int]) -> np.ndarray:
    x0, y0 = crop_box[:2]
    return boxes + np.asarray([x0, y0, x0, y0], dtype=boxes.dtype)


def uncrop_points(points: np.ndarray, crop_box: list[int]) -> np.ndarray:
    return points + np.asarray(crop_box[:2], dtype=points.dtype)


def uncrop_mask(mask: np.ndarray, crop_box: list[int], orig_h: int, orig_w: int) -> np.ndarray:
    """A crop's (h, w) mask placed in a zero (orig_h, orig_w) mask."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return mask
    out = np.zeros((orig_h, orig_w), dtype=mask.dtype)
    out[y0:y1, x0:x1] = mask
    return out


def box_xyxy_to_xywh(box: np.ndarray) -> np.ndarray:
    box = np.array(box, copy=True)
    box[..., 2] -= box[..., 0]
    box[..., 3] -= box[..., 1]
    return box


def box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# ----------------------------------------------------------------------------- suppression


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression (torchvision `nms`): indices kept, by decreasing score.

    A box is dropped when its IoU with a kept higher-scoring box exceeds `iou_threshold`.
    float32 arithmetic as torchvision's CPU kernel, so borderline IoUs decide alike. Ties in
    score keep their input order (torchvision's order among ties is unspecified).
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    boxes = np.asarray(boxes, np.float32)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            continue
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for empty boxes: NaN, kept as torchvision
            iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > np.float32(iou_threshold)]] = True
    return np.asarray(keep, np.int64)


# ----------------------------------------------------------------------------- clean-up


_EIGHT_CONNECTED = np.ones((3, 3), bool)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fills holes (`mode="holes"`) or removes islands (`"islands"`) smaller than `area_thresh`.

    8-connected components, as the reference's `cv2.connectedComponentsWithStats(..., 8)`.
    When every island is small, the largest is kept. Returns (mask, whether it changed).
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working = np.logical_xor(correct_holes, mask)
    regions, n = ndimage.label(working, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0, *small]
    if not correct_holes:
        fill = [i for i in range(n + 1) if i not in fill]
        if not fill:  # every island is small: keep the largest
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True
