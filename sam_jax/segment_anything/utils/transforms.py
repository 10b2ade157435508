"""`segment_anything.utils.transforms`."""

from sam_jax.compat.transforms import ResizeLongestSide

__all__ = ["ResizeLongestSide"]
