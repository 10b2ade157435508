"""sam-jax: Segment Anything (SAM v1) in JAX/Flax, exact to the reference.

params = sam_jax.load("converted-checkpoint-dir")
masks, scores, low_res = sam_jax.predict(params, image, points=[[500, 375]])

emb = sam_jax.encode(params, image)          # once per image
masks, scores, low_res = sam_jax.decode(params, emb, box=[10, 20, 300, 400])

Code written for `segment_anything` runs by changing its imports: `sam_model_registry`,
`SamPredictor`, `ResizeLongestSide`, `SamAutomaticMaskGenerator` (docs/porting.md).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_jax.checkpoint import load_directory, save
from sam_jax.compat import ResizeLongestSide, Sam, SamPredictor, sam_model_registry
from sam_jax.compilation_cache import enable_compilation_cache
from sam_jax.config import MODEL_REGISTRY, SamConfig, get_config
from sam_jax.end_to_end import forward
from sam_jax.hf_format import is_hf_checkpoint, load_hf
from sam_jax.io import load_embedding
from sam_jax.modeling.sam import SamParams, check_compute_dtype, init_params
from sam_jax.predictor import ImageEmbedding, decode, encode, predict

if TYPE_CHECKING:
    from sam_jax.amg import AmgOptions, SamAutomaticMaskGenerator, generate_masks

try:
    __version__ = importlib.metadata.version("sam-jax")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# Imported on first use: automatic masks pull in scipy, which `predict` users never need.
_LAZY = {"AmgOptions": "sam_jax.amg", "SamAutomaticMaskGenerator": "sam_jax.amg", "generate_masks": "sam_jax.amg"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sam_jax' has no attribute {name!r}")


# Models shipped inside the package, by name (see README: "The embedded default").
EMBEDDED_MODELS = {"tiny-shapes": Path(__file__).parent / "models" / "tiny-shapes"}
# "Segment everything" thresholds that suit each embedded model, where the demo and the page
# start (the API's defaults stay the reference's). The reference's 0.88 / 0.95 suit a trained
# ViT-H and keep only tiny-shapes' surest masks: its predicted IoUs are honest on average but
# rarely that high, and its low-resolution logits are softer at the edges
# (docs/embedded-model.md).
EMBEDDED_AUTOMATIC_OPTIONS = {"tiny-shapes": {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.9}}


def load(path: str | os.PathLike[str], compute_dtype: str = "float32") -> SamParams:
    """Loads `SamParams` from a checkpoint.

    Args:
        path: the name of an embedded model ("tiny-shapes"), or a directory written by the
            converter or `save`, or a training run (its latest step) or one of its steps, or
            a Hugging Face `transformers` SAM folder or `.safetensors` file (converted in
            memory). A name is only looked up when no file of that name exists.
        compute_dtype: "float32" (exact to the reference) or "bfloat16": the image encoder's
            arithmetic; the weights are kept in float32 either way.
    Returns:
        `SamParams` carrying their `SamConfig`.
    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: the checkpoint is damaged or its weights do not fit its config.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a checkpoint directory path, got {type(path).__name__}")
    compute_dtype = check_compute_dtype(compute_dtype)
    if isinstance(path, str) and path in EMBEDDED_MODELS and not os.path.exists(path):
        path = EMBEDDED_MODELS[path]
    if is_hf_checkpoint(path):
        return load_hf(path).with_compute_dtype(compute_dtype)
    return load_directory(path).with_compute_dtype(compute_dtype)


def init(config: SamConfig | str, seed: int = 0) -> SamParams:
    """Randomly initialised `SamParams` for a config or registry name (e.g. "vit_b"), see
    `sam_jax.modeling.sam.init_params`."""
    if isinstance(config, str):
        config = get_config(config)
    if not isinstance(config, SamConfig):
        raise TypeError(f"config must be a SamConfig or a registry name, got {type(config).__name__}")
    return init_params(config, seed)


__all__ = [
    "MODEL_REGISTRY",
    "AmgOptions",
    "ImageEmbedding",
    "ResizeLongestSide",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamParams",
    "SamPredictor",
    "decode",
    "enable_compilation_cache",
    "encode",
    "forward",
    "generate_masks",
    "get_config",
    "init",
    "load",
    "load_embedding",
    "predict",
    "sam_model_registry",
    "save",
]
