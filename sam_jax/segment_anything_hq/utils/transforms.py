"""`segment_anything_hq.utils.transforms`: SAM's (`sam_jax.segment_anything.utils.transforms`)."""

from sam_jax.segment_anything.utils.transforms import *  # noqa: F403
from sam_jax.segment_anything.utils.transforms import __all__  # noqa: F401
