"""The whole model as data: `SamParams` (config + weights pytree) and pure forward functions.

There is no stateful model object. `SamParams` is a pytree whose leaves are the weights and
whose static part is the `SamConfig`, so `jax.jit`, `jax.grad` and optax take it as is and
every function below needs nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from sam_jax.config import SamConfig, TinyViTConfig
from sam_jax.modeling.attention_kernels import check_attention
from sam_jax.modeling.image_encoder import ImageEncoderViT
from sam_jax.modeling.mask_decoder import MaskDecoder, select_outputs
from sam_jax.modeling.mask_decoder_hq import MaskDecoderHQ, select_hq_outputs
from sam_jax.modeling.prompt_encoder import LABEL_EMPTY_SLOT, PromptEncoder
from sam_jax.modeling.tiny_vit import TinyViT
from sam_jax.modeling.transformer import FirstLayerImage, first_layer_image, moved_first_layer

COMPONENTS = ("image_encoder", "prompt_encoder", "mask_decoder")
# Compute dtypes of the image encoder; weights are float32 in either case.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_F = TypeVar("_F", bound=Callable[..., Any])


def check_compute_dtype(value: Any, name: str = "compute_dtype") -> str:
    """Returns the dtype's name ("float32" or "bfloat16"); raises naming `name` otherwise."""
    if not isinstance(value, str) and value in COMPUTE_DTYPES.values():
        value = jnp.dtype(value).name
    if not isinstance(value, str) or value not in COMPUTE_DTYPES:
        raise ValueError(f"{name} must be 'float32' or 'bfloat16', got {value!r}")
    return value


@flax.struct.dataclass
class SamParams:
    """SAM weights with their configuration.

    Attributes:
        config: the architecture (static: part of the pytree structure, not a leaf).
        weights: `{"image_encoder": ..., "prompt_encoder": ..., "mask_decoder": ...}`, each
            a nested dict of arrays whose paths mirror the reference state_dict keys
            (`blocks_3/attn/qkv/kernel` <-> `blocks.3.attn.qkv.weight`).
        compute_dtype: "float32" (default, exact to the reference) or "bfloat16": the
            dtype the image encoder computes in (static). Weights stay float32 either way
            (cast per use), and prompt encoder, decoder and embeddings stay float32.
        attention: the image encoder's attention path (static): "auto" picks by backend and
            dtype; a name of `attention_kernels.PATHS` forces one (tests, benchmarks).

    The static fields are part of the pytree's structure: each choice is its own compiled
    program, chosen once, and changing one never touches a program compiled for another.
    """

    config: SamConfig = flax.struct.field(pytree_node=False)
    weights: dict[str, Any]
    compute_dtype: str = flax.struct.field(pytree_node=False, default="float32")
    attention: str = flax.struct.field(pytree_node=False, default="auto")

    def with_compute_dtype(self, compute_dtype: Any) -> SamParams:
        """The same weights computing in `compute_dtype` ("float32" or "bfloat16")."""
        return dataclasses.replace(self, compute_dtype=check_compute_dtype(compute_dtype))

    def with_attention(self, attention: str) -> SamParams:
        """The same weights with the image encoder's attention path `attention`."""
        return dataclasses.replace(self, attention=check_attention(attention))


def float32_matmuls(forward: _F) -> _F:
    """Traces `forward(params, ...)` with full-precision matmuls when `params.compute_dtype`
    is "float32".

    Why: XLA runs float32 matmuls and convolutions in TF32 on NVIDIA GPUs (and in bfloat16
    passes on TPUs) unless asked for "highest"; float32 mode must be float32 there as on the
    CPU. bfloat16 mode keeps the backend's default (for its float32 decoder too).
    """

    @functools.wraps(forward)
    def wrapped(params: SamParams, *args: Any, **kwargs: Any) -> Any:
        if params.compute_dtype != "float32":
            return forward(params, *args, **kwargs)
        with jax.default_matmul_precision("highest"):
            return forward(params, *args, **kwargs)

    return cast(_F, wrapped)


