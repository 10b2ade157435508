"""Model configurations: one frozen, hashable dataclass per model, and a registry.

A `SamConfig` holds every architectural choice of the reference `segment_anything`
classes (`ImageEncoderViT`, `PromptEncoder`, `MaskDecoder`, `TwoWayTransformer`) so a
config can be a static argument of `jax.jit`. The registry mirrors
`segment_anything.build_sam.sam_model_registry`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

_C = TypeVar("_C")

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


# Bounds of every integer field: far beyond any published SAM (vit_h: 32 blocks of width
# 1280), near enough that a crafted config cannot make building the model hang or blow up.
_INT_FIELDS = (
    ("image_size", 8, 16384),
    ("prompt_embed_dim", 8, 16384),
    ("mask_in_chans", 4, 4096),
    ("decoder_depth", 0, 64),
    ("decoder_num_heads", 1, 1024),
    ("decoder_mlp_dim", 1, 65536),
    ("attention_downsample_rate", 1, 1024),
    ("num_multimask_outputs", 1, 64),
    ("iou_head_depth", 1, 64),
    ("iou_head_hidden_dim", 1, 65536),
)
_VIT_INT_FIELDS = (
    ("embed_dim", 1, 16384),
    ("depth", 1, 256),
    ("num_heads", 1, 1024),
    ("patch_size", 1, 1024),
    ("window_size", 0, 1024),
)
MAX_PARAMETERS = 2**32


def _check_int(config: Any, name: str, low: int, high: int, where: str = "") -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{where}{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_number(value: Any, name: str, low: float, high: float) -> float:
    """A finite number in (low, high], as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ValueError(f"{name} must be a number in ({low:g}, {high:g}], got {value!r}")
    return float(value)


def _check_hidden(width: int, ratio: float, name: str) -> None:
    """A hidden layer of `int(width * ratio)` units (the reference's rounding) must have one."""
    if int(width * ratio) < 1:
        raise ValueError(
            f"{name} {ratio:g} leaves a hidden layer of width {width} with int({width} * {ratio:g}) = 0 units"
        )


def _as_tuple(value: Any, name: str) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list, got {value!r}")
    return tuple(value)


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def config_to_json(config: Any) -> dict[str, Any]:
    """A frozen config dataclass -> JSON-ready dict (tuples become lists, nested configs dicts)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return config_to_json(value)
        return [plain(v) for v in value] if isinstance(value, tuple) else value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_json(cls: type[_C], d: Any, prefix: str = "") -> _C:
    """Inverse of `config_to_json` for a flat config. Fields missing from `d` that have a
    default take it (an older version did not write them); a field this version does not
    know is refused, naming it (`prefix` + name): it would change the model in a way this
    version cannot honour, so reading on would silently build another model. The dataclass
    turns lists back into tuples.

    Raises:
        ValueError: `d` is not an object, has an unknown field, lacks a required one, or a
            value is invalid.
    """
    if not isinstance(d, dict):
        raise ValueError(f"a config must be a JSON object of fields, got {type(d).__name__}")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    unknown = [str(k) for k in d if k not in names]
    if unknown:
        raise ValueError(
            f"unknown field {prefix}{unknown[0]} (not a field of {cls.__name__} in this sam-jax: misspelt, or "
            "written by a newer version)"
        )
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    missing = [name for name in required if name not in d]
    if missing:
        raise ValueError(f"the config lacks the field(s) {', '.join(missing)}")
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """SAM's image encoder, a windowed ViT (reference `ImageEncoderViT`).

    Attributes:
        embed_dim, depth, num_heads: width, blocks and heads.
        global_attn_indexes: blocks with global attention; the others are windowed.
        patch_size: side of a patch; the embedding grid is image_size // patch_size.
        window_size: window side of the windowed blocks.
        mlp_ratio: MLP hidden width / embed dim.
        qkv_bias, use_abs_pos, use_rel_pos: as the reference flags.
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True

    kind = "vit"  # a class attribute: what `to_dict` writes as "kind"

    def __post_init__(self) -> None:
        for name, low, high in _VIT_INT_FIELDS:
            _check_int(self, name, low, high, "image_encoder.")
        for name in ("qkv_bias", "use_abs_pos", "use_rel_pos"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"image_encoder.{name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "mlp_ratio", _check_number(self.mlp_ratio, "image_encoder.mlp_ratio", 0, 64))
        indexes = _as_tuple(self.global_attn_indexes, "image_encoder.global_attn_indexes")
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.depth for i in indexes):
            raise ValueError(f"image_encoder.global_attn_indexes must be block numbers in [0, depth), got {indexes}")
        object.__setattr__(self, "global_attn_indexes", indexes)
        if self.embed_dim % self.num_heads:
            raise ValueError("invalid image encoder: embed_dim must be divisible by num_heads")
        _check_hidden(self.embed_dim, self.mlp_ratio, "image_encoder.mlp_ratio")

    @property
    def pixels_per_token(self) -> int:
        """Input pixels per embedding cell along a side: the patch."""
        return self.patch_size

    def embedding_size(self, image_size: int) -> int:
        """Side of the embedding grid for square inputs of `image_size`."""
        return image_size // self.pixels_per_token

    def check_image_size(self, image_size: int) -> list[str]:
        """What is wrong with running this encoder on `image_size` inputs (nothing: [])."""
        if image_size % self.patch_size:
            return [f"image_size {image_size} is not a multiple of patch_size {self.patch_size}"]
        return []

    @property
    def early_block(self) -> int | None:
        """The block whose output is SAM-HQ's early feature map: the first with global
        attention (the reference collects every block with `window_size == 0`, HQ uses the
        first); None when every block is windowed."""
        return next((i for i in range(self.depth) if i in self.global_attn_indexes or self.window_size == 0), None)

    def early_features(self, image_size: int) -> tuple[int, int] | str:
        """(grid side, channels) of SAM-HQ's early feature map, or why there is none."""
        if self.early_block is None:
            return "it has no global-attention block, whose output SAM-HQ reads"
        return self.embedding_size(image_size), self.embed_dim

    def parameter_count(self, image_size: int, out_chans: int) -> int:
        """The number of weights, up to small terms (biases, norms)."""
        d, grid = self.embed_dim, self.embedding_size(image_size)
        blocks = self.depth * int((4 + 2 * self.mlp_ratio) * d * d)
        return blocks + 3 * self.patch_size**2 * d + grid * grid * d + d * out_chans + 9 * out_chans**2


