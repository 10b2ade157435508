"""SAM's three networks, one file each, as in the reference `segment_anything/modeling/`."""

from sam_jax.modeling.image_encoder import ImageEncoderViT
from sam_jax.modeling.mask_decoder import MaskDecoder
from sam_jax.modeling.prompt_encoder import PromptEncoder
from sam_jax.modeling.sam import SamParams, abstract_params, init_params

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "SamParams", "abstract_params", "init_params"]
