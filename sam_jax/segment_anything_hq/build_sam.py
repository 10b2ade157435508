"""`segment_anything_hq.build_sam`: SAM-HQ's builders and registry (its names, sam-jax's
`sam_hq_*` models). As in the reference, `build_sam` is the vit_h builder."""

from collections.abc import Callable

from sam_jax.compat.model import Sam
from sam_jax.compat.registry import registry_entry

build_sam_vit_h = registry_entry("sam_hq_vit_h", "build_sam_vit_h")
build_sam_vit_l = registry_entry("sam_hq_vit_l", "build_sam_vit_l")
build_sam_vit_b = registry_entry("sam_hq_vit_b", "build_sam_vit_b")
build_sam_vit_t = registry_entry("sam_hq_vit_tiny", "build_sam_vit_t")
build_sam = build_sam_vit_h

sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_tiny": build_sam_vit_t,
}

__all__ = [
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
]
