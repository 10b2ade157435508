"""`segment_anything_hq.modeling`: the model object and its networks (see
`sam_jax.segment_anything.modeling`); SAM-HQ's networks take its extra arguments."""

from sam_jax.compat.model import Sam
from sam_jax.compat.modules import ImageEncoder, MaskDecoder, PromptEncoder

__all__ = ["ImageEncoder", "MaskDecoder", "PromptEncoder", "Sam"]
