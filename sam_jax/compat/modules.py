"""The reference `Sam`'s three networks as callable objects over `SamParams`, for code that
calls them directly (MedSAM's inference, fine-tuning scripts):

    embedding = sam.image_encoder(x)                                  # (B, 3, S, S) -> (B, C, E, E)
    sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
    low_res, iou = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)

Channels first, as the reference; each call is one thin, jitted call into the functional
core (`sam_jax.modeling.sam`), and results come back in the caller's array kind
(`compat.arrays`). Shapes are checked first, with one line naming the argument.

A SAM-HQ model's networks are `segment_anything_hq`'s: the image encoder returns
`(embedding, interm_embeddings)` and the mask decoder takes `hq_token_only` and
`interm_embeddings` (of which SAM-HQ reads the first, the only one returned here).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.compat.arrays import as_kind, device_of, kind_of, to_numpy
from sam_jax.modeling.sam import (
    SamParams,
    check_hq_token_only,
    encoder_outputs,
    mask_decoder_forward,
    normalize_and_pad,
    prompt_encoder_forward,
)


def float_array(value: Any, name: str, shape: str, ndim: int) -> np.ndarray:
    """`value` (any array kind) as float32 numpy of `ndim` axes, or one line naming it."""
    arr = to_numpy(value)
    if not isinstance(arr, np.ndarray) or arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be an array of numbers {shape}, got {type(value).__name__}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr.astype(np.float32)


def nchw(x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, -1, 1)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


@functools.partial(jax.jit, static_argnames=("multimask_output", "hq_token_only"))
def _decode(
    params: SamParams,
    emb: Any,
    pe: Any,
    sparse: Any,
    dense: Any,
    multimask_output: bool,
    early: Any = None,
    hq_token_only: bool = False,
) -> Any:
    return mask_decoder_forward(params, emb, pe, sparse, dense, multimask_output, early, hq_token_only)


class ImageEncoder:
    """`sam.image_encoder`: `img_size`, `patch_size`, and a call on preprocessed images.

    Attributes:
        img_size: the side of the square model input (1024 for the official models).
        patch_size: input pixels per embedding cell along a side (16 for the official models).
    """

    def __init__(self, params: SamParams) -> None:
        self.params = params
        self.img_size = params.config.image_size
        self.patch_size = params.config.image_encoder.pixels_per_token

    def __call__(self, x: Any) -> Any:
        """(B, 3, S, S) preprocessed images (normalised and padded, as `sam.preprocess` gives)
        -> (B, C, E, E) embeddings, in `x`'s array kind. A SAM-HQ model returns
        `(embeddings, [early features (B, E, E, D)])`, as `segment_anything_hq`'s encoders
        (channels last there, as theirs)."""
        s = self.img_size
        arr = float_array(x, "x", f"(B, 3, {s}, {s})", 4)
        if arr.shape[1:] != (3, s, s):
            raise ValueError(f"x must have shape (B, 3, {s}, {s}) (sam.preprocess gives it), got {arr.shape}")
        emb, early = _encode(self.params, nhwc(arr))
        out = as_kind(nchw(emb), kind_of(x), device_of(x))
        return out if early is None else (out, [as_kind(early, kind_of(x), device_of(x))])


_encode = jax.jit(encoder_outputs)


class PromptEncoder:
    """`sam.prompt_encoder`: the reference `PromptEncoder`'s call and `get_dense_pe()`."""

    def __init__(self, params: SamParams) -> None:
        cfg = params.config
        self.params = params
        self.embed_dim = cfg.prompt_embed_dim
        self.image_embedding_size = (cfg.embedding_size, cfg.embedding_size)
        self.input_image_size = (cfg.image_size, cfg.image_size)
        self.mask_input_size = (cfg.low_res_mask_size, cfg.low_res_mask_size)

    def __call__(self, points: Any = None, boxes: Any = None, masks: Any = None) -> tuple[Any, Any]:
        """Embeds prompts in the model input frame (the reference's arguments).

        Args:
            points: (coords (B, N, 2), labels (B, N)) or None.
            boxes: (B, 4) or (B, 1, 4) XYXY, or None.
            masks: (B, 1, L, L) low-res logits, or None.
        Returns:
            sparse (B, N', C) and dense (B, C, E, E) embeddings, in the prompts' array kind.
        """
        if points is not None and (not isinstance(points, (tuple, list)) or len(points) != 2):
            raise TypeError("points must be a pair (coords (B, N, 2), labels (B, N)), as the reference takes")
        given = [a for a in (*(points or ()), boxes, masks) if a is not None]
        kind, device = kind_of(*given), device_of(*given)
        coords = labels = box_arr = mask_arr = None
        if points is not None:
            coords = float_array(points[0], "points[0]", "(B, N, 2)", 3)
            labels = float_array(points[1], "points[1]", "(B, N)", 2).astype(np.int32)
            if coords.shape[2] != 2 or labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"points must be coords (B, N, 2) and labels (B, N), got {coords.shape}, {labels.shape}"
                )
        if boxes is not None:
            box_arr = to_numpy(boxes)
            shape = getattr(box_arr, "shape", None)
            if shape is None or len(shape) not in (2, 3) or shape[-1] != 4 or (len(shape) == 3 and shape[1] != 1):
                raise ValueError(f"boxes must have shape (B, 4) or (B, 1, 4), got {shape}")
            box_arr = float_array(boxes, "boxes", "(B, 4) or (B, 1, 4)", len(shape)).reshape(-1, 4)
        if masks is not None:
            side = self.mask_input_size[0]
            mask_arr = float_array(masks, "masks", f"(B, 1, {side}, {side})", 4)
            if mask_arr.shape[1:] != (1, side, side):
                raise ValueError(f"masks must have shape (B, 1, {side}, {side}), got {mask_arr.shape}")
            mask_arr = nhwc(mask_arr)
        sizes = {a.shape[0] for a in (coords, box_arr, mask_arr) if a is not None}
        if len(sizes) > 1:
            raise ValueError(f"points, boxes and masks must share their batch size, got {sorted(sizes)}")
        batch = sizes.pop() if sizes else 1
        sparse, dense, _ = _prompts(self.params, coords, labels, box_arr, mask_arr)
        dense = jnp.broadcast_to(dense, (batch, *dense.shape[1:]))  # the reference expands no-mask to B
        return as_kind(sparse, kind, device), as_kind(nchw(dense), kind, device)

    def get_dense_pe(self) -> Any:
        """The positional encoding of the embedding grid, (1, C, E, E): a torch tensor when the
        caller's code uses torch (as the reference's), else a numpy array that answers
        `.to(...)`/`.cpu()` (there is no argument to take the kind from)."""
        kind = "torch" if "torch" in sys.modules else "numpy"
        return as_kind(nchw(_dense_pe(self.params)[None]), kind)


