"""`ResizeLongestSide`: the reference's `segment_anything.utils.transforms` class, same methods.

The numpy methods return numpy (coordinates in float64, as the reference); the `*_torch`
methods take any array (numpy, jax, torch, nested lists), compute in float32 as the
reference's torch methods, and return the kind they were given (`compat.arrays`).
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import transforms
from sam_jax.compat.arrays import as_kind, device_of, kind_of, to_numpy
from sam_jax.predictor import check_image


def as_float_array(value: Any, name: str, form: str, dtype: type[np.floating]) -> np.ndarray:
    """`value` as a finite floating array of `dtype`; one line naming `name` and `form` otherwise."""
    try:
        arr = np.asarray(to_numpy(value))
    except Exception:
        raise TypeError(f"{name} must be an array of numbers {form}, got {type(value).__name__}") from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must be an array of numbers {form}, got dtype {arr.dtype}")
    arr = arr.astype(dtype)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must hold finite values {form}")
    return arr


def check_size(value: Any, name: str) -> tuple[int, int]:
    """An image size (H, W) of two positive integers (a tuple, list, array or torch.Size)."""
    try:
        h, w = (operator.index(v) if not hasattr(v, "item") else operator.index(v.item()) for v in value)
    except Exception:
        raise TypeError(f"{name} must be the image size (H, W), two integers, got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be the image size (H, W), two positive integers, got {(h, w)}")
    return int(h), int(w)


class ResizeLongestSide:
    """Resizes images so their longest side is `target_length`, and their points and boxes with them.

    Args:
        target_length: the model's input side (`sam.image_encoder.img_size`).
    """

    def __init__(self, target_length: int) -> None:
        if isinstance(target_length, bool) or not isinstance(target_length, (int, np.integer)) or target_length < 1:
            raise ValueError(f"target_length must be a positive int, got {target_length!r}")
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(h, w) after scaling the longest side of (oldh, oldw) to `long_side_length`."""
        return transforms.preprocess_shape(oldh, oldw, long_side_length)

    def apply_image(self, image: Any) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8, PIL's bilinear filter as the reference."""
        return transforms.resize_longest_side(check_image(image), self.target_length)

    def apply_coords(self, coords: Any, original_size: Any) -> np.ndarray:
        """(..., 2) pixel (x, y) in an image of `original_size` (H, W) -> the resized image's, float64."""
        arr = as_float_array(coords, "coords", "of shape (..., 2)", np.float64)
        if arr.ndim < 1 or arr.shape[-1] != 2:
            raise ValueError(f"coords must have shape (..., 2), got {arr.shape}")
        return transforms.apply_coords(arr, check_size(original_size, "original_size"), self.target_length)

    def apply_boxes(self, boxes: Any, original_size: Any) -> np.ndarray:
        """(4,) or (B, 4) XYXY boxes -> (B, 4) in the resized image, float64."""
        arr = as_float_array(boxes, "boxes", "of shape (B, 4)", np.float64)
        if arr.ndim < 1 or arr.shape[-1] != 4:
            raise ValueError(f"boxes must have shape (B, 4), got {arr.shape}")
        return self.apply_coords(arr.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: Any) -> Any:
        """(B, C, H, W) float images -> (B, C, h, w), antialiased bilinear (torch's `antialias=True`).

        As the reference warns, this may differ slightly from `apply_image` (the model's
        pre-processing). The reference computes the new size from the first two axes (B, C)
        rather than (H, W); this uses (H, W).
        """
        arr = as_float_array(image, "image", "of shape (B, C, H, W)", np.float32)
        if arr.ndim != 4 or min(arr.shape) < 1:
            raise ValueError(f"image must have shape (B, C, H, W), got {arr.shape}")
        h, w = self.get_preprocess_shape(arr.shape[2], arr.shape[3], self.target_length)
        out = jax.image.resize(jnp.asarray(arr), (*arr.shape[:2], h, w), method="linear", antialias=True)
        return as_kind(out, kind_of(image), device_of(image))

    def apply_coords_torch(self, coords: Any, original_size: Any) -> Any:
        """`apply_coords` in float32 for arrays of any kind: (..., 2) -> float32, the kind given."""
        arr = as_float_array(coords, "coords", "of shape (..., 2)", np.float32)
        if arr.ndim < 1 or arr.shape[-1] != 2:
            raise ValueError(f"coords must have shape (..., 2), got {arr.shape}")
        old_h, old_w = check_size(original_size, "original_size")
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        # float32 products with a float32 scale: the reference's torch arithmetic, bit for bit.
        arr[..., 0] *= np.float32(new_w / old_w)
        arr[..., 1] *= np.float32(new_h / old_h)
        return as_kind(arr, kind_of(coords), device_of(coords))

    def apply_boxes_torch(self, boxes: Any, original_size: Any) -> Any:
        """`apply_boxes` in float32 for arrays of any kind: (4,) or (B, 4) -> (B, 4) float32, the kind given."""
        arr = as_float_array(boxes, "boxes", "of shape (B, 4)", np.float32)
        if arr.ndim < 1 or arr.shape[-1] != 4:
            raise ValueError(f"boxes must have shape (B, 4), got {arr.shape}")
        out = self.apply_coords_torch(arr.reshape(-1, 2, 2), original_size).reshape(-1, 4)
        return as_kind(to_numpy(out), kind_of(boxes), device_of(boxes))