# TinyViT stems: two Conv2d_BN, 3x3 stride 2 each (MobileSAM: the grid is image / 4), or
# 1x1 stride 1 (LiteMedSAM: the grid is the image).
TINY_VIT_STEMS = {"conv3x3_stride2": 4, "conv1x1_stride1": 1}


@dataclasses.dataclass(frozen=True)
class TinyViTConfig:
    """The TinyViT image encoder of MobileSAM and LiteMedSAM (`tiny_vit_sam.TinyViT`).

    Attributes:
        embed_dims, depths, num_heads, window_sizes: per stage; stage 0 is convolutional
            (MBConv blocks, its heads and window unused), the others windowed attention.
        mlp_ratio: MLP hidden width / stage width.
        mbconv_expand_ratio: MBConv hidden width / stage width.
        local_conv_size: the depthwise convolution between attention and MLP.
        stem: "conv3x3_stride2" (MobileSAM) or "conv1x1_stride1" (LiteMedSAM).
    Every stage but the last halves the grid into the next; the last merge keeps it.
    """

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    stem: str = "conv3x3_stride2"

    kind = "tiny_vit"

    def __post_init__(self) -> None:
        lists = {}
        for name in ("embed_dims", "depths", "num_heads", "window_sizes"):
            values = _as_tuple(getattr(self, name), f"image_encoder.{name}")
            low = 0 if name == "depths" else 1
            if any(isinstance(v, bool) or not isinstance(v, int) or not low <= v <= 4096 for v in values):
                raise ValueError(f"image_encoder.{name} must be integers in [{low}, 4096], got {values}")
            lists[name] = values
            object.__setattr__(self, name, values)
        if not 2 <= len(lists["embed_dims"]) <= 8 or len({len(v) for v in lists.values()}) != 1:
            raise ValueError("image_encoder: embed_dims, depths, num_heads and window_sizes need one entry per stage")
        for dim, heads in zip(self.embed_dims[1:], self.num_heads[1:], strict=True):
            if dim % heads:
                raise ValueError(f"image_encoder: a stage of width {dim} cannot have {heads} heads")
        for name in ("mlp_ratio", "mbconv_expand_ratio"):
            object.__setattr__(self, name, _check_number(getattr(self, name), f"image_encoder.{name}", 0, 64))
        _check_int(self, "local_conv_size", 1, 31, "image_encoder.")
        _check_hidden(self.embed_dims[0], self.mbconv_expand_ratio, "image_encoder.mbconv_expand_ratio")
        for dim in self.embed_dims[1:]:
            _check_hidden(dim, self.mlp_ratio, "image_encoder.mlp_ratio")
        _choice(self.stem, "image_encoder.stem", tuple(TINY_VIT_STEMS))

    @property
    def pixels_per_token(self) -> int:
        """Input pixels per embedding cell along a side: the stem's stride, then a halving
        per stage but the last (16 for MobileSAM, 4 for LiteMedSAM)."""
        return TINY_VIT_STEMS[self.stem] * 2 ** (len(self.embed_dims) - 2)

    def embedding_size(self, image_size: int) -> int:
        """Side of the embedding grid for square inputs of `image_size`."""
        return image_size // self.pixels_per_token

    def check_image_size(self, image_size: int) -> list[str]:
        """What is wrong with running this encoder on `image_size` inputs (nothing: [])."""
        step = self.pixels_per_token
        return [] if image_size % step == 0 else [f"image_size {image_size} is not a multiple of {step}"]

    def early_features(self, image_size: int) -> tuple[int, int] | str:
        """(grid side, channels) of SAM-HQ's early feature map, the output of stage 1 (after
        its merge), or why it cannot be one (Light HQ-SAM adds it to the embedding grid)."""
        stages = len(self.embed_dims)
        halvings = sum(1 for i in range(min(2, stages - 1)) if i < stages - 2)  # merges of stages 0, 1
        side = image_size // TINY_VIT_STEMS[self.stem] // 2**halvings
        if side != self.embedding_size(image_size):
            return f"its stage 1 ends on a {side} x {side} grid, not the embedding's"
        return side, self.embed_dims[min(2, stages - 1)]

    def parameter_count(self, image_size: int, out_chans: int) -> int:
        total, dims = 0, self.embed_dims
        for i, (dim, depth) in enumerate(zip(dims, self.depths, strict=True)):
            hidden = int(dim * (self.mbconv_expand_ratio if i == 0 else self.mlp_ratio))
            total += depth * (2 * dim * hidden + (0 if i == 0 else 4 * dim * dim))
            if i + 1 < len(dims):
                total += dim * dims[i + 1] + dims[i + 1] ** 2
        return total + dims[-1] * out_chans + 9 * out_chans**2


