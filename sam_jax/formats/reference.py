"""The reference `segment_anything` state_dict format: names, layouts and architecture.

Pure numpy: no torch here (`torch_files` reads and writes the `.pth` files). Flax paths
mirror torch keys by one rule, so the mapping is derived, not tabulated:

- a module name ending in `_N` is torch's list index `.N`
  (`blocks_3` <-> `blocks.3`, `neck_2` <-> `neck.2`);
- a leaf `kernel` is torch's `weight`, transposed: Linear (out, in) <-> (in, out);
  Conv2d (out, in, kh, kw) <-> (kh, kw, in, out); ConvTranspose2d (in, out, kh, kw)
  <-> (kh, kw, in, out);
- leaves `scale` (LayerNorm) and `embedding` (nn.Embedding) are torch's `weight`;
- every other leaf (`bias`, `pos_embed`, `rel_pos_h`, ...) keeps its name and layout.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from sam_jax.checkpoint import check_finite
from sam_jax.config import (
    MODEL_ALIASES,
    MODEL_REGISTRY,
    SamConfig,
    TinyViTConfig,
    ViTConfig,
    get_config,
    weights_layout,
)
from sam_jax.modeling.sam import SamParams, abstract_params

# The reference's ConvTranspose2d modules (kernel layout (in, out, kh, kw)): SAM's, and
# SAM-HQ's feature fusion.
TRANSPOSED_CONVS = tuple(
    f"mask_decoder.{name}.{i}"
    for name in ("output_upscaling", "compress_vit_feat", "embedding_encoder")
    for i in (0, 3)
)


class ConversionError(ValueError):
    """A checkpoint does not fit the model: names the offending key."""


def _module_to_torch(name: str) -> str:
    return re.sub(r"_(\d+)$", r".\1", name)


def torch_key(path: tuple[str, ...]) -> str:
    """Flax weights path -> reference state_dict key."""
    *modules, leaf = path
    prefix = ".".join(_module_to_torch(m) for m in modules)
    leaf = "weight" if leaf in ("kernel", "scale", "embedding") else leaf
    return f"{prefix}.{leaf}"


def _iter_leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, Mapping):
        for k in tree:
            yield from _iter_leaves(tree[k], (*path, str(k)))
    else:
        yield path, tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _kernel_axes(key: str, ndim: int) -> tuple[int, ...]:
    """The permutation taking a torch kernel at `key` to the flax layout."""
    if ndim == 2:
        return (1, 0)  # Linear (out, in) -> (in, out)
    if key.rsplit(".", 1)[0] in TRANSPOSED_CONVS:
        return (2, 3, 0, 1)  # ConvTranspose2d (in, out, kh, kw) -> (kh, kw, in, out)
    return (2, 3, 1, 0)  # Conv2d (out, in, kh, kw) -> (kh, kw, in, out)


def to_flax_layout(key: str, leaf: str, value: np.ndarray) -> np.ndarray:
    """Reference tensor -> flax layout for the leaf named `leaf` at torch key `key`."""
    return value.transpose(_kernel_axes(key, value.ndim)) if leaf == "kernel" else value


def to_torch_layout(key: str, leaf: str, value: np.ndarray) -> np.ndarray:
    """Inverse of `to_flax_layout`."""
    return value.transpose(np.argsort(_kernel_axes(key, value.ndim))) if leaf == "kernel" else value


def state_dict_to_weights(state_dict: Mapping[str, np.ndarray], config: SamConfig) -> dict[str, Any]:
    """Maps a reference state_dict onto the weights tree of `config`, strictly.

    Every parameter of the model must be filled with a tensor of the right shape, and
    every tensor must be used.

    Raises:
        ConversionError naming the first missing, unexpected or mis-shaped key.
    """
    expected = abstract_params(config).weights
    weights: dict[str, Any] = {}
    used = set()
    for path, spec in _iter_leaves(expected):
        key = torch_key(path)
        if key not in state_dict:
            raise ConversionError(f"missing tensor {key!r} (needed for a {describe(config)} model)")
        value = to_flax_layout(key, path[-1], np.asarray(state_dict[key]))
        if value.shape != tuple(spec.shape):
            want = to_torch_layout(key, path[-1], np.empty(spec.shape, np.uint8)).shape
            got = np.asarray(state_dict[key]).shape
            raise ConversionError(f"tensor {key!r} has shape {tuple(got)}, expected {tuple(want)}")
        _set(weights, path, np.ascontiguousarray(value, dtype=np.float32))
        used.add(key)
    extra = sorted(set(state_dict) - used)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ConversionError(f"unexpected tensor {extra[0]!r}{more}: not part of a {describe(config)} model")
    return weights


def weights_to_state_dict(weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax weights tree -> reference state_dict of float32 numpy arrays (same values, bit for bit)."""
    out = {}
    for path, value in _iter_leaves(weights):
        key = torch_key(path)
        out[key] = np.ascontiguousarray(to_torch_layout(key, path[-1], np.asarray(value, np.float32)))
    return out


