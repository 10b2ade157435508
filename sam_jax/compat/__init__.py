"""The reference `segment_anything` API over the functional core, for code being ported by
changing its imports (docs/porting.md).

- `registry`: `sam_model_registry`, `build_sam` (a `Sam` from a checkpoint);
- `model`: `Sam`, the model object (`sam(batched_input, multimask_output)`, `sam.image_encoder(x)`, ...);
- `modules`: the three networks callable as the reference's; `arrays`: results in the caller's array kind;
- `predictor`: `SamPredictor` (`set_image`, `predict`, `predict_torch`, `get_image_embedding`, ...);
- `transforms`: `ResizeLongestSide`.

- `automatic_mask_generator`: `SamAutomaticMaskGenerator` (a `Sam` or `SamParams`), imported on
  first use (automatic masks pull in scipy).
"""

from sam_jax.compat.model import Sam
from sam_jax.compat.predictor import SamPredictor
from sam_jax.compat.registry import (
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_sam_vit_t,
    sam_model_registry,
)
from sam_jax.compat.transforms import ResizeLongestSide

__all__ = [
    "ResizeLongestSide",
    "Sam",
    "SamPredictor",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
]