ImageEncoderConfig = ViTConfig | TinyViTConfig
ENCODER_KINDS: dict[str, type[ViTConfig] | type[TinyViTConfig]] = {"vit": ViTConfig, "tiny_vit": TinyViTConfig}

# The flat names of `ViTConfig`'s fields in configs written before the encoder became a
# choice (sam_jax.json "version": 1, and `get_config` overrides written for them).
LEGACY_VIT_FIELDS = {
    "encoder_embed_dim": "embed_dim",
    "encoder_depth": "depth",
    "encoder_num_heads": "num_heads",
    "encoder_global_attn_indexes": "global_attn_indexes",
    "patch_size": "patch_size",
    "encoder_window_size": "window_size",
    "encoder_mlp_ratio": "mlp_ratio",
    "qkv_bias": "qkv_bias",
    "use_abs_pos": "use_abs_pos",
    "use_rel_pos": "use_rel_pos",
}


def encoder_from_dict(d: Any) -> ImageEncoderConfig:
    """An image encoder config from its `to_dict` form ({"kind": ..., fields})."""
    if not isinstance(d, dict):
        raise ValueError(f"image_encoder must be a JSON object of fields, got {type(d).__name__}")
    kind = _choice(d.get("kind"), "image_encoder.kind", tuple(ENCODER_KINDS))
    try:
        return config_from_json(ENCODER_KINDS[kind], {k: v for k, v in d.items() if k != "kind"}, "image_encoder.")
    except TypeError as e:
        raise ValueError(f"image_encoder: {e}") from None


def encoder_to_dict(encoder: ImageEncoderConfig) -> dict[str, Any]:
    return {"kind": encoder.kind, **config_to_json(encoder)}


