"""Datasets for fine-tuning: `Sample`s of an RGB image and its instance masks.

Every dataset has the same small interface: `len(ds)` and `ds[i] -> Sample`, where `ds[i]`
is a pure function of `i` (the trainer's resumable data order relies on it). Sources:

- `SyntheticShapes`: procedural scenes of textured, overlapping shapes; no files needed.
- `FolderDataset`: an image folder with one PNG per object instance, laid out as::

      root/images/<name>.<jpg|jpeg|png|bmp|tif|tiff|webp>
      root/masks/<name>/<anything>.png      one PNG per instance; nonzero pixels are the mask

- `CocoDataset`: COCO-style instance annotations (polygons, RLE or uncompressed RLE).

`open_dataset(spec)` picks one from a string. A file that is missing, unreadable or
inconsistent raises `DataError` (a `ValueError`) whose message names the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from sam_jax.io import IMAGE_EXTENSIONS, ImageError, image_header_size, read_image, read_image_bytes

_log = logging.getLogger(__name__)

SHAPE_KINDS = ("circle", "ellipse", "rectangle", "triangle", "polygon", "star")
BACKGROUND_KINDS = ("gradient", "noise", "stripes", "checker")
TEXTURE_KINDS = ("flat", "gradient", "stripes", "noise")
# Visible parts smaller than this are dropped from a synthetic scene's masks: they are
# slivers that vanish at the model's low-res mask resolution anyway.
MIN_VISIBLE_PIXELS = 30
# Bounding radius of a shape as a fraction of the image side. Shapes smaller than this are
# only one or two 16-pixel patches wide in a small model's 128-pixel input: below what its
# embedding grid resolves, so they measure the grid rather than the model.
RADIUS_RANGE = (0.1, 0.3)

# Errors PIL raises for a file that is not a readable image.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_IMAGE_FORM = "|".join(ext[1:] for ext in IMAGE_EXTENSIONS)


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


# ----------------------------------------------------------------------------- checks


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_index(index: Any, length: int) -> int:
    """A sequence index (negative counts from the end) -> the position in [0, length)."""
    try:
        i = operator.index(index)
    except TypeError:
        raise TypeError(f"dataset index must be an integer, got {type(index).__name__}") from None
    if not -length <= i < length:
        raise IndexError(f"dataset index {i} is out of range for {length} samples")
    return i + length if i < 0 else i


# ----------------------------------------------------------------------------- synthetic scenes


class _Scene(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (K, H, W) bool, visible parts
    kinds: tuple[str, ...]  # K shape kinds


def _colour_offset(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A random RGB direction with Euclidean length in [low, high]; shape (3,)."""
    d = rng.normal(size=3)
    return d / (np.linalg.norm(d) + 1e-9) * rng.uniform(low, high)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights stretching n_in grid values over n_out pixels."""
    pos = (np.arange(n_out) + 0.5) * ((n_in - 1) / n_out)
    lo = np.floor(pos).astype(np.int64)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), np.minimum(lo + 1, n_in - 1)] += frac
    return m


def _unit_field(rng: np.random.Generator, kind: str, ys: np.ndarray, xs: np.ndarray, scale: float) -> np.ndarray:
    """A pattern in about [-0.5, 0.5] over the pixel grid `ys` (h, 1) x `xs` (1, w); shape (h, w).

    `scale` is the extent of the region in pixels; it sets the stripe/checker/noise periods.
    """
    h, w = ys.shape[0], xs.shape[1]
    angle = rng.uniform(0.0, 2.0 * np.pi)
    proj = xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))
    if kind == "gradient":
        lo, hi = proj.min(), proj.max()
        return (proj - lo) / max(float(hi - lo), 1e-6) - 0.5
    if kind == "stripes":
        period = rng.uniform(0.04, 0.2) * scale + 3.0
        return 0.5 * np.sin(proj * np.float32(2.0 * np.pi / period) + np.float32(rng.uniform(0.0, 2.0 * np.pi)))
    if kind == "checker":
        cell = max(int(rng.uniform(0.03, 0.2) * scale), 4)
        return ((ys // cell + xs // cell) % 2) - 0.5
    # "noise": smooth value noise (a coarse random grid, interpolated) plus a little grain;
    # matmuls with interpolation matrices are much cheaper than per-pixel interpolation.
    g = int(rng.integers(3, 12))
    grid = rng.uniform(-0.5, 0.5, (g, g)).astype(np.float32)
    smooth = _interp_matrix(h, g) @ grid @ _interp_matrix(w, g).T
    return smooth + 0.15 * rng.standard_normal((h, w), dtype=np.float32)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A low-to-moderate contrast textured background.

    Returns:
        (image, base): image (size, size, 3) float32 in about [0, 255], and its mean colour (3,).
    """
    base = rng.uniform(40.0, 215.0, 3)
    offset = _colour_offset(rng, 12.0, 45.0)
    coords = np.arange(size, dtype=np.float32) + 0.5
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    field = _unit_field(rng, kind, coords[:, None], coords[None, :], float(size))
    image = base.astype(np.float32) + field[..., None] * offset.astype(np.float32)
    # Sensor-like grain so that no region is perfectly flat.
    image += 3.0 * rng.standard_normal((size, size, 1), dtype=np.float32)
    return image, base


