"""The functional predictor: `encode` an image once, `decode` many prompts against it.

Equivalent to the reference `SamPredictor.set_image` / `predict` / `predict_torch`, without
state: the image embedding is a value (`ImageEmbedding`) that the caller keeps.

Inputs are checked on the host before anything is traced, so a bad argument raises a
`ValueError`/`TypeError` naming it. Compiled programs are keyed so that:
- the encoder sees fixed (B, S, S, 3) uint8 inputs: images of any size share one program;
- the decoder sees prompts in a static layout (`prompt_layout`: up to 8 clicks and a box
  in the smallest, every mask token's output computed): one program per batch size,
  layout bucket and prompt kind (with a mask, or without one; both read the image side
  of the decoder's first layer made once per image, `first_layer`), so a whole
  interactive session (clicks, box, box and clicks, fed-back logits, multimask on and
  off) runs on two compiled decoders;
- mask post-processing (cheap), which also picks the single or multimask outputs, is
  keyed by the image size and the output options.
"""

from __future__ import annotations

import concurrent.futures
import functools
import operator
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import compilation_cache, transforms
from sam_jax.config import SamConfig
from sam_jax.modeling.prompt_encoder import (
    LABEL_BACKGROUND,
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    LABEL_EMPTY_SLOT,
    LABEL_FOREGROUND,
    LABEL_PADDING,
)
from sam_jax.modeling.sam import (
    SamParams,
    check_hq_token_only,
    decoder_first_layer,
    encoder_outputs,
    mask_decoder_hq_features,
    normalize_and_pad,
    predict_low_res_slots,
    select_masks,
)
from sam_jax.modeling.transformer import FirstLayerImage
from sam_jax.prompt_layout import fast_slots, layout_prompts, slot_bucket

POINT_LABELS = (LABEL_PADDING, LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT)

MASK_THRESHOLD = 0.0


@flax.struct.dataclass
class ImageEmbedding:
    """The encoder output for one image (or a batch of same-sized images).

    Attributes:
        image_embedding: (E, E, C) for one image, (B, E, E, C) for a batch; NHWC.
        original_size: (H, W) of the image(s) given to `encode`.
        input_size: (h, w) after resizing the longest side to the model's image size.
        early_features: (E, E, D) or (B, E, E, D), the encoder's early features, for a
            SAM-HQ model (its decoder reads them); None for SAM's.
    """

    image_embedding: jax.Array
    original_size: tuple[int, int] = flax.struct.field(pytree_node=False)
    input_size: tuple[int, int] = flax.struct.field(pytree_node=False)
    early_features: jax.Array | None = None

    @property
    def is_batch(self) -> bool:
        return self.image_embedding.ndim == 4

    def __len__(self) -> int:
        if not self.is_batch:
            raise TypeError("this ImageEmbedding holds one image; len() applies to batches")
        return int(self.image_embedding.shape[0])

    def __getitem__(self, i: int) -> ImageEmbedding:
        """The i-th image of a batch, as a single-image embedding (negative i counts from the end)."""
        if not self.is_batch:
            raise TypeError("this ImageEmbedding holds one image; only batches can be indexed")
        try:
            index = operator.index(i)
        except TypeError:
            raise TypeError(f"ImageEmbedding indices must be integers, got {type(i).__name__}") from None
        n = len(self)
        if not -n <= index < n:  # jax clamps out-of-range indices; a sequence raises
            raise IndexError(f"image {index} is out of range for a batch of {n}")
        early = None if self.early_features is None else self.early_features[index % n]
        return ImageEmbedding(self.image_embedding[index % n], self.original_size, self.input_size, early)

    def __iter__(self) -> Iterator[ImageEmbedding]:
        """The images of a batch, in order."""
        return (self[i] for i in range(len(self)))


# ----------------------------------------------------------------------------- checks


def check_params(params: Any) -> SamParams:
    """`params` as `SamParams`: themselves, or a `sam_jax.nnx.Sam`'s weights (the same arrays)."""
    if isinstance(params, SamParams):
        return params
    if "sam_jax.nnx" in sys.modules:  # an NNX model exists only once its module is imported
        from sam_jax.nnx import Sam, from_nnx

        if isinstance(params, Sam):
            return from_nnx(params)
    raise TypeError(
        "params must be SamParams (from sam_jax.load or sam_jax.init) or a sam_jax.nnx.Sam, "
        f"got {type(params).__name__}"
    )