def _dummy_inputs(config: SamConfig) -> dict[str, tuple[Any, ...]]:
    s, e, c = config.image_size, config.embedding_size, config.prompt_embed_dim
    m = config.low_res_mask_size
    f32 = jnp.float32
    return {
        "image_encoder": (jnp.zeros((1, s, s, 3), f32),),
        "prompt_encoder": (
            jnp.zeros((1, 1, 2), f32),
            jnp.ones((1, 1), jnp.int32),
            jnp.zeros((1, 4), f32),
            jnp.zeros((1, m, m, 1), f32),
        ),
        "mask_decoder": (
            jnp.zeros((1, e, e, c), f32),
            jnp.zeros((e, e, c), f32),
            jnp.zeros((1, 3, c), f32),
            jnp.zeros((1, e, e, c), f32),
            True,
            *([] if config.early_features_shape is None else [jnp.zeros((1, *config.early_features_shape), f32)]),
        ),
    }


def image_encoder_module(
    config: SamConfig, dtype: Any = jnp.float32, remat: bool = False, attention: str = "auto"
) -> nn.Module:
    """The image encoder the config chooses (`ViTConfig` or `TinyViTConfig`), built once here
    so that every caller runs whichever one a checkpoint holds. It returns the early features
    too (`(embeddings, early)`) when the model's decoder reads them (SAM-HQ)."""
    encoder = config.image_encoder
    if isinstance(encoder, TinyViTConfig):
        fields = {f.name: getattr(encoder, f.name) for f in dataclasses.fields(encoder)}
        return TinyViT(**fields, out_chans=config.prompt_embed_dim, dtype=dtype, remat=remat, early_features=config.hq)
    return ImageEncoderViT(encoder, config.image_size, config.prompt_embed_dim, dtype, remat, attention, config.hq)


def mask_decoder_module(config: SamConfig) -> MaskDecoder:
    """The mask decoder the config chooses: SAM's, or SAM-HQ's (`config.mask_decoder`)."""
    return MaskDecoderHQ(config) if config.hq else MaskDecoder(config)


def modules(config: SamConfig) -> dict[str, Any]:
    """The three flax modules of a config, keyed like `SamParams.weights`."""
    return {
        "image_encoder": image_encoder_module(config),
        "prompt_encoder": PromptEncoder(config),
        "mask_decoder": mask_decoder_module(config),
    }


def init_params(config: SamConfig, rng: jax.Array | int = 0) -> SamParams:
    """Randomly initialised weights: flax's default initialisers, with the reference's zeros
    for `pos_embed` and the relative-position tables.

    (Deliberately plain: docs/embedded-model.md says what other choices did from scratch.)

    Args:
        config: the architecture.
        rng: a PRNG key or an integer seed.
    Returns:
        `SamParams` on the default device.
    """
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    keys = dict(zip(COMPONENTS, jax.random.split(rng, len(COMPONENTS)), strict=True))
    top_level = not isinstance(rng, jax.core.Tracer)  # inside a caller's jit or eval_shape: no options
    weights = {name: component_initializer(config, name, top_level)(keys[name]) for name in COMPONENTS}
    return SamParams(config=config, weights=weights)


@functools.cache
def component_initializer(config: SamConfig, name: str, top_level: bool = True) -> Callable[[jax.Array], Any]:
    """The compiled initialiser of one component's weights: key -> weights tree.

    Cached per config, so a second model of the same architecture costs no compilation.
    Under jit, XLA drops the forward pass that `init` traces: only the params are outputs.
    """
    module = modules(config)[name]

    def init(key: jax.Array) -> Any:
        return module.init(key, *_dummy_inputs(config)[name])["params"]

    # Compiler options are only taken by a jit that is not inside another.
    return jax.jit(init, compiler_options=run_once_compiler_options() if top_level else None)


