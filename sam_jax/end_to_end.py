"""Several images of different sizes with their prompts, end to end (reference `Sam.forward`).

`forward(params, records)` takes raw images with prompts in their own pixels; `encode_images`
is its encoder step for images that are already resized (the reference's record format,
`sam_jax.compat.Sam.__call__`). All images go through the encoder in one compiled call on a
padded (B, S, S, 3) stack with each image's resized size; then each image's prompts are
decoded in one call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from sam_jax import transforms
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import ImageEmbedding, check_image, check_params, check_prompts, decode, encode_padded

# The reference's record keys for prompts, and the `decode` argument each one is.
PROMPT_KEYS = {"point_coords": "points", "point_labels": "labels", "boxes": "box", "mask_inputs": "mask_input"}


def check_records(records: Any, name: str) -> list[dict[str, Any]]:
    """`records` as a list of dicts; raises naming `name` unless it is a non-empty sequence of dicts."""
    if isinstance(records, dict) or not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise TypeError(f"{name} must be a list of dicts, one per image, got {type(records).__name__}")
    if not records:
        raise ValueError(f"{name} must hold at least one image record, got an empty list")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"{name}[{i}] must be a dict with an 'image' and prompts, got {type(record).__name__}")
        if "image" not in record:
            raise ValueError(f"{name}[{i}] has no 'image'")
    return list(records)


def record_prompts(record: dict[str, Any]) -> dict[str, Any]:
    """A record's prompts as `decode` keyword arguments (absent ones None)."""
    return {arg: record.get(key) for key, arg in PROMPT_KEYS.items()}


def check_record_prompts(params: SamParams, record: dict[str, Any], where: str) -> bool:
    """Checks a record's prompts as `decode` would, naming the record and its keys.

    Returns:
        Whether the prompts are batched ((B, N, 2) points, (B, 4) boxes, ...).
    """
    prompts = record_prompts(record)
    try:
        batched, *_ = check_prompts(
            prompts["points"], prompts["labels"], prompts["box"], prompts["mask_input"], params.config.low_res_mask_size
        )
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}: {rename_prompt_error(str(e))}") from None
    return batched


def rename_prompt_error(message: str) -> str:
    """A `check_prompts` message with the reference's record keys in place of `decode`'s names."""
    return rename_arguments(message, {v: k for k, v in PROMPT_KEYS.items()})


def rename_arguments(message: str, names: dict[str, str]) -> str:
    """`message` with each whole word that is a key of `names` replaced by its value."""
    return re.sub(r"\b(" + "|".join(map(re.escape, names)) + r")\b", lambda m: names[m.group(1)], message)


def encode_images(
    params: SamParams, images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]]
) -> list[ImageEmbedding]:
    """Encodes resized images of different sizes in one compiled call.

    Args:
        params: model weights and config.
        images: (h, w, 3) arrays with h, w <= the model's image size, uint8 (or float
            with values in 0..255), already resized (`transforms.resize_to_model`).
        original_sizes: each image's (H, W) before resizing (where its masks are returned).
    Returns:
        One `ImageEmbedding` per image, (E, E, C) each.
    """
    size = params.config.image_size
    padded = np.stack([transforms.pad_to_square(np.asarray(im), size) for im in images])
    input_hw = np.asarray([im.shape[:2] for im in images], np.int32)
    embeddings, early = encode_padded(params, padded, input_hw)
    return [
        ImageEmbedding(
            embeddings[i], (int(h), int(w)), (int(im.shape[0]), int(im.shape[1])), None if early is None else early[i]
        )
        for i, (im, (h, w)) in enumerate(zip(images, original_sizes, strict=True))
    ]


def forward(params: SamParams, records: Any, multimask_output: bool = True) -> list[dict[str, jax.Array]]:
    """Masks for several images of any sizes and their prompts (reference `Sam.forward` on raw images).

    Args:
        params: model weights and config.
        records: one dict per image, the reference's keys:
            image: (H, W, 3) uint8 RGB, each image its own size;
            point_coords: (N, 2) or (B, N, 2) pixel (x, y) in this image;
            point_labels: (N,) or (B, N), 1 foreground, 0 background (default all 1);
            boxes: (4,) or (B, 4) XYXY in this image's pixels;
            mask_inputs: (1, L, L) or (B, 1, L, L) low-res logits from an earlier call.
            At least one prompt per image; other keys are ignored (as the reference does).
        multimask_output: return 3 masks per prompt (else 1).
    Returns:
        One dict per image, as `decode` returns for its prompts (batched prompts give the
        batch axis): masks (C, H, W) or (B, C, H, W) bool, iou_predictions (C,) or (B, C),
        low_res_logits (C, L, L) or (B, C, L, L).
    """
    params = check_params(params)
    records = check_records(records, "records")
    images = []
    for i, record in enumerate(records):
        try:
            images.append(check_image(record["image"]))
        except (ValueError, TypeError) as e:
            raise type(e)(f"records[{i}]: {e}") from None
        check_record_prompts(params, record, f"records[{i}]")
    if not isinstance(multimask_output, (bool, np.bool_)):
        raise TypeError(f"multimask_output must be True or False, got {multimask_output!r}")
    resized = [transforms.resize_to_model(im, params.config) for im in images]
    embeddings = encode_images(params, resized, [im.shape[:2] for im in images])
    outputs = []
    for record, embedding in zip(records, embeddings, strict=True):
        masks, scores, low_res = decode(params, embedding, **record_prompts(record), multimask_output=multimask_output)
        outputs.append({"masks": masks, "iou_predictions": scores, "low_res_logits": low_res})
    return outputs
