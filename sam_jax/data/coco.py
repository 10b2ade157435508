"""`CocoDataset`: COCO-style instance annotations (polygons, RLE or uncompressed RLE)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sam_jax.data.base import DataError, Sample, check_index, load_rgb


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
        if (
            not isinstance(polygon, list)
            or len(polygon) % 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon)
        ):
            raise DataError(
                f"{where}: a polygon must be a list of finite numbers x1, y1, x2, y2, ...; got {polygon!r:.100}"
            )
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
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise DataError(f"{where}: uncompressed RLE counts must be integers >= 0")
        if sum(counts) != h * w:
            raise DataError(f"{where}: uncompressed RLE counts sum to {sum(counts)}, not height x width = {h * w}")
        return mask_utils.frPyObjects(segmentation, h, w)
    if not isinstance(counts, (str, bytes)):
        raise DataError(f"{where}: RLE counts must be a list of ints or a compressed string")
    total = _compressed_rle_total(counts)
    if total != h * w:
        found = "is not a valid compressed RLE string" if total is None else f"counts sum to {total}"
        raise DataError(f"{where}: segmentation RLE {found}, not height x width = {h * w}")
    return {"size": [h, w], "counts": counts}


def _compressed_rle_total(counts: str | bytes) -> int | None:
    """The pixels a COCO compressed RLE string covers (the sum of its runs, as pycocotools'
    `rleFrString` reads them), or None when it is malformed: a character outside the
    encoding, a run cut short at the end, or a negative run. pycocotools itself reads such
    strings past their end or leaves runs undefined, so they are checked here first."""
    text = counts.encode() if isinstance(counts, str) else counts
    runs: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text) or not 48 <= text[p] < 48 + 64:
                return None
            c = text[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return sum(runs)


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
        entry = self._entries[check_index(index, len(self._entries))]
        image = load_rgb(entry.image.path)
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
