"""Flax NNX modules over the same arrays as `SamParams`.

For a model written in NNX that embeds SAM's image encoder as a submodule, splits it with
`nnx.split` or fine-tunes it with `nnx.Optimizer`. The networks are not written twice: each
component is Flax's own bridge (`nnx.bridge.ToNNX`) around the `flax.linen` module the
functional core runs, holding the weights as `nnx.Param`s at the paths `SamParams.weights`
has (`image_encoder/blocks_0/attn/qkv/kernel`). `to_nnx` and `from_nnx` move no data: both
sides hold the same arrays. Every functional entry point (`predict`, `encode`, `decode`,
`generate_masks`, `forward`, the batch jobs, the server, the exporters) takes a `Sam` as it
takes `SamParams`.

    model = sam_jax.nnx.to_nnx(sam_jax.load("lite-medsam"))
    embeddings, _ = model.image_encoder(images)        # (B, E, E, C)
    graphdef, state = nnx.split(model)                 # state paths as SamParams.weights
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
from flax import nnx
from flax.nnx.bridge import ToNNX

from sam_jax.config import SamConfig
from sam_jax.modeling.prompt_encoder import PromptEncoder as LinenPromptEncoder
from sam_jax.modeling.sam import (
    COMPONENTS,
    COMPUTE_DTYPES,
    SamParams,
    check_hq_token_only,
    image_encoder_module,
    mask_decoder_arguments,
    mask_decoder_module,
)

__all__ = ["ImageEncoder", "MaskDecoder", "PromptEncoder", "Sam", "from_nnx", "to_nnx"]


@contextlib.contextmanager
def _precision(compute_dtype: str) -> Iterator[None]:
    """float32 mode's matmuls at full precision, as `sam_jax.modeling.sam.float32_matmuls`:
    GPUs and TPUs would otherwise run them in TF32 or bfloat16 passes."""
    if compute_dtype != "float32":
        yield
        return
    with jax.default_matmul_precision("highest"):
        yield


class _Component(ToNNX):
    """A linen component of SAM as an NNX module, its weights as `nnx.Param` attributes."""

    def __init__(self, module: Any, weights: dict[str, Any], compute_dtype: str) -> None:
        super().__init__(module)
        # `ToNNX` hands every attribute to linen as a variable except its own, which are
        # prefixed `to_nnx__`: the one setting kept here is named so.
        self.to_nnx__compute_dtype = compute_dtype
        for name, value in weights.items():
            # The attribute layout `ToNNX` gives a linen module's variables: one attribute
            # per top-level name, nested dicts of variables below it.
            setattr(self, name, nnx.data(jax.tree.map(nnx.Param, value)))

    def weights(self) -> dict[str, Any]:
        """The component's weights as the functional core holds them (the same arrays)."""
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def _apply(self, *args: Any) -> Any:
        with _precision(self.to_nnx__compute_dtype):
            return ToNNX.__call__(self, *args)


class ImageEncoder(_Component):
    """SAM's image encoder (ViT or TinyViT, as the config says)."""

    def __init__(
        self, config: SamConfig, weights: dict[str, Any], compute_dtype: str = "float32", attention: str = "auto"
    ) -> None:
        module = image_encoder_module(config, COMPUTE_DTYPES[compute_dtype], False, attention)
        super().__init__(module, weights, compute_dtype)

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array | None]:  # type: ignore[override]
        """Normalised, padded images (B, S, S, 3) -> (embeddings (B, E, E, C), early
        features (B, E, E, D) for a SAM-HQ model, else None); see `encoder_outputs`."""
        out = self._apply(images)
        return out if self.to_nnx__module.early_features else (out, None)


