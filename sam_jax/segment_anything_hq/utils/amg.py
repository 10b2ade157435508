"""`segment_anything_hq.utils.amg`: SAM's (`sam_jax.segment_anything.utils.amg`)."""

from sam_jax.segment_anything.utils.amg import *  # noqa: F403
from sam_jax.segment_anything.utils.amg import __all__  # noqa: F401
