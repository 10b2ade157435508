"""What every dataset shares: `Sample`, the `Dataset` protocol, `DataError`, and the checks and
image reading of the dataset classes."""

from __future__ import annotations

import dataclasses
import operator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sam_jax.io import IMAGE_EXTENSIONS, ImageError, image_header_size, read_image, read_image_bytes

IMAGE_FORM = "|".join(ext[1:] for ext in IMAGE_EXTENSIONS)


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """One image and its object instances.

    `eq=False`: samples hold arrays, so they compare (and hash) by identity.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: (K, H, W) bool, one per object instance, K >= 0; every mask is non-empty.
        name: identifies the sample in logs and errors: the image file name, or
            "synthetic:<seed>:<index>".
        kinds: synthetic samples only: the shape kind (from `SHAPE_KINDS`) of each of the K
            masks; None for samples read from files.
    """

    image: np.ndarray
    masks: np.ndarray
    name: str
    kinds: tuple[str, ...] | None = None


@runtime_checkable
class Dataset(Protocol):
    """What the trainer consumes: a length and deterministic indexing."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample:
        """The sample at `index` in [0, len); the same index always gives the same sample."""
        ...


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_index(index: Any, length: int) -> int:
    """A sequence index (negative counts from the end) -> the position in [0, length)."""
    try:
        i = operator.index(index)
    except TypeError:
        raise TypeError(f"dataset index must be an integer, got {type(index).__name__}") from None
    if not -length <= i < length:
        raise IndexError(f"dataset index {i} is out of range for {length} samples")
    return i + length if i < 0 else i


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as it is read (EXIF orientation applied), from its header."""
    try:
        h, w = image_header_size(read_image_bytes(path), str(path))
    except ImageError as exc:
        raise DataError(str(exc)) from None
    return w, h


def load_rgb(path: Path) -> np.ndarray:
    """The image at `path` as (H, W, 3) uint8 RGB, read as the reference reads images."""
    try:
        return read_image(path)
    except ImageError as exc:
        raise DataError(str(exc)) from None
