"""Interactive-segmentation quality: mean IoU from one point, from a box, and after k
correction clicks, measured through the public predictor at full image resolution.

Protocol (as in SAM's and RITM's evaluations): the first click is the mask's most
interior pixel (the maximum of its distance transform); each correction click is the most
interior pixel of the current error region, foreground if it lies in the ground truth and
background otherwise, with the previous low-res logits fed back as `mask_input`. From one
point the highest-scoring of the multimask outputs is taken; a box and later clicks use
the single-mask output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from scipy import ndimage

from sam_jax.masks import iou, mask_to_box
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import ImageEmbedding, check_params, decode, encode

# Instances covering less than this fraction of their image are "small" (at 128 x 128: under
# 164 pixels, a disc of at most 14 pixels across), reported on their own.
SMALL_AREA = 0.01


def interior_point(region: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel farthest from the region's boundary (image edges count as boundary)."""
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """XYXY box of a mask, inclusive pixel coordinates (as the reference's `batched_mask_to_box`)."""
    return mask_to_box(mask).astype(np.float64)


class EvaluationEmbeddings:
    """Held-out images' embeddings kept from one evaluation to the next while the image
    encoder is the same arrays (frozen during training): later evaluations then run only
    the prompt encoder and the decoder. A new encoder (other arrays, another compute dtype)
    empties it; an image is looked up by its pixels' digest, never by its position alone.
    Up to `max_bytes` of embeddings are kept, where `encode` put them.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.encoder: tuple[Any, ...] = ()
        self.kept: dict[tuple[tuple[int, ...], str, bytes], ImageEmbedding] = {}
        self.computed = 0

    def __call__(self, params: SamParams, image: np.ndarray) -> ImageEmbedding:
        """`encode(params, image)`, or the copy kept for this image and encoder."""
        encoder = (params.compute_dtype, *jax.tree.leaves(params.weights["image_encoder"]))
        if len(encoder) != len(self.encoder) or any(a is not b for a, b in zip(encoder, self.encoder, strict=True)):
            self.encoder, self.kept = encoder, {}
        image = np.ascontiguousarray(image)
        key = (image.shape, image.dtype.str, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        kept = self.kept.get(key)
        if kept is None:
            kept = encode(params, image, prepare=False)
            self.computed += 1
            arrays = (kept.image_embedding, kept.early_features)
            if self.kept_bytes + sum(a.nbytes for a in arrays if a is not None) <= self.max_bytes:
                self.kept[key] = kept
        # A new object each time: what decoding keeps on an embedding belongs to the decoder
        # of one evaluation, not the next.
        return ImageEmbedding(kept.image_embedding, kept.original_size, kept.input_size, kept.early_features)

    @property
    def kept_bytes(self) -> int:
        arrays = [a for e in self.kept.values() for a in (e.image_embedding, e.early_features)]
        return sum(a.nbytes for a in arrays if a is not None)


def evaluate(
    params: SamParams,
    dataset: Any,
    num_images: int = 200,
    clicks: Sequence[int] = (3,),
    embeddings: EvaluationEmbeddings | None = None,
) -> dict[str, float]:
    """Mean IoU over every instance of the first `num_images` samples of `dataset`.

    Args:
        params: the model.
        dataset: `len()` and `[i] -> Sample` with `.image` (H, W, 3) uint8, `.masks` (K, H, W) bool.
        num_images: how many samples (from the start) to use.
        clicks: numbers of correction clicks after the first point to report.
        embeddings: where the images' embeddings are kept between evaluations (periodic
            evaluations during training with a frozen image encoder); None: encode each.
    Returns:
        {"point_miou", "box_miou", "click{k}_miou" for each k, "instances", and over the
        instances covering less than `SMALL_AREA` of their image: "small_point_miou",
        "small_box_miou", "small_instances" (NaN figures when there are none)}.
    """
    params = check_params(params)
    point: list[float] = []
    box: list[float] = []
    after: dict[int, list[float]] = {k: [] for k in clicks}
    small: list[bool] = []
    rounds = max(clicks, default=0)
    for i in range(min(num_images, len(dataset))):
        sample = dataset[i]
        gt = np.asarray(sample.masks, bool)
        if len(gt) == 0:
            continue
        small.extend(gt.sum(axis=(1, 2)) < SMALL_AREA * gt[0].size)
        # prepare=False: decoded in batches of prompts, not clicks (so is a kept embedding)
        emb = encode(params, sample.image, prepare=False) if embeddings is None else embeddings(params, sample.image)
        pts = np.array([[interior_point(m)] for m in gt])  # (K, 1, 2)
        labels = np.ones(pts.shape[:2], np.int32)
        masks, scores, low = (np.asarray(a) for a in decode(params, emb, pts, labels))
        best = np.argmax(scores, axis=1)
        pred = masks[np.arange(len(gt)), best]
        point.extend(iou(pred, gt))
        box_masks, _, _ = decode(params, emb, box=np.stack([tight_box(m) for m in gt]), multimask_output=False)
        box.extend(iou(np.asarray(box_masks)[:, 0], gt))
        logits = low[np.arange(len(gt)), best][:, None]
        for r in range(1, rounds + 1):
            new_pts, new_labels = [], []
            for k in range(len(gt)):
                error = pred[k] ^ gt[k]
                if error.any():
                    x, y = interior_point(error)
                    new_pts.append([x, y])
                    new_labels.append(1 if gt[k][int(y), int(x)] else 0)
                else:  # already perfect: a padding point keeps the batch rectangular
                    new_pts.append([0.0, 0.0])
                    new_labels.append(-1)
            pts = np.concatenate([pts, np.array(new_pts)[:, None]], axis=1)
            labels = np.concatenate([labels, np.array(new_labels)[:, None]], axis=1)
            masks, _, low = (
                np.asarray(a) for a in decode(params, emb, pts, labels, mask_input=logits, multimask_output=False)
            )
            pred, logits = masks[:, 0], low
            if r in after:
                after[r].extend(iou(pred, gt))
    out = {"point_miou": float(np.mean(point)), "box_miou": float(np.mean(box))}
    out |= {f"click{k}_miou": float(np.mean(v)) for k, v in after.items()}
    out["instances"] = float(len(point))
    is_small = np.asarray(small, bool)
    for name, values in (("small_point_miou", point), ("small_box_miou", box)):
        out[name] = float(np.mean(np.asarray(values)[is_small])) if is_small.any() else float("nan")
    out["small_instances"] = float(is_small.sum())
    return out


def evaluate_automatic(
    params: SamParams, dataset: Any, num_images: int = 50, match_iou: float = 0.5, **options: Any
) -> dict[str, float]:
    """How well "segment everything" finds the instances of labelled scenes.

    Each ground-truth instance is matched to its best-overlapping generated mask; it is
    found when that IoU is at least `match_iou`.

    Args:
        params: the model.
        dataset: as for `evaluate`.
        num_images: how many samples (from the start) to use.
        match_iou: least IoU for an instance to count as found.
        **options: `sam_jax.AmgOptions` fields (the reference's defaults otherwise).
    Returns:
        {"masks_per_image", "instances_per_image", "recall" (instances found), "precision"
        (generated masks that match some instance at `match_iou`), "found_miou" (mean
        best IoU over every instance, 0 where nothing overlaps)}.
    """
    from sam_jax.amg import generate_masks  # the AMG stack only when asked for

    masks_made = instances = found = matched = 0
    best_ious: list[float] = []
    for i in range(min(num_images, len(dataset))):
        sample = dataset[i]
        gt = np.asarray(sample.masks, bool)
        records = generate_masks(params, sample.image, **options)
        pred = np.array([r["segmentation"] for r in records], bool).reshape(len(records), *gt.shape[1:])
        masks_made += len(pred)
        instances += len(gt)
        if len(gt) == 0 or len(pred) == 0:
            best_ious.extend([0.0] * len(gt))
            continue
        # Every (instance, mask) pair as one product: no (K, M, H, W) array, whatever the image size.
        inter = np.einsum("khw,mhw->km", gt.astype(np.float32), pred.astype(np.float32))
        union = gt.sum(axis=(1, 2))[:, None] + pred.sum(axis=(1, 2))[None, :] - inter
        pair_iou = inter / np.maximum(union, 1.0)
        best = pair_iou.max(axis=1)
        best_ious.extend(best)
        found += int((best >= match_iou).sum())
        matched += int((pair_iou.max(axis=0) >= match_iou).sum())
    n = max(min(num_images, len(dataset)), 1)
    return {
        "masks_per_image": masks_made / n,
        "instances_per_image": instances / n,
        "recall": found / max(instances, 1),
        "precision": matched / max(masks_made, 1),
        "found_miou": float(np.mean(best_ious)) if best_ious else float("nan"),
    }
