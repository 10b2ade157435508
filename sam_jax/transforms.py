"""Pre- and post-processing that reproduce the reference's pixels.

Host side (numpy / PIL): `ResizeLongestSide` (reference `utils/transforms.py`) and the
coordinate transforms. Device side (jax): `postprocess_masks` (reference
`Sam.postprocess_masks`).
"""

from __future__ import annotations

import functools
import operator

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sam_jax.config import SamConfig
from sam_jax.modeling.common import linear_resize_matrix


def preprocess_shape(old_h: int, old_w: int, long_side: int) -> tuple[int, int]:
    """Size (h, w) after scaling the longest side to `long_side`, rounded half up.

    At least one pixel per side: the reference rounds a side of an extreme aspect ratio
    (5 x 3000 at 1024) to zero and fails; everywhere else this is its arithmetic.
    """
    scale = long_side * 1.0 / max(old_h, old_w)
    return max(int(old_h * scale + 0.5), 1), max(int(old_w * scale + 0.5), 1)


def resize_longest_side(image: np.ndarray, long_side: int, interpolation: str = "pil_bilinear") -> np.ndarray:
    """Resizes an (H, W, 3) uint8 image so its longest side is `long_side`.

    Args:
        interpolation: "pil_bilinear", PIL's bilinear filter as torchvision's `resize` applies
            to PIL images in the reference (PIL widens the filter when shrinking:
            antialiasing, so not a plain bilinear resize); or "cv2_area", OpenCV's
            INTER_AREA, as LiteMedSAM's inference resizes; or "pil_bicubic" (see `resize_to`).
    """
    return resize_to(image, preprocess_shape(image.shape[0], image.shape[1], long_side), interpolation)


def resize_to(image: np.ndarray, size: tuple[int, int], interpolation: str = "pil_bilinear") -> np.ndarray:
    """Resizes an (H, W, 3) uint8 image to `size` (h, w) with one of `config.INTERPOLATIONS`
    (see `resize_longest_side`; "pil_bicubic" is PIL's bicubic, widened when shrinking)."""
    h, w = size
    if (h, w) == image.shape[:2]:
        return np.ascontiguousarray(image)
    if interpolation == "cv2_area":
        return np.asarray(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA))
    resample = Image.Resampling.BICUBIC if interpolation == "pil_bicubic" else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((w, h), resample))


def resize_to_model(image: np.ndarray, config: SamConfig) -> np.ndarray:
    """An (H, W, 3) uint8 image resized as `config`'s model takes it (longest side to
    `image_size`, or stretched to image_size x image_size, with the config's interpolation)."""
    if config.resize == "stretch":
        return resize_to(image, (config.image_size, config.image_size), config.interpolation)
    return resize_longest_side(image, config.image_size, config.interpolation)


def pad_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pads an (h, w, 3) image at the bottom and right to (size, size, 3)."""
    out = np.zeros((size, size, image.shape[2]), image.dtype)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def apply_coords(
    coords: np.ndarray, original_size: tuple[int, int], long_side: int, scale: str = "per_side"
) -> np.ndarray:
    """Scales (..., 2) pixel (x, y) coordinates from the original to the resized image.

    float64 arithmetic as the reference's numpy path; cast to float32 afterwards.

    Args:
        scale: "per_side", each axis by its resized / original side (the reference's
            `ResizeLongestSide.apply_coords`, from the rounded resized size); "longest_side",
            both by long_side / max(H, W) (LiteMedSAM's inference); "stretch", x by
            long_side / W and y by long_side / H (an image stretched to a square, MedSAM's).
    """
    old_h, old_w = original_size
    coords = np.array(coords, dtype=np.float64)
    if scale == "longest_side":
        return coords * (long_side / max(old_h, old_w))
    new_h, new_w = (long_side, long_side) if scale == "stretch" else preprocess_shape(old_h, old_w, long_side)
    coords[..., 0] *= new_w / old_w
    coords[..., 1] *= new_h / old_h
    return coords


def apply_boxes(
    boxes: np.ndarray, original_size: tuple[int, int], long_side: int, scale: str = "per_side"
) -> np.ndarray:
    """Scales (..., 4) XYXY boxes from the original to the resized image (see `apply_coords`)."""
    boxes = np.asarray(boxes)
    corners = boxes.reshape(*boxes.shape[:-1], 2, 2)
    return apply_coords(corners, original_size, long_side, scale).reshape(boxes.shape)


# Low-res sides from which `postprocess_masks` gathers taps instead of multiplying by the
# dense resize matrices: a product costs 2 * low flops per output pixel, a gather only its
# row's two or three taps (docs/performance.md has the measurements).
GATHER_MIN_LOW_RES = 128


def postprocess_masks(
    masks: jax.Array,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
    gather: bool | None = None,
) -> jax.Array:
    """Low-res logits -> logits at the original image size.

    The reference upsamples (..., L, L) bilinearly to (image_size, image_size), crops the
    padding away to `input_size`, then resizes to `original_size`, each step with torch's
    `F.interpolate(mode="bilinear", align_corners=False)`. All three steps are linear and
    separable, so per axis they compose into one (original, L) matrix with two or three
    non-zero taps per row, applied to the columns, then to the rows: as gathers of the
    taps for large L, as matrix products for small L (equal up to fp32 rounding).

    Args:
        gather: force the gathers (True) or the products (False); None picks by L. Where
            several reductions read the result, take the products or write the gathered
            result out in a compiled call of its own (automatic masks do either): XLA fuses
            the gathers into each reading loop, recomputing them.
    """
    low = masks.shape[-1]
    rows, cols = (
        linear_resize_matrix(n_in, n_out) @ linear_resize_matrix(low, image_size)[:n_in]
        for n_in, n_out in zip(input_size, original_size, strict=True)
    )
    if gather is None:
        gather = low >= GATHER_MIN_LOW_RES
    if gather:
        return _apply_taps(_apply_taps(masks, cols, -1), rows, -2)
    # HIGHEST: fp32 accumulation everywhere (GPUs would otherwise round the inputs to tf32).
    highest = jax.lax.Precision.HIGHEST
    masks = jnp.einsum("...ij,hi->...hj", masks, jnp.asarray(rows, masks.dtype), precision=highest)
    return jnp.einsum("...hj,wj->...hw", masks, jnp.asarray(cols, masks.dtype), precision=highest)


def _apply_taps(x: jax.Array, matrix: np.ndarray, axis: int) -> jax.Array:
    """`matrix` (n_out, n) applied to `axis` (-1 or -2) of x as a sum over each row's
    non-zero entries (taps): a gather and a multiply-add per tap."""
    taps = int(np.count_nonzero(matrix, axis=1).max())
    index = np.argsort(matrix == 0, axis=1, kind="stable")[:, :taps]  # each row's non-zeros first
    weight = np.take_along_axis(matrix, index, axis=1).astype(np.float32)  # zero where padded
    terms = []
    for k in range(taps):
        w = weight[:, k] if axis == -1 else weight[:, k, None]
        terms.append(jnp.take(x, index[:, k], axis=axis, mode="clip") * w)
    return functools.reduce(operator.add, terms)