# How images become model inputs. "resize": "longest_side" scales the longest side to
# image_size keeping the aspect ratio and pads bottom-right (SAM, LiteMedSAM); "stretch"
# resizes to image_size x image_size, no padding (MedSAM). "interpolation": "pil_bilinear"
# is the reference's `ResizeLongestSide` (PIL bilinear, antialiased when shrinking);
# "cv2_area" is OpenCV's INTER_AREA, LiteMedSAM's; "pil_bicubic" is PIL's antialiased bicubic,
# for MedSAM (whose scripts resize with scikit-image's cubic spline, not a dependency here).
# "normalize": "mean_std" subtracts `pixel_mean` and divides by `pixel_std` (SAM); "min_max"
# scales each resized image to [0, 1] by its own minimum and maximum (LiteMedSAM, MedSAM).
# "coordinate_scale": how prompts' pixel coordinates follow the resize: "per_side" scales x
# and y by the resized and original widths' and heights' ratios, from the rounded resized
# size (the reference's `apply_coords`); "longest_side" scales both by image_size / max(H, W)
# (LiteMedSAM's inference); "stretch" scales x by image_size / W and y by image_size / H (the
# one that goes with resize="stretch", MedSAM's).
RESIZES = ("longest_side", "stretch")
# "mask_decoder": "sam" is SAM's `MaskDecoder`; "hq" is SAM-HQ's `MaskDecoderHQ` (one more
# output token, fed with the encoder's early features: `ViTConfig.early_block`).
MASK_DECODERS = ("sam", "hq")
INTERPOLATIONS = ("pil_bilinear", "cv2_area", "pil_bicubic")
NORMALIZATIONS = ("mean_std", "min_max")
COORDINATE_SCALES = ("per_side", "longest_side", "stretch")


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Architecture of one SAM model (reference `build_sam._build_sam` and its classes).

    Image encoder:
        image_encoder: `ViTConfig` (SAM's `ImageEncoderViT`) or `TinyViTConfig` (MobileSAM's
            and LiteMedSAM's TinyViT).
        image_size: side of the square model input (the image is resized and padded to it).
    Prompt encoder (`PromptEncoder`):
        prompt_embed_dim: width of prompt tokens, image embedding and decoder (256 in SAM).
        mask_in_chans: hidden channels of the mask-prompt downscaler.
    Mask decoder (`MaskDecoder`, `TwoWayTransformer`):
        decoder_depth, decoder_num_heads, decoder_mlp_dim: two-way transformer sizes.
        attention_downsample_rate: cross attention runs at prompt_embed_dim // rate.
        num_multimask_outputs: masks returned with multimask_output=True.
        iou_head_depth, iou_head_hidden_dim: the IoU prediction MLP.
        mask_decoder: "sam", or "hq" for SAM-HQ's decoder (`MASK_DECODERS`).
        decoder_layer_norm_eps: epsilon of the LayerNorms inside the two-way attention blocks
            (the reference's 1e-5; `transformers` checkpoints carry their own, usually 1e-6).
            The final LayerNorm after the last token-to-image attention keeps 1e-5 in both.
    Pre-processing:
        pixel_mean, pixel_std: per-channel RGB normalisation ("mean_std").
        resize, interpolation, normalize, coordinate_scale: see `RESIZES`, `INTERPOLATIONS`,
            `NORMALIZATIONS`, `COORDINATE_SCALES`.
    About the model (shown to users; no effect on the arithmetic):
        trained_for: what the weights were trained on, in a few words ("" when unknown).
    """

    image_encoder: ImageEncoderConfig
    image_size: int = 1024
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    mask_decoder: str = "sam"
    decoder_layer_norm_eps: float = 1e-5
    pixel_mean: tuple[float, ...] = PIXEL_MEAN  # three values (R, G, B), checked
    pixel_std: tuple[float, ...] = PIXEL_STD
    resize: str = "longest_side"
    interpolation: str = "pil_bilinear"
    normalize: str = "mean_std"
    coordinate_scale: str = "per_side"
    # Metadata: two configs that differ only here are the same model (and compiled program).
    trained_for: str = dataclasses.field(default="", compare=False)

    def __post_init__(self) -> None:
        # Types and ranges first: a config read from a file is checked before anything is
        # built from it (a depth of 1e8 would hang building the model, a zero divide).
        if not isinstance(self.image_encoder, (ViTConfig, TinyViTConfig)):
            raise ValueError(f"image_encoder must be a ViTConfig or TinyViTConfig, got {self.image_encoder!r}")
        for name, low, high in _INT_FIELDS:
            _check_int(self, name, low, high)
        for name, positive in (("pixel_mean", False), ("pixel_std", True)):
            values = _as_tuple(getattr(self, name), name)
            ok = len(values) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
                for v in values
            )
            if not ok:
                raise ValueError(f"{name} must be 3 finite numbers{' > 0' if positive else ''} (R, G, B), got {values}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        eps = self.decoder_layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"decoder_layer_norm_eps must be a number in (0, 1), got {eps!r}")
        object.__setattr__(self, "decoder_layer_norm_eps", float(eps))
        _choice(self.interpolation, "interpolation", INTERPOLATIONS)
        _choice(self.normalize, "normalize", NORMALIZATIONS)
        _choice(self.coordinate_scale, "coordinate_scale", COORDINATE_SCALES)
        _choice(self.resize, "resize", RESIZES)
        _choice(self.mask_decoder, "mask_decoder", MASK_DECODERS)
        if (self.resize == "stretch") != (self.coordinate_scale == "stretch"):
            raise ValueError(
                f'resize="stretch" and coordinate_scale="stretch" go together, got resize={self.resize!r} '
                f"and coordinate_scale={self.coordinate_scale!r}"
            )
        if not isinstance(self.trained_for, str) or len(self.trained_for) > 200:
            raise ValueError(f"trained_for must be a short text, got {self.trained_for!r}")
        problems = self.image_encoder.check_image_size(self.image_size)
        internal = self.prompt_embed_dim // self.attention_downsample_rate
        if self.prompt_embed_dim % self.decoder_num_heads or internal % self.decoder_num_heads or internal < 1:
            problems.append("prompt_embed_dim (and its downsampled width) must be divisible by decoder_num_heads")
        if self.prompt_embed_dim % 8:
            problems.append("prompt_embed_dim must be a multiple of 8 (the upscaler ends at dim // 8)")
        if self.mask_in_chans % 4:
            problems.append("mask_in_chans must be a multiple of 4")
        if self.hq and not problems and isinstance(early := self.image_encoder.early_features(self.image_size), str):
            problems.append(f"a SAM-HQ decoder needs the encoder's early features, but {early}")
        if not problems and self.embedding_size < 1:
            problems.append(f"image_size {self.image_size} gives no embedding grid")
        if not problems and self.parameter_count() > MAX_PARAMETERS:
            problems.append(
                f"about {self.parameter_count():.3g} parameters, more than the {MAX_PARAMETERS:.3g} allowed"
            )
        if problems:
            raise ValueError("invalid SamConfig: " + "; ".join(problems))

    def parameter_count(self) -> int:
        """The number of weights, up to small terms (biases, norms): what a config costs."""
        c, m = self.prompt_embed_dim, self.decoder_mlp_dim
        encoder = self.image_encoder.parameter_count(self.image_size, c)
        decoder = self.decoder_depth * (4 * c * c + 8 * c * c // self.attention_downsample_rate + 2 * c * m)
        heads = (self.num_multimask_outputs + 1) * 2 * c * c + self.iou_head_depth * self.iou_head_hidden_dim**2
        if self.hq:  # its token's MLP, and the convolutions that fuse the early features
            early = self.image_encoder.early_features(self.image_size)
            heads += 2 * c * c + 4 * (early[1] if isinstance(early, tuple) else c) * c + c * c // 4
        return encoder + decoder + heads

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the official models)."""
        return self.image_encoder.embedding_size(self.image_size)

    @property
    def low_res_mask_size(self) -> int:
        """Side of the low-res mask logits and of `mask_input` (256 for the official models)."""
        return 4 * self.embedding_size

    @property
    def num_mask_tokens(self) -> int:
        """SAM's mask tokens: the single-mask one and the multimask ones (not HQ's token)."""
        return self.num_multimask_outputs + 1

    @property
    def hq(self) -> bool:
        """Whether the decoder is SAM-HQ's (it then reads the encoder's early features)."""
        return self.mask_decoder == "hq"

    @property
    def num_output_tokens(self) -> int:
        """The decoder's own tokens ahead of the prompt's: IoU, mask tokens, HQ's token."""
        return 1 + self.num_mask_tokens + int(self.hq)

    @property
    def early_features_shape(self) -> tuple[int, int, int] | None:
        """(E, E, channels) of the early features an HQ decoder reads; None for SAM's."""
        early = self.image_encoder.early_features(self.image_size)
        return (early[0], early[0], early[1]) if self.hq and isinstance(early, tuple) else None

    def to_dict(self) -> dict[str, Any]:
        d = config_to_json(self)
        d["image_encoder"] = encoder_to_dict(self.image_encoder)
        if not self.hq:
            del d["mask_decoder"]  # a plain SAM's file reads in versions before SAM-HQ
        return d

    @classmethod
    def from_dict(cls, d: Any) -> SamConfig:
        """Builds a config from `to_dict` output; unknown fields are refused, missing ones with
        a default take it (`config_from_json`).
        A config written before the encoder became a choice (its ViT fields at the top level,
        `LEGACY_VIT_FIELDS`) reads as the same model."""
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object of fields, got {type(d).__name__}")
        d = dict(d)
        if "image_encoder" in d:
            d["image_encoder"] = encoder_from_dict(d["image_encoder"])
        else:
            legacy = {new: d.pop(old) for old, new in LEGACY_VIT_FIELDS.items() if old in d}
            required = ("encoder_embed_dim", "encoder_depth", "encoder_num_heads", "encoder_global_attn_indexes")
            missing = [old for old in required if LEGACY_VIT_FIELDS[old] not in legacy]
            if missing:
                raise ValueError(f"the config lacks the field(s) {', '.join(missing)} (or an image_encoder)")
            try:
                d["image_encoder"] = ViTConfig(**legacy)
            except TypeError as e:
                raise ValueError(f"image_encoder: {e}") from None
        return config_from_json(cls, d)


def weights_layout(config: SamConfig) -> SamConfig:
    """`config` with the reference's preprocessing and no description: two configs with the
    same layout take the same weights (vit_b's file is MedSAM's, given MedSAM's preprocessing).
    An official `.pth` carries only the layout; its preprocessing comes from a registry name."""
    return dataclasses.replace(
        config,
        resize="longest_side",
        interpolation="pil_bilinear",
        normalize="mean_std",
        coordinate_scale="per_side",
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
        trained_for="",
    )


def _vit(embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...]) -> SamConfig:
    return SamConfig(image_encoder=ViTConfig(embed_dim, depth, num_heads, global_attn_indexes))


# The official models (reference build_sam.py): only the encoder differs.
MODEL_REGISTRY: dict[str, SamConfig] = {
    "vit_h": _vit(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": _vit(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": _vit(768, 12, 12, (2, 5, 8, 11)),
    # MobileSAM (`mobile_sam`'s registry name): TinyViT distilled from SAM's ViT-H at 1024.
    "vit_t": SamConfig(image_encoder=TinyViTConfig(stem="conv3x3_stride2"), trained_for="natural images (MobileSAM)"),
    # LiteMedSAM: the same TinyViT on 256-pixel inputs (a 1x1 stride-1 stem keeps the 64x64
    # grid), trained on medical images with box prompts, with its own preprocessing.
    "lite_medsam": SamConfig(
        image_encoder=TinyViTConfig(stem="conv1x1_stride1"),
        image_size=256,
        interpolation="cv2_area",
        normalize="min_max",
        coordinate_scale="longest_side",
        trained_for="medical images, from boxes (LiteMedSAM)",
    ),
    # MedSAM: the official vit_b fine-tuned on medical images; the image stretched to
    # 1024 x 1024 and min-max scaled (no mean/std), prompted by boxes.
    "medsam": dataclasses.replace(
        _vit(768, 12, 12, (2, 5, 8, 11)),
        resize="stretch",
        interpolation="pil_bicubic",
        normalize="min_max",
        coordinate_scale="stretch",
        trained_for="medical images, from boxes (MedSAM)",
    ),
}


# SAM-HQ (`segment_anything_hq`'s registry: vit_b, vit_l, vit_h, vit_tiny): SAM's models
# with the HQ decoder, and Light HQ-SAM (MobileSAM's TinyViT with it).
for _name in ("vit_b", "vit_l", "vit_h", "vit_t"):
    _hq_name = "sam_hq_" + ("vit_tiny" if _name == "vit_t" else _name)
    MODEL_REGISTRY[_hq_name] = dataclasses.replace(
        MODEL_REGISTRY[_name],
        mask_decoder="hq",
        trained_for="natural images, fine mask edges (" + ("Light HQ-SAM)" if _name == "vit_t" else "SAM-HQ)"),
    )
del _name, _hq_name


# Not in the reference registry: the small model this project trains and ships as
# "tiny-shapes" (docs/embedded-model.md). Built from the same classes, with the decoder's 8
# heads and every fixed choice of the reference, so its exported state_dict rebuilds in the
# reference from tensor shapes alone. Its 16 x 16 token grid needs no windows: every block
# attends globally (window_size is then unused; the reference default). Its recipe starts
# from `tiny-shapes/patch_size=16`, four times cheaper a step, and re-cuts the patches later.
MODEL_REGISTRY["tiny-shapes"] = SamConfig(
    image_encoder=ViTConfig(embed_dim=128, depth=6, num_heads=4, global_attn_indexes=(0, 1, 2, 3, 4, 5), patch_size=8),
    image_size=128,
    prompt_embed_dim=128,
    mask_in_chans=16,
    decoder_mlp_dim=256,
    iou_head_hidden_dim=64,
    trained_for="synthetic shapes only (sam-jax's small demo model; it fragments photos)",
)


def trained_for(config: SamConfig) -> str:
    """What a model was trained for, as its config says or else as the registry entry of its
    architecture says ("" when neither knows)."""
    if config.trained_for:
        return config.trained_for
    return next((c.trained_for for c in MODEL_REGISTRY.values() if c == config), "")


# Other names of registered models, as the reference registry's "default" (its vit_h).
MODEL_ALIASES = {"default": "vit_h"}


def _parse(value: str, current: Any) -> Any:
    if isinstance(current, tuple):
        return tuple(type(current[0] if current else 0)(v) for v in value.split(",") if v)
    if isinstance(current, bool):
        return value.lower() in ("1", "true", "yes")
    return type(current)(value)


def _field_value(config: SamConfig, key: str) -> tuple[bool, Any]:
    """(whether `key` names a field of `config` or of its image encoder, its value there)."""
    if key != "image_encoder" and key in {f.name for f in dataclasses.fields(SamConfig)}:
        return True, getattr(config, key)
    encoder = config.image_encoder
    name = LEGACY_VIT_FIELDS.get(key, key) if isinstance(encoder, ViTConfig) else key
    if name in {f.name for f in dataclasses.fields(encoder)}:
        return True, getattr(encoder, name)
    return False, None


def with_fields(config: SamConfig, **fields: Any) -> SamConfig:
    """`config` with fields replaced: `SamConfig`'s (an `image_encoder` whole, too), or its
    image encoder's (by their name, or for a ViT by the flat names of `LEGACY_VIT_FIELDS`).

    Raises:
        ValueError naming a field neither has.
    """
    outer, inner = {}, {}
    for key, value in fields.items():
        if key == "image_encoder" or key in {f.name for f in dataclasses.fields(SamConfig)}:
            outer[key] = value
        elif _field_value(config, key)[0]:
            inner[LEGACY_VIT_FIELDS.get(key, key) if isinstance(config.image_encoder, ViTConfig) else key] = value
        else:
            raise ValueError(f"{key!r} is no field of SamConfig nor of its {type(config.image_encoder).__name__}")
    if inner:
        outer["image_encoder"] = dataclasses.replace(outer.get("image_encoder", config.image_encoder), **inner)
    return dataclasses.replace(config, **outer)


def get_config(name: str, **overrides: Any) -> SamConfig:
    """Returns a registered configuration, optionally with fields replaced.

    Args:
        name: a registry name (`vit_b`, `vit_l`, `vit_h`, `vit_t` (MobileSAM), `lite_medsam`,
            `medsam`, `tiny-shapes`, or an alias such as `default`), optionally followed by
            `/field=value` overrides of `SamConfig` or image encoder fields, e.g.
            `"vit_b/image_size=512"`, `"tiny-shapes/patch_size=16"`.
        **overrides: further field replacements (see `with_fields`).
    Returns:
        The frozen `SamConfig`.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string such as 'vit_b', got {type(name).__name__}")
    base, *parts = name.split("/")
    base = MODEL_ALIASES.get(base, base)
    if base not in MODEL_REGISTRY:
        raise ValueError(f"unknown model type {base!r}; expected one of {sorted([*MODEL_REGISTRY, *MODEL_ALIASES])}")
    config = MODEL_REGISTRY[base]
    parsed: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        known, current = _field_value(config, key) if sep else (False, None)
        if not known:
            raise ValueError(
                f"bad override {part!r} in {name!r}; expected FIELD=VALUE with a SamConfig or encoder field"
            )
        parsed[key] = _parse(value, current)
    parsed.update(overrides)
    return with_fields(config, **parsed)
