"""Datasets for fine-tuning: `Sample`s of an RGB image and its instance masks.

Every dataset has the same small interface: `len(ds)` and `ds[i] -> Sample`, where `ds[i]`
is a pure function of `i` (the trainer's resumable data order relies on it). Sources:

- `SyntheticShapes`: procedural scenes of textured, overlapping shapes; no files needed.
  Families (`FAMILIES`): `classic`, `broad` and the held-out `heldout-family`.
- `FolderDataset`: an image folder with one PNG per object instance, laid out as::

      root/images/<name>.<jpg|jpeg|png|bmp|tif|tiff|webp|gif>
      root/masks/<name>/<anything>.png      one PNG per instance; nonzero pixels are the mask

- `CocoDataset`: COCO-style instance annotations (polygons, RLE or uncompressed RLE).

`open_dataset(spec)` picks one from a string. A file that is missing, unreadable or
inconsistent raises `DataError` (a `ValueError`) whose message names the file.
"""

from sam_jax.data.base import DataError, Dataset, Sample
from sam_jax.data.coco import CocoDataset
from sam_jax.data.families import BROAD_SHAPES, FAMILIES, HELDOUT_SHAPES, SceneFamily
from sam_jax.data.folder import FolderDataset
from sam_jax.data.spec import open_dataset
from sam_jax.data.synthetic import (
    HELDOUT_SEED,
    MIN_VISIBLE_PIXELS,
    SHAPE_KINDS,
    SyntheticShapes,
    heldout_synthetic,
    make_scene,
)
from sam_jax.io import IMAGE_EXTENSIONS

__all__ = [
    "BROAD_SHAPES",
    "FAMILIES",
    "HELDOUT_SEED",
    "HELDOUT_SHAPES",
    "IMAGE_EXTENSIONS",
    "MIN_VISIBLE_PIXELS",
    "SHAPE_KINDS",
    "CocoDataset",
    "DataError",
    "Dataset",
    "FolderDataset",
    "Sample",
    "SceneFamily",
    "SyntheticShapes",
    "heldout_synthetic",
    "make_scene",
    "open_dataset",
]
