"""sam-jax: Segment Anything (SAM v1) in JAX/Flax, exact to the reference.

params = sam_jax.load("converted-checkpoint-dir")
masks, scores, low_res = sam_jax.predict(params, image, points=[[500, 375]])

emb = sam_jax.encode(params, image)          # once per image
masks, scores, low_res = sam_jax.decode(params, emb, box=[10, 20, 300, 400])

Code written for `segment_anything` runs by changing its imports: `sam_model_registry`,
`SamPredictor`, `ResizeLongestSide`, `SamAutomaticMaskGenerator` (docs/porting.md).

This module only re-exports; nothing inside the package imports it (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

from sam_jax import compilation_cache
from sam_jax.checkpoint import save
from sam_jax.compat import ResizeLongestSide, Sam, SamPredictor, sam_model_registry
from sam_jax.compilation_cache import enable_compilation_cache
from sam_jax.config import MODEL_REGISTRY, SamConfig, get_config
from sam_jax.embedding_files import load_embedding
from sam_jax.end_to_end import forward
from sam_jax.loading import EMBEDDED_AUTOMATIC_OPTIONS, EMBEDDED_MODELS, init, load
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import ImageEmbedding, decode, encode, predict

# Before anything is compiled (importing the package compiles nothing): JAX decides once per
# process whether to use its persistent cache.
compilation_cache.enable_default()

if TYPE_CHECKING:
    from sam_jax.amg import AmgOptions, generate_masks
    from sam_jax.compat.automatic_mask_generator import SamAutomaticMaskGenerator
    from sam_jax.vectors import mask_to_polygons, polygons_to_geojson_geometry, polygons_to_mask, records_to_geojson

try:
    __version__ = importlib.metadata.version("sam-jax")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# Imported on first use: automatic masks pull in scipy, and vectors OpenCV, which `predict`
# users never need.
_LAZY = {
    "AmgOptions": "sam_jax.amg",
    "generate_masks": "sam_jax.amg",
    "SamAutomaticMaskGenerator": "sam_jax.compat.automatic_mask_generator",
    "mask_to_polygons": "sam_jax.vectors",
    "polygons_to_mask": "sam_jax.vectors",
    "polygons_to_geojson_geometry": "sam_jax.vectors",
    "records_to_geojson": "sam_jax.vectors",
}


# Submodules imported on first use: `sam_jax.nnx` pulls in flax.nnx.
_LAZY_MODULES = ("nnx",)


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"sam_jax.{name}")  # the import binds it as an attribute
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sam_jax' has no attribute {name!r}")


__all__ = [
    "EMBEDDED_AUTOMATIC_OPTIONS",
    "EMBEDDED_MODELS",
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
    "mask_to_polygons",
    "polygons_to_geojson_geometry",
    "polygons_to_mask",
    "predict",
    "records_to_geojson",
    "sam_model_registry",
    "save",
]
