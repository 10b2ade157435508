"""`segment_anything_hq`'s module tree, for SAM-HQ code ported by one substitution:
`segment_anything_hq` -> `sam_jax.segment_anything_hq` (docs/porting.md).

Its registry holds SAM-HQ's names: `vit_b`, `vit_l`, `vit_h` (and `default`, vit_h) and
`vit_tiny` (Light HQ-SAM), which load the official `sam_hq_vit_*.pth` files (or a converted
folder); `SamPredictor.predict` and `Sam.__call__` take `hq_token_only`.
"""

from sam_jax.segment_anything_hq.automatic_mask_generator import SamAutomaticMaskGenerator
from sam_jax.segment_anything_hq.build_sam import (
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_sam_vit_t,
    sam_model_registry,
)
from sam_jax.segment_anything_hq.predictor import SamPredictor

__all__ = [
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
]