def run_once_compiler_options() -> dict[str, Any]:
    """Compiler options for a program that runs once (an initialiser): on the CPU, LLVM's
    optimisations of its many random-number kernels cost more to apply than they save
    (docs/performance.md)."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}


def abstract_params(config: SamConfig) -> SamParams:
    """`SamParams` of `jax.ShapeDtypeStruct` leaves: the expected shapes, computed without work."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def normalize_and_pad(config: SamConfig, images: jax.Array, input_hw: jax.Array) -> jax.Array:
    """Reference `Sam.preprocess` on device for images already padded on the host.

    Args:
        images: (B, S, S, 3) uint8, resized images in the top-left corner, any padding.
        input_hw: (B, 2) int, the resized (h, w) of each image.
    Returns:
        (B, S, S, 3) float32, exactly 0 in the padding (the reference pads after
        normalising); inside each image as `config.normalize` says: "mean_std",
        (x - pixel_mean) / pixel_std; "min_max", (x - min) / (max - min) over that image's
        pixels (LiteMedSAM, whose range floor is 1e-8).
    """
    s = images.shape[1]
    rows = jnp.arange(s)[None, :] < input_hw[:, 0:1]
    cols = jnp.arange(s)[None, :] < input_hw[:, 1:2]
    valid = (rows[:, :, None] & cols[:, None, :])[..., None]
    x = images.astype(jnp.float32)
    if config.normalize == "min_max":
        low = jnp.min(jnp.where(valid, x, jnp.inf), axis=(1, 2, 3), keepdims=True)
        high = jnp.max(jnp.where(valid, x, -jnp.inf), axis=(1, 2, 3), keepdims=True)
        x = (x - low) / jnp.maximum(high - low, 1e-8)
    else:
        x = (x - jnp.asarray(config.pixel_mean, jnp.float32)) / jnp.asarray(config.pixel_std, jnp.float32)
    return jnp.where(valid, x, 0.0)


def apply(module: Any, weights: Any, *args: Any, method: str | None = None) -> Any:
    """`module.apply` with the module's weights (a method of the module's by name)."""
    return module.apply({"params": weights}, *args, method=method)


