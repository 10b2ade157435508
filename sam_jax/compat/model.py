"""`Sam`: the reference's model object, as far as user code touches it, over `SamParams`.

It holds no state besides the weights: `sam(batched_input, multimask_output)` runs the
reference's `Sam.forward` record format through the functional core (`sam_jax.end_to_end`),
and `image_encoder.img_size`, `mask_threshold`, `image_format`, `device` are what ported
code reads. `to(...)` and `eval()` do nothing (JAX places arrays; there is no training
mode) and return the model, so `sam.to(device=device)` lines run unchanged.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import transforms
from sam_jax.compat.arrays import as_kind, device_of, kind_of
from sam_jax.compat.modules import ImageEncoder, MaskDecoder, PromptEncoder, float_array, preprocess
from sam_jax.compat.transforms import check_size
from sam_jax.config import SamConfig
from sam_jax.end_to_end import check_record_prompts, check_records, encode_images, record_prompts
from sam_jax.formats.reference import describe, params_to_state_dict
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import MASK_THRESHOLD, check_params, decode_input_frame


class Sam:
    """The model object of `sam_model_registry[...]()`: the weights (`params`) and the
    reference's `Sam` surface.

    Args:
        params: `SamParams` (from `sam_jax.load` or `sam_jax.init`).

    Attributes:
        params: the `SamParams`, for the functional API (`sam_jax.predict(sam.params, ...)`).
        image_encoder, prompt_encoder, mask_decoder: the three networks, callable as the
            reference's (channels first, any array kind in, the same kind out; `compat.modules`);
            `image_encoder.img_size` and `.patch_size` as the reference's.
        mask_threshold: logits above it are mask pixels (0.0).
        image_format: "RGB", the channel order the model expects.
        pixel_mean, pixel_std: (3, 1, 1), as the reference's buffers.
    """

    mask_threshold: float = MASK_THRESHOLD
    image_format: str = "RGB"

    def __init__(self, params: SamParams) -> None:
        self.params = check_params(params)
        self.image_encoder = ImageEncoder(params)
        self.prompt_encoder = PromptEncoder(params)
        self.mask_decoder = MaskDecoder(params)
        self.pixel_mean = as_kind(np.reshape(params.config.pixel_mean, (3, 1, 1)).astype(np.float32), "numpy")
        self.pixel_std = as_kind(np.reshape(params.config.pixel_std, (3, 1, 1)).astype(np.float32), "numpy")

    @property
    def config(self) -> SamConfig:
        return self.params.config

    @property
    def device(self) -> Any:
        """Where ported code puts its tensors (the reference's `sam.device`): torch's CPU device
        when torch is installed (results in torch come back on the device their inputs were
        on), else the JAX device holding the weights (`jax_device`)."""
        if is_torch_available():
            import torch

            return torch.device("cpu")
        return self.jax_device

    @property
    def jax_device(self) -> jax.Device:
        """The JAX device holding the weights."""
        leaf = jax.tree.leaves(self.params.weights)[0]
        return next(iter(leaf.devices())) if isinstance(leaf, jax.Array) else jax.devices()[0]

    def to(self, *args: Any, **kwargs: Any) -> Sam:
        """Does nothing and returns the model: JAX places arrays on its default device."""
        return self

    def eval(self) -> Sam:
        """Does nothing and returns the model: it has no training mode."""
        return self

    def train(self, mode: bool = True) -> Sam:
        """`train(False)` is `eval()`; a training mode does not exist here (see `parameters`)."""
        if mode:
            raise NotImplementedError(TRAINING_HERE)
        return self

    def parameters(self, recurse: bool = True) -> Any:
        """Not available: torch optimisers cannot update these weights (see `TRAINING_HERE`)."""
        raise NotImplementedError(TRAINING_HERE)

    def state_dict(self) -> dict[str, Any]:
        """The weights in the official format: reference keys -> torch tensors (numpy arrays
        without torch), bit for bit; the reference model loads it with strict=True."""
        state = params_to_state_dict(self.params)
        if not is_torch_available():
            return state
        import torch

        return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}

    def preprocess(self, x: Any) -> Any:
        """The reference `Sam.preprocess`: (B, 3, h, w) pixel values -> (B, 3, S, S)
        normalised (the model's way) and padded; in `x`'s array kind."""
        return preprocess(self.params, x)

    def postprocess_masks(self, masks: Any, input_size: Any, original_size: Any) -> Any:
        """The reference `Sam.postprocess_masks`: (B, M, L, L) low-res logits -> (B, M, H, W)
        logits at `original_size`, the padding cropped at `input_size`; in `masks`' kind."""
        side = self.config.low_res_mask_size
        arr = float_array(masks, "masks", f"(B, M, {side}, {side})", 4)
        up = transforms.postprocess_masks(
            jnp.asarray(arr),
            check_size(input_size, "input_size"),
            check_size(original_size, "original_size"),
            self.config.image_size,
        )
        return as_kind(up, kind_of(masks), device_of(masks))

    def __repr__(self) -> str:
        return f"Sam({describe(self.config)})"

    def __call__(
        self, batched_input: Any, multimask_output: bool, hq_token_only: bool = False
    ) -> list[dict[str, jax.Array]]:
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
            multimask_output: 3 masks per prompt (else 1; SAM-HQ: 1 either way).
            hq_token_only: SAM-HQ's HQ mask alone (`segment_anything_hq`'s `Sam.forward`).
        Returns:
            One dict per image: masks (B, C, H, W) bool, iou_predictions (B, C) float32,
            low_res_logits (B, C, L, L) float32; torch tensors when the records held torch
            tensors, jax arrays when jax ones, else numpy arrays.
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
                self.params,
                embedding,
                **record_prompts(record),
                multimask_output=bool(multimask_output),
                hq_token_only=hq_token_only,
            )
            kind, device = kind_of(*record.values()), device_of(*record.values())
            out = {"masks": masks, "iou_predictions": scores, "low_res_logits": low_res}
            outputs.append({k: as_kind(v, kind, device) for k, v in out.items()})
        return outputs

    forward = __call__


# What a torch training call on the model object says: the weights are a pytree, trained by
# JAX's own means.
TRAINING_HERE = (
    "sam-jax models are trained with JAX, not torch optimisers: `sam-jax finetune` or sam_jax.train.train "
    "(optax; the weights are sam.params, a pytree for jax.grad); see docs/training.md"
)


def is_torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


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
