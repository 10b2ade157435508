"""The device side of automatic masks: the decoder's two stages on a batch of points, and
the upsampling, stability scores and boxes of the candidates that pass the IoU filter,
computed where the logits are and copied out only for the masks that survive."""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import transforms
from sam_jax.config import SamConfig
from sam_jax.modeling.mask_decoder import select_outputs
from sam_jax.modeling.mask_decoder_hq import best_multimask_output
from sam_jax.modeling.sam import (
    SamParams,
    mask_decoder_masks,
    mask_decoder_tokens,
    prompt_encoder_forward,
    select_masks,
)
from sam_jax.predictor import MASK_THRESHOLD


def candidates_per_prompt(config: SamConfig, multimask_output: bool = True) -> int:
    """Masks each point prompt proposes: SAM's multimask outputs (or its single one), SAM-HQ's one."""
    return config.num_multimask_outputs if multimask_output and not config.hq else 1


@functools.partial(jax.jit, static_argnames="multimask_output")
def decode_tokens(
    params: SamParams, image_embedding: jax.Array, points: jax.Array, multimask_output: bool = True
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(B, 1, 2) foreground points on one (E, E, C) embedding -> the decoder's first stage:
    mask tokens, image tokens, every output's IoU (B, T), and the candidates' (B, M) (the
    multimask outputs or the single one; SAM-HQ: the best multimask output, whose mask goes
    with its HQ mask, or the single one)."""
    labels = jnp.ones(points.shape[:2], jnp.int32)
    sparse, dense, dense_pe = prompt_encoder_forward(params, points, labels, None, None)
    tokens, src, iou_pred = mask_decoder_tokens(params, image_embedding[None], dense_pe, sparse, dense)
    if params.config.hq and multimask_output:
        return tokens, src, iou_pred, best_multimask_output(iou_pred)[1]
    return tokens, src, iou_pred, select_outputs(iou_pred, multimask_output)


@functools.partial(jax.jit, static_argnames="multimask_output")
def predict_masks(
    params: SamParams,
    tokens: jax.Array,
    src: jax.Array,
    prompts: jax.Array | None,
    iou_pred: jax.Array,
    hq: jax.Array | None = None,
    multimask_output: bool = True,
) -> jax.Array:
    """The decoder's second stage for the prompts at rows `prompts` (None: all, without
    copying the image tokens) -> (P, M, L, L) the candidates' logits (SAM-HQ: the best
    multimask output plus the HQ mask, from every output's IoU `iou_pred` and the `hq`
    features)."""
    if prompts is not None:
        tokens, src = jnp.take(tokens, prompts, axis=0), jnp.take(src, prompts, axis=0)
        iou_pred = jnp.take(iou_pred, prompts, axis=0)
    if not params.config.hq:
        return mask_decoder_masks(params, tokens, src, multimask_output)
    every = mask_decoder_masks(params, tokens, src, None, hq)
    return select_masks(every, iou_pred, multimask_output, hq=True)[0]


def pixel_count(masks: jax.Array) -> jax.Array:
    """(..., H, W) bool -> (...) int32 count of True pixels.

    Rows first, as float sums of 0/1 (exact: a row has far fewer than 2^24 pixels), then the
    rows in int32. XLA's CPU backend fuses the compare that makes `masks` into the row sums;
    an int32 count over both axes at once materialises an int32 copy of every
    full-resolution candidate first.
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


# Full-resolution logits scored per compiled loop step: 8 MB of fp32, which stays in cache
# between the product that writes it and the compares and counts that read it (all at once,
# XLA writes every candidate's logits and 0/1 copies of them out to memory and back).
SCORE_CHUNK_PIXELS = 2**21


def score_chunk_size(candidates: int, pixels: int) -> int:
    """Candidates per loop step: the largest power of two that divides `candidates` and
    keeps a step within `SCORE_CHUNK_PIXELS` full-resolution logits (at least 1)."""
    chunk = 1
    while candidates % (chunk * 2) == 0 and chunk * 2 * pixels <= SCORE_CHUNK_PIXELS:
        chunk *= 2
    return chunk


@functools.partial(jax.jit, static_argnames=("input_size", "crop_size", "image_size", "as_levels"))
def upsample_and_score(
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
    `score_levels` to finish in a second call: inside one program XLA fuses the gathers
    into each count reading them, recomputing them per count.
    """
    low_res = jnp.take(low_res.reshape(-1, *low_res.shape[-2:]), rows, axis=0)
    if as_levels:
        logits = transforms.postprocess_masks(low_res, input_size, crop_size, image_size, gather=True)
        thresholds = (MASK_THRESHOLD - offset, MASK_THRESHOLD, MASK_THRESHOLD + offset)
        return functools.reduce(operator.add, [(logits > t).astype(jnp.int8) for t in thresholds])

    def score(chunk: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        logits = transforms.postprocess_masks(chunk, input_size, crop_size, image_size, gather=False)
        masks = logits > MASK_THRESHOLD
        return masks, stability_score(logits, MASK_THRESHOLD, offset), masks_to_boxes(masks)

    chunk = score_chunk_size(low_res.shape[0], crop_size[0] * crop_size[1])
    masks, stability, boxes = jax.lax.map(score, low_res.reshape(-1, chunk, *low_res.shape[1:]))
    return masks.reshape(-1, *crop_size), stability.reshape(-1), boxes.reshape(-1, 4)


@jax.jit
def score_levels(levels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Level maps from `upsample_and_score(..., as_levels=True)` -> masks, stability scores
    and boxes, a cache-sized chunk of candidates at a time."""

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


def fetch_rows(parts: list[jax.Array], part: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Rows `row[i]` of `parts[part[i]]`, in that order, on the host: only the masks that
    pass every filter and box NMS leave the device."""
    out = np.empty((len(part), *parts[0].shape[1:]), parts[0].dtype)
    for p in np.unique(part):
        where = np.flatnonzero(part == p)
        out[where] = np.asarray(_take_rows(parts[p], padded_rows(row[where], parts[p].shape[0])))[: len(where)]
    return out


def _bucket(n: int, cap: int) -> int:
    """Pads a count to a power of two (at least 8, at most `cap`): few compiled shapes."""
    return min(max(8, 1 << (n - 1).bit_length()), max(cap, n))


def padded_rows(rows: np.ndarray, cap: int) -> jax.Array:
    out = np.zeros(_bucket(len(rows), cap), np.int32)
    out[: len(rows)] = rows
    return jnp.asarray(out)
