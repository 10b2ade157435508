"""`segment_anything.predictor`."""

from sam_jax.compat.predictor import SamPredictor

__all__ = ["SamPredictor"]
