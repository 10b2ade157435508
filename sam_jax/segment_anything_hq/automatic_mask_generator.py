"""`segment_anything_hq.automatic_mask_generator`."""

from sam_jax.compat.automatic_mask_generator import SamAutomaticMaskGenerator

__all__ = ["SamAutomaticMaskGenerator"]
