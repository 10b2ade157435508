"""`SamAutomaticMaskGenerator`, the reference class over `sam_jax.amg.generate`."""

from __future__ import annotations

from typing import Any

from sam_jax.amg.generator import generate
from sam_jax.amg.options import options_from
from sam_jax.compat.model import Sam
from sam_jax.compat.predictor import SamPredictor
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import check_image


class SamAutomaticMaskGenerator:
    """The reference class's shape, for code being ported: options once, `generate` per image.

    Args:
        model: a `sam_jax.Sam` (from `sam_model_registry`) or `SamParams` (`sam_jax.load`);
            positional or `model=` (`params=` too).
        *args: options by position, in the reference's order (the fields of `AmgOptions`).
        **options: the fields of `AmgOptions`.

    Attributes:
        params: the model's `SamParams`; options: the `AmgOptions`;
        predictor: a `sam_jax.SamPredictor` over the model, as the reference's.
    """

    def __init__(self, model: Any = None, *args: Any, params: Any = None, **options: Any) -> None:
        if (model is None) == (params is None):
            raise TypeError("give the model once: SamAutomaticMaskGenerator(model, ...) or params=")
        model = params if model is None else model
        self.options = options_from(args, options)
        if not isinstance(model, (Sam, SamParams)):
            raise TypeError(
                f"{'model' if params is None else 'params'} must be a sam_jax.Sam (sam_model_registry) "
                f"or SamParams (sam_jax.load), got {type(model).__name__}"
            )
        self.params = model.params if isinstance(model, Sam) else model
        self.predictor = SamPredictor(model)

    def generate(self, image: Any, multimask_output: bool = True) -> list[dict[str, Any]]:
        """See `sam_jax.generate_masks`. `multimask_output=False` (an argument of
        `segment_anything_hq`'s generator) takes each point's single-mask output."""
        if not isinstance(multimask_output, bool):
            raise TypeError(f"multimask_output must be True or False, got {multimask_output!r}")
        return generate(self.params, check_image(image), self.options, multimask_output)
