"""Static prompt layouts: every prompt kind in a few fixed shapes, so one compiled decoder
serves a whole interactive session (clicks, a box, box and clicks, fed-back logits).

A prompt row becomes `S` slots of labelled points, in the reference's token order: the
points, then the box as two corner points (labels 2 and 3, as the reference `SamOnnxModel`
takes it) or, without a box, the reference's padding point (label -1, a real token); the
remaining slots are empty (label -2) and the decoder leaves them out of every attention.
`S` is bucketed so that prompt and output tokens together fill a power-of-two multiple
of 8 (16, 32, 64, ... tokens): the smallest bucket holds 11 prompt tokens for SAM's 5
output tokens, enough for 8 clicks and a box, and the decoder's attention pads its tokens
to a multiple of 8 anyway.
"""

from __future__ import annotations

import numpy as np

from sam_jax.modeling.cross_attention import TOKEN_MULTIPLE
from sam_jax.modeling.prompt_encoder import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    LABEL_EMPTY_SLOT,
    LABEL_PADDING,
)

# The smallest layout has this many tokens in all (prompt and output tokens).
MIN_TOKENS = 2 * TOKEN_MULTIPLE


def slot_bucket(num_prompt_tokens: int, num_output_tokens: int) -> int:
    """The number of prompt slots of the smallest layout that holds `num_prompt_tokens`.

    Args:
        num_prompt_tokens: the prompt's tokens (points, padding point, box corners).
        num_output_tokens: the decoder's IoU and mask tokens (5 for SAM).
    Returns:
        S >= num_prompt_tokens with S + num_output_tokens in (16, 32, 64, ...).
    """
    total = MIN_TOKENS
    while total < num_prompt_tokens + num_output_tokens:
        total *= 2
    return total - num_output_tokens


# Token counts (prompt and output tokens) below the layout's for which the decoder program
# also holds a branch (see `sam_jax.modeling.sam.predict_low_res_slots`).
FAST_TOKENS = (TOKEN_MULTIPLE,)


def fast_slots(num_output_tokens: int) -> tuple[int, ...]:
    """Prompt slot counts of the decoder's fast branches (`FAST_TOKENS` less the output
    tokens): (3,) for SAM: a click and the padding point, 2 clicks, a box, a box and a click."""
    return tuple(t - num_output_tokens for t in FAST_TOKENS if t > num_output_tokens)


def layout_prompts(
    points: np.ndarray | None,
    labels: np.ndarray | None,
    boxes: np.ndarray | None,
    batch: int,
    num_output_tokens: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts (already in the model input frame) -> slots (see the module docstring).

    A row without a box gets the reference's padding point after its points unless its
    labels already hold a box corner (2 or 3): a box given as corner points is then the
    same prompt as `box=` (no padding point either way).

    Args:
        points: (B, N, 2) or None; labels: (B, N) int or None (with points).
        boxes: (B, 4) XYXY or None.
        batch: B.
        num_output_tokens: see `slot_bucket`.
    Returns:
        coords (B, S, 2) float32 and labels (B, S) int32.
    """
    n = 0 if points is None else points.shape[1]
    used = n + (2 if boxes is not None else (1 if n else 0))
    slots = slot_bucket(used, num_output_tokens)
    coords = np.zeros((batch, slots, 2), np.float32)
    out = np.full((batch, slots), LABEL_EMPTY_SLOT, np.int32)
    if points is not None and labels is not None:
        coords[:, :n] = points
        out[:, :n] = labels
    if boxes is not None:
        coords[:, n : n + 2] = np.asarray(boxes, np.float32).reshape(batch, 2, 2)
        out[:, n : n + 2] = (LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT)
    elif labels is not None and n:
        has_corner = np.isin(labels, (LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT)).any(axis=1)
        out[:, n] = np.where(has_corner, LABEL_EMPTY_SLOT, LABEL_PADDING)
    return coords, out
