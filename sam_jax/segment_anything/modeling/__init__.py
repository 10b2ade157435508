"""`segment_anything.modeling`: the model object. Its networks are `sam.image_encoder`,
`sam.prompt_encoder` and `sam.mask_decoder` (`sam_jax.compat.modules`), built from the
weights rather than constructed layer by layer; sam-jax's own networks are the flax
modules of `sam_jax.modeling`."""

from sam_jax.compat.model import Sam
from sam_jax.compat.modules import ImageEncoder, MaskDecoder, PromptEncoder

__all__ = ["ImageEncoder", "MaskDecoder", "PromptEncoder", "Sam"]
