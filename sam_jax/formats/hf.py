"""Hugging Face `transformers` SAM checkpoints (`SamModel`, `SamHQModel`) <-> sam_jax.

Numpy and json only: safetensors files are read and written with `safetensors.numpy`,
so torch is imported only to read an HF-keyed `pytorch_model.bin`.

The tensors of `transformers.SamModel` are the reference's under other names: same
shapes, same layouts (fused qkv, torch Linear/Conv/ConvTranspose kernels), so the mapping
is a table of renames (`RENAMES`) plus the feed-forward heads, whose first and last layers
transformers calls `proj_in` / `proj_out`. `prompt_encoder.shared_embedding.positional_embedding`
is tied to `shared_image_embedding.positional_embedding` (the reference has one tensor):
a state_dict may hold it, equal; safetensors files leave it out. `SamHQModel` holds the
same tensors plus SAM-HQ's decoder additions (`segment_anything_hq`'s, renamed the same way).

Which transformers class a folder holds is data (`FAMILIES`, by config.json's `model_type`):
its names, the fields its config adds to `SamConfig`'s, and the sam_jax decoder it maps to.
The architecture comes from `config.json` (three sub-configs), pixel statistics from
`preprocessor_config.json` when present; a bare tensor file gets its architecture from
shapes (`reference.infer_config`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sam_jax.checkpoint import META_FILE
from sam_jax.config import MODEL_REGISTRY, PIXEL_MEAN, PIXEL_STD, SamConfig, ViTConfig
from sam_jax.formats.reference import (
    ConversionError,
    describe,
    infer_config,
    mlp_ratio_for,
    state_dict_to_weights,
    to_torch_layout,
    torch_key,
    weights_to_state_dict,
)
from sam_jax.formats.torch_files import read_state_dict
from sam_jax.io import check_directory_target, write_directory
from sam_jax.modeling.sam import SamParams, abstract_params

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"  # transformers 5 saves the image processor nested in here
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# The files `export_hf` writes: a folder holding only these (and marked, below) is its own.
EXPORT_FILES = (CONFIG_FILE, SAFETENSORS_FILE, PREPROCESSOR_FILE)
# safetensors metadata of the files `export_hf` writes ("format": "pt" is what transformers expects).
EXPORT_METADATA = {"format": "pt", "written_by": "sam_jax"}

SUB_CONFIGS = ("vision_config", "prompt_encoder_config", "mask_decoder_config")
SHARED_PE = "shared_image_embedding.positional_embedding"
TIED_PE = "prompt_encoder.shared_embedding.positional_embedding"

# Reference prefix -> transformers prefix; `{}` is a layer index. First match wins, in
# either direction, so specific entries precede the general ones below them.
RENAMES: tuple[tuple[str, str], ...] = (
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", SHARED_PE),
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{}.norm1.", "vision_encoder.layers.{}.layer_norm1."),
    ("image_encoder.blocks.{}.norm2.", "vision_encoder.layers.{}.layer_norm2."),
    ("image_encoder.blocks.{}.", "vision_encoder.layers.{}."),
    ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("prompt_encoder.point_embeddings.{}.", "prompt_encoder.point_embed.{}."),
    ("prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
    ("prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
    ("mask_decoder.transformer.layers.{}.norm{}.", "mask_decoder.transformer.layers.{}.layer_norm{}."),
    ("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    ("mask_decoder.iou_token.", "mask_decoder.iou_token."),
    ("mask_decoder.mask_tokens.", "mask_decoder.mask_tokens."),
    ("mask_decoder.transformer.", "mask_decoder.transformer."),
    # SAM-HQ's decoder (`segment_anything_hq` names -> `SamHQMaskDecoder`'s).
    ("mask_decoder.hf_token.", "mask_decoder.hq_token."),
    ("mask_decoder.compress_vit_feat.0.", "mask_decoder.compress_vit_conv1."),
    ("mask_decoder.compress_vit_feat.1.", "mask_decoder.compress_vit_norm."),
    ("mask_decoder.compress_vit_feat.3.", "mask_decoder.compress_vit_conv2."),
    ("mask_decoder.embedding_encoder.0.", "mask_decoder.encoder_conv1."),
    ("mask_decoder.embedding_encoder.1.", "mask_decoder.encoder_norm."),
    ("mask_decoder.embedding_encoder.3.", "mask_decoder.encoder_conv2."),
    ("mask_decoder.embedding_maskfeature.0.", "mask_decoder.mask_conv1."),
    ("mask_decoder.embedding_maskfeature.1.", "mask_decoder.mask_norm."),
    ("mask_decoder.embedding_maskfeature.3.", "mask_decoder.mask_conv2."),
)
# The reference's `MLP` heads; transformers' `SamFeedForward` names their layers
# proj_in, layers.0 .. layers.{depth - 3}, proj_out. Most keep their name; those below
# (SAM-HQ's token's hypernetwork) are renamed too.
HEAD_RENAMES = {"mask_decoder.hf_mlp": "mask_decoder.hq_mask_mlp"}
_HEADS_BACK = {hf: ref for ref, hf in HEAD_RENAMES.items()}


def _heads(renamed: Iterable[str]) -> str:
    """A regex alternative of the head names: the shared ones and `renamed`."""
    return "|".join(
        [r"mask_decoder\.output_hypernetworks_mlps\.\d+", r"mask_decoder\.iou_prediction_head"]
        + [re.escape(h) for h in renamed]
    )


FEED_FORWARD = re.compile(rf"^({_heads(HEAD_RENAMES)})\.")
_HF_FEED_FORWARD = re.compile(rf"^({_heads(_HEADS_BACK)})\.(proj_in|proj_out|layers\.\d+)\.(.*)$")
HYPERNETWORK_DEPTH = 3  # fixed in both implementations, SAM-HQ's head too

# transformers' SamVisionConfig / SamPromptEncoderConfig / SamMaskDecoderConfig defaults:
# a config.json may leave out any field at its default (tests check these against the
# installed transformers).
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "vision_config": {
        "hidden_size": 768,
        "output_channels": 256,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_channels": 3,
        "image_size": 1024,
        "patch_size": 16,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        "initializer_range": 1e-10,
        "qkv_bias": True,
        "mlp_ratio": 4.0,
        "use_abs_pos": True,
        "use_rel_pos": True,
        "window_size": 14,
        "global_attn_indexes": [2, 5, 8, 11],
        "num_pos_feats": 128,
        "mlp_dim": None,
    },
    "prompt_encoder_config": {
        "hidden_size": 256,
        "image_size": 1024,
        "patch_size": 16,
        "mask_input_channels": 16,
        "num_point_embeddings": 4,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
    },
    "mask_decoder_config": {
        "hidden_size": 256,
        "hidden_act": "relu",
        "mlp_dim": 2048,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "attention_downsample_rate": 2,
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 256,
        "layer_norm_eps": 1e-6,
    },
}
# Choices sam_jax (as the reference) fixes: a config.json must agree.
FIXED = {
    ("vision_config", "num_channels"): 3,
    ("vision_config", "hidden_act"): "gelu",
    ("vision_config", "layer_norm_eps"): 1e-6,
    ("prompt_encoder_config", "num_point_embeddings"): 4,
    ("prompt_encoder_config", "hidden_act"): "gelu",
    ("prompt_encoder_config", "layer_norm_eps"): 1e-6,
    ("mask_decoder_config", "hidden_act"): "relu",
}
# The decoder LayerNorm epsilon assumed for a tensor file without config.json:
# transformers' default, which every published transformers SAM config carries.
HF_DEFAULT_DECODER_EPS = HF_DEFAULTS["mask_decoder_config"]["layer_norm_eps"]


@dataclasses.dataclass(frozen=True)
class HFFamily:
    """One transformers model class over SAM's tensors: what its files say, and what it
    adds to `SamModel`'s config.

    Attributes:
        model_type: config.json's `model_type`.
        architecture: the model class (config.json's `architectures`).
        processor: the processor class (preprocessor_config.json's `processor_class`).
        mask_decoder: `SamConfig.mask_decoder` of the models it holds.
        sub_model_types: each sub-config's `model_type`, by `SUB_CONFIGS` name.
        extra_defaults: the fields its sub-configs add to `HF_DEFAULTS`, with transformers'
            defaults, by sub-config.
        mirrors: fields its config carries twice: (sub-config, field) -> (sub-config, field)
            it must equal, and why; written from the second, checked on reading.
    """

    model_type: str
    architecture: str
    processor: str
    mask_decoder: str
    sub_model_types: Mapping[str, str]
    extra_defaults: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    mirrors: Mapping[tuple[str, str], tuple[str, str, str]] = dataclasses.field(default_factory=dict)

    def defaults(self, sub_config: str) -> dict[str, Any]:
        """transformers' defaults of one of its sub-configs."""
        return {**HF_DEFAULTS[sub_config], **self.extra_defaults.get(sub_config, {})}


# By `model_type`, and one per `SamConfig.mask_decoder` (the family `export_hf` writes).
FAMILIES: dict[str, HFFamily] = {
    family.model_type: family
    for family in (
        HFFamily(
            model_type="sam",
            architecture="SamModel",
            processor="SamProcessor",
            mask_decoder="sam",
            sub_model_types={
                "vision_config": "sam_vision_model",
                "prompt_encoder_config": "sam_prompt_encoder",
                "mask_decoder_config": "sam_mask_decoder",
            },
        ),
        # transformers' SamHQModel, `segment_anything_hq`'s model: its decoder reads the
        # output of the first global-attention block (`intermediate_embeddings[0]`), as
        # sam_jax's `ViTConfig.early_block`, whose width the config repeats as `vit_dim`.
        HFFamily(
            model_type="sam_hq",
            architecture="SamHQModel",
            processor="SamHQProcessor",
            mask_decoder="hq",
            sub_model_types={
                "vision_config": "sam_hq_vision_model",
                "prompt_encoder_config": "sam_hq_prompt_encoder",
                "mask_decoder_config": "sam_hq_mask_decoder",
            },
            extra_defaults={"mask_decoder_config": {"vit_dim": 768}},
            mirrors={
                ("mask_decoder_config", "vit_dim"): (
                    "vision_config",
                    "hidden_size",
                    "the decoder reads the encoder's early features, that wide",
                )
            },
        ),
    )
}


def family_of(config: SamConfig) -> HFFamily:
    """The transformers model class that holds models of `config`'s decoder."""
    return next(f for f in FAMILIES.values() if f.mask_decoder == config.mask_decoder)


def family_named(hf_config: Mapping[str, Any]) -> HFFamily | None:
    """The family a config.json's `model_type` names, or None (another model, or no name)."""
    model_type = hf_config.get("model_type")
    return FAMILIES.get(model_type) if isinstance(model_type, str) else None


# ----------------------------------------------------------------------------- names


def _pattern(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix).replace(r"\{\}", r"(\d+)"))


_FORWARD = tuple((_pattern(ref), hf) for ref, hf in RENAMES)
_BACKWARD = tuple((_pattern(hf), ref) for ref, hf in RENAMES)


def _rename(key: str, table: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, template in table:
        if m := pattern.match(key):
            return template.format(*m.groups()) + key[m.end() :]
    return None


def hf_key(key: str, config: SamConfig) -> str:
    """Reference state_dict key -> transformers key (`SamModel`'s, or `SamHQModel`'s for
    SAM-HQ's tensors), for a model of `config`."""
    if m := FEED_FORWARD.match(key):
        depth = config.iou_head_depth if m.group(1).endswith("iou_prediction_head") else HYPERNETWORK_DEPTH
        inner = re.match(r"layers\.(\d+)\.(.*)$", key[m.end() :])
        if inner is None:
            raise ConversionError(f"unexpected tensor {key!r} in a feed-forward head")
        layer, rest = inner.groups()
        i = int(layer)
        name = "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
        return f"{HEAD_RENAMES.get(m.group(1), m.group(1))}.{name}.{rest}"
    renamed = _rename(key, _FORWARD)
    if renamed is None:
        raise ConversionError(f"no transformers name for tensor {key!r}")
    return renamed


def hf_key_map(config: SamConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """transformers key -> (reference key, torch shape) of every tensor of a `config` model."""
    out = {}
    for path, spec in _leaves(abstract_params(config).weights):
        key = torch_key(path)
        shape = to_torch_layout(key, path[-1], np.broadcast_to(np.uint8(0), spec.shape)).shape
        out[hf_key(key, config)] = (key, tuple(shape))
    return out


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, Mapping):
        for k in tree:
            yield from _leaves(tree[k], (*path, str(k)))
    else:
        yield path, tree


def reference_state_dict(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers-keyed tensors -> reference-keyed, without a config (for shape inference).

    Keys no rename knows are kept as they are, so a strict mapping afterwards names them.
    """
    depth: dict[str, int] = {}  # per head: proj_in + its hidden layers + proj_out
    for key in tensors:
        if (m := _HF_FEED_FORWARD.match(key)) and m.group(2).startswith("layers."):
            depth[m.group(1)] = max(depth.get(m.group(1), 2), int(m.group(2)[len("layers.") :]) + 3)
    out = {}
    for key, value in tensors.items():
        if m := _HF_FEED_FORWARD.match(key):
            head, name, rest = m.groups()
            i = 0 if name == "proj_in" else depth.get(head, 2) - 1 if name == "proj_out" else int(name[7:]) + 1
            out[f"{_HEADS_BACK.get(head, head)}.layers.{i}.{rest}"] = value
        else:
            out[_rename(key, _BACKWARD) or key] = value
    return out


def is_hf_state_dict(keys: Iterable[str]) -> bool:
    """Whether tensor names are transformers' (`vision_encoder.`...) rather than the reference's."""
    return any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in keys)


# ----------------------------------------------------------------------------- config


def _square(value: Any, where: str) -> Any:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConversionError(f"{where} must be square (one size), got {value!r}")
        return value[0]
    return value


def _int(sub: Mapping[str, Any], name: str, where: str, minimum: int = 1) -> int:
    value = sub[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConversionError(f"{where}.{name} must be an integer >= {minimum}, got {value!r}")
    return value


def config_from_hf(hf_config: Mapping[str, Any], source: str, processor: Mapping[str, Any] | None = None) -> SamConfig:
    """`SamConfig` from a transformers `SamConfig` or `SamHQConfig` dict (config.json) and,
    optionally, the image processor's dict (preprocessor_config.json) for the pixel statistics.

    Args:
        hf_config: the parsed config.json; its `model_type` picks the family (`FAMILIES`);
            sub-config fields left out take transformers' defaults (`HFFamily.defaults`),
            as transformers does.
        source: what to name in errors (the file).
        processor: the parsed image processor config, or None for the reference's statistics.
    Returns:
        The sam_jax config, `decoder_layer_norm_eps` from `mask_decoder_config.layer_norm_eps`,
        `mask_decoder` the family's.
    Raises:
        ConversionError naming `source` and the field when the dict is not a transformers
        SAM config, or describes a model sam_jax cannot run exactly.
    """
    family = family_named(hf_config)
    if family is None:
        model_type = hf_config.get("model_type")
        absent = [k for k in SUB_CONFIGS if not isinstance(hf_config.get(k), Mapping)]
        what = f"; no {', '.join(absent)}" if absent else ""
        classes = " or ".join(f.architecture for f in FAMILIES.values())
        types = " or ".join(repr(t) for t in FAMILIES)
        raise ConversionError(
            f"{source}: not a transformers {classes} config (model_type {model_type!r}, expected {types}{what})"
        )
    subs = {}
    for name in SUB_CONFIGS:
        given = hf_config.get(name) or {}
        if not isinstance(given, Mapping):
            raise ConversionError(f"{source}: {name} must be an object, got {type(given).__name__}")
        subs[name] = {**family.defaults(name), **given}
    for (name, field), want in FIXED.items():
        got = subs[name][field]
        if got != want:
            raise ConversionError(f"{source}: {name}.{field} is {got!r}; sam_jax, as the reference, fixes {want!r}")
    for (name, field), (other, other_field, why) in family.mirrors.items():
        if subs[name][field] != subs[other][other_field]:
            raise ConversionError(
                f"{source}: {name}.{field} ({subs[name][field]!r}) differs from {other}.{other_field} "
                f"({subs[other][other_field]!r}); {family.architecture} needs them equal ({why})"
            )
    v, p, d = (subs[n] for n in SUB_CONFIGS)
    if d["attention_downsample_rate"] != 2:
        # transformers builds the blocks' cross attentions at rate 2 whatever the config says;
        # only its final attention reads the field, a mix the reference cannot build.
        raise ConversionError(
            f"{source}: mask_decoder_config.attention_downsample_rate is {d['attention_downsample_rate']!r}; "
            "transformers runs its two-way blocks at 2 whatever this says, so only 2 describes one model"
        )
    image_size = _square(v["image_size"], f"{source}: vision_config.image_size")
    patch_size = _square(v["patch_size"], f"{source}: vision_config.patch_size")
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if _square(p[name], f"{source}: prompt_encoder_config.{name}") != value:
            raise ConversionError(f"{source}: prompt_encoder_config.{name} {p[name]!r} differs from vision_config's")
    width = {n: _int(subs[n], "hidden_size", f"{source}: {n}") for n in SUB_CONFIGS[1:]}
    out = _int(v, "output_channels", f"{source}: vision_config")
    if len({out, *width.values()}) != 1:
        raise ConversionError(
            f"{source}: vision_config.output_channels ({out}), prompt_encoder_config.hidden_size "
            f"({width['prompt_encoder_config']}) and mask_decoder_config.hidden_size "
            f"({width['mask_decoder_config']}) must be equal"
        )
    embed = _int(v, "hidden_size", f"{source}: vision_config")
    mlp = v["mlp_dim"] if v["mlp_dim"] is not None else int(embed * v["mlp_ratio"])
    if isinstance(mlp, bool) or not isinstance(mlp, int) or mlp < 1:
        raise ConversionError(f"{source}: vision_config.mlp_dim must be a positive integer, got {mlp!r}")
    eps = d["layer_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ConversionError(f"{source}: mask_decoder_config.layer_norm_eps must be a positive number, got {eps!r}")
    mean, std = pixel_stats_from_hf(processor, source) if processor is not None else (PIXEL_MEAN, PIXEL_STD)
    where = f"{source}: mask_decoder_config"
    try:
        return SamConfig(
            image_encoder=ViTConfig(
                embed_dim=embed,
                depth=_int(v, "num_hidden_layers", f"{source}: vision_config"),
                num_heads=_int(v, "num_attention_heads", f"{source}: vision_config"),
                global_attn_indexes=tuple(v["global_attn_indexes"]),
                patch_size=patch_size,
                window_size=_int(v, "window_size", f"{source}: vision_config", minimum=0),
                mlp_ratio=mlp_ratio_for(embed, mlp),
                qkv_bias=bool(v["qkv_bias"]),
                use_abs_pos=bool(v["use_abs_pos"]),
                use_rel_pos=bool(v["use_rel_pos"]),
            ),
            image_size=image_size,
            prompt_embed_dim=out,
            mask_in_chans=_int(p, "mask_input_channels", f"{source}: prompt_encoder_config"),
            decoder_depth=_int(d, "num_hidden_layers", where, minimum=0),
            decoder_num_heads=_int(d, "num_attention_heads", where),
            decoder_mlp_dim=_int(d, "mlp_dim", where),
            attention_downsample_rate=_int(d, "attention_downsample_rate", where),
            num_multimask_outputs=_int(d, "num_multimask_outputs", where),
            iou_head_depth=_int(d, "iou_head_depth", where, minimum=2),
            iou_head_hidden_dim=_int(d, "iou_head_hidden_dim", where),
            decoder_layer_norm_eps=float(eps),
            mask_decoder=family.mask_decoder,
            pixel_mean=mean,
            pixel_std=std,
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{source}: describes no model sam_jax can run ({e})") from None


def pixel_stats_from_hf(processor: Mapping[str, Any], source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(pixel_mean, pixel_std) in 0..255 units from a transformers SAM image processor dict.

    transformers rescales by 1/255 before normalising with statistics in 0..1 units; the
    quotient is rounded to 6 decimals so the reference's (123.675, ...) come back exactly.
    """
    mean = processor.get("image_mean", [0.485, 0.456, 0.406])  # transformers' IMAGENET_DEFAULT_*
    std = processor.get("image_std", [0.229, 0.224, 0.225])
    scale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
    if not processor.get("do_normalize", True):
        mean, std = [0.0] * 3, [1.0] * 3
    try:
        mean = tuple(round(float(m) / scale, 6) for m in mean)
        std = tuple(round(float(s) / scale, 6) for s in std)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ConversionError(f"{source}: image_mean / image_std / rescale_factor are not numbers") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConversionError(f"{source}: image_mean and image_std must hold 3 numbers (std > 0)")
    return mean, std


def config_to_hf(config: SamConfig) -> dict[str, Any]:
    """The transformers config dict (config.json) of a sam_jax config: a `SamConfig`, or for
    a SAM-HQ model a `SamHQConfig` (`family_of`).

    Raises:
        ConversionError: the model has no transformers equivalent (an IoU head of depth 1).
    """
    family = family_of(config)
    vit = config.image_encoder
    if not isinstance(vit, ViTConfig):
        raise ConversionError(
            f"a {type(vit).__name__} image encoder: transformers' {family.architecture} holds SAM's ViT only"
        )
    if config.iou_head_depth < 2:
        raise ConversionError(
            f"iou_head_depth {config.iou_head_depth}: transformers' SamFeedForward has at least 2 layers"
        )
    if config.attention_downsample_rate != 2:
        raise ConversionError(
            f"attention_downsample_rate {config.attention_downsample_rate}: transformers' two-way blocks "
            "always downsample by 2"
        )
    vision = {
        **family.defaults("vision_config"),
        "hidden_size": vit.embed_dim,
        "output_channels": config.prompt_embed_dim,
        "num_hidden_layers": vit.depth,
        "num_attention_heads": vit.num_heads,
        "image_size": config.image_size,
        "patch_size": vit.patch_size,
        "qkv_bias": vit.qkv_bias,
        "mlp_ratio": vit.mlp_ratio,
        "mlp_dim": int(vit.embed_dim * vit.mlp_ratio),
        "use_abs_pos": vit.use_abs_pos,
        "use_rel_pos": vit.use_rel_pos,
        "window_size": vit.window_size,
        "global_attn_indexes": list(vit.global_attn_indexes),
        "num_pos_feats": config.prompt_embed_dim // 2,
        "scale": vit.embed_dim // 2,
    }
    prompt = {
        **family.defaults("prompt_encoder_config"),
        "hidden_size": config.prompt_embed_dim,
        "image_size": config.image_size,
        "patch_size": vit.patch_size,
        "image_embedding_size": config.embedding_size,
        "mask_input_channels": config.mask_in_chans,
    }
    decoder = {
        **family.defaults("mask_decoder_config"),
        "hidden_size": config.prompt_embed_dim,
        "mlp_dim": config.decoder_mlp_dim,
        "num_hidden_layers": config.decoder_depth,
        "num_attention_heads": config.decoder_num_heads,
        "attention_downsample_rate": config.attention_downsample_rate,
        "num_multimask_outputs": config.num_multimask_outputs,
        "iou_head_depth": config.iou_head_depth,
        "iou_head_hidden_dim": config.iou_head_hidden_dim,
        "layer_norm_eps": config.decoder_layer_norm_eps,
    }
    subs = {"vision_config": vision, "prompt_encoder_config": prompt, "mask_decoder_config": decoder}
    for (name, field), (other, other_field, _) in family.mirrors.items():
        subs[name][field] = subs[other][other_field]
    for name, sub in subs.items():
        sub["model_type"] = family.sub_model_types[name]
    return {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        "dtype": "float32",
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        **{name: dict(sorted(sub.items())) for name, sub in subs.items()},
    }


def processor_to_hf(config: SamConfig) -> dict[str, Any]:
    """The `SamProcessor` (`SamHQProcessor`) image processor dict (preprocessor_config.json) of
    a sam_jax config: resize the longest side to the model's input, statistics in 0..1 units,
    pad to a square."""
    s, m = config.image_size, config.low_res_mask_size
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [v / 255 for v in config.pixel_mean],
        "image_processor_type": "SamImageProcessor",
        "image_std": [v / 255 for v in config.pixel_std],
        "mask_pad_size": {"height": m, "width": m},
        "mask_size": {"longest_edge": m},
        "pad_size": {"height": s, "width": s},
        "processor_class": family_of(config).processor,
        "resample": 2,  # PIL bilinear, as the reference's ResizeLongestSide
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": s},
    }


# ----------------------------------------------------------------------------- tensors


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as float32 numpy (float16 and bfloat16 widen exactly)."""
    import ml_dtypes  # noqa: F401  # registers numpy's "bfloat16" dtype, which safetensors' numpy reader needs

    safe_open = _safetensors(path).safe_open
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    out = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():  # safe_open is not iterable
                value = f.get_tensor(key)
                if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
                    raise ConversionError(f"{path}: entry {key!r} is not a floating-point tensor ({value.dtype})")
                out[key] = np.asarray(value, dtype=np.float32)
    except ConversionError:
        raise
    except Exception as e:  # safetensors raises SafetensorError, OSError, TypeError for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path}: unreadable safetensors file ({first})") from None
    if not out:
        raise ConversionError(f"{path}: holds no tensors")
    return out


def _safetensors(path: str | os.PathLike[str]) -> Any:
    """The `safetensors` package, or a one-line refusal naming `path` (it is the `hf` extra)."""
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:
        raise ConversionError(
            f"{path}: .safetensors files need the `safetensors` package (pip install safetensors, or sam-jax[hf])"
        ) from None
    return safetensors


def _read_index(index: Path) -> list[Path]:
    weight_map = _json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{index}: no weight_map")
    return [index.parent / name for name in sorted(set(weight_map.values()))]


def tensor_files(folder: Path) -> tuple[list[Path], bool]:
    """The tensor files of a transformers folder and whether they need torch (.bin)."""
    for name, index, torch_format in (
        (SAFETENSORS_FILE, SAFETENSORS_INDEX, False),
        (BIN_FILE, BIN_INDEX, True),
    ):
        if (folder / name).is_file():
            return [folder / name], torch_format
        if (folder / index).is_file():
            return _read_index(folder / index), torch_format
    raise ConversionError(
        f"{folder}: no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {BIN_FILE} or {BIN_INDEX} beside {CONFIG_FILE}"
    )


def read_tensors(files: list[Path]) -> dict[str, np.ndarray]:
    """Merges the tensors of one or more (sharded) files."""
    out: dict[str, np.ndarray] = {}
    for f in files:
        part = read_safetensors(f) if f.suffix == ".safetensors" else read_state_dict(f)
        dup = sorted(set(part) & set(out))
        if dup:
            raise ConversionError(f"{f}: tensor {dup[0]!r} is also in another shard")
        out.update(part)
    return out


def _processor_dict(folder: Path) -> dict[str, Any] | None:
    if (folder / PREPROCESSOR_FILE).is_file():
        return _json(folder / PREPROCESSOR_FILE)
    if (folder / PROCESSOR_FILE).is_file():
        nested = _json(folder / PROCESSOR_FILE).get("image_processor")
        return nested if isinstance(nested, dict) else None
    return None


def hf_to_weights(tensors: Mapping[str, np.ndarray], config: SamConfig) -> dict[str, Any]:
    """Maps transformers-keyed tensors onto the weights tree of `config`, strictly.

    Every tensor must be used and have its parameter's shape; the tied duplicate of the
    prompt encoder's positional matrix is accepted only when equal to its source.

    Raises:
        ConversionError naming the first missing, unexpected, mis-shaped or inconsistent key.
    """
    tensors = dict(tensors)
    if TIED_PE in tensors:
        tied = tensors.pop(TIED_PE)
        if SHARED_PE in tensors and not (
            np.shape(tied) == np.shape(tensors[SHARED_PE]) and np.array_equal(tied, tensors[SHARED_PE])
        ):
            raise ConversionError(
                f"tensor {TIED_PE!r} differs from {SHARED_PE!r}, which transformers ties it to "
                "(sam_jax, as the reference, has one such matrix)"
            )
    expected = hf_key_map(config)
    for key, (_, shape) in expected.items():
        if key not in tensors:
            raise ConversionError(f"missing tensor {key!r} (needed for a {describe(config)} model)")
        if tuple(np.shape(tensors[key])) != shape:
            raise ConversionError(f"tensor {key!r} has shape {tuple(np.shape(tensors[key]))}, expected {shape}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ConversionError(f"unexpected tensor {extra[0]!r}{more}: not part of a {describe(config)} model")
    return state_dict_to_weights({ref: tensors[key] for key, (ref, _) in expected.items()}, config)


def weights_to_hf(params: SamParams) -> dict[str, np.ndarray]:
    """`SamParams` -> transformers-keyed float32 tensors (the tied duplicate left out, as
    `save_pretrained` does)."""
    config_to_hf(params.config)  # refuses models transformers cannot hold
    return {hf_key(k, params.config): v for k, v in weights_to_state_dict(params.weights).items()}


def read_hf(
    source: str | os.PathLike[str],
    *,
    allow_torch: bool = True,
    decoder_num_heads: int | None = None,
    state_dict: Mapping[str, np.ndarray] | None = None,
) -> tuple[SamParams, list[str]]:
    """Reads a transformers SAM checkpoint (`SamModel` or `SamHQModel`) into `SamParams`
    (numpy weights).

    Args:
        source: a folder (config.json + model.safetensors / pytorch_model.bin, sharded or
            not), or a tensor file (.safetensors, or with `allow_torch` an HF-keyed .bin).
            A file beside a SAM config.json takes that config; alone, its architecture is
            inferred from shapes (see the returned notes).
        allow_torch: whether .bin files may be read (they need torch).
        decoder_num_heads: the decoder's head count for a file without config.json.
        state_dict: the tensors of `source`, already read (the converter reads .bin files itself).
    Returns:
        (params, notes): notes are lines about what was assumed rather than read.
    Raises:
        ConversionError naming the file and the first problem.
    """
    source = Path(source)
    if source.is_dir():
        if (source / META_FILE).is_file():
            raise ConversionError(f"{source}: a sam_jax checkpoint, not a transformers one")
        if not (source / CONFIG_FILE).is_file():
            raise ConversionError(f"{source}: no {CONFIG_FILE} (a transformers SAM folder holds config.json)")
    elif not source.is_file() and state_dict is None:
        raise ConversionError(f"{source}: no such file or folder")
    folder = source if source.is_dir() else source.parent
    config_path = folder / CONFIG_FILE
    hf_config = _json(config_path) if config_path.is_file() else None
    if hf_config is not None and not source.is_dir() and family_named(hf_config) is None:
        hf_config = None  # a file among other things: its own config is not beside it
    config = config_from_hf(hf_config, str(config_path), _processor_dict(folder)) if hf_config is not None else None
    files, needs_torch = tensor_files(source) if source.is_dir() else ([source], source.suffix != ".safetensors")
    if needs_torch and not allow_torch and state_dict is None:
        raise ConversionError(
            f"{files[0]}: a PyTorch pickle, readable only with torch: convert it once with "
            f"`sam-jax convert {source} OUTPUT_DIR`"
        )
    tensors = dict(state_dict) if state_dict is not None else read_tensors(files)
    notes: list[str] = []
    try:
        if config is not None:
            if decoder_num_heads is not None and decoder_num_heads != config.decoder_num_heads:
                raise ConversionError(
                    f"--decoder-num-heads {decoder_num_heads} contradicts {config_path} "
                    f"(mask_decoder_config.num_attention_heads {config.decoder_num_heads})"
                )
            if not is_hf_state_dict(tensors):
                return SamParams(config=config, weights=state_dict_to_weights(tensors, config)), notes
            return SamParams(config=config, weights=hf_to_weights(tensors, config)), notes
        hf_names = is_hf_state_dict(tensors)
        ref = reference_state_dict(tensors) if hf_names else tensors
        heads = 8 if decoder_num_heads is None else decoder_num_heads
        try:
            config = infer_config(ref, decoder_num_heads=heads)
        except ConversionError:
            raise
        except ValueError as e:
            raise ConversionError(f"the tensors describe no valid SAM model: {e}") from None
        if hf_names:
            config = dataclasses.replace(config, decoder_layer_norm_eps=HF_DEFAULT_DECODER_EPS)
            weights = hf_to_weights(tensors, config)
        else:
            weights = state_dict_to_weights(tensors, config)
        eps = f", decoder LayerNorm eps {config.decoder_layer_norm_eps:g}" if hf_names else ""
        notes.append(
            f"{source}: no {CONFIG_FILE} beside it: architecture inferred from tensor shapes; "
            f"assumed decoder heads {heads}{eps} and the reference's pixel statistics "
            "(not visible in shapes: put the model's config.json beside the file if they differ)"
        )
        return SamParams(config=config, weights=weights), notes
    except ConversionError as e:
        raise ConversionError(f"{source}: {e}") from None


def is_hf_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a `.safetensors` file or a folder with a config.json that is not
    a sam_jax checkpoint (what `sam_jax.load` reads as a transformers checkpoint)."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".safetensors"
    return p.is_dir() and not (p / META_FILE).is_file() and (p / CONFIG_FILE).is_file()


def is_hf_source(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is for this module rather than the official converter: a folder
    (not a sam_jax checkpoint) or a .safetensors file."""
    p = Path(path)
    return p.suffix == ".safetensors" or (p.is_dir() and not (p / META_FILE).is_file())


def read_hf_checked(
    source: str | os.PathLike[str],
    model_type: str = "auto",
    decoder_num_heads: int | None = None,
    state_dict: Mapping[str, np.ndarray] | None = None,
) -> tuple[SamParams, list[str]]:
    """`read_hf`, and the model checked against `model_type` (for `sam-jax convert SRC OUT`).

    Args:
        source: see `read_hf`.
        model_type: "auto", or a registry name the model must be (decoder epsilon aside).
        decoder_num_heads: for a tensor file without config.json (default 8).
        state_dict: the tensors of `source`, already read.
    Returns:
        (params, notes), see `read_hf`.
    """
    if model_type != "auto" and model_type not in MODEL_REGISTRY:
        raise ConversionError(f"unknown model type {model_type!r}; expected one of auto, {', '.join(MODEL_REGISTRY)}")
    params, notes = read_hf(source, decoder_num_heads=decoder_num_heads, state_dict=state_dict)
    name = describe(params.config)
    if model_type != "auto" and name.split(" ")[0] != model_type:
        raise ConversionError(f"{source}: a {name} model, not {model_type}")
    return params, notes


def _owned(out: Path) -> bool:
    """Whether the non-empty folder `out` is one `export_hf` wrote (only its files, its marker)."""
    names = {p.name for p in out.iterdir()}
    if not names <= set(EXPORT_FILES) or SAFETENSORS_FILE not in names:
        return False
    try:
        with _safetensors(out).safe_open(str(out / SAFETENSORS_FILE), framework="np") as f:
            return (f.metadata() or {}).get("written_by") == EXPORT_METADATA["written_by"]
    except Exception:  # unreadable: not ours to replace
        return False


def export_hf(
    params: SamParams, output_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> dict[str, np.ndarray]:
    """Writes `params` as a transformers `SamModel` folder (`SamHQModel` for a SAM-HQ model,
    `family_of`), atomically: config.json, model.safetensors (float32, without torch) and
    preprocessor_config.json (for `SamProcessor` / `SamHQProcessor`).

    Args:
        params: the model.
        output_dir: a folder that does not exist or is empty, or (with `overwrite`) one
            written by `export_hf`, which is then replaced; anything else is refused.
    Returns:
        The tensors written, by transformers name.
    Raises:
        OutputExistsError: `output_dir` holds something else (it is left untouched).
        ConversionError: the model has no transformers form.
    """
    out = Path(output_dir)
    save_file = _safetensors(out).numpy.save_file
    check_directory_target(out, _owned, overwrite, "a transformers SAM folder")
    tensors = weights_to_hf(params)
    hf_config = config_to_hf(params.config)
    with write_directory(out, owns=_owned, overwrite=overwrite, what="a transformers SAM folder") as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / PREPROCESSOR_FILE).write_text(json.dumps(processor_to_hf(params.config), indent=2) + "\n")
        save_file(tensors, str(tmp / SAFETENSORS_FILE), metadata=dict(EXPORT_METADATA))
    return tensors


def warn_notes(notes: list[str]) -> None:
    """Shows `read_hf`'s notes as warnings (for the library; the CLI prints them)."""
    for note in notes:
        warnings.warn(note, stacklevel=4)  # the caller of sam_jax.load
