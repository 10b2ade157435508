"""`segment_anything_hq.utils.transforms`: SAM's (`sam_jax.segment_anything.utils.transforms`)."""

from sam_jax.segment_anything.utils.transforms import ResizeLongestSide

__all__ = ["ResizeLongestSide"]