# What reference TinyViT state_dicts hold besides the weights sam-jax uses: BatchNorm's batch
# counters (int64; inference never reads them) and MobileSAM's ImageNet classifier head,
# which `build_sam_vit_t` builds (1000 classes) and SAM never runs.
BATCH_COUNTER = "num_batches_tracked"
MOBILE_SAM_HEAD = ("image_encoder.norm_head.", "image_encoder.head.")
MOBILE_SAM_CLASSES = 1000


def unused_tensors(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The state_dict without the tensors no SAM computation reads, and a note on each kind
    left out that a user may want to know about."""
    kept = {
        k: v for k, v in state_dict.items() if not k.endswith("." + BATCH_COUNTER) and not k.startswith(MOBILE_SAM_HEAD)
    }
    head = sorted(k for k in state_dict if k.startswith(MOBILE_SAM_HEAD))
    notes = [f"skipped MobileSAM's unused image classifier head ({', '.join(head)})"] if head else []
    return kept, notes


def params_to_state_dict(params: SamParams) -> dict[str, np.ndarray]:
    """`SamParams` -> the state_dict the reference model of its kind loads strictly: the
    weights, bit for bit, and for TinyViT the BatchNorm batch counters (as 0) and, for
    MobileSAM's stem, the classifier head its class builds (LayerNorm ones and zeros, a zero
    Linear: SAM never runs it)."""
    out = weights_to_state_dict(params.weights)
    if isinstance(params.config.image_encoder, TinyViTConfig):
        for key in [k for k in out if k.endswith(".running_var")]:
            out[key.removesuffix("running_var") + BATCH_COUNTER] = np.zeros((), np.int64)
        if params.config.image_encoder.stem == "conv3x3_stride2":
            dim = params.config.image_encoder.embed_dims[-1]
            out["image_encoder.norm_head.weight"] = np.ones(dim, np.float32)
            out["image_encoder.norm_head.bias"] = np.zeros(dim, np.float32)
            out["image_encoder.head.weight"] = np.zeros((MOBILE_SAM_CLASSES, dim), np.float32)
            out["image_encoder.head.bias"] = np.zeros(MOBILE_SAM_CLASSES, np.float32)
    return out


def describe(config: SamConfig) -> str:
    """A registry name for `config` (with what differs in the decoder's LayerNorm epsilon),
    or a short description of a custom architecture."""
    eps = config.decoder_layer_norm_eps
    for name, registered in MODEL_REGISTRY.items():
        if registered == config:
            return name
        if registered == dataclasses.replace(config, decoder_layer_norm_eps=registered.decoder_layer_norm_eps):
            return f"{name} (decoder LayerNorm eps {eps:g})"
    encoder, hq = config.image_encoder, ", HQ decoder" if config.hq else ""
    if isinstance(encoder, TinyViTConfig):
        dims = "/".join(map(str, encoder.embed_dims))
        return f"custom (TinyViT {dims}, image {config.image_size}{hq})"
    return f"custom (embed {encoder.embed_dim}, depth {encoder.depth}, image {config.image_size}{hq})"


def mlp_ratio_for(embed_dim: int, mlp_dim: int) -> float:
    """The smallest ratio r >= mlp_dim / embed_dim with int(embed_dim * r) == mlp_dim, the
    width sam_jax (as the reference) builds the encoder MLP with."""
    r = mlp_dim / embed_dim
    while int(embed_dim * r) < mlp_dim:  # the quotient can round below: int(28 * (61 / 28)) == 60
        r = math.nextafter(r, math.inf)
    return r


def _need(state_dict: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ConversionError(f"missing tensor {key!r}: not a SAM checkpoint, or an incomplete one")
    return tuple(np.shape(state_dict[key]))


def _count(state_dict: Mapping[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_vit(state_dict: Mapping[str, np.ndarray]) -> tuple[ViTConfig, int]:
    """The ViT image encoder of a reference state_dict, and the image size, from shapes."""
    enc = "image_encoder."
    embed_dim, in_chans, patch, _ = _need(state_dict, enc + "patch_embed.proj.weight")
    if in_chans != 3:
        raise ConversionError(f"tensor {enc}patch_embed.proj.weight has {in_chans} input channels, expected 3")
    depth = _count(state_dict, enc + "blocks.")
    if depth == 0:
        raise ConversionError(f"missing tensor {enc}blocks.0.attn.qkv.weight: no encoder blocks")
    use_abs_pos = enc + "pos_embed" in state_dict
    image_size = _need(state_dict, enc + "pos_embed")[1] * patch if use_abs_pos else 1024
    grid = image_size // patch
    use_rel_pos = enc + "blocks.0.attn.rel_pos_h" in state_dict
    registry = {
        c.image_encoder.embed_dim: c.image_encoder
        for c in MODEL_REGISTRY.values()
        if isinstance(c.image_encoder, ViTConfig)
    }
    if use_rel_pos:
        head_dim = _need(state_dict, enc + "blocks.0.attn.rel_pos_h")[1]
        num_heads = embed_dim // head_dim
        lengths = [_need(state_dict, f"{enc}blocks.{i}.attn.rel_pos_h")[0] for i in range(depth)]
        global_idx = tuple(i for i, n in enumerate(lengths) if n == 2 * grid - 1)
        windowed = {n for n in lengths if n != 2 * grid - 1}
        if len(windowed) > 1:
            raise ConversionError(f"windowed blocks have rel_pos_h of different lengths {sorted(windowed)}")
        window = (windowed.pop() + 1) // 2 if windowed else 14
    elif embed_dim in registry:
        ref = registry[embed_dim]
        num_heads, global_idx, window = ref.num_heads, ref.global_attn_indexes, ref.window_size
    else:
        raise ConversionError("cannot infer encoder heads and windows without rel_pos tensors")
    mlp_dim = _need(state_dict, enc + "blocks.0.mlp.lin1.weight")[0]
    vit = ViTConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        global_attn_indexes=global_idx,
        patch_size=patch,
        window_size=window,
        mlp_ratio=mlp_ratio_for(embed_dim, mlp_dim),
        qkv_bias=enc + "blocks.0.attn.qkv.bias" in state_dict,
        use_abs_pos=use_abs_pos,
        use_rel_pos=use_rel_pos,
    )
    return vit, image_size


def infer_tiny_vit(state_dict: Mapping[str, np.ndarray]) -> tuple[TinyViTConfig, int]:
    """The TinyViT image encoder of a MobileSAM / LiteMedSAM state_dict, and the image size.

    Stage 0's heads and window do not exist (it is convolutional): the defaults stand. The
    reference class fixes the grid at 64 x 64, so the stem gives the image size.
    """
    enc = "image_encoder."
    stages = _count(state_dict, enc + "layers.")
    stem_shape = _need(state_dict, enc + "patch_embed.seq.0.c.weight")
    in_chans, stem_kernel = stem_shape[1], stem_shape[-1]
    if in_chans != 3 or stem_kernel not in (1, 3):
        raise ConversionError(f"tensor {enc}patch_embed.seq.0.c.weight has shape {stem_shape}: not a TinyViT stem")
    hidden, dim0 = _need(state_dict, enc + "layers.0.blocks.0.conv1.c.weight")[:2]
    dims, heads, windows = [dim0], [TinyViTConfig.num_heads[0]], [TinyViTConfig.window_sizes[0]]
    for i in range(1, stages):
        block = f"{enc}layers.{i}.blocks.0."
        dims.append(_need(state_dict, block + "attn.qkv.weight")[1])
        n_heads, offsets = _need(state_dict, block + "attn.attention_biases")
        heads.append(n_heads)
        windows.append(math.isqrt(offsets))
    mlp_hidden = _need(state_dict, f"{enc}layers.1.blocks.0.mlp.fc1.weight")[0]
    local = _need(state_dict, f"{enc}layers.1.blocks.0.local_conv.c.weight")[-1]
    tiny = TinyViTConfig(
        embed_dims=tuple(dims),
        depths=tuple(_count(state_dict, f"{enc}layers.{i}.blocks.") for i in range(stages)),
        num_heads=tuple(heads),
        window_sizes=tuple(windows),
        mlp_ratio=mlp_hidden / dims[1],
        mbconv_expand_ratio=hidden / dim0,
        local_conv_size=local,
        stem="conv3x3_stride2" if stem_kernel == 3 else "conv1x1_stride1",
    )
    return tiny, 64 * tiny.pixels_per_token


def infer_config(state_dict: Mapping[str, np.ndarray], decoder_num_heads: int = 8) -> SamConfig:
    """Infers the architecture of a reference checkpoint from its tensor shapes.

    Works for any model built from the reference classes with SAM's fixed choices
    (LayerNorm eps, GELU, hypernetwork widths), with SAM's ViT or MobileSAM's TinyViT (keys
    `image_encoder.layers.*`), and SAM's or SAM-HQ's decoder (key `mask_decoder.hf_token`).
    The decoder's head count does not show in any shape: every official model uses 8, the
    default here. An architecture a registry entry has takes that
    entry's preprocessing and description (LiteMedSAM's, for a TinyViT with a 1x1 stem).

    Raises:
        ConversionError naming a key when the tensors do not describe a SAM model.
    """
    encoder: ViTConfig | TinyViTConfig
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state_dict:
        encoder, image_size = infer_tiny_vit(state_dict)
    else:
        encoder, image_size = infer_vit(state_dict)
    out_chans = _need(state_dict, "image_encoder.neck.0.weight")[0]
    dec = "mask_decoder."
    mask_tokens = _need(state_dict, dec + "mask_tokens.weight")[0]
    internal = _need(state_dict, dec + "transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    config = SamConfig(
        image_encoder=encoder,
        image_size=image_size,
        prompt_embed_dim=out_chans,
        mask_in_chans=_need(state_dict, "prompt_encoder.mask_downscaling.3.weight")[0],
        decoder_depth=_count(state_dict, dec + "transformer.layers."),
        decoder_num_heads=decoder_num_heads,
        decoder_mlp_dim=_need(state_dict, dec + "transformer.layers.0.mlp.lin1.weight")[0],
        attention_downsample_rate=out_chans // internal,
        num_multimask_outputs=mask_tokens - 1,
        iou_head_depth=_count(state_dict, dec + "iou_prediction_head.layers."),
        iou_head_hidden_dim=_need(state_dict, dec + "iou_prediction_head.layers.0.weight")[0],
        mask_decoder="hq" if dec + "hf_token.weight" in state_dict else "sam",
    )
    for registered in MODEL_REGISTRY.values():
        if weights_layout(registered) == config:
            return registered
    return config


MODEL_TYPES = ("auto", *MODEL_ALIASES, *MODEL_REGISTRY)


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    model_type: str = "auto",
    decoder_num_heads: int | None = None,
    *,
    config: SamConfig | None = None,
    notes: list[str] | None = None,
) -> SamParams:
    """Builds `SamParams` from a reference state_dict (numpy values).

    Args:
        state_dict: reference keys -> arrays.
        model_type: "auto" infers the architecture from shapes; a registry name ("vit_b",
            "vit_t", "lite_medsam", ...; "default" is the reference registry's vit_h)
            requires that architecture.
        decoder_num_heads: the decoder's head count (not visible in shapes); default 8.
        config: an explicit architecture, overriding `model_type`.
        notes: receives a line for each kind of tensor left out (`unused_tensors`).
    Raises:
        ConversionError naming the first key or field at fault.
    """
    state_dict, skipped = unused_tensors(state_dict)
    if notes is not None:
        notes.extend(skipped)
    check_finite(state_dict, "the state_dict")
    if config is not None:
        return SamParams(config=config, weights=state_dict_to_weights(state_dict, config))
    model_type = MODEL_ALIASES.get(model_type, model_type)
    if model_type not in MODEL_TYPES:
        raise ConversionError(f"unknown model type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
    heads = {} if decoder_num_heads is None else {"decoder_num_heads": decoder_num_heads}
    try:
        inferred = infer_config(state_dict, **heads) if model_type == "auto" else get_config(model_type, **heads)
    except ConversionError:
        raise
    except ValueError as e:
        raise ConversionError(f"the tensors describe no valid SAM model: {e}") from None
    return SamParams(config=inferred, weights=state_dict_to_weights(state_dict, inferred))
