"""Automatic masks for images of any size, tile by tile, with memory bounded by the tile.

The image is cut into square tiles of `tile` pixels that share `overlap` pixels with their
neighbours (the last row and column of tiles are aligned to the image's edge); each tile is
read on its own (`sam_jax.windowed`: a tiled TIFF decodes only the segments the tile needs)
and segmented by `generate`. Its masks are moved to the image's coordinates, then merged:

- an object cut by a tile border comes out of each tile it touches as a piece that reaches
  that tile's inner edge; two pieces of neighbouring tiles that agree inside the strip both
  tiles see (IoU at least `merge_iou` there) and of which at least one reaches its tile's
  inner edge are one object: they are joined (transitively, so an object across four tiles is
  one mask), each piece matched with at most one piece of each neighbouring tile;
- what is left is deduplicated by mask IoU (an object inside a shared strip is found whole
  by both tiles): complete masks are preferred over pieces still cut by a tile's edge, then
  higher predicted IoU.

A mask is a `CroppedMask`: its bounding window and its position in the image, never an
image-sized bitmap, so memory grows with the objects' sizes, not with the image's size times
the number of masks. `CroppedMask.to_coco_rle` writes the image-sized COCO RLE from it.

Usage:
    records = generate_tiled(params, sam_jax.windowed.open_windows("scene.tif"), AmgOptions(),
                             tile=1024, overlap=256)
    json_ready = coco_records(records)
    collection = sam_jax.records_to_geojson(polygon_records(records))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sam_jax import masks as mask_utils
from sam_jax import vectors
from sam_jax.amg.generator import generate
from sam_jax.amg.options import AmgOptions
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import check_image, check_params
from sam_jax.windowed import ArrayWindows, WindowedImage

# IoU two pieces of neighbouring tiles must reach inside their shared strip to be one object.
MERGE_IOU = 0.6
# Pixels within which a mask's box counts as reaching its tile's edge: upsampled low-res masks
# may stop a pixel or two short of the border that cuts them.
EDGE_TOLERANCE = 3

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive


@dataclasses.dataclass(frozen=True)
class CroppedMask:
    """A mask of a large image, stored as its bounding window.

    Attributes:
        y0, x0: the image pixel of `mask[0, 0]`.
        mask: (h, w) bool, tight around the mask's pixels ((0, 0) for an empty mask).
        image_size: (H, W) of the image the mask belongs to.
    """

    y0: int
    x0: int
    mask: np.ndarray
    image_size: tuple[int, int]

    @property
    def box(self) -> Box:
        """(x0, y0, x1, y1) of the window, x1 and y1 exclusive."""
        h, w = self.mask.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def window(self, box: Box) -> np.ndarray:
        """The mask inside `box` (x0, y0, x1, y1): (y1 - y0, x1 - x0) bool."""
        bx0, by0, bx1, by1 = box
        out = np.zeros((by1 - by0, bx1 - bx0), bool)
        x0, y0, x1, y1 = self.box
        ix0, iy0, ix1, iy1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
        if ix0 < ix1 and iy0 < iy1:
            out[iy0 - by0 : iy1 - by0, ix0 - bx0 : ix1 - bx0] = self.mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        return out

    def to_rle(self) -> dict[str, Any]:
        """Uncompressed RLE of the image-sized mask, made without the image-sized bitmap."""
        return mask_utils.placed_mask_to_rle(self.mask, self.y0, self.x0, self.image_size)

    def to_coco_rle(self) -> dict[str, Any]:
        """COCO compressed RLE (counts as a str) of the image-sized mask."""
        return mask_utils.coco_encode_rle(self.to_rle())

    def to_full(self) -> np.ndarray:
        """The (H, W) bool mask (for small images and tests: it is image-sized)."""
        h, w = self.image_size
        return self.window((0, 0, w, h))


def crop_mask(mask: np.ndarray, y0: int, x0: int, image_size: tuple[int, int]) -> CroppedMask:
    """A `CroppedMask` of an (h, w) bool mask whose pixel (0, 0) is the image's (y0, x0),
    cut down to its pixels' bounding box."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return CroppedMask(y0, x0, np.zeros((0, 0), bool), image_size)
    tight = np.ascontiguousarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], bool)
    return CroppedMask(y0 + int(rows[0]), x0 + int(cols[0]), tight, image_size)