def _pick_colour(rng: np.random.Generator, background: np.ndarray, others: Sequence[np.ndarray]) -> np.ndarray:
    """A colour far from the background (>= 100 RGB units) and from earlier objects (>= 60).

    Rejection sampling; after 20 tries the best candidate is taken, so this always returns.
    """
    best, best_margin = background, -np.inf
    for _ in range(20):
        colour = rng.uniform(15.0, 240.0, 3)
        margin = np.linalg.norm(colour - background) - 100.0
        for other in others:
            margin = min(margin, np.linalg.norm(colour - other) - 60.0)
        if margin >= 0:
            return colour
        if margin > best_margin:
            best, best_margin = colour, margin
    return best


def _inside_polygon(ys: np.ndarray, xs: np.ndarray, vy: np.ndarray, vx: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of pixel centres; ys (h, 1), xs (1, w) -> (h, w) bool.

    The crossing position of each edge depends only on the row, so per edge this is one
    (h, 1) computation and one (h, w) comparison.
    """
    inside = np.zeros((ys.shape[0], xs.shape[1]), bool)
    for i in range(len(vy)):
        y1, x1, y2, x2 = vy[i], vx[i], vy[i - 1], vx[i - 1]
        if y1 == y2:
            continue
        spans = (y1 > ys) != (y2 > ys)
        cross_x = x1 + (ys - y1) * np.float32((x2 - x1) / (y2 - y1))
        inside ^= spans & (xs < cross_x)
    return inside


def _shape_mask(rng: np.random.Generator, kind: str, ys: np.ndarray, xs: np.ndarray, r: float) -> np.ndarray:
    """One shape of bounding radius `r` centred at the origin, over offsets ys (h, 1), xs (1, w).

    Returns:
        (h, w) bool: pixel centres inside the shape.
    """
    if kind == "circle":
        return ys * ys + xs * xs <= r * r
    theta = rng.uniform(0.0, 2.0 * np.pi)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    if kind in ("ellipse", "rectangle"):
        u, v = xs * c + ys * s, ys * c - xs * s  # coordinates along the shape's own axes
        if kind == "ellipse":
            b = r * rng.uniform(0.35, 0.85)
            return (u / r) ** 2 + (v / b) ** 2 <= 1.0
        phi = rng.uniform(0.3, 1.27)  # half-diagonal r split into half-width and half-height
        return (np.abs(u) <= r * np.cos(phi)) & (np.abs(v) <= r * np.sin(phi))
    if kind == "triangle":
        angles = theta + 2.0 * np.pi / 3.0 * np.arange(3) + rng.uniform(-0.35, 0.35, 3)
        radii = np.full(3, r)
    elif kind == "polygon":
        n = int(rng.integers(5, 9))
        angles = theta + 2.0 * np.pi / n * np.arange(n)
        radii = np.full(n, r)
    else:  # star: alternating outer and inner vertices
        n = int(rng.integers(5, 9))
        angles = theta + np.pi / n * np.arange(2 * n)
        radii = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.38, 0.6))
    return _inside_polygon(ys, xs, radii * np.sin(angles), radii * np.cos(angles))


def _paint(
    rng: np.random.Generator, region: np.ndarray, mask: np.ndarray, colour: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> None:
    """Paints `colour` with a random texture into `region` (h, w, 3) where `mask` (h, w) is set."""
    kind = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    if kind == "flat":
        region[mask] = colour
        return
    # Texture amplitude stays well below the colour distance to the background (>= 100).
    high = 35.0 if kind == "noise" else 50.0
    offset = _colour_offset(rng, 15.0, high).astype(np.float32)
    field = _unit_field(rng, kind, ys, xs, float(max(ys.shape[0], xs.shape[1])))
    region[mask] = colour.astype(np.float32) + field[mask][:, None] * offset


def _render_scene(rng: np.random.Generator, size: int, max_objects: int) -> _Scene:
    """Draws 1..max_objects shapes in order onto a background; later shapes occlude earlier ones."""
    image, background = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)  # index of the shape visible at each pixel
    kinds: list[str] = []
    colours: list[np.ndarray] = []
    for k in range(int(rng.integers(1, max_objects + 1))):
        kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
        r = size * rng.uniform(*RADIUS_RANGE)
        cy, cx = size * rng.uniform(-0.05, 1.05, 2)  # may lie partly outside the image
        colour = _pick_colour(rng, background, colours)
        kinds.append(kind)
        colours.append(colour)
        # Work in the shape's bounding box only: that is what keeps a scene cheap.
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, size)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, size)
        if y0 >= y1 or x0 >= x1:
            continue
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - cy)
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - cx)
        mask = _shape_mask(rng, kind, ys, xs, r)
        _paint(rng, image[y0:y1, x0:x1], mask, colour, ys, xs)
        owner[y0:y1, x0:x1][mask] = k
    area = np.bincount(owner[owner >= 0], minlength=len(kinds))
    keep = np.flatnonzero(area >= MIN_VISIBLE_PIXELS)
    masks = owner[None] == keep[:, None, None]
    pixels = np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8)
    return _Scene(pixels, masks, tuple(kinds[i] for i in keep))


def make_scene(rng: np.random.Generator, size: int, max_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """One procedural scene: textured shapes over a textured background.

    Args:
        rng: the only source of randomness; the scene is a pure function of its state.
        size: side of the square image in pixels.
        max_objects: 1..max_objects shapes are drawn; fewer may remain visible.

    Returns:
        (image, masks): image (size, size, 3) uint8 RGB; masks (K, size, size) bool, the
        visible part of each shape that shows at least `MIN_VISIBLE_PIXELS` pixels, in drawing
        order. Masks are mutually disjoint.
    """
    scene = _render_scene(rng, size, max_objects)
    return scene.image, scene.masks


class SyntheticShapes:
    """Procedural scenes: 1..max_objects occluding shapes (see `SHAPE_KINDS`) over a background.

    Sample i is a pure function of (seed, i), independent of the order of access. Background:
    a smooth gradient, value noise, stripes or a checkerboard, of low-to-moderate contrast.
    Shapes: diameter 20%..60% of the side, random position (possibly partly outside), each with
    its own colour, far from the background's, and texture (flat, gradient, stripes, noise).
    Masks are the visible parts; shapes with fewer than `MIN_VISIBLE_PIXELS` visible pixels
    are dropped (so K may be less than the number drawn, rarely 0).

    Args:
        size: side of the square images in pixels, >= 32.
        length: number of samples, >= 1.
        seed: >= 0; datasets with different seeds hold different scenes.
        max_objects: most shapes drawn per scene, >= 1.
    """

    def __init__(self, size: int = 256, length: int = 10_000, seed: int = 0, max_objects: int = 5) -> None:
        self.size = _check_int(size, "size", 32)
        self.length = _check_int(length, "length", 1)
        self.seed = _check_int(seed, "seed", 0)
        self.max_objects = _check_int(max_objects, "max_objects", 1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        i = _check_index(index, self.length)
        scene = _render_scene(np.random.default_rng([self.seed, i]), self.size, self.max_objects)
        return Sample(scene.image, scene.masks, f"synthetic:{self.seed}:{i}", scene.kinds)

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(size={self.size}, length={self.length}, seed={self.seed}, max_objects={self.max_objects})"
        )


# ----------------------------------------------------------------------------- files


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as it is read (EXIF orientation applied), from its header."""
    try:
        h, w = image_header_size(read_image_bytes(path), str(path))
    except ImageError as exc:
        raise DataError(str(exc)) from None
    return w, h


def _load_rgb(path: Path) -> np.ndarray:
    """The image at `path` as (H, W, 3) uint8 RGB, read as the reference reads images."""
    try:
        return read_image(path)
    except ImageError as exc:
        raise DataError(str(exc)) from None


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
            raise DataError(f"{path}: not an image file; images/ must hold only files <name>.<{_IMAGE_FORM}>")
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

        root/images/<name>.<jpg|jpeg|png|bmp|tif|tiff|webp>
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
            raise DataError(f"{masks_dir / name}: its image is missing; expected {images_dir}/{name}.<{_IMAGE_FORM}>")
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
        entry = self._entries[_check_index(index, len(self._entries))]
        image = _load_rgb(entry.image)
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
    size = _image_size(entry.image)
    for path in entry.masks:
        mask_size = _image_size(path)
        if mask_size != size:
            raise DataError(
                f"{path}: mask is {mask_size[0]}x{mask_size[1]} but its image {entry.image.name} is "
                f"{size[0]}x{size[1]} (WxH)"
            )


# ----------------------------------------------------------------------------- COCO


def _mask_utils() -> Any:
    # pycocotools is needed only for COCO annotations; import it on first use.
    try:
        from pycocotools import mask
    except ImportError:
        raise ImportError("CocoDataset needs pycocotools: pip install pycocotools") from None
    return mask


def _read_json(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None


class _CocoImage(NamedTuple):
    path: Path
    height: int
    width: int


def _coco_images(data: Any, json_path: Path, image_dir: Path) -> dict[int, _CocoImage]:
    """image id -> its file and size, from the json's "images" list."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{json_path}: expected a COCO object with lists 'images' and 'annotations'")
    images: dict[int, _CocoImage] = {}
    for i, entry in enumerate(data["images"]):
        try:
            image_id, name = entry["id"], entry["file_name"]
            height, width = int(entry["height"]), int(entry["width"])
        except (TypeError, KeyError, ValueError):
            raise DataError(
                f"{json_path}: images[{i}] must have 'id', 'file_name', 'height' and 'width'; got {entry!r:.200}"
            ) from None
        if image_id in images:
            raise DataError(f"{json_path}: images[{i}] repeats image id {image_id!r}")
        images[image_id] = _CocoImage(image_dir / str(name), height, width)
    return images


def _polygons(segmentation: list[Any], where: str) -> list[list[float]]:
    """The polygons of a polygon segmentation, without degenerate ones (< 3 points)."""
    polygons = []
    for polygon in segmentation:
        if not isinstance(polygon, list) or len(polygon) % 2 or not all(isinstance(v, (int, float)) for v in polygon):
            raise DataError(f"{where}: a polygon must be a list of numbers x1, y1, x2, y2, ...; got {polygon!r:.100}")
        # pycocotools reads a 4-number list as a box, so drop those too: they enclose no area.
        if len(polygon) >= 6:
            polygons.append(polygon)
    return polygons


def _coco_rle(segmentation: Any, image: _CocoImage, where: str) -> dict[str, Any] | None:
    """A segmentation (polygons, RLE or uncompressed RLE) -> compressed RLE; None if it has no polygon.

    Raises:
        DataError: naming `where` (the json and the annotation), for a malformed segmentation
            or one of another size than its image.
    """
    mask_utils = _mask_utils()
    h, w = image.height, image.width
    if isinstance(segmentation, list):
        polygons = _polygons(segmentation, where)
        return mask_utils.merge(mask_utils.frPyObjects(polygons, h, w)) if polygons else None
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise DataError(f"{where}: segmentation must be a list of polygons or an RLE dict with 'counts' and 'size'")
    size = segmentation["size"]
    if not isinstance(size, list) or size != [h, w]:
        raise DataError(f"{where}: segmentation is {size!r} (height, width) but image {image.path} is [{h}, {w}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if sum(counts) != h * w:
            raise DataError(f"{where}: uncompressed RLE counts sum to {sum(counts)}, not height x width = {h * w}")
        return mask_utils.frPyObjects(segmentation, h, w)
    if not isinstance(counts, (str, bytes)):
        raise DataError(f"{where}: RLE counts must be a list of ints or a compressed string")
    return {"size": [h, w], "counts": counts}


class _CocoEntry(NamedTuple):
    image: _CocoImage
    annotations: list[tuple[int, Any]]  # (index in the json's annotations, segmentation)


class CocoDataset:
    """COCO-style instance annotations: polygons, compressed or uncompressed RLE.

    One sample per image that has at least one non-empty, non-crowd annotation, in order of
    image id; its masks are its annotations in json order. Counters:
    `skipped_empty` (images without such an annotation), `skipped_crowd` (iscrowd=1
    annotations, which are ignored) and `skipped_empty_annotations` (segmentations that cover
    no pixel).

    Construction parses and rasterises every segmentation to RLE (cheap, no bitmaps) and
    checks that each sample's image file exists; pixels are read on `__getitem__`, where an
    image whose size differs from the json's height and width is refused.

    Args:
        annotation_json: the COCO instances json.
        image_dir: the folder that the images' `file_name`s are relative to.

    Raises:
        DataError: naming the json (unreadable, malformed, size mismatch) or a missing image.
    """

    def __init__(self, annotation_json: str | os.PathLike[str], image_dir: str | os.PathLike[str]) -> None:
        self.annotation_json = Path(annotation_json)
        self.image_dir = Path(image_dir)
        data = _read_json(self.annotation_json)
        images = _coco_images(data, self.annotation_json, self.image_dir)
        if not isinstance(data.get("annotations"), list):
            raise DataError(f"{self.annotation_json}: expected a COCO object with lists 'images' and 'annotations'")
        self.skipped_crowd = 0
        self.skipped_empty_annotations = 0
        per_image = self._collect(data["annotations"], images)
        self.skipped_empty = len(images) - len(per_image)
        self._entries = [_CocoEntry(images[i], per_image[i]) for i in sorted(per_image, key=_id_order)]
        if self._entries and not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: image folder missing (images of {self.annotation_json})")
        for entry in self._entries:
            if not entry.image.path.is_file():
                raise DataError(f"{entry.image.path}: image file missing (listed in {self.annotation_json})")

    def _collect(self, annotations: list[Any], images: dict[int, _CocoImage]) -> dict[int, list[tuple[int, Any]]]:
        """image id -> its non-empty, non-crowd (annotation index, segmentation) pairs."""
        area = _mask_utils().area
        per_image: dict[int, list[tuple[int, Any]]] = {}
        for j, ann in enumerate(annotations):
            where = f"{self.annotation_json}: annotations[{j}]"
            if not isinstance(ann, dict) or "segmentation" not in ann or ann.get("image_id") not in images:
                raise DataError(f"{where} must have a 'segmentation' and the 'image_id' of an entry of 'images'")
            if ann.get("iscrowd", 0):
                self.skipped_crowd += 1
                continue
            rle = _coco_rle(ann["segmentation"], images[ann["image_id"]], where)
            if rle is None or int(area(rle)) == 0:
                self.skipped_empty_annotations += 1
                continue
            per_image.setdefault(ann["image_id"], []).append((j, ann["segmentation"]))
        return per_image

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Sample:
        entry = self._entries[_check_index(index, len(self._entries))]
        image = _load_rgb(entry.image.path)
        h, w = entry.image.height, entry.image.width
        if image.shape[:2] != (h, w):
            raise DataError(
                f"{self.annotation_json}: annotations of image {entry.image.path} decode to {w}x{h} (WxH, from "
                f"the json) but the image is {image.shape[1]}x{image.shape[0]}"
            )
        decode = _mask_utils().decode
        masks = []
        for j, segmentation in entry.annotations:
            rle = _coco_rle(segmentation, entry.image, f"{self.annotation_json}: annotations[{j}]")
            masks.append(decode(rle).astype(bool))  # non-empty: checked at construction
        return Sample(image, np.stack(masks), entry.image.path.name)

    def __repr__(self) -> str:
        return f"CocoDataset({str(self.annotation_json)!r}, {str(self.image_dir)!r}, {len(self)} images)"


def _id_order(image_id: Any) -> tuple[int, Any]:
    # COCO ids are ints, but some exports use strings; order ints numerically, then strings.
    return (0, image_id) if isinstance(image_id, int) else (1, str(image_id))


# ----------------------------------------------------------------------------- specs

_SYNTHETIC_KEYS = ("seed", "length", "size", "max_objects")
_SPEC_FORMS = (
    "'synthetic[:key=value,...]', a folder holding images/ and masks/, 'ann.json' (images in the json's "
    "sibling folder images/) or 'ann.json::image_dir'"
)


def _parse_synthetic(spec: str) -> dict[str, int]:
    """'synthetic:seed=3,length=500' -> {'seed': 3, 'length': 500}."""
    _, _, options = spec.partition(":")
    kwargs: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, eq, value = (part.strip() for part in item.partition("="))
        if key not in _SYNTHETIC_KEYS or not eq:
            raise ValueError(f"bad synthetic option {item!r} in {spec!r}; valid keys: {', '.join(_SYNTHETIC_KEYS)}")
        if key in kwargs:
            raise ValueError(f"synthetic option {key!r} given twice in {spec!r}")
        try:
            kwargs[key] = int(value)
        except ValueError:
            raise ValueError(f"synthetic option {key} must be an integer, got {value!r} in {spec!r}") from None
    return kwargs


def open_dataset(spec: str) -> Dataset:
    """A dataset from a string.

    Args:
        spec: one of
            - "synthetic" or "synthetic:seed=3,length=500,size=256,max_objects=5" (any subset of
              the keys): `SyntheticShapes`;
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


# Synthetic scenes drawn with this seed are never used for training by default: the
# held-out split for evaluating models trained on `SyntheticShapes` of other seeds.
HELDOUT_SEED = 1_000_003


def heldout_synthetic(size: int, length: int = 200) -> SyntheticShapes:
    """The held-out synthetic split: `length` scenes of side `size` with `HELDOUT_SEED`."""
    return SyntheticShapes(size=size, length=length, seed=HELDOUT_SEED)