def _as_numeric(value: Any, name: str, form: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError:  # nested lists of unequal lengths
        raise ValueError(f"{name} must be a rectangular array {form}; the nested lists differ in length") from None
    except Exception:
        raise TypeError(f"{name} must be an array of numbers {form}, got {type(value).__name__}") from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must be an array of numbers {form}, got dtype {arr.dtype}")
    # Checked as float32, the precision they are used in: 1e39 is finite in float64 only.
    with np.errstate(over="ignore"):
        if not np.all(np.isfinite(arr.astype(np.float32))):
            raise ValueError(f"{name} must be finite float32 values {form}; it contains NaN, infinite or huge values")
    return arr


def check_image(image: Any, *, allow_batch: bool = False) -> np.ndarray:
    """Returns `image` as a uint8 numpy array (H, W, 3), or (B, H, W, 3) if allowed."""
    form = "(B, H, W, 3) or (H, W, 3)" if allow_batch else "(H, W, 3)"
    if not hasattr(image, "__array__") and not isinstance(image, (list, tuple)):
        raise TypeError(f"image must be a uint8 RGB array {form}, got {type(image).__name__}")
    try:
        arr = np.asarray(image)
    except ValueError:
        raise ValueError(
            f"image must be one array {form}; images of different sizes cannot form a batch "
            "(sam_jax.forward runs them together; or encode them one at a time)"
        ) from None
    if arr.dtype != np.uint8:
        raise TypeError(f"image must be a uint8 RGB array {form} with values 0..255, got dtype {arr.dtype}")
    if not (arr.ndim == 3 or (allow_batch and arr.ndim == 4)):
        raise ValueError(f"image must have shape {form}, got {arr.shape}")
    if arr.shape[-1] != 3:
        raise ValueError(f"image must have 3 RGB channels last, shape {form}; got {arr.shape}")
    if arr.shape[-3] < 1 or arr.shape[-2] < 1 or (arr.ndim == 4 and arr.shape[0] < 1):
        raise ValueError(f"image must not be empty, got shape {arr.shape}")
    return arr


def check_prompts(
    points: Any,
    labels: Any,
    box: Any,
    mask_input: Any,
    mask_size: int,
) -> tuple[bool, np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validates prompts and returns them batched.

    Returns:
        (batched, points (B, N, 2) float64, labels (B, N) int32, box (B, 4) float64,
        mask_input (B, 1, L, L) float32), absent ones None.
    """
    if labels is not None and points is None:
        raise ValueError("labels were given without points")
    if points is None and box is None and mask_input is None:
        raise ValueError("no prompt given: pass points, box or mask_input")
    batched_by: dict[str, bool] = {}
    sizes: dict[str, int] = {}
    pts = lab = bx = msk = None
    if points is not None:
        pts = _as_numeric(points, "points", "of shape (N, 2) or (B, N, 2)").astype(np.float64)
        if pts.ndim not in (2, 3) or pts.shape[-1] != 2 or pts.shape[-2] < 1 or (pts.ndim == 3 and pts.shape[0] < 1):
            raise ValueError(f"points must have shape (N, 2) or (B, N, 2) with B, N >= 1, got {pts.shape}")
        batched_by["points"] = pts.ndim == 3
        pts = pts if pts.ndim == 3 else pts[None]
        sizes["points"] = pts.shape[0]
        if labels is None:
            lab = np.full(pts.shape[:2], LABEL_FOREGROUND, np.int32)
        else:
            want = pts.shape[:2] if batched_by["points"] else pts.shape[1:2]
            lab_arr = _as_numeric(labels, "labels", f"of shape {want}")
            if lab_arr.shape != want:
                raise ValueError(f"labels must have shape {want}, one per point, got {lab_arr.shape}")
            if not np.all(lab_arr == np.round(lab_arr)) or not np.all(np.isin(lab_arr, POINT_LABELS)):
                raise ValueError(
                    "labels must be 1 (foreground), 0 (background), -1 (ignored padding point), "
                    "or 2 / 3 (a box's top-left / bottom-right corner)"
                )
            lab = lab_arr.astype(np.int32).reshape(pts.shape[:2])
    if box is not None:
        bx = _as_numeric(box, "box", "of 4 numbers XYXY, shape (4,) or (B, 4)").astype(np.float64)
        if bx.ndim not in (1, 2) or bx.shape[-1] != 4 or (bx.ndim == 2 and bx.shape[0] < 1):
            raise ValueError(f"box must be 4 numbers XYXY, shape (4,) or (B, 4), got shape {bx.shape}")
        batched_by["box"] = bx.ndim == 2
        bx = bx if bx.ndim == 2 else bx[None]
        sizes["box"] = bx.shape[0]
    if mask_input is not None:
        m = mask_size
        msk = _as_numeric(mask_input, "mask_input", f"of low-res logits, shape (1, {m}, {m}) or (B, 1, {m}, {m})")
        if msk.ndim not in (3, 4) or msk.shape[-3:] != (1, m, m) or (msk.ndim == 4 and msk.shape[0] < 1):
            raise ValueError(f"mask_input must have shape (1, {m}, {m}) or (B, 1, {m}, {m}), got {msk.shape}")
        batched_by["mask_input"] = msk.ndim == 4
        msk = (msk if msk.ndim == 4 else msk[None]).astype(np.float32)
        sizes["mask_input"] = msk.shape[0]
    if len(set(batched_by.values())) > 1:
        desc = ", ".join(f"{k} {'batched' if v else 'unbatched'}" for k, v in batched_by.items())
        raise ValueError(f"prompts must be all batched or all unbatched, got {desc}")
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{k} B={v}" for k, v in sizes.items())
        raise ValueError(f"batched prompts must share their batch size B, got {desc}")
    return next(iter(batched_by.values())), pts, lab, bx, msk


def _with_dtype(params: SamParams, compute_dtype: Any) -> SamParams:
    return params if compute_dtype is None else params.with_compute_dtype(compute_dtype)


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# ----------------------------------------------------------------------------- compiled cores


@jax.jit
def encode_padded(params: SamParams, images: jax.Array, input_hw: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """The compiled encoder: (B, S, S, 3) uint8 images resized and zero-padded to the model's
    size, with their (B, 2) resized sizes -> (B, E, E, C) embeddings, and (B, E, E, D) early
    features for a SAM-HQ model (else None). One program for every image size (batch jobs
    call it on the batches they assemble)."""
    return encoder_outputs(params, normalize_and_pad(params.config, images, input_hw))


@jax.jit
def _decode_low_res(
    params: SamParams,
    image_embedding: jax.Array,
    points: jax.Array,
    labels: jax.Array,
    mask_input: jax.Array | None,
    has_mask: jax.Array | None,
    hq_features: jax.Array | None = None,
    first_layer: FirstLayerImage | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Slots from `layout_prompts`, mask_input (B, 1, L, L) with has_mask (B,) or both None,
    the image's `first_layer` (None for a batch with masks) and a SAM-HQ model's
    `hq_features` -> every output's (B, T, L, L) logits and (B, T) IoU predictions
    (`predict_low_res_slots`)."""
    if mask_input is not None:
        mask_input = jnp.moveaxis(mask_input, 1, -1)  # (B, 1, L, L) -> NHWC
    fewer = fast_slots(params.config.num_output_tokens)
    return predict_low_res_slots(
        params,
        image_embedding,
        points,
        labels,
        mask_input,
        has_mask,
        fewer,
        hq_features=hq_features,
        first_layer=first_layer,
    )


@jax.jit
def _compute_first_layer(params: SamParams, image_embedding: jax.Array) -> FirstLayerImage:
    return decoder_first_layer(params, image_embedding)


def first_layer(params: SamParams, embedding: ImageEmbedding) -> FirstLayerImage:
    """The decoder's image side for prompts without a mask (`decoder_first_layer`: the same
    for every such prompt on this image; a prompt with a mask reads it moved by the mask),
    made at the image's first decode, or by the preparation `encode` starts, and kept on the
    embedding for the weights it was made with."""
    weights = (params.weights["prompt_encoder"], params.weights["mask_decoder"]["transformer"]["layers_0"])
    make = functools.partial(_compute_first_layer, params, embedding.image_embedding)
    return _kept_on(embedding, "_first_layer", weights, make)


def _kept_on(embedding: ImageEmbedding, attribute: str, weights: Any, make: Callable[[], Any]) -> Any:
    """`make()`, computed once per embedding and kept on it as `attribute` while `weights`
    (a pytree of the arrays it depends on) hold the same arrays: compared by identity, so
    a `SamParams` rebuilt around them (as for a `sam_jax.nnx.Sam` at every call) keeps it."""
    leaves = jax.tree.leaves(weights)
    kept = getattr(embedding, attribute, None)
    if kept is None or len(kept[0]) != len(leaves) or any(a is not b for a, b in zip(kept[0], leaves, strict=True)):
        kept = (leaves, make())
        object.__setattr__(embedding, attribute, kept)
    return kept[1]


def kept_nbytes(params: SamParams, embedding: ImageEmbedding) -> int:
    """The bytes an embedding holds once decoded: its arrays, and what decoding keeps on it
    (`first_layer`, ~3.5x a SAM embedding; a SAM-HQ model's image features)."""
    arrays = [embedding.image_embedding, embedding.early_features]
    shapes = jax.eval_shape(_compute_first_layer, params, embedding.image_embedding)
    if params.config.hq and embedding.early_features is not None:
        shapes = (
            shapes,
            jax.eval_shape(_compute_hq_features, params, embedding.image_embedding, embedding.early_features),
        )
    leaves = [a for a in arrays if a is not None] + jax.tree.leaves(shapes)
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in leaves)


@jax.jit
def _compute_hq_features(params: SamParams, image_embedding: jax.Array, early_features: jax.Array) -> jax.Array:
    return mask_decoder_hq_features(params, image_embedding[None], early_features[None])


def hq_features(params: SamParams, embedding: ImageEmbedding) -> jax.Array | None:
    """A SAM-HQ model's HQ features of one image (None for SAM's), computed at its first
    decode and kept on the embedding: they depend on the image only, and cost as much as
    decoding a few prompts."""
    if not params.config.hq or embedding.early_features is None:
        return None
    make = functools.partial(_compute_hq_features, params, embedding.image_embedding, embedding.early_features)
    return _kept_on(embedding, "_hq_features", params.weights["mask_decoder"], make)


@functools.partial(
    jax.jit,
    static_argnames=(
        "input_size",
        "original_size",
        "image_size",
        "return_logits",
        "multimask_output",
        "squeeze",
        "hq",
        "hq_token_only",
    ),
)
def _postprocess(
    low_res: jax.Array,
    scores: jax.Array,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
    return_logits: bool,
    multimask_output: bool = True,
    squeeze: bool = False,
    hq: bool = False,
    hq_token_only: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Every token's (B, T, L, L) logits and (B, T) scores -> the outputs asked for
    (`select_masks`), and their masks at the original size. `squeeze` drops the axis of a
    single prompt here, inside the compiled call: indexing afterwards costs a dispatch per
    array (~2 of a vit_b one-point decode's ms)."""
    low_res, scores = select_masks(low_res, scores, multimask_output, hq=hq, hq_token_only=hq_token_only)
    if squeeze:
        low_res, scores = low_res[0], scores[0]
    masks = transforms.postprocess_masks(low_res, input_size, original_size, image_size)
    return (masks if return_logits else masks > MASK_THRESHOLD), scores, low_res


# ----------------------------------------------------------------------------- API


def preprocess_images(images: np.ndarray, config: SamConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """Host-side resize and pad of (B, H, W, 3) uint8 images -> ((B, S, S, 3), (h, w))."""
    resized = [transforms.resize_to_model(im, config) for im in images]
    return np.stack([transforms.pad_to_square(r, config.image_size) for r in resized]), resized[0].shape[:2]


def encode(params: SamParams, image: Any, *, compute_dtype: str | None = None, prepare: bool = True) -> ImageEmbedding:
    """Computes the image embedding (reference `SamPredictor.set_image`).

    Args:
        params: model weights and config.
        image: (H, W, 3) uint8 RGB, or (B, H, W, 3) for a batch of same-sized images.
        compute_dtype: "float32" or "bfloat16" for the encoder's arithmetic; None uses
            `params.compute_dtype` (float32 unless `load` or `with_compute_dtype` said otherwise).
        prepare: for one image, compile (or load from the persistent cache) the
            interactive session's programs (`prepare_session`) on a background thread, so
            that no click compiles; False for code that only reads the embedding or decodes
            in batches.
    Returns:
        An `ImageEmbedding` with `image_embedding` (E, E, C) float32, or (B, E, E, C) for a batch.
    """
    params = _with_dtype(check_params(params), compute_dtype)
    arr = check_image(image, allow_batch=True)
    batch = arr.ndim == 4
    images = arr if batch else arr[None]
    padded, input_size = preprocess_images(images, params.config)
    input_hw = np.broadcast_to(np.asarray(input_size, np.int32), (len(images), 2))
    emb, early = encode_padded(params, padded, input_hw)
    if not batch:
        emb, early = emb[0], None if early is None else early[0]
    h, w = images.shape[1:3]
    embedding = ImageEmbedding(emb, (int(h), int(w)), (int(input_size[0]), int(input_size[1])), early)
    if prepare and not batch:
        _prepare_image(params, embedding)
    return embedding


def decode(
    params: SamParams,
    embedding: ImageEmbedding,
    points: Any = None,
    labels: Any = None,
    *,
    box: Any = None,
    mask_input: Any = None,
    multimask_output: bool = True,
    return_logits: bool = False,
    hq_token_only: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Predicts masks for prompts on an encoded image (reference `SamPredictor.predict`).

    Args:
        params: model weights and config.
        embedding: from `encode` (one image; index a batch with `embedding[i]`).
        points: (N, 2) pixel (x, y) in the original image, or (B, N, 2) for B prompts.
        labels: (N,) or (B, N): 1 foreground, 0 background; default all foreground. -1
            marks a point to ignore (the reference's padding point, a token of its own);
            2 and 3 a box's top-left and bottom-right corners, as the reference's ONNX
            model takes a box: `points=[p, (x0, y0), (x1, y1)], labels=[l, 2, 3]` is
            `points=[p], labels=[l], box=[x0, y0, x1, y1]`.
        box: (4,) XYXY in original pixels, or (B, 4).
        mask_input: (1, L, L) low-res logits from an earlier call, or (B, 1, L, L);
            L = 256 for the official models.
        multimask_output: return 3 masks for ambiguous prompts, else 1. A SAM-HQ model
            returns one mask either way: its HQ mask added to SAM's best multimask output,
            or to SAM's single output (reference `segment_anything_hq`).
        return_logits: return mask logits instead of booleans.
        hq_token_only: SAM-HQ only: the HQ mask alone, not added to SAM's.
    Returns:
        masks: (C, H, W) bool (float32 logits with return_logits), (B, C, H, W) if batched.
        scores: (C,) or (B, C) float32 predicted IoU.
        low_res_logits: (C, L, L) or (B, C, L, L) float32.
    """
    params = check_params(params)
    _check_embedding(params, embedding)
    multimask_output = _check_flag(multimask_output, "multimask_output")
    return_logits = _check_flag(return_logits, "return_logits")
    hq_token_only = check_hq_token_only(params.config, _check_flag(hq_token_only, "hq_token_only"))
    batched, pts, lab, bx, msk = check_prompts(points, labels, box, mask_input, params.config.low_res_mask_size)
    _check_finite_embedding(embedding)
    size, scale = params.config.image_size, params.config.coordinate_scale
    if pts is not None:
        pts = transforms.apply_coords(pts, embedding.original_size, size, scale)
    if bx is not None:
        bx = transforms.apply_boxes(bx, embedding.original_size, size, scale)
    return _decode_in_input_frame(
        params, embedding, batched, pts, lab, bx, msk, multimask_output, return_logits, hq_token_only
    )


def _check_embedding(params: SamParams, embedding: Any) -> None:
    if not isinstance(embedding, ImageEmbedding):
        raise TypeError(f"embedding must be an ImageEmbedding from sam_jax.encode, got {type(embedding).__name__}")
    cfg = params.config
    e, c = cfg.embedding_size, cfg.prompt_embed_dim
    if embedding.is_batch:
        raise ValueError(f"embedding holds a batch of {len(embedding)} images; decode one at a time with embedding[i]")
    if tuple(embedding.image_embedding.shape) != (e, e, c):
        raise ValueError(
            f"embedding has shape {tuple(embedding.image_embedding.shape)}, but this model expects ({e}, {e}, {c})"
        )
    for name in ("original_size", "input_size"):
        size = getattr(embedding, name)
        if not (
            isinstance(size, tuple)
            and len(size) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size)
        ):
            raise ValueError(f"embedding.{name} must be (height, width), two integers >= 1, got {size!r}")
    if max(embedding.input_size) > cfg.image_size:
        raise ValueError(
            f"embedding.input_size {embedding.input_size} exceeds this model's image size {cfg.image_size}"
        )
    early = cfg.early_features_shape
    if early is not None:
        got = None if embedding.early_features is None else tuple(embedding.early_features.shape)
        if got != early:
            what = "has none" if got is None else f"has shape {got}"
            raise ValueError(
                f"a SAM-HQ model needs embedding.early_features of shape {early} (from sam_jax.encode "
                f"with this model), but the embedding {what}"
            )


def _check_finite_embedding(embedding: ImageEmbedding) -> None:
    """Refuses an embedding holding NaN or infinity (its masks would be empty and its scores
    NaN). Checked once per embedding, after every other argument (the answer is kept on it):
    one small reduction where the embedding is."""
    preparing = preparation(embedding)
    if preparing is not None:
        # Compiling a program beside the thread that is compiling it would only share the
        # CPU. A failed preparation is left to the calls that follow: they raise what it raised.
        concurrent.futures.wait([preparing])
    if not getattr(embedding, "_finite", False):
        if not bool(_all_finite(embedding.image_embedding)):
            raise ValueError("embedding.image_embedding holds NaN or infinite values")
        if embedding.early_features is not None and not bool(_all_finite(embedding.early_features)):
            raise ValueError("embedding.early_features holds NaN or infinite values")
        object.__setattr__(embedding, "_finite", True)


@jax.jit
def _all_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x))


def _decode_in_input_frame(
    params: SamParams,
    embedding: ImageEmbedding,
    batched: bool,
    pts: np.ndarray | None,
    lab: np.ndarray | None,
    bx: np.ndarray | None,
    msk: np.ndarray | None,
    multimask_output: bool,
    return_logits: bool,
    hq_token_only: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Checked, batched prompts in the model's input frame -> `decode`'s outputs."""
    cfg = params.config
    pts = None if pts is None else pts.astype(np.float32)
    bx = None if bx is None else bx.astype(np.float32)
    b = next(a.shape[0] for a in (pts, bx, msk) if a is not None)
    coords, slots = layout_prompts(pts, lab, bx, b, cfg.num_output_tokens)
    if msk is not None and (preparing := preparation(embedding, mask=True)) is not None:
        concurrent.futures.wait([preparing])  # as in `_check_finite_embedding`
    # Prompts share the image side of the decoder's first layer, made once per image; one
    # prompt with a mask reads it moved by the mask, a batch of them projects its own.
    has_mask = None if msk is None else np.ones(b, np.float32)
    first = first_layer(params, embedding) if msk is None or b == 1 else None
    hq = hq_features(params, embedding)
    low_res, scores = _decode_low_res(params, embedding.image_embedding, coords, slots, msk, has_mask, hq, first)
    return _postprocess(
        low_res,
        scores,
        embedding.input_size,
        embedding.original_size,
        cfg.image_size,
        return_logits,
        multimask_output,
        not batched,
        cfg.hq,
        hq_token_only,
    )


def predict(
    params: SamParams,
    image: Any,
    points: Any = None,
    labels: Any = None,
    *,
    box: Any = None,
    mask_input: Any = None,
    multimask_output: bool = True,
    return_logits: bool = False,
    compute_dtype: str | None = None,
    hq_token_only: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Encodes `image` and decodes the prompts: `decode(params, encode(params, image), ...)`.

    Args:
        image: (H, W, 3) uint8 RGB.
        compute_dtype: the encoder's compute dtype, see `encode`.
        See `decode` for the others.
    Returns:
        (masks, scores, low_res_logits) as `decode`.
    """
    params = _with_dtype(check_params(params), compute_dtype)
    arr = check_image(image)
    # Check prompts and flags before the (expensive) encoder runs.
    check_prompts(points, labels, box, mask_input, params.config.low_res_mask_size)
    _check_flag(multimask_output, "multimask_output")
    _check_flag(return_logits, "return_logits")
    check_hq_token_only(params.config, _check_flag(hq_token_only, "hq_token_only"))
    return decode(
        params,
        encode(params, arr, prepare=False),  # one decode: nothing to prepare for
        points,
        labels,
        box=box,
        mask_input=mask_input,
        multimask_output=multimask_output,
        return_logits=return_logits,
        hq_token_only=hq_token_only,
    )


# ----------------------------------------------------------------------------- preparation

# By program signature: (the programs of prompts without a mask, every program).
_PREPARATIONS: dict[Any, tuple[concurrent.futures.Future[None], concurrent.futures.Future[None]]] = {}
_IMAGE_PREPARATIONS: list[concurrent.futures.Future[None]] = []  # unfinished, of `_prepare_image`
_PREPARATIONS_LOCK = threading.Lock()
_PREPARER: concurrent.futures.ThreadPoolExecutor | None = None
_IMAGE_PREPARER: concurrent.futures.ThreadPoolExecutor | None = None


def prepare_session(
    params: SamParams, embedding: ImageEmbedding, *, background: bool = False
) -> concurrent.futures.Future[None]:
    """Compiles, ahead of time, every program that `decode` runs in an interactive session
    on this embedding's image, so that no click compiles (docs/interactive.md):

    - the decoder of one prompt in the smallest static layout (up to 8 clicks and a box,
      10 clicks without one), without a mask and with fed-back logits, both from the
      image's `first_layer`; and the program that makes `first_layer`;
    - the post-processing to the image's size, multimask on and off (a SAM-HQ model's with
      `hq_token_only` either way), masks as booleans;
    - the embedding's finiteness check, and a SAM-HQ model's image features.

    With the persistent compilation cache off, a background preparation first waits for
    the embedding: compiling beside the encoder would slow it down.

    Programs depend on shapes, not values: once prepared for a model and an image size,
    every later image of that size is ready. With the persistent compilation cache (on by
    default, `sam_jax.compilation_cache`) a new process loads them instead of compiling.
    `encode` starts this in the background for every single image.

    Args:
        params: the model (its weights' shapes and config).
        embedding: one image's, from `encode` (its values need not be computed yet).
        background: compile on a worker thread and return at once.
    Returns:
        A future, done when every program is ready; its `result()` raises what compiling raised.
    """
    params = check_params(params)
    _check_embedding(params, embedding)
    return _session_futures(params, embedding, background)[1]


def _session_futures(
    params: SamParams, embedding: ImageEmbedding, background: bool
) -> tuple[concurrent.futures.Future[None], concurrent.futures.Future[None]]:
    """`prepare_session`'s two stages, each a future: the programs of prompts without a mask
    (a session's first clicks), then the decoder of prompts with one, compiled after them
    (where nothing is cached, the first click waits for half as much compiling)."""
    leaves, tree = jax.tree.flatten(params)
    arrays = (embedding.image_embedding, embedding.early_features)
    key = (
        tree,
        tuple((leaf.shape, str(leaf.dtype)) for leaf in leaves),
        tuple(None if a is None else (a.shape, str(a.dtype)) for a in arrays),
        embedding.original_size,
        embedding.input_size,
    )
    global _PREPARER
    with _PREPARATIONS_LOCK:
        futures = _PREPARATIONS.get(key)
        if futures is not None and not any(f.done() and f.exception() is not None for f in futures):
            return futures
        if background:
            if _PREPARER is None:
                _PREPARER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sam-jax-prepare")
            clicks = _PREPARER.submit(_compile_session, params, embedding, False)
            futures = (clicks, _PREPARER.submit(_after, clicks, _compile_session, params, embedding, True))
        else:
            futures = (concurrent.futures.Future(), concurrent.futures.Future())
        _PREPARATIONS[key] = futures
    if not background:
        for stage, with_mask in enumerate((False, True)):
            try:
                _compile_session(params, embedding, with_mask)
                futures[stage].set_result(None)
            except BaseException as e:
                for future in futures[stage:]:  # a later stage is not run: it fails alike, not pending
                    future.set_exception(e)
                raise
    return futures


def _after(first: concurrent.futures.Future[None], run: Callable[..., None], *args: Any) -> None:
    """`run(*args)` once `first` is done; raises what `first` raised."""
    first.result()
    run(*args)


def _prepare_image(params: SamParams, embedding: ImageEmbedding) -> None:
    """`prepare_session` in the background, and this image's `first_layer` once its program
    is ready (on a worker of its own: beside the second stage's compilation); kept on the
    embedding as the futures that `decode` waits for."""
    global _IMAGE_PREPARER
    clicks, everything = _session_futures(params, embedding, background=True)
    with _PREPARATIONS_LOCK:
        if _IMAGE_PREPARER is None:
            _IMAGE_PREPARER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sam-jax-image")
        future = _IMAGE_PREPARER.submit(_after, clicks, lambda: jax.block_until_ready(first_layer(params, embedding)))
        _IMAGE_PREPARATIONS[:] = [f for f in _IMAGE_PREPARATIONS if not f.done()] + [future]
    object.__setattr__(embedding, "_preparing", future)
    object.__setattr__(embedding, "_preparing_masks", everything)


def wait_for_preparations() -> None:
    """Waits for every preparation started so far (before timing decodes or counting
    compilations: a background preparation uses the CPU and compiles)."""
    with _PREPARATIONS_LOCK:
        pending = [f for futures in _PREPARATIONS.values() for f in futures] + _IMAGE_PREPARATIONS
    concurrent.futures.wait(pending)


def preparation(embedding: ImageEmbedding, mask: bool = False) -> concurrent.futures.Future[None] | None:
    """The preparation `encode` started for this embedding, or None: done when prompts
    without a mask are ready (the programs and `first_layer`), or with `mask`, when every
    program of `prepare_session` is."""
    return getattr(embedding, "_preparing_masks" if mask else "_preparing", None)


def _compile_session(params: SamParams, embedding: ImageEmbedding, with_mask: bool) -> None:
    """`prepare_session`'s programs, lowered from shapes and compiled (`jit(...).lower(...)
    .compile()` fills the same cache that a call looks in): those of prompts without a
    mask, or (`with_mask`) the decoder of prompts with one."""

    def spec(x: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    if compilation_cache.cache_folder() is None and not with_mask:
        # Without the persistent cache every program compiles, which beside the encoder
        # would hold a core it needs: wait for it. With the cache (the default) programs are
        # mostly loaded, cheap enough to overlap the encoder so that the first click finds
        # them ready (docs/interactive.md has the measurements).
        jax.block_until_ready((embedding.image_embedding, embedding.early_features))
    cfg = params.config
    emb = spec(embedding.image_embedding)
    early = None if embedding.early_features is None else spec(embedding.early_features)
    hq = None
    if early is not None:
        hq = spec(_compute_hq_features.lower(params, emb, early).compile().out_info)
    slots, low = slot_bucket(1, cfg.num_output_tokens), cfg.low_res_mask_size
    points = (jax.ShapeDtypeStruct((1, slots, 2), np.float32), jax.ShapeDtypeStruct((1, slots), np.int32))
    if with_mask:
        mask = (jax.ShapeDtypeStruct((1, 1, low, low), np.float32), jax.ShapeDtypeStruct((1,), np.float32))
        prompt: tuple[Any, ...] = (*mask, hq, jax.eval_shape(_compute_first_layer, params, emb))
    else:
        _all_finite.lower(emb).compile()
        if early is not None:
            _all_finite.lower(early).compile()
        prompt = (None, None, hq, jax.tree.map(spec, _compute_first_layer.lower(params, emb).compile().out_info))
    low_res, scores = (spec(x) for x in _decode_low_res.lower(params, emb, *points, *prompt).compile().out_info)
    # One run of each branch on zeros: a program's first run of a branch costs several of
    # its later runs (buffers allocated and touched for the first time).
    zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), (emb, prompt))
    for used in (1, slots):
        labels = np.full((1, slots), LABEL_EMPTY_SLOT, np.int32)
        labels[:, :used] = LABEL_FOREGROUND
        jax.block_until_ready(_decode_low_res(params, zeros[0], np.zeros((1, slots, 2), np.float32), labels, *zeros[1]))
    if with_mask:
        return
    for multimask_output in (True, False):
        for hq_token_only in (False, True) if cfg.hq else (False,):
            _postprocess.lower(
                low_res,
                scores,
                embedding.input_size,
                embedding.original_size,
                cfg.image_size,
                False,
                multimask_output,
                True,
                cfg.hq,
                hq_token_only,
            ).compile()


def encode_cache_size() -> int:
    """How many encoder programs are compiled (for tests of the no-recompile contract)."""
    return int(encode_padded._cache_size())  # type: ignore[attr-defined]


def decode_cache_size() -> int:
    return int(_decode_low_res._cache_size())  # type: ignore[attr-defined]


def decode_input_frame(
    params: SamParams,
    embedding: ImageEmbedding,
    points: Any = None,
    labels: Any = None,
    *,
    box: Any = None,
    mask_input: Any = None,
    multimask_output: bool = True,
    return_logits: bool = False,
    hq_token_only: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`decode` for prompts already in the model's input frame, the resized image's pixels
    (reference `SamPredictor.predict_torch` and `Sam.forward` take them so).

    Args:
        points: (N, 2) or (B, N, 2) (x, y) in the resized image (`transforms.apply_coords`).
        box: (4,) or (B, 4) XYXY in the resized image (`transforms.apply_boxes`).
        See `decode` for the others.
    Returns:
        (masks, scores, low_res_logits) as `decode`: masks at `embedding.original_size`.
    """
    params = check_params(params)
    _check_embedding(params, embedding)
    multimask_output = _check_flag(multimask_output, "multimask_output")
    return_logits = _check_flag(return_logits, "return_logits")
    hq_token_only = check_hq_token_only(params.config, _check_flag(hq_token_only, "hq_token_only"))
    batched, pts, lab, bx, msk = check_prompts(points, labels, box, mask_input, params.config.low_res_mask_size)
    _check_finite_embedding(embedding)
    return _decode_in_input_frame(
        params, embedding, batched, pts, lab, bx, msk, multimask_output, return_logits, hq_token_only
    )


__all__: Sequence[str] = ["ImageEmbedding", "decode", "decode_input_frame", "encode", "predict", "prepare_session"]