@jax.jit
def _prompts(params: SamParams, coords: Any, labels: Any, boxes: Any, masks: Any) -> Any:
    return prompt_encoder_forward(params, coords, labels, boxes, masks)


@jax.jit
def _dense_pe(params: SamParams) -> jax.Array:
    return prompt_encoder_forward(params)[2]


class MaskDecoder:
    """`sam.mask_decoder`: the reference `MaskDecoder`'s call."""

    def __init__(self, params: SamParams) -> None:
        self.params = params
        self.num_multimask_outputs = params.config.num_multimask_outputs

    def __call__(
        self,
        image_embeddings: Any,
        image_pe: Any,
        sparse_prompt_embeddings: Any,
        dense_prompt_embeddings: Any,
        multimask_output: bool,
        hq_token_only: bool = False,
        interm_embeddings: Any = None,
    ) -> tuple[Any, Any]:
        """Masks for B prompts (the reference's arguments, channels first).

        Args:
            image_embeddings: (1, C, E, E), shared by every prompt (the reference repeats it
                per prompt), or (B, C, E, E) with one prompt each when B > 1 is one image per
                prompt.
            image_pe: (1, C, E, E) from `prompt_encoder.get_dense_pe()`.
            sparse_prompt_embeddings: (B, N, C); dense_prompt_embeddings: (B, C, E, E).
            multimask_output: 3 masks (else 1).
            hq_token_only, interm_embeddings: SAM-HQ's (`segment_anything_hq`): the HQ mask
                alone; the encoder's early features, a sequence whose first element is
                (1 or B, E, E, D) (or that array itself). SAM-HQ returns one mask per prompt.
        Returns:
            low-res mask logits (B, M, 4E, 4E) and IoU predictions (B, M), in the inputs' kind.
        """
        cfg = self.params.config
        c, e = cfg.prompt_embed_dim, cfg.embedding_size
        grid = f"(B, {c}, {e}, {e})"
        emb = float_array(image_embeddings, "image_embeddings", grid, 4)
        pe = float_array(image_pe, "image_pe", f"(1, {c}, {e}, {e})", 4)
        sparse = float_array(sparse_prompt_embeddings, "sparse_prompt_embeddings", f"(B, N, {c})", 3)
        dense = float_array(dense_prompt_embeddings, "dense_prompt_embeddings", grid, 4)
        for name, arr in (("image_embeddings", emb), ("image_pe", pe), ("dense_prompt_embeddings", dense)):
            if arr.shape[1:] != (c, e, e):
                raise ValueError(f"{name} must have shape {grid}, got {arr.shape}")
        if (
            sparse.shape[2] != c
            or dense.shape[0] not in (1, sparse.shape[0])
            or emb.shape[0] not in (1, sparse.shape[0])
        ):
            raise ValueError(
                f"sparse_prompt_embeddings (B, N, {c}), dense_prompt_embeddings and image_embeddings (1 or B, {c}, "
                f"{e}, {e}) must agree, got {sparse.shape}, {dense.shape}, {emb.shape}"
            )
        if not isinstance(multimask_output, (bool, np.bool_)):
            raise TypeError(f"multimask_output must be True or False, got {multimask_output!r}")
        hq_token_only = check_hq_token_only(
            cfg, bool(hq_token_only) if isinstance(hq_token_only, np.bool_) else hq_token_only
        )
        early = None
        if cfg.early_features_shape is not None:
            shape = f"(1 or B, {', '.join(map(str, cfg.early_features_shape))})"
            if interm_embeddings is None:
                raise ValueError(f"a SAM-HQ decoder needs interm_embeddings, the encoder's early features {shape}")
            first = interm_embeddings[0] if isinstance(interm_embeddings, (list, tuple)) else interm_embeddings
            early = float_array(first, "interm_embeddings[0]", shape, 4)
            if early.shape[1:] != cfg.early_features_shape or early.shape[0] not in (1, emb.shape[0]):
                raise ValueError(f"interm_embeddings[0] must have shape {shape}, got {early.shape}")
        low_res, iou = _decode(
            self.params, nhwc(emb), nhwc(pe)[0], sparse, nhwc(dense), bool(multimask_output), early, hq_token_only
        )
        args = (image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        kind, device = kind_of(*args), device_of(*args)
        return as_kind(low_res, kind, device), as_kind(iou, kind, device)


def preprocess(params: SamParams, x: Any) -> Any:
    """The reference `Sam.preprocess`: (B, 3, h, w) pixel values (h, w at most the input size)
    -> (B, 3, S, S) normalised (the config's way) and zero-padded bottom-right."""
    s = params.config.image_size
    arr = float_array(x, "x", f"(B, 3, h, w) with h, w <= {s}", 4)
    if arr.shape[1] != 3 or max(arr.shape[2:]) > s or min(arr.shape[2:]) < 1:
        raise ValueError(f"x must have shape (B, 3, h, w) with 1 <= h, w <= {s}, got {arr.shape}")
    b, _, h, w = arr.shape
    padded = np.zeros((b, s, s, 3), np.float32)
    padded[:, :h, :w] = nhwc(arr)
    out = _normalize(params, padded, np.broadcast_to(np.asarray([h, w], np.int32), (b, 2)))
    return as_kind(nchw(out), kind_of(x), device_of(x))


@jax.jit
def _normalize(params: SamParams, images: Any, input_hw: Any) -> jax.Array:
    return normalize_and_pad(params.config, images, input_hw)
