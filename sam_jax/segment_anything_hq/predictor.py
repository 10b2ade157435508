"""`segment_anything_hq.predictor`: the same `SamPredictor` (it takes `hq_token_only`)."""

from sam_jax.compat.predictor import SamPredictor

__all__ = ["SamPredictor"]
