"""`resize_patches`: a trained model re-cut to read its input in patches of another size, the
start of a fine-tune to a finer (or coarser) embedding grid."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from sam_jax.config import ViTConfig, with_fields
from sam_jax.modeling.sam import SamParams


def _interpolate(table: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation of `table` along `axis` to `size` samples (ends kept in place)."""
    old = table.shape[axis]
    positions = np.linspace(0.0, old - 1.0, size)
    lo = np.floor(positions).astype(np.int64)
    hi = np.minimum(lo + 1, old - 1)
    frac = (positions - lo).reshape([-1 if a == axis else 1 for a in range(table.ndim)])
    out = np.take(table, lo, axis=axis) * (1.0 - frac) + np.take(table, hi, axis=axis) * frac
    return out.astype(table.dtype)


def _resample_kernel(kernel: np.ndarray, patch_size: int) -> np.ndarray:
    """(p, p, 3, C) patch kernel -> (q, q, 3, C).

    To a finer patch (p = k q) each new tap sums a k x k block of the old ones: a patch of q
    pixels then responds as the old kernel did to those pixels enlarged k times, so the model
    sees its input as if it were k times larger. To a coarser one, taps are spread back out.
    """
    p = kernel.shape[0]
    if p % patch_size == 0:
        k = p // patch_size
        return kernel.reshape(patch_size, k, patch_size, k, *kernel.shape[2:]).sum(axis=(1, 3))
    if patch_size % p == 0:
        k = patch_size // p
        return np.repeat(np.repeat(kernel, k, axis=0), k, axis=1) / (k * k)
    raise ValueError(f"patch_size {patch_size} must divide or be a multiple of the model's {p}")


def resize_patches(params: SamParams, patch_size: int) -> SamParams:
    """The model with patches of `patch_size` pixels, at the same input size.

    The patch kernel is resampled (see `_resample_kernel`), the absolute position table and
    the relative-position tables are linearly interpolated to the new grid (as the reference
    interpolates relative positions of another length); the prompt encoder and the mask
    decoder work on any grid and are kept. The result is a starting point for fine-tuning,
    not an equivalent model.

    Args:
        params: the model.
        patch_size: new patch side; divides the image size, and divides or is a multiple of
            the old patch side.
    Returns:
        `SamParams` with config `patch_size` replaced.
    """
    config = params.config
    vit = config.image_encoder
    if not isinstance(vit, ViTConfig):
        raise ValueError(f"resize_patches re-cuts a ViT's patches; this model's encoder is a {type(vit).__name__}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
    new_config = with_fields(config, patch_size=patch_size)  # validates the grid
    grid = new_config.image_size // patch_size
    weights = jax.tree.map(np.asarray, params.weights)
    encoder: dict[str, Any] = dict(weights["image_encoder"])
    proj = dict(encoder["patch_embed"]["proj"])
    proj["kernel"] = _resample_kernel(proj["kernel"], patch_size)
    encoder["patch_embed"] = {**encoder["patch_embed"], "proj": proj}
    if "pos_embed" in encoder:
        encoder["pos_embed"] = _interpolate(_interpolate(encoder["pos_embed"], grid, 1), grid, 2)
    for i in vit.global_attn_indexes:  # windowed blocks keep their window's tables
        block = encoder[f"blocks_{i}"]
        if "rel_pos_h" in block["attn"]:
            attn = {**block["attn"]}
            for key in ("rel_pos_h", "rel_pos_w"):
                attn[key] = _interpolate(attn[key], 2 * grid - 1, 0)
            encoder[f"blocks_{i}"] = {**block, "attn": attn}
    return dataclasses.replace(params, config=new_config, weights={**weights, "image_encoder": encoder})