def union(parts: Sequence[CroppedMask]) -> CroppedMask:
    """The union of masks of one image, in the window that holds them all."""
    boxes = np.asarray([p.box for p in parts if p.mask.size])
    if not len(boxes):
        return parts[0]
    box = (int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max()))
    out = np.zeros((box[3] - box[1], box[2] - box[0]), bool)
    for p in parts:
        x0, y0, x1, y1 = p.box
        out[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]] |= p.mask
    return crop_mask(out, box[1], box[0], parts[0].image_size)


def _intersection(a: Box, b: Box) -> Box | None:
    box = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return box if box[0] < box[2] and box[1] < box[3] else None


def cropped_iou(a: CroppedMask, b: CroppedMask) -> float:
    """IoU of two masks of one image (1 when both are empty)."""
    inter_box = _intersection(a.box, b.box)
    inter = int(np.count_nonzero(a.window(inter_box) & b.window(inter_box))) if inter_box else 0
    union_area = a.area + b.area - inter
    return inter / union_area if union_area else 1.0


# ----------------------------------------------------------------------------- tiles


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the tiles along one side: every `tile - overlap` pixels, the last one moved
    back to end at the edge (one tile of the whole side when it is not longer than `tile`)."""
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(min(starts[-1] + tile - overlap, length - tile))
    return starts


def tile_boxes(image_size: tuple[int, int], tile: int, overlap: int) -> list[Box]:
    """The tiles of an (H, W) image, row by row, as (x0, y0, x1, y1) boxes (x1, y1 exclusive)."""
    h, w = image_size
    return [
        (x, y, min(x + tile, w), min(y + tile, h))
        for y in tile_starts(h, tile, overlap)
        for x in tile_starts(w, tile, overlap)
    ]


def check_tiling(
    tile: object, overlap: object, min_tile: int = 1, names: tuple[str, str] = ("tile", "overlap")
) -> None:
    """Refuses a tiling that cannot work, naming the option as `names` do.

    Args:
        tile: tile side in pixels: an int of at least `min_tile` (a model's input side: a
            smaller tile would be enlarged to it, spending work on no new detail).
        overlap: pixels shared by neighbouring tiles: an int >= 0 below half the tile (so a
            strip is shared by two tiles only, and each tile has pixels of its own).
    Raises:
        TypeError, ValueError: one line naming the option and what it must be.
    """
    tile_name, overlap_name = names
    for name, value in ((tile_name, tile), (overlap_name, overlap)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int (pixels), got {value!r}")
    assert isinstance(tile, (int, np.integer)) and isinstance(overlap, (int, np.integer))
    if tile < min_tile:
        raise ValueError(f"{tile_name} must be at least {min_tile} pixels (the model's input side), got {tile}")
    if overlap < 0 or 2 * overlap >= tile:
        raise ValueError(f"{overlap_name} must be >= 0 and below half of {tile_name} {tile}, got {overlap}")


# ----------------------------------------------------------------------------- merging


def _touches_inner_edge(box: Box, tile: Box, image_size: tuple[int, int], tolerance: int) -> bool:
    """Whether a mask's box reaches an edge of its tile that is not the image's (where the
    tile's border may have cut the object)."""
    h, w = image_size
    x0, y0, x1, y1 = box
    tx0, ty0, tx1, ty1 = tile
    return bool(
        (tx0 > 0 and x0 <= tx0 + tolerance)
        or (ty0 > 0 and y0 <= ty0 + tolerance)
        or (tx1 < w and x1 >= tx1 - tolerance)
        or (ty1 < h and y1 >= ty1 - tolerance)
    )


class _Groups:
    """Union-find over piece indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def merge_tiles(
    pieces: Sequence[Sequence[dict[str, Any]]],
    boxes: Sequence[Box],
    image_size: tuple[int, int],
    *,
    merge_iou: float = MERGE_IOU,
    nms_thresh: float = 0.7,
    edge_tolerance: int = EDGE_TOLERANCE,
) -> list[dict[str, Any]]:
    """Joins the pieces of objects cut by tile borders and removes duplicates (module docstring).

    Args:
        pieces: per tile, its records in image coordinates, each with `segmentation` a
            `CroppedMask` and the reference's other fields.
        boxes: per tile, its (x0, y0, x1, y1) box (`tile_boxes`).
        image_size: (H, W).
        merge_iou: IoU inside the shared strip above which two pieces are one object.
        nms_thresh: mask IoU above which the lower-ranked of two masks is dropped.
        edge_tolerance: pixels within which a mask reaches its tile's edge.
    Returns:
        Records (the reference's fields, `segmentation` a `CroppedMask`), best first. A joined
        mask's `predicted_iou` and `stability_score` are its pieces' means weighted by area,
        its `point_coords` the largest piece's, its `crop_box` the box of its pieces' crops.
    """
    flat = [(t, r) for t, records in enumerate(pieces) for r in records]
    masks = [r["segmentation"] for _, r in flat]
    cut = [
        _touches_inner_edge(m.box, boxes[t], image_size, edge_tolerance) if m.mask.size else False
        for (t, _), m in zip(flat, masks, strict=True)
    ]
    by_tile: list[list[int]] = [[] for _ in boxes]
    for i, (t, _) in enumerate(flat):
        if masks[i].mask.size:
            by_tile[t].append(i)
    candidates = []
    grid = np.asarray(boxes, np.int64).reshape(-1, 4)
    for t in range(len(boxes)):
        x0, y0, x1, y1 = grid[t]
        later = grid[t + 1 :]
        neighbours = np.flatnonzero((later[:, 0] < x1) & (later[:, 2] > x0) & (later[:, 1] < y1) & (later[:, 3] > y0))
        for u in (t + 1 + neighbours).tolist():
            strip = _intersection(boxes[t], boxes[u])
            if strip is None:
                continue
            here = [i for i in by_tile[t] if _intersection(masks[i].box, strip)]
            there = [j for j in by_tile[u] if _intersection(masks[j].box, strip)]
            candidates += _candidates(here, there, masks, cut, strip, merge_iou)
    # Best agreement first; an object has one piece per tile at most, so two groups join only
    # if they hold pieces of different tiles (a tile's second mask of the same region, say two
    # objects at once, cannot chain two objects together).
    groups = _Groups(len(flat))
    tiles_of = {i: {t} for i, (t, _) in enumerate(flat)}
    for _, i, j in sorted(candidates, key=lambda c: -c[0]):
        gi, gj = groups.find(i), groups.find(j)
        if gi != gj and not tiles_of[gi] & tiles_of[gj]:
            groups.join(gi, gj)
            tiles_of[groups.find(gi)] = tiles_of[gi] | tiles_of[gj]
    members: dict[int, list[int]] = {}
    for i in range(len(flat)):
        members.setdefault(groups.find(i), []).append(i)
    cores = tile_cores(boxes)
    merged = [
        _joined([flat[i][1] for i in group], [flat[i][0] for i in group], [not cut[i] for i in group], cores)
        for group in members.values()
    ]
    # Pieces still cut by their tile's edge rank below whole masks, whatever their scores.
    whole = [len(group) > 1 or not cut[group[0]] for group in members.values()]
    return _suppress(merged, whole, nms_thresh)


def _candidates(
    here: list[int], there: list[int], masks: list[CroppedMask], cut: list[bool], strip: Box, merge_iou: float
) -> list[tuple[float, int, int]]:
    """(score, i, j): pairs of pieces of two neighbouring tiles that may be one object."""
    windows = {i: masks[i].window(strip) for i in here + there}
    candidates = []
    for i in here:
        for j in there:
            if not (cut[i] or cut[j]):
                continue  # both whole: a duplicate, for suppression
            a, b = windows[i], windows[j]
            union_area = np.count_nonzero(a | b)
            if union_area:
                iou = np.count_nonzero(a & b) / union_area
                if iou >= merge_iou:
                    # Pieces that agree in the strip may differ beyond it (one may hold a
                    # neighbouring object too): of such rivals, the pair adding less outside wins.
                    outside = masks[i].area + masks[j].area - a.sum() - b.sum()
                    excess = outside / max(masks[i].area + masks[j].area, 1)
                    candidates.append((iou - 0.1 * excess, i, j))
    return candidates


def tile_cores(boxes: Sequence[Box]) -> list[Box]:
    """Per tile of a grid of tiles (`tile_boxes`), its core: the part of the image it is
    nearest the middle of, from the middle of one shared strip to the middle of the next.
    Cores split the image into disjoint boxes."""

    def cuts(starts_ends: set[tuple[int, int]]) -> dict[int, tuple[int, int]]:
        spans = sorted(starts_ends)
        bounds = [spans[0][0]] + [(spans[k][0] + spans[k - 1][1]) // 2 for k in range(1, len(spans))]
        bounds.append(spans[-1][1])
        return {start: (bounds[k], bounds[k + 1]) for k, (start, _) in enumerate(spans)}

    xs = cuts({(b[0], b[2]) for b in boxes})
    ys = cuts({(b[1], b[3]) for b in boxes})
    return [(xs[b[0]][0], ys[b[1]][0], xs[b[0]][1], ys[b[1]][1]) for b in boxes]


def _joined(records: list[dict[str, Any]], tiles: list[int], whole: list[bool], cores: Sequence[Box]) -> dict[str, Any]:
    """One record from the pieces of one object (a single piece is returned as it is).

    Stitched at the middle of the shared strips: inside the core of a tile that gave a piece,
    only that tile's pieces decide (a tile sees best away from its edges, and a piece's
    stray pixels near its edge do not leak in); elsewhere any piece does. A piece that stays
    clear of its tile's inner edges saw the whole object: nothing outside its box is kept (a
    piece of another tile may hold a neighbouring object as well).
    """
    if len(records) == 1:
        return records[0]
    parts = [r["segmentation"] for r in records]
    frame = union(parts).box
    x0, y0 = frame[:2]
    inside = np.ones((frame[3] - y0, frame[2] - x0), bool)
    for part, is_whole in zip(parts, whole, strict=True):
        if is_whole:
            seen = _intersection(part.box, frame)
            keep = np.zeros_like(inside)
            if seen is not None:
                keep[seen[1] - y0 : seen[3] - y0, seen[0] - x0 : seen[2] - x0] = True
            inside &= keep
    stitched = np.zeros((frame[3] - y0, frame[2] - x0), bool)
    for part, t in zip(parts, tiles, strict=True):
        mine = part.window(frame) & inside
        for u in set(tiles) - {t}:
            other = _intersection(cores[u], frame)
            if other is not None:
                mine[other[1] - y0 : other[3] - y0, other[0] - x0 : other[2] - x0] = False
        stitched |= mine
    mask = crop_mask(stitched, y0, x0, parts[0].image_size)
    areas = np.asarray([max(r["area"], 1) for r in records], np.float64)
    largest = records[int(np.argmax(areas))]
    crops = np.asarray([r["crop_box"] for r in records], np.float64)  # XYWH
    cx0, cy0 = crops[:, 0].min(), crops[:, 1].min()
    cx1, cy1 = (crops[:, 0] + crops[:, 2]).max(), (crops[:, 1] + crops[:, 3]).max()
    return _record(
        mask,
        float(np.average([r["predicted_iou"] for r in records], weights=areas)),
        largest["point_coords"],
        float(np.average([r["stability_score"] for r in records], weights=areas)),
        [int(cx0), int(cy0), int(cx1 - cx0), int(cy1 - cy0)],
    )


def _record(
    mask: CroppedMask, predicted_iou: float, point_coords: list[list[float]], stability: float, crop_box: list[int]
) -> dict[str, Any]:
    """A record with the reference's fields; bbox XYWH of inclusive pixel bounds, as the reference's."""
    x0, y0, x1, y1 = mask.box
    return {
        "segmentation": mask,
        "area": mask.area,
        "bbox": [x0, y0, max(x1 - 1 - x0, 0), max(y1 - 1 - y0, 0)],
        "predicted_iou": predicted_iou,
        "point_coords": point_coords,
        "stability_score": stability,
        "crop_box": crop_box,
    }


def _suppress(records: list[dict[str, Any]], whole: list[bool], nms_thresh: float) -> list[dict[str, Any]]:
    """Greedy suppression by mask IoU (and of cut pieces mostly inside a kept mask): whole
    masks before cut pieces, then by predicted IoU."""
    order = sorted(range(len(records)), key=lambda i: (not whole[i], -records[i]["predicted_iou"]))
    boxes = np.asarray([records[i]["segmentation"].box for i in order], np.int64).reshape(-1, 4)
    suppressed = np.zeros(len(order), bool)
    kept = []
    for pos, i in enumerate(order):
        if suppressed[pos]:
            continue
        kept.append(records[i])
        rest = np.arange(pos + 1, len(order))
        x0, y0, x1, y1 = boxes[pos]
        overlapping = rest[
            ~suppressed[rest]
            & (np.minimum(x1, boxes[rest, 2]) > np.maximum(x0, boxes[rest, 0]))
            & (np.minimum(y1, boxes[rest, 3]) > np.maximum(y0, boxes[rest, 1]))
        ]
        mask = records[i]["segmentation"]
        for q in overlapping:
            other = records[order[q]]["segmentation"]
            inter_box = _intersection(mask.box, other.box)
            assert inter_box is not None
            inter = np.count_nonzero(mask.window(inter_box) & other.window(inter_box))
            iou = inter / max(mask.area + other.area - inter, 1)
            # A piece still cut by its tile's edge that lies mostly inside a kept mask is a fragment of it.
            fragment = not whole[order[q]] and inter / max(other.area, 1) > nms_thresh
            if iou > nms_thresh or fragment:
                suppressed[q] = True
    return kept


# ----------------------------------------------------------------------------- API


def generate_tiled(
    params: SamParams,
    source: np.ndarray | WindowedImage,
    options: AmgOptions,
    *,
    tile: int,
    overlap: int,
    merge_iou: float = MERGE_IOU,
    progress: Callable[[int], None] | None = None,
    tile_records: Callable[[Box, Callable[[], list[dict[str, Any]]]], list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Automatic masks of an image of any size, tile by tile (module docstring).

    Args:
        params: model weights and config.
        source: an (H, W, 3) uint8 RGB image, or a `WindowedImage` (`sam_jax.windowed`),
            read one tile at a time.
        options: `AmgOptions` for every tile (`output_mode` is ignored: masks are
            `CroppedMask`s; `coco_records` makes COCO RLE of them). Its `crop_nms_thresh` is
            the mask IoU above which duplicates across tiles are dropped.
        tile: tile side in pixels, at least the model's input side (`check_tiling`).
        overlap: pixels shared by neighbouring tiles, below half the tile.
        merge_iou: IoU in the shared strip above which two pieces are one object.
        progress: called with 1 after each tile.
        tile_records: `tile_records(box, make)` gives a tile's records (in the image's
            coordinates), calling `make()` to compute them or returning ones kept from an
            earlier run (a resumable job's, `sam_jax.jobs.tile_pieces`).
    Returns:
        Records as `generate`'s, in the image's coordinates (`bbox`, `point_coords`,
        `crop_box` (the tile, or for a joined mask the box of its tiles)), `segmentation` a
        `CroppedMask`, best first.
    Raises:
        TypeError, ValueError: bad arguments, one line each, before any tile is read.
    """
    params = check_params(params)
    if not isinstance(options, AmgOptions):
        raise TypeError(f"options must be an AmgOptions, got {type(options).__name__}")
    check_tiling(tile, overlap, params.config.image_size)
    if isinstance(source, np.ndarray):
        source = ArrayWindows(check_image(source))
    image_size = (int(source.shape[0]), int(source.shape[1]))
    boxes = tile_boxes(image_size, tile, overlap)
    per_tile = dataclasses.replace(options, output_mode="binary_mask")
    pieces = []
    for box in boxes:

        def make(box: Box = box) -> list[dict[str, Any]]:
            x0, y0, x1, y1 = box
            return [_to_image(r, box, image_size) for r in generate(params, source.read(y0, y1, x0, x1), per_tile)]

        pieces.append(make() if tile_records is None else tile_records(box, make))
        if progress:
            progress(1)
    return merge_tiles(pieces, boxes, image_size, merge_iou=merge_iou, nms_thresh=options.crop_nms_thresh)


