"""The reference's module tree, for code ported by one substitution: `segment_anything` ->
`sam_jax.segment_anything` (`build_sam`, `predictor`, `automatic_mask_generator`,
`modeling`, `utils.transforms`, `utils.amg`), each name the class or function of
`sam_jax.compat` that stands for the reference's (docs/porting.md).
"""

from sam_jax.segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator
from sam_jax.segment_anything.build_sam import (
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    sam_model_registry,
)
from sam_jax.segment_anything.predictor import SamPredictor

__all__ = [
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "sam_model_registry",
]
