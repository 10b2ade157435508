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
    ("encoder_embed_dim", 1, 16384),
    ("encoder_depth", 1, 256),
    ("encoder_num_heads", 1, 1024),
    ("image_size", 8, 16384),
    ("patch_size", 1, 1024),
    ("encoder_window_size", 0, 1024),
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
MAX_PARAMETERS = 2**32


def _check_int(config: Any, name: str, low: int, high: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _as_tuple(value: Any, name: str) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list, got {value!r}")
    return tuple(value)


def config_to_json(config: Any) -> dict[str, Any]:
    """A frozen config dataclass -> JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def config_from_json(cls: type[_C], d: Any) -> _C:
    """Inverse of `config_to_json`, tolerant of versions: unknown keys are ignored and
    missing ones take their defaults (the dataclass turns lists back into tuples).

    Raises:
        ValueError: `d` is not an object, lacks a required field, or a value is invalid.
    """
    if not isinstance(d, dict):
        raise ValueError(f"a config must be a JSON object of fields, got {type(d).__name__}")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    missing = [name for name in required if name not in d]
    if missing:
        raise ValueError(f"the config lacks the field(s) {', '.join(missing)}")
    names = {f.name for f in fields}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Architecture of one SAM model (reference `build_sam._build_sam` and its classes).

    Image encoder (`ImageEncoderViT`):
        image_size: side of the square model input (the image is resized and padded to it).
        patch_size: side of a patch; the embedding grid is image_size // patch_size.
        encoder_embed_dim, encoder_depth, encoder_num_heads: ViT width, depth and heads.
        encoder_global_attn_indexes: blocks with global attention; the others are windowed.
        encoder_window_size: window side of the windowed blocks.
        encoder_mlp_ratio: MLP hidden width / embed dim.
        qkv_bias, use_abs_pos, use_rel_pos: as the reference flags.
    Prompt encoder (`PromptEncoder`):
        prompt_embed_dim: width of prompt tokens, image embedding and decoder (256 in SAM).
        mask_in_chans: hidden channels of the mask-prompt downscaler.
    Mask decoder (`MaskDecoder`, `TwoWayTransformer`):
        decoder_depth, decoder_num_heads, decoder_mlp_dim: two-way transformer sizes.
        attention_downsample_rate: cross attention runs at prompt_embed_dim // rate.
        num_multimask_outputs: masks returned with multimask_output=True.
        iou_head_depth, iou_head_hidden_dim: the IoU prediction MLP.
        decoder_layer_norm_eps: epsilon of the LayerNorms inside the two-way attention blocks
            (the reference's 1e-5; `transformers` checkpoints carry their own, usually 1e-6).
            The final LayerNorm after the last token-to-image attention keeps 1e-5 in both.
    Pre-processing:
        pixel_mean, pixel_std: per-channel RGB normalisation.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    encoder_window_size: int = 14
    encoder_mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    decoder_layer_norm_eps: float = 1e-5
    pixel_mean: tuple[float, ...] = PIXEL_MEAN  # three values (R, G, B), checked
    pixel_std: tuple[float, ...] = PIXEL_STD

    def __post_init__(self) -> None:
        # Types and ranges first: a config read from a file is checked before anything is
        # built from it (a depth of 1e8 would hang building the model, a zero divide).
        for name, low, high in _INT_FIELDS:
            _check_int(self, name, low, high)
        for name in ("qkv_bias", "use_abs_pos", "use_rel_pos"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        ratio = self.encoder_mlp_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 64:
            raise ValueError(f"encoder_mlp_ratio must be a number in (0, 64], got {ratio!r}")
        indexes = _as_tuple(self.encoder_global_attn_indexes, "encoder_global_attn_indexes")
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.encoder_depth for i in indexes):
            raise ValueError(f"encoder_global_attn_indexes must be block numbers in [0, encoder_depth), got {indexes}")
        object.__setattr__(self, "encoder_global_attn_indexes", indexes)
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
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            problems.append("encoder_embed_dim must be divisible by encoder_num_heads")
        internal = self.prompt_embed_dim // self.attention_downsample_rate
        if self.prompt_embed_dim % self.decoder_num_heads or internal % self.decoder_num_heads or internal < 1:
            problems.append("prompt_embed_dim (and its downsampled width) must be divisible by decoder_num_heads")
        if self.prompt_embed_dim % 8:
            problems.append("prompt_embed_dim must be a multiple of 8 (the upscaler ends at dim // 8)")
        if not self.decoder_layer_norm_eps > 0:
            problems.append("decoder_layer_norm_eps must be positive")
        if self.mask_in_chans % 4:
            problems.append("mask_in_chans must be a multiple of 4")
        if not problems and self.parameter_count() > MAX_PARAMETERS:
            problems.append(
                f"about {self.parameter_count():.3g} parameters, more than the {MAX_PARAMETERS:.3g} allowed"
            )
        if problems:
            raise ValueError("invalid SamConfig: " + "; ".join(problems))

    def parameter_count(self) -> int:
        """The number of weights, up to small terms (biases, norms): what a config costs."""
        d, c, m = self.encoder_embed_dim, self.prompt_embed_dim, self.decoder_mlp_dim
        grid = self.embedding_size
        encoder = self.encoder_depth * int((4 + 2 * self.encoder_mlp_ratio) * d * d)
        encoder += 3 * self.patch_size**2 * d + grid * grid * d + d * c + 9 * c * c
        decoder = self.decoder_depth * (4 * c * c + 8 * c * c // self.attention_downsample_rate + 2 * c * m)
        heads = (self.num_multimask_outputs + 1) * 2 * c * c + self.iou_head_depth * self.iou_head_hidden_dim**2
        return encoder + decoder + heads

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the official models)."""
        return self.image_size // self.patch_size

    @property
    def low_res_mask_size(self) -> int:
        """Side of the low-res mask logits and of `mask_input` (256 for the official models)."""
        return 4 * self.embedding_size

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1

    def to_dict(self) -> dict[str, Any]:
        return config_to_json(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamConfig:
        """Builds a config from `to_dict` output; unknown keys from newer versions are ignored."""
        return config_from_json(cls, d)


# The official models (reference build_sam.py): only the encoder differs.
MODEL_REGISTRY: dict[str, SamConfig] = {
    "vit_h": SamConfig(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
    "vit_l": SamConfig(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_b": SamConfig(
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
}


# Not in the reference registry: the small model this project trains and ships as
# "tiny-shapes" (docs/embedded-model.md). Built from the same classes, with the decoder's 8
# heads and every fixed choice of the reference, so its exported state_dict rebuilds in the
# reference from tensor shapes alone. Its 16 x 16 token grid needs no windows: every block
# attends globally (window_size is then unused; the reference default). Its recipe starts
# from `vit_t/patch_size=16`, four times cheaper a step, and re-cuts the patches later.
MODEL_REGISTRY["vit_t"] = SamConfig(
    encoder_embed_dim=128,
    encoder_depth=6,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(0, 1, 2, 3, 4, 5),
    image_size=128,
    patch_size=8,
    encoder_window_size=14,
    prompt_embed_dim=128,
    mask_in_chans=16,
    decoder_mlp_dim=256,
    iou_head_hidden_dim=64,
)


# Other names of registered models, as the reference registry's "default" (its vit_h).
MODEL_ALIASES = {"default": "vit_h"}


def get_config(name: str, **overrides: Any) -> SamConfig:
    """Returns a registered configuration, optionally with fields replaced.

    Args:
        name: a registry name (`vit_b`, `vit_l`, `vit_h`, or an alias such as `default`), optionally followed by
            `/field=value` overrides, e.g. `"vit_b/image_size=512"`.
        **overrides: further field replacements.
    Returns:
        The frozen `SamConfig`.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string such as 'vit_b', got {type(name).__name__}")
    base, *parts = name.split("/")
    base = MODEL_ALIASES.get(base, base)
    if base not in MODEL_REGISTRY:
        raise ValueError(f"unknown model type {base!r}; expected one of {sorted([*MODEL_REGISTRY, *MODEL_ALIASES])}")
    fields = {f.name: f for f in dataclasses.fields(SamConfig)}
    parsed: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"bad override {part!r} in {name!r}; expected FIELD=VALUE with a SamConfig field")
        current = getattr(MODEL_REGISTRY[base], key)
        if isinstance(current, tuple):
            parsed[key] = tuple(type(current[0] if current else 0)(v) for v in value.split(",") if v)
        elif isinstance(current, bool):
            parsed[key] = value.lower() in ("1", "true", "yes")
        else:
            parsed[key] = type(current)(value)
    parsed.update(overrides)
    return dataclasses.replace(MODEL_REGISTRY[base], **parsed)