@float32_matmuls
def encoder_outputs(params: SamParams, images: jax.Array, remat: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """Normalised, padded images (B, S, S, 3) -> (image embeddings (B, E, E, C) float32,
    early features (B, E, E, D) float32 for a model whose decoder reads them, else None),
    computed in `params.compute_dtype` (see `ImageEncoderViT`).

    Args:
        remat: gradient checkpointing of encoder blocks (for training).
    """
    dtype = COMPUTE_DTYPES[params.compute_dtype]
    module = image_encoder_module(params.config, dtype, remat, params.attention)
    out = apply(module, params.weights["image_encoder"], images)
    return out if params.config.hq else (out, None)


def image_encoder_forward(params: SamParams, images: jax.Array, remat: bool = False) -> jax.Array:
    """`encoder_outputs`' image embeddings alone."""
    return encoder_outputs(params, images, remat)[0]


@float32_matmuls
def prompt_encoder_forward(
    params: SamParams,
    points: jax.Array | None = None,
    labels: jax.Array | None = None,
    boxes: jax.Array | None = None,
    masks: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """See `PromptEncoder.__call__`: returns (sparse, dense, dense_pe)."""
    module = PromptEncoder(params.config)
    return apply(module, params.weights["prompt_encoder"], points, labels, boxes, masks)


@float32_matmuls
def mask_decoder_forward(
    params: SamParams,
    image_embedding: jax.Array,
    image_pe: jax.Array,
    sparse: jax.Array,
    dense: jax.Array,
    multimask_output: bool,
    early_features: jax.Array | None = None,
    hq_token_only: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """See `MaskDecoder.__call__` (and `MaskDecoderHQ.__call__`, which takes the early
    features and `hq_token_only`): returns (low-res logits (B, M, 4E, 4E), iou (B, M))."""
    module, weights = mask_decoder_module(params.config), params.weights["mask_decoder"]
    args = (image_embedding, image_pe, sparse, dense, multimask_output)
    return apply(module, weights, *mask_decoder_arguments(params.config, args, early_features, hq_token_only))


def mask_decoder_arguments(
    config: SamConfig, args: tuple[Any, ...], early_features: jax.Array | None, hq_token_only: bool
) -> tuple[Any, ...]:
    """The positional arguments of the config's decoder after SAM's five (`args`): SAM-HQ's
    also take the early features and `hq_token_only`; SAM's refuse `hq_token_only=True`."""
    if config.hq:
        if early_features is None:
            raise ValueError("a SAM-HQ decoder needs the encoder's early features")
        return (*args, early_features, hq_token_only)
    check_hq_token_only(config, hq_token_only)
    return args


def check_hq_token_only(config: SamConfig, hq_token_only: Any) -> bool:
    """`hq_token_only` as a bool; True only for a SAM-HQ model (raises naming it otherwise)."""
    if not isinstance(hq_token_only, bool):
        raise TypeError(f"hq_token_only must be True or False, got {hq_token_only!r}")
    if hq_token_only and not config.hq:
        raise ValueError("hq_token_only=True needs a SAM-HQ model; this one has SAM's decoder")
    return hq_token_only


def select_masks(
    low_res: jax.Array, iou_pred: jax.Array, multimask_output: bool, *, hq: bool = False, hq_token_only: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Every output's logits (B, T, ...) (SAM-HQ, `hq`: T + 1, its mask last) and IoU (B, T)
    -> the outputs asked for: SAM's multimask or single output; SAM-HQ's one mask per prompt
    (`select_hq_outputs`)."""
    if hq:
        return select_hq_outputs(low_res, iou_pred, multimask_output, hq_token_only)
    return select_outputs(low_res, multimask_output), select_outputs(iou_pred, multimask_output)


@float32_matmuls
def mask_decoder_tokens(
    params: SamParams, image_embedding: jax.Array, image_pe: jax.Array, sparse: jax.Array, dense: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """See `MaskDecoder.decode_tokens`: returns (mask tokens, image tokens, iou of every output)."""
    module = mask_decoder_module(params.config)
    return apply(
        module, params.weights["mask_decoder"], image_embedding, image_pe, sparse, dense, method="decode_tokens"
    )


@float32_matmuls
def mask_decoder_masks(
    params: SamParams,
    mask_tokens_out: jax.Array,
    src: jax.Array,
    multimask_output: bool | None,
    hq_features: jax.Array | None = None,
) -> jax.Array:
    """See `MaskDecoder.predict_masks`: returns low-res logits (B, M, 4E, 4E). A SAM-HQ
    decoder takes `hq_features` and computes every output (multimask_output None)."""
    module = mask_decoder_module(params.config)
    args = (mask_tokens_out, src, multimask_output) + ((hq_features,) if params.config.hq else ())
    return apply(module, params.weights["mask_decoder"], *args, method="predict_masks")


@float32_matmuls
def mask_decoder_hq_features(params: SamParams, image_embedding: jax.Array, early_features: jax.Array) -> jax.Array:
    """See `MaskDecoderHQ.hq_features`: one image's (1, E, E, C) embedding and (1, E, E, D)
    early features -> what its decoder adds to the HQ mask's features."""
    module = mask_decoder_module(params.config)
    return apply(module, params.weights["mask_decoder"], image_embedding, early_features, method="hq_features")


@float32_matmuls
def decoder_first_layer(params: SamParams, image_embedding: jax.Array) -> FirstLayerImage:
    """One image's (E, E, C) embedding -> the decoder's image side for prompts without a
    mask (`FirstLayerImage`, 14 MiB for SAM): the same for every such prompt, so made once
    per image and passed to `predict_low_res_slots`, it takes the first block's image-token
    projections out of every click (a third of the transformer's work for one click)."""
    cfg = params.config
    dense, pe = apply(PromptEncoder(cfg), params.weights["prompt_encoder"], None, None, method="encode_dense")
    tokens = cfg.embedding_size**2
    keys = (image_embedding[None] + dense).reshape(1, tokens, -1)
    weights = params.weights["mask_decoder"]["transformer"]
    return first_layer_image(weights, keys, pe.reshape(1, tokens, -1), cfg.decoder_num_heads)


@float32_matmuls
def decoder_first_layer_with_mask(
    params: SamParams,
    first_layer: FirstLayerImage,
    image_embedding: jax.Array,
    mask_input: jax.Array,
    has_mask: jax.Array,
) -> FirstLayerImage:
    """`decoder_first_layer` of one image, moved to one prompt with a mask: (1, 4E, 4E, 1)
    logits with has_mask (1,). The image tokens are the embedding plus the mask's dense
    embedding, as without `first_layer`; their projections move by the mask embedding's
    change from `no_mask`, which is of rank `mask_in_chans` (`moved_first_layer`)."""
    prompt_encoder, prompt_weights = PromptEncoder(params.config), params.weights["prompt_encoder"]
    dense, change = apply(prompt_encoder, prompt_weights, mask_input, has_mask, method="flagged_mask_change")
    _, e, _, c = dense.shape
    keys = (image_embedding[None] + dense).reshape(1, e * e, c)
    features = change.features.reshape(e * e, -1)
    weights = params.weights["mask_decoder"]["transformer"]
    return moved_first_layer(weights, first_layer, keys, features, change.basis, change.offset[0])


def predict_low_res_slots(
    params: SamParams,
    image_embedding: jax.Array,
    points: jax.Array,
    labels: jax.Array,
    mask_input: jax.Array | None,
    has_mask: jax.Array | None,
    fewer_slots: tuple[int, ...] = (),
    early_features: jax.Array | None = None,
    hq_features: jax.Array | None = None,
    first_layer: FirstLayerImage | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Prompts in a static layout (one program serves many prompt kinds) -> every mask
    token's low-res logits and IoU prediction; the caller picks the outputs it needs.

    Args:
        image_embedding: (E, E, C) one image's embedding.
        points: (B, S, 2) float32 in the model input frame, box corners included.
        labels: (B, S) int32: -1 not-a-point, 0 background, 1 foreground, 2 / 3 box corners,
            -2 an empty slot (left out of the decoder's attention, as if absent). Empty slots
            come after the used ones.
        mask_input: (B, 4E, 4E, 1) float32 with has_mask (B,) float32 0 / 1, or both None.
        fewer_slots: increasing slot counts below S: the program also holds the decoder for
            the first k slots alone, for each k, and runs the smallest that every prompt's
            used slots fit in: the cross-attention's cost grows with the token count, so a
            short prompt does not pay for the layout's empty slots, and still no second
            program is compiled (each k adds a copy of the transformer to compile).
        early_features: (E, E, D) the image's early features, for a SAM-HQ model; or
            hq_features: what `mask_decoder_hq_features` made of them, (1, E, E, ...), when
            the caller keeps that per image (it costs as much as a few prompts' decode).
        first_layer: `decoder_first_layer` of this image, when the caller keeps it per
            image: prompts without a mask read it as it is, one prompt with a mask reads it
            moved by the mask (`decoder_first_layer_with_mask`); a batch of prompts with
            masks does not use it.
    Returns:
        low_res_logits (B, num_mask_tokens, 4E, 4E), iou_predictions (B, num_mask_tokens):
        token 0 is the single-mask output, 1.. the multimask ones; a SAM-HQ model's HQ
        mask comes last in the logits (`select_masks` picks the outputs).
    """
    prompt_encoder, prompt_weights = PromptEncoder(params.config), params.weights["prompt_encoder"]
    if first_layer is not None and mask_input is not None and has_mask is not None:
        if mask_input.shape[0] == 1:  # moved by the mask's embedding (`moved_first_layer`)
            first_layer = decoder_first_layer_with_mask(params, first_layer, image_embedding, mask_input, has_mask)
        else:  # one image side per prompt: each projects its own
            first_layer = None
    if first_layer is None:
        dense, dense_pe = apply(prompt_encoder, prompt_weights, mask_input, has_mask, method="encode_dense")
    else:
        dense, dense_pe = None, None  # in first_layer
    decoder, weights = mask_decoder_module(params.config), params.weights["mask_decoder"]

    def run(slots: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        pts, lab = points[:, :slots], labels[:, :slots]
        sparse = apply(prompt_encoder, prompt_weights, pts, lab, method="embed_slots")
        used = lab != LABEL_EMPTY_SLOT
        args = (image_embedding[None], dense_pe, sparse, dense, used, first_layer)
        return apply(decoder, weights, *args, method="decode_tokens")

    sizes = [k for k in fewer_slots if 0 < k < points.shape[1]] + [points.shape[1]]
    if len(sizes) > 1:
        used = jnp.max(jnp.sum(labels != LABEL_EMPTY_SLOT, axis=1))
        branch = jnp.sum(used > jnp.asarray(sizes[:-1]))  # the first size that holds `used`
        tokens, src, iou_pred = jax.lax.switch(branch, [functools.partial(run, k) for k in sizes])
    else:
        tokens, src, iou_pred = run(sizes[0])
    if params.config.hq:
        if hq_features is None:
            if early_features is None:
                raise ValueError("a SAM-HQ decoder needs the encoder's early features")
            hq_features = mask_decoder_hq_features(params, image_embedding[None], early_features[None])
        return apply(decoder, weights, tokens, src, None, hq_features, method="predict_masks"), iou_pred
    return apply(decoder, weights, tokens, src, None, method="predict_masks"), iou_pred
