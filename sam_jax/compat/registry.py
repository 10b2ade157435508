"""`sam_model_registry`: the reference's `build_sam` registry, returning `Sam` model objects.

`sam_model_registry["vit_b"](checkpoint=...)` takes what users point it at: an official
`.pth` (converted in memory; needs torch), a sam_jax checkpoint folder, a Hugging Face SAM
folder or `.safetensors` file, or an embedded model's name. Without a checkpoint the model
has the reference's initialisation (`sam_jax.init`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from sam_jax.compat.model import Sam
from sam_jax.config import SamConfig, get_config
from sam_jax.formats.reference import describe
from sam_jax.loading import init, load, with_registry_preprocessing


def same_architecture(config: SamConfig, expected: SamConfig) -> bool:
    """Whether `config` is `expected`, the decoder LayerNorm epsilon aside (transformers
    checkpoints carry their own; it is not part of what a registry name picks)."""
    return dataclasses.replace(config, decoder_layer_norm_eps=expected.decoder_layer_norm_eps) == expected


def build_sam(config: SamConfig | str, checkpoint: str | os.PathLike[str] | None = None) -> Sam:
    """A `Sam` of architecture `config`, with the weights of `checkpoint`.

    Args:
        config: a `SamConfig` or a registry name ("vit_b", "vit_l", "vit_h", "default",
            "vit_t" (MobileSAM), "lite_medsam", "medsam", "tiny-shapes").
        checkpoint: see the module; None gives randomly initialised weights (`sam_jax.init`).
    Returns:
        The model object; its weights are `sam.params`.
    Raises:
        ValueError: the checkpoint holds another architecture than `config`.
        ImportError: `checkpoint` is a PyTorch file and torch is not installed.
    """
    name = config if isinstance(config, str) else None
    expected = get_config(config) if isinstance(config, str) else config
    if not isinstance(expected, SamConfig):
        raise TypeError(f"config must be a SamConfig or a registry name, got {type(config).__name__}")
    if checkpoint is None:
        return Sam(init(expected))
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file or folder path, got {type(checkpoint).__name__}")
    params = with_registry_preprocessing(load(checkpoint), checkpoint, expected)
    if not same_architecture(params.config, expected):
        want = name or describe(expected)
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} holds a {describe(params.config)} model, not {want}: "
            "pick the registry entry of its type"
        )
    return Sam(params)


def registry_entry(name: str, builder_name: str | None = None) -> Callable[..., Sam]:
    """The builder of one registry name: `builder(checkpoint=None) -> Sam`, named
    `builder_name` (default `build_sam_<name>`)."""

    def build(checkpoint: str | os.PathLike[str] | None = None) -> Sam:
        return build_sam(name, checkpoint)

    build.__name__ = build.__qualname__ = builder_name or f"build_sam_{name}"
    build.__doc__ = f"`build_sam({name!r}, checkpoint)`: a {name} `Sam`, see `build_sam`."
    return build


build_sam_vit_h = registry_entry("vit_h")
build_sam_vit_l = registry_entry("vit_l")
build_sam_vit_b = registry_entry("vit_b")
build_sam_vit_t = registry_entry("vit_t")

# The reference's names ("default" is its vit_h) and MobileSAM's "vit_t"; then the other
# models sam-jax knows by name. A dict of builders, so a project can add its own entry
# (`sam_model_registry["mine"] = functools.partial(build_sam, my_config)`).
sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_t": build_sam_vit_t,
    "lite_medsam": registry_entry("lite_medsam"),
    "medsam": registry_entry("medsam"),
    **{name: registry_entry(name) for name in ("sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny")},
    "tiny-shapes": registry_entry("tiny-shapes"),
}

__all__ = [
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
]