class PromptEncoder(_Component):
    """SAM's prompt encoder."""

    def __init__(self, config: SamConfig, weights: dict[str, Any], compute_dtype: str = "float32") -> None:
        super().__init__(LinenPromptEncoder(config), weights, compute_dtype)

    def __call__(  # type: ignore[override]
        self,
        points: jax.Array | None = None,
        labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        masks: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Prompts in the model input frame -> (sparse (B, N', C), dense (1 or B, E, E, C),
        dense_pe (E, E, C)); see `sam_jax.modeling.prompt_encoder.PromptEncoder`."""
        return self._apply(points, labels, boxes, masks)


class MaskDecoder(_Component):
    """SAM's mask decoder (or SAM-HQ's, as the config says)."""

    def __init__(self, config: SamConfig, weights: dict[str, Any], compute_dtype: str = "float32") -> None:
        super().__init__(mask_decoder_module(config), weights, compute_dtype)

    def __call__(  # type: ignore[override]
        self,
        image_embedding: jax.Array,
        image_pe: jax.Array,
        sparse: jax.Array,
        dense: jax.Array,
        multimask_output: bool,
        early_features: jax.Array | None = None,
        hq_token_only: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """-> (low-res logits (B, M, 4E, 4E), iou (B, M)); see `mask_decoder_forward`."""
        args = (image_embedding, image_pe, sparse, dense, multimask_output)
        config = self.to_nnx__module.config
        check_hq_token_only(config, hq_token_only)  # its type for SAM-HQ's decoder too
        return self._apply(*mask_decoder_arguments(config, args, early_features, hq_token_only))


class Sam(nnx.Module):
    """The whole model: `image_encoder`, `prompt_encoder` and `mask_decoder` submodules.

    Attributes:
        config: the architecture (static).
        compute_dtype: the image encoder's compute dtype (static), as `SamParams`.
        attention: the image encoder's attention path (static), as `SamParams`.
    """

    def __init__(self, params: SamParams) -> None:
        self.config = params.config
        self.compute_dtype = params.compute_dtype
        self.attention = params.attention
        w = params.weights
        self.image_encoder = ImageEncoder(params.config, w["image_encoder"], params.compute_dtype, params.attention)
        self.prompt_encoder = PromptEncoder(params.config, w["prompt_encoder"], params.compute_dtype)
        self.mask_decoder = MaskDecoder(params.config, w["mask_decoder"], params.compute_dtype)

    def __call__(
        self,
        images: jax.Array,
        points: jax.Array | None = None,
        labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        masks: jax.Array | None = None,
        multimask_output: bool = True,
        hq_token_only: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """One prompt per image, in the model input frame (a fine-tuning step's forward).

        Args:
            images: (B, S, S, 3) normalised, padded images (`normalize_and_pad`).
            points, labels, boxes, masks: as `PromptEncoder.__call__`, batch B.
            multimask_output: the multimask outputs, else the single one.
            hq_token_only: SAM-HQ's HQ mask alone (`check_hq_token_only`).
        Returns:
            low-res logits (B, M, 4E, 4E) and predicted IoU (B, M).
        """
        embeddings, early = self.image_encoder(images)
        sparse, dense, dense_pe = self.prompt_encoder(points, labels, boxes, masks)
        return self.mask_decoder(embeddings, dense_pe, sparse, dense, multimask_output, early, hq_token_only)


def to_nnx(params: SamParams) -> Sam:
    """`SamParams` -> `Sam` holding the same arrays (nothing is copied)."""
    if not isinstance(params, SamParams):
        raise TypeError(f"params must be SamParams (from sam_jax.load or sam_jax.init), got {type(params).__name__}")
    return Sam(params)


def from_nnx(model: Sam) -> SamParams:
    """`Sam` -> `SamParams` holding the same arrays (nothing is copied): its current
    weights, for the functional core, a checkpoint or a converter."""
    if not isinstance(model, Sam):
        raise TypeError(f"model must be a sam_jax.nnx.Sam (from sam_jax.nnx.to_nnx), got {type(model).__name__}")
    weights = {name: getattr(model, name).weights() for name in COMPONENTS}
    return SamParams(model.config, weights, model.compute_dtype, model.attention)
