"""`Sam`: the reference's model object, as far as user code touches it, over `SamParams`.

It holds no state besides the weights: `sam(batched_input, multimask_output)` runs the
reference's `Sam.forward` record format through the functional core (`sam_jax.end_to_end`),
and `image_encoder.img_size`, `mask_threshold`, `image_format`, `device` are what ported
code reads. `to(...)` and `eval()` do nothing (JAX places arrays; there is no training
mode) and return the model, so `sam.to(device=device)` lines run unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from sam_jax.compat.transforms import check_size
from sam_jax.config import SamConfig
from sam_jax.end_to_end import check_record_prompts, check_records, encode_images, record_prompts
from sam_jax.formats.reference import describe
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import MASK_THRESHOLD, check_params, decode_input_frame


@dataclasses.dataclass(frozen=True)
class ImageEncoderInfo:
    """What ported code reads of the reference's `sam.image_encoder`.

    Attributes:
        img_size: the side of the square model input (1024 for the official models).
        patch_size: input pixels per embedding cell along a side (16 for the official models).
    """

    img_size: int
    patch_size: int


class Sam:
    """The model object of `sam_model_registry[...]()`: the weights (`params`) and the
    reference's `Sam` surface.

    Args:
        params: `SamParams` (from `sam_jax.load` or `sam_jax.init`).

    Attributes:
        params: the `SamParams`, for the functional API (`sam_jax.predict(sam.params, ...)`).
        image_encoder: `ImageEncoderInfo` (`img_size`, `patch_size`).
        mask_threshold: logits above it are mask pixels (0.0).
        image_format: "RGB", the channel order the model expects.
    """

    mask_threshold: float = MASK_THRESHOLD
    image_format: str = "RGB"

    def __init__(self, params: SamParams) -> None:
        self.params = check_params(params)
        self.image_encoder = ImageEncoderInfo(params.config.image_size, params.config.image_encoder.pixels_per_token)

    @property
    def config(self) -> SamConfig:
        return self.params.config

    @property
    def device(self) -> jax.Device:
        """The device holding the weights (the reference's `sam.device`)."""
        leaf = jax.tree.leaves(self.params.weights)[0]
        return next(iter(leaf.devices())) if isinstance(leaf, jax.Array) else jax.devices()[0]

    def to(self, *args: Any, **kwargs: Any) -> Sam:
        """Does nothing and returns the model: JAX places arrays on its default device."""
        return self

    def eval(self) -> Sam:
        """Does nothing and returns the model: it has no training mode."""
        return self

    def __repr__(self) -> str:
        return f"Sam({describe(self.config)})"

    def __call__(self, batched_input: Any, multimask_output: bool) -> list[dict[str, jax.Array]]:
        """Masks end to end for several images (reference `Sam.forward`, same record format).

        Args:
            batched_input: one dict per image:
                image: (3, h, w) image already resized with
                    `ResizeLongestSide(sam.image_encoder.img_size).apply_image` (any array type;
                    uint8, or float with values 0..255); images may differ in size;
                original_size: (H, W) of the image before resizing;
                point_coords: (B, N, 2) (x, y) in the resized image; point_labels: (B, N);
                boxes: (B, 4) XYXY in the resized image;
                mask_inputs: (B, 1, L, L) low-res logits (L = 256 for the official models).
                At least one prompt per image; other keys are ignored, as the reference does.
            multimask_output: 3 masks per prompt (else 1).
        Returns:
            One dict per image: masks (B, C, H, W) bool, iou_predictions (B, C) float32,
            low_res_logits (B, C, L, L) float32; jax arrays.
        """
        records = check_records(batched_input, "batched_input")
        if not isinstance(multimask_output, (bool, np.bool_)):
            raise TypeError(f"multimask_output must be True or False, got {multimask_output!r}")
        size = self.config.image_size
        images, original_sizes = [], []
        for i, record in enumerate(records):
            where = f"batched_input[{i}]"
            images.append(resized_image(record["image"], size, f"{where}['image']"))
            if "original_size" not in record:
                raise ValueError(f"{where} has no 'original_size', the image's (H, W) before resizing")
            original_sizes.append(check_size(record["original_size"], f"{where}['original_size']"))
            if not check_record_prompts(self.params, record, where):
                raise ValueError(
                    f"{where}: prompts must be batched as the reference takes them: point_coords (B, N, 2), "
                    "point_labels (B, N), boxes (B, 4), mask_inputs (B, 1, L, L)"
                )
        embeddings = encode_images(self.params, images, original_sizes)
        outputs = []
        for record, embedding in zip(records, embeddings, strict=True):
            masks, scores, low_res = decode_input_frame(
                self.params, embedding, **record_prompts(record), multimask_output=bool(multimask_output)
            )
            outputs.append({"masks": masks, "iou_predictions": scores, "low_res_logits": low_res})
        return outputs

    forward = __call__


def resized_image(image: Any, size: int, name: str) -> np.ndarray:
    """A (3, h, w) resized image (any array type) -> (h, w, 3) numpy, uint8 or float32.

    Raises naming `name` unless it is (3, h, w) with 1 <= h, w <= `size`, of numbers.
    """
    try:
        arr = np.asarray(image)
    except Exception:
        raise TypeError(f"{name} must be an array (3, h, w), got {type(image).__name__}") from None
    if arr.dtype != np.uint8:
        if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"{name} must be uint8 (or float) pixel values, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must hold finite pixel values")
    if arr.ndim != 3 or arr.shape[0] != 3 or min(arr.shape) < 1:
        raise ValueError(f"{name} must have shape (3, h, w), channels first, got {arr.shape}")
    if max(arr.shape[1:]) > size:
        raise ValueError(
            f"{name} must be resized so its longest side is at most {size} "
            f"(ResizeLongestSide({size}).apply_image), got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr.transpose(1, 2, 0))
