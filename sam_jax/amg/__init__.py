"""Automatic mask generation ("segment everything"), the reference `SamAutomaticMaskGenerator`.

- `options`: `AmgOptions`, the reference's options, names and defaults, checked;
- `generator`: `generate_masks`: crops, point batches, filters, records;
- `scoring`: the device side (decoder stages, upsampling, stability scores, boxes);
- `utils`: host helpers (point grids, crop boxes, box NMS, small-region clean-up).

The reference-shaped class over it, `SamAutomaticMaskGenerator`, is in `sam_jax.compat`.
"""

from sam_jax.amg.generator import generate, generate_masks
from sam_jax.amg.options import OUTPUT_MODES, AmgOptions
from sam_jax.amg.scoring import masks_to_boxes, stability_score

__all__ = [
    "OUTPUT_MODES",
    "AmgOptions",
    "generate",
    "generate_masks",
    "masks_to_boxes",
    "stability_score",
]
