"""`segment_anything.build_sam`: the builders and the registry. As in the reference,
`build_sam` is the vit_h builder (sam-jax's general builder is `sam_jax.compat.build_sam`)."""

from sam_jax.compat.registry import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l, sam_model_registry

build_sam = build_sam_vit_h

__all__ = ["build_sam", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l", "sam_model_registry"]