def _to_image(record: dict[str, Any], tile: Box, image_size: tuple[int, int]) -> dict[str, Any]:
    """A tile's record (binary mask) in the image's coordinates, its mask cropped."""
    x0, y0 = tile[:2]
    cx, cy, cw, ch = record["crop_box"]
    (px, py), *_ = record["point_coords"]
    return _record(
        crop_mask(record["segmentation"], y0, x0, image_size),
        record["predicted_iou"],
        [[float(px) + x0, float(py) + y0]],
        record["stability_score"],
        [int(cx) + x0, int(cy) + y0, int(cw), int(ch)],
    )


def tile_records_to_arrays(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """One tile's records (`generate_tiled`'s, in the image's coordinates) as arrays, from
    which `tile_records_from_arrays` makes equal records (what a resumable job keeps)."""
    cropped = [r["segmentation"] for r in records]
    bits = [m.mask.ravel() for m in cropped]
    return {
        "origins": np.array([(m.y0, m.x0) for m in cropped], np.int64).reshape(-1, 2),
        "shapes": np.array([m.mask.shape for m in cropped], np.int64).reshape(-1, 2),
        "bits": np.packbits(np.concatenate(bits)) if bits else np.zeros(0, np.uint8),
        "predicted_iou": np.array([r["predicted_iou"] for r in records], np.float64),
        "stability_score": np.array([r["stability_score"] for r in records], np.float64),
        "point_coords": np.array([r["point_coords"][0] for r in records], np.float64).reshape(-1, 2),
        "crop_box": np.array([r["crop_box"] for r in records], np.int64).reshape(-1, 4),
    }


def tile_records_from_arrays(arrays: Any, image_size: tuple[int, int]) -> list[dict[str, Any]]:
    """`tile_records_to_arrays`'s arrays (a mapping, as `np.load` gives) -> the records."""
    bits = np.unpackbits(arrays["bits"])
    records, start = [], 0
    for i, ((y0, x0), (h, w)) in enumerate(zip(arrays["origins"], arrays["shapes"], strict=True)):
        mask = bits[start : start + h * w].reshape(h, w).astype(bool)
        start += h * w
        px, py = arrays["point_coords"][i]
        cropped = CroppedMask(int(y0), int(x0), mask, image_size)
        box = [int(v) for v in arrays["crop_box"][i]]
        records.append(
            _record(
                cropped,
                float(arrays["predicted_iou"][i]),
                [[float(px), float(py)]],
                float(arrays["stability_score"][i]),
                box,
            )
        )
    return records


def coco_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`generate_tiled`'s records with `segmentation` as image-sized COCO RLE (counts a str),
    ready for JSON; the image-sized bitmaps are never made."""
    return [{**r, "segmentation": r["segmentation"].to_coco_rle()} for r in records]


def polygon_records(records: Sequence[dict[str, Any]], tolerance: float = 0.0) -> list[dict[str, Any]]:
    """`generate_tiled`'s records with `"polygons"` in the image's coordinates in place of
    `segmentation` (`sam_jax.vectors.mask_to_polygons` of each cropped mask, offset to its
    place), as `sam_jax.vectors.records_to_geojson` and the job's polygon outputs take them.

    Args:
        records: `generate_tiled`'s.
        tolerance: simplification of each ring in pixels (0: exact pixel-edge outlines).
    """
    out = []
    for r in records:
        m = r["segmentation"]
        rest = {k: v for k, v in r.items() if k != "segmentation"}
        out.append({**rest, "polygons": vectors.mask_to_polygons(m.mask, tolerance=tolerance, offset=(m.x0, m.y0))})
    return out
