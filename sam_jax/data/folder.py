"""`FolderDataset`: an image folder with one mask PNG per object instance."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from sam_jax.data.base import IMAGE_FORM, DataError, Sample, check_index, image_size, load_rgb
from sam_jax.io import IMAGE_EXTENSIONS

_log = logging.getLogger(__name__)
# Errors PIL raises for a file that is not a readable image.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _load_mask(path: Path) -> np.ndarray:
    """A mask PNG as (H, W) bool: pixels with any nonzero colour band (alpha is ignored)."""
    try:
        with Image.open(path) as im:
            im.load()
            bands = im.getbands()
            arr = np.asarray(im)
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: not a readable mask PNG ({exc})") from None
    if arr.ndim == 2:
        return arr != 0
    # Drop alpha: a mask drawn opaque black on opaque black would otherwise be all set.
    colour = [i for i, band in enumerate(bands) if band != "A"] or list(range(len(bands)))
    return (arr[..., colour] != 0).any(axis=-1)


def _visible_entries(folder: Path) -> list[Path]:
    """Sorted entries of `folder`, skipping hidden files (.DS_Store and the like)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _scan_images(images_dir: Path) -> dict[str, Path]:
    """name -> image path for `images_dir/<name>.<ext>`."""
    found: dict[str, Path] = {}
    for path in _visible_entries(images_dir):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{path}: not an image file; images/ must hold only files <name>.<{IMAGE_FORM}>")
        if path.stem in found:
            raise DataError(
                f"{path}: two images named {path.stem!r} (also {found[path.stem].name}); names must be unique"
            )
        found[path.stem] = path
    return found


def _scan_mask_dirs(masks_dir: Path) -> dict[str, list[Path]]:
    """name -> sorted mask PNGs for `masks_dir/<name>/<anything>.png`."""
    found: dict[str, list[Path]] = {}
    for folder in _visible_entries(masks_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder; masks/ must hold one folder masks/<name>/ of PNGs per image")
        pngs = _visible_entries(folder)
        for path in pngs:
            if not path.is_file() or path.suffix.lower() != ".png":
                raise DataError(f"{path}: not a PNG file; mask folders must hold only <anything>.png, one per instance")
        found[folder.name] = pngs
    return found


class _FolderEntry(NamedTuple):
    image: Path
    masks: list[Path]


class FolderDataset:
    """Images with one mask PNG per instance, laid out as::

        root/images/<name>.<jpg|jpeg|png|bmp|tif|tiff|webp|gif>
        root/masks/<name>/<anything>.png      one PNG per instance; nonzero pixels are the mask

    Samples are in sorted order of <name>; each sample's masks in sorted order of file name.
    A mask pixel is set where any colour band is nonzero (palette PNGs: a nonzero index;
    alpha is ignored). An image whose mask folder is empty has K = 0. Hidden files are ignored.

    Construction checks the whole layout from file headers (no pixel data is read): every
    mask folder has its image and every image its mask folder, every file is a readable image,
    and every mask has its image's size. Empty masks are found only on loading: they are
    left out of `Sample.masks`, counted in `skipped_empty` (each file once) and logged once.

    Args:
        root: the folder holding images/ and masks/.

    Raises:
        DataError: naming the offending file or folder.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        images_dir, masks_dir = self.root / "images", self.root / "masks"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DataError(f"{folder}: folder missing; a folder dataset needs {self.root}/images/ and masks/")
        images = _scan_images(images_dir)
        mask_dirs = _scan_mask_dirs(masks_dir)
        for name in sorted(mask_dirs.keys() - images.keys()):
            raise DataError(f"{masks_dir / name}: its image is missing; expected {images_dir}/{name}.<{IMAGE_FORM}>")
        for name in sorted(images.keys() - mask_dirs.keys()):
            raise DataError(f"{images[name]}: its mask folder {masks_dir / name}/ is missing (one PNG per instance)")
        self._entries = [_FolderEntry(images[name], mask_dirs[name]) for name in sorted(images)]
        for entry in self._entries:
            _check_mask_sizes(entry)
        self.skipped_empty = 0
        self._empty_seen: set[Path] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Sample:
        entry = self._entries[check_index(index, len(self._entries))]
        image = load_rgb(entry.image)
        h, w = image.shape[:2]
        masks = []
        for path in entry.masks:
            mask = _load_mask(path)
            if mask.shape != (h, w):  # the file changed since construction
                raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {w}x{h} (WxH)")
            if mask.any():
                masks.append(mask)
            else:
                self._note_empty(path)
        stacked = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        return Sample(image, stacked, entry.image.name)

    def _note_empty(self, path: Path) -> None:
        if path not in self._empty_seen:
            self._empty_seen.add(path)
            self.skipped_empty += 1
            _log.warning("%s: empty mask (no nonzero pixel), skipped", path)

    def __repr__(self) -> str:
        return f"FolderDataset({str(self.root)!r}, {len(self)} images)"


def _check_mask_sizes(entry: _FolderEntry) -> None:
    """Raises DataError unless the image and all its masks are readable and of one size."""
    size = image_size(entry.image)
    for path in entry.masks:
        mask_size = image_size(path)
        if mask_size != size:
            raise DataError(
                f"{path}: mask is {mask_size[0]}x{mask_size[1]} but its image {entry.image.name} is "
                f"{size[0]}x{size[1]} (WxH)"
            )
