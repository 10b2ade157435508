"""`open_dataset`: a dataset from the string a user gives on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sam_jax.data.base import DataError, Dataset
from sam_jax.data.coco import CocoDataset
from sam_jax.data.folder import FolderDataset
from sam_jax.data.synthetic import SyntheticShapes

_SYNTHETIC_KEYS = ("seed", "length", "size", "max_objects", "family")
_SPEC_FORMS = (
    "'synthetic[:key=value,...]', a folder holding images/ and masks/, 'ann.json' (images in the json's "
    "sibling folder images/) or 'ann.json::image_dir'"
)


def _parse_synthetic(spec: str) -> dict[str, Any]:
    """'synthetic:seed=3,length=500,family=broad' -> {'seed': 3, 'length': 500, 'family': 'broad'}."""
    _, _, options = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, eq, value = (part.strip() for part in item.partition("="))
        if key not in _SYNTHETIC_KEYS or not eq:
            raise ValueError(f"bad synthetic option {item!r} in {spec!r}; valid keys: {', '.join(_SYNTHETIC_KEYS)}")
        if key in kwargs:
            raise ValueError(f"synthetic option {key!r} given twice in {spec!r}")
        if key == "family":
            kwargs[key] = value
            continue
        try:
            kwargs[key] = int(value)
        except ValueError:
            raise ValueError(f"synthetic option {key} must be an integer, got {value!r} in {spec!r}") from None
    return kwargs


def open_dataset(spec: str) -> Dataset:
    """A dataset from a string.

    Args:
        spec: one of
            - "synthetic" or "synthetic:seed=3,length=500,size=256,max_objects=5,family=broad" (any
              subset of the keys): `SyntheticShapes`;
            - a folder holding images/ (and masks/): `FolderDataset`;
            - "path/ann.json": `CocoDataset` with the images in "path/images";
            - "path/ann.json::image_dir": `CocoDataset` with the images in "image_dir".

    Returns:
        The dataset.

    Raises:
        ValueError: a bad synthetic option (the message lists the valid keys).
        DataError: a path that is none of the above, or a dataset's own refusal.
    """
    if not isinstance(spec, str):
        raise TypeError(f"dataset spec must be a string, {_SPEC_FORMS}; got {type(spec).__name__}")
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return SyntheticShapes(**_parse_synthetic(spec))
    if "::" in spec:
        json_path, _, image_dir = spec.partition("::")
        return _open_coco(Path(json_path), Path(image_dir))
    path = Path(spec)
    if path.is_dir():
        if (path / "images").is_dir():
            return FolderDataset(path)
        raise DataError(f"{path}: folder has no images/ subfolder; a dataset spec is {_SPEC_FORMS}")
    if path.suffix.lower() == ".json":
        return _open_coco(path, path.parent / "images")
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; a dataset spec is {_SPEC_FORMS}")
    raise DataError(f"{path}: not a dataset; a dataset spec is {_SPEC_FORMS}")


def _open_coco(json_path: Path, image_dir: Path) -> CocoDataset:
    if json_path.suffix.lower() != ".json" or not json_path.is_file():
        raise DataError(f"{json_path}: no such annotation .json file; a dataset spec is {_SPEC_FORMS}")
    return CocoDataset(json_path, image_dir)
