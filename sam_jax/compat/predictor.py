"""`SamPredictor`: the reference's stateful predictor, same methods, arguments, defaults and
output shapes, over the functional `encode` / `decode`.

`predict` returns numpy arrays exactly shaped as the reference's for every input form it
accepts; `predict_torch` takes batched prompts in the resized image's frame and, as
`get_image_embedding`, returns arrays of the kind it was given (`compat.arrays`: torch
tensors for torch tensors, jax arrays for jax ones, numpy arrays that answer `.cpu()` and
`.numpy()` otherwise). Bad arguments raise one-line `ValueError`/`TypeError` naming them;
predicting before an image is set raises the reference's `RuntimeError`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.compat.arrays import as_kind, device_of, kind_of, to_numpy
from sam_jax.compat.model import Sam, resized_image
from sam_jax.compat.transforms import ResizeLongestSide, check_size
from sam_jax.end_to_end import encode_images, rename_arguments
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import ImageEmbedding, check_image, check_prompts, decode, decode_input_frame, encode

# `decode`'s argument names -> the reference predictor's, for error messages.
PREDICT_NAMES = {"points": "point_coords", "labels": "point_labels", "box": "box", "mask_input": "mask_input"}
PREDICT_TORCH_NAMES = {**PREDICT_NAMES, "box": "boxes"}


class SamPredictor:
    """Sets an image once, then predicts masks for prompts (reference `SamPredictor`).

    Args:
        sam_model: a `Sam` (from `sam_model_registry`), or `SamParams`.

    Attributes:
        model: the `Sam`.
        transform: `ResizeLongestSide(model.image_encoder.img_size)`.
        is_image_set: whether an image is set.
        original_size: (H, W) of the set image; None when none is set.
        input_size: (h, w) of the set image after resizing; None when none is set.
        features: the image embedding, (1, C, E, E) jax array; None when no image is set.
        interm_features: a SAM-HQ model's early features, `[(1, E, E, D)]` (the reference
            keeps every global block's output; SAM-HQ reads the first); else None.
        embedding: the same as an `ImageEmbedding`, for `sam_jax.decode`.
    """

    def __init__(self, sam_model: Sam | SamParams) -> None:
        if isinstance(sam_model, SamParams):
            sam_model = Sam(sam_model)
        if not isinstance(sam_model, Sam):
            raise TypeError(
                "sam_model must be a Sam from sam_jax.sam_model_registry (or SamParams), "
                f"got {type(sam_model).__name__}"
            )
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    @property
    def device(self) -> Any:
        """The model's `device` (where ported code puts its tensors)."""
        return self.model.device

    def reset_image(self) -> None:
        """Forgets the set image."""
        self.is_image_set = False
        self.features: jax.Array | None = None
        self.interm_features: list[jax.Array] | None = None
        self.embedding: ImageEmbedding | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.image_kind: tuple[str, Any] = ("numpy", None)  # the set image's array kind and torch device

    def _set(self, embedding: ImageEmbedding) -> None:
        self.embedding = embedding
        # The reference's (1, C, E, E) layout: embeddings are NHWC inside.
        self.features = jnp.transpose(embedding.image_embedding, (2, 0, 1))[None]
        if embedding.early_features is not None:
            self.interm_features = [embedding.early_features[None]]
        self.original_size = embedding.original_size
        self.input_size = embedding.input_size
        self.is_image_set = True

    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Computes the embedding of an image.

        Args:
            image: (H, W, 3) uint8.
            image_format: "RGB" or "BGR" (as `cv2.imread` gives), the channel order of `image`.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        kind = (kind_of(image), device_of(image))
        arr = check_image(to_numpy(image))
        if image_format != self.model.image_format:
            arr = arr[..., ::-1]
        self.reset_image()
        self._set(encode(self.model.params, arr))
        self.image_kind = kind

    def set_torch_image(self, transformed_image: Any, original_image_size: Any) -> None:
        """Computes the embedding of an image already resized (reference `set_torch_image`).

        Args:
            transformed_image: (1, 3, h, w) with max(h, w) = `model.image_encoder.img_size`,
                as `transform.apply_image` and a transpose to channels first give; any array
                type (numpy, jax, torch on the CPU); uint8, or float with values 0..255.
            original_image_size: (H, W) of the image before resizing.
        """
        size = self.model.image_encoder.img_size
        arr = to_numpy(transformed_image)
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"transformed_image must be an array (1, 3, h, w), got {type(transformed_image).__name__}")
        if arr.ndim != 4 or arr.shape[:2] != (1, 3) or max(arr.shape[2:]) != size:
            raise ValueError(
                f"transformed_image must have shape (1, 3, h, w) with longest side {size} "
                f"(ResizeLongestSide({size}).apply_image, channels first), got {arr.shape}"
            )
        image = resized_image(arr[0], size, "transformed_image")
        original = check_size(original_image_size, "original_image_size")
        self.reset_image()
        self._set(encode_images(self.model.params, [image], [original])[0])
        self.image_kind = (kind_of(transformed_image), device_of(transformed_image))

    def _embedding(self, what: str = "before mask prediction") -> ImageEmbedding:
        if not self.is_image_set or self.embedding is None:
            raise RuntimeError(f"An image must be set with .set_image(...) {what}.")
        return self.embedding

    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one set of prompts on the set image (reference `SamPredictor.predict`).

        Args:
            point_coords: (N, 2) pixel (x, y) in the original image.
            point_labels: (N,): 1 foreground, 0 background (default: all foreground).
            box: (4,) or (1, 4) XYXY in original pixels.
            mask_input: (1, L, L) low-res logits from an earlier call (L = 256 for the
                official models).
            multimask_output: 3 masks (else 1; SAM-HQ: 1 either way, see `sam_jax.decode`).
            return_logits: mask logits instead of booleans.
            hq_token_only: SAM-HQ's HQ mask alone (`segment_anything_hq`'s argument).
        Returns:
            masks (C, H, W) bool (float32 logits with `return_logits`), scores (C,) float32,
            low-res logits (C, L, L) float32; numpy arrays.
        """
        embedding = self._embedding()
        params = self.model.params
        point_coords, point_labels, box, mask_input = map(to_numpy, (point_coords, point_labels, box, mask_input))
        if isinstance(box, np.ndarray) and box.shape == (1, 4):
            box = box[0]  # the reference's two box forms give the same (C, H, W) output
        try:
            batched, *_ = check_prompts(point_coords, point_labels, box, mask_input, params.config.low_res_mask_size)
        except (ValueError, TypeError) as e:
            raise type(e)(rename_arguments(str(e), PREDICT_NAMES)) from None
        if batched:
            m = params.config.low_res_mask_size
            raise ValueError(
                "predict takes one prompt set: point_coords (N, 2), point_labels (N,), box (4,) or (1, 4), "
                f"mask_input (1, {m}, {m}); batches of prompts go to predict_torch"
            )
        masks, scores, low_res = decode(
            params,
            embedding,
            point_coords,
            point_labels,
            box=box,
            mask_input=mask_input,
            multimask_output=multimask_output,
            return_logits=return_logits,
            hq_token_only=hq_token_only,
        )
        return np.asarray(masks), np.asarray(scores), np.asarray(low_res)

    def predict_torch(
        self,
        point_coords: Any,
        point_labels: Any,
        boxes: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
    ) -> tuple[Any, Any, Any]:
        """Masks for a batch of prompt sets in the resized image's frame (reference `predict_torch`).

        Args:
            point_coords: (B, N, 2) (x, y) in the resized image (`transform.apply_coords_torch`).
            point_labels: (B, N).
            boxes: (B, 4) XYXY in the resized image (`transform.apply_boxes_torch`).
            mask_input: (B, 1, L, L) low-res logits.
            multimask_output, return_logits, hq_token_only: as `predict`.
            Any array kind (numpy, jax, torch).
        Returns:
            masks (B, C, H, W), scores (B, C), low-res logits (B, C, L, L), in the prompts'
            array kind (torch tensors for torch tensors, on their device).
        """
        embedding = self._embedding()
        params = self.model.params
        given = (point_coords, point_labels, boxes, mask_input)
        kind, device = kind_of(*given), device_of(*given)
        point_coords, point_labels, boxes, mask_input = map(to_numpy, (point_coords, point_labels, boxes, mask_input))
        try:
            batched, *_ = check_prompts(point_coords, point_labels, boxes, mask_input, params.config.low_res_mask_size)
        except (ValueError, TypeError) as e:
            raise type(e)(rename_arguments(str(e), PREDICT_TORCH_NAMES)) from None
        if not batched:
            m = params.config.low_res_mask_size
            raise ValueError(
                "predict_torch takes batched prompts: point_coords (B, N, 2), point_labels (B, N), boxes (B, 4), "
                f"mask_input (B, 1, {m}, {m}); one prompt set goes to predict"
            )
        outputs = decode_input_frame(
            params,
            embedding,
            point_coords,
            point_labels,
            box=boxes,
            mask_input=mask_input,
            multimask_output=multimask_output,
            return_logits=return_logits,
            hq_token_only=hq_token_only,
        )
        return tuple(as_kind(x, kind, device) for x in outputs)

    def get_image_embedding(self) -> Any:
        """The set image's embedding, (1, C, E, E) (C = 256, E = 64 for the official models),
        in the set image's array kind."""
        self._embedding("to generate an embedding")
        assert self.features is not None
        return as_kind(self.features, *self.image_kind)
