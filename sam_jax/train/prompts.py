"""Prompts simulated from ground-truth masks, on the device: a random foreground point or a
noisy box first, then correction clicks sampled from the error region (paper, appendix A)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sam_jax import transforms
from sam_jax.modeling.prompt_encoder import LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_PADDING

# ----------------------------------------------------------------------------- prompt simulation


def upsample_logits(logits: jax.Array, factor: int) -> jax.Array:
    """(..., L, L) low-res logits -> (..., L * factor, L * factor), bilinear as the
    predictor's `postprocess_masks` (torch `F.interpolate`, align_corners=False)."""
    if factor == 1:
        return logits
    side = logits.shape[-1] * factor  # a square input frame of that side, nothing to crop
    # Products: the losses read the result several times, and their gradient is a product
    # too (a gather's is a scatter-add).
    return transforms.postprocess_masks(logits, (side, side), (side, side), side, gather=False)


def _cell_to_input(cells: jax.Array, jitter: jax.Array, scale: float) -> jax.Array:
    """Low-res cell (row, col) plus jitter in [0, 1) -> input-frame pixel (x, y)."""
    return (cells[..., ::-1].astype(jnp.float32) + jitter) * scale


def sample_points_from(key: jax.Array, region: jax.Array, image_size: int) -> tuple[jax.Array, jax.Array]:
    """One point per mask, uniform over the mask's cells.

    Args:
        region: (N, L, L) bool.
    Returns:
        points (N, 2) input-frame (x, y); found (N,) False where the region is empty.
    """
    n, side, _ = region.shape
    k_idx, k_jit = jax.random.split(key)
    flat = region.reshape(n, -1)
    logits = jnp.where(flat, 0.0, -jnp.inf)
    idx = jax.random.categorical(k_idx, jnp.where(flat.any(axis=1, keepdims=True), logits, 0.0), axis=-1)
    cells = jnp.stack([idx // side, idx % side], axis=-1)
    points = _cell_to_input(cells, jax.random.uniform(k_jit, (n, 2)), image_size / side)
    return points, flat.any(axis=1)


def noisy_boxes(key: jax.Array, target: jax.Array, image_size: int) -> jax.Array:
    """Tight boxes of (N, L, L) masks in the input frame, each coordinate perturbed by noise
    with std 10% of the box side, at most 20 pixels (paper appendix A) -> (N, 4) XYXY."""
    side = target.shape[-1]
    scale = image_size / side
    rows, cols = target.any(axis=2), target.any(axis=1)
    idx = jnp.arange(side)
    y0 = jnp.min(jnp.where(rows, idx, side), axis=1)
    y1 = jnp.max(jnp.where(rows, idx + 1, 0), axis=1)
    x0 = jnp.min(jnp.where(cols, idx, side), axis=1)
    x1 = jnp.max(jnp.where(cols, idx + 1, 0), axis=1)
    box = jnp.stack([x0, y0, x1, y1], axis=-1).astype(jnp.float32) * scale
    side_wh = jnp.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]] * 2, axis=-1)
    std = jnp.minimum(0.1 * side_wh, 20.0)
    box = box + jax.random.normal(key, box.shape) * std
    return jnp.clip(box, 0, image_size)


def correction_click(
    key: jax.Array, pred: jax.Array, target: jax.Array, image_size: int
) -> tuple[jax.Array, jax.Array]:
    """The next click: uniform over the error region, foreground on a miss, background on a spill.

    Args:
        pred, target: (N, L, L) bool.
    Returns:
        points (N, 1, 2), labels (N, 1) (-1, a padding point, where there is no error).
    """
    error = pred ^ target
    points, found = sample_points_from(key, error, image_size)
    side = target.shape[-1]
    cells = jnp.clip((points[:, ::-1] / (image_size / side)).astype(jnp.int32), 0, side - 1)
    on_target = target[jnp.arange(target.shape[0]), cells[:, 0], cells[:, 1]]
    labels = jnp.where(on_target, LABEL_FOREGROUND, LABEL_BACKGROUND)
    labels = jnp.where(found, labels, LABEL_PADDING)
    return points[:, None], labels[:, None].astype(jnp.int32)
