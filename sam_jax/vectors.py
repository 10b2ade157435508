"""Binary masks as vectors: polygons with holes that follow the pixels' edges, and GeoJSON.

Positions are (x, y) in pixel-edge coordinates: pixel (r, c) is the square [c, c+1] x
[r, r+1], so the polygons of a mask rasterise back to exactly that mask. A polygon is a list
of rings `[exterior, hole, hole, ...]`, each ring an (N, 2) float64 array of positions,
closed (first == last).

Windings follow RFC 7946 (section 3.1.6) read with y pointing up: an exterior has a positive
signed (shoelace) area, sum(x[i] * y[i+1] - x[i+1] * y[i]) / 2 > 0, and a hole a negative
one. In an image, where y points down, an exterior therefore runs clockwise on the screen
and a hole counter-clockwise; a north-up map transform (negative determinant) turns that
into counter-clockwise exteriors on the map, as GeoJSON readers expect.

Connectivity: a polygon is a 4-connected group of pixels (pixels that touch only at a corner
are separate polygons), and a hole a 4-connected group of background pixels inside it, so
no ring touches itself; a group of pixels inside a hole is a polygon of its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from sam_jax.masks import rle_to_mask

Polygon = list[np.ndarray]  # [exterior, hole, ...], each an (N, 2) float64 closed ring


def _number_pair(value: object, name: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (x, y), got {value!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"{name} must be two finite numbers (x, y), got {value!r}")
    return x, y


def check_tolerance(tolerance: object, name: str = "tolerance") -> float:
    """`tolerance` as a simplification in pixels (a finite number >= 0); raises naming `name` otherwise."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of pixels >= 0, got {tolerance!r}")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"{name} must be a number of pixels >= 0, got {tolerance}")
    return float(tolerance)


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed (N, 2) ring: > 0 for an exterior, < 0 for a hole (module docstring)."""
    x, y = ring[:, 0], ring[:, 1]
    return float((x[:-1] * y[1:] - x[1:] * y[:-1]).sum() / 2)


def _drop_redundant(points: np.ndarray) -> np.ndarray:
    """An open ring (N, 2) without repeated neighbours or points on a straight line between
    their neighbours (the tracing leaves both)."""
    for _ in range(2):  # removing collinear points can make new neighbours equal
        points = points[np.any(points != np.roll(points, 1, axis=0), axis=1)]
        if len(points) < 3:
            return points
        before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
        d1, d2 = points - before, after - points
        cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
        points = points[cross != 0]
    return points


def _ring(points: np.ndarray, exterior: bool, tolerance: float) -> np.ndarray | None:
    """A closed ring with the winding of its kind, from open (N, 2) points; None when it has
    collapsed (fewer than 3 distinct positions, or no area left) after simplification."""
    if tolerance > 0 and len(points) > 3:
        simplified = cv2.approxPolyDP(points.astype(np.float32).reshape(-1, 1, 2), tolerance, True)
        points = simplified.reshape(-1, 2).astype(np.float64)
    points = _drop_redundant(points)
    if len(points) < 3:
        return None
    ring = np.concatenate([points, points[:1]])
    area = signed_area(ring)
    if area == 0:
        return None
    return ring if (area > 0) == exterior else ring[::-1].copy()


def _trace_component(component: np.ndarray, tolerance: float) -> list[Polygon]:
    """The polygon of one 4-connected group of pixels ((h, w) bool), in its own frame.

    OpenCV traces the centres of boundary pixels. At twice the size every pixel is a 2 x 2
    block whose four sub-pixels sit each at one corner of the pixel, so the traced sub-pixel
    (row R, column C) stands for the corner (ceil(C / 2), ceil(R / 2)): the outline along the
    pixel edges. (The diagonal steps OpenCV takes at inner corners map to one corner.)
    """
    big = np.pad(np.repeat(np.repeat(component, 2, axis=0), 2, axis=1), 1).astype(np.uint8)
    contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    rings: dict[int, np.ndarray | None] = {}
    for i, contour in enumerate(contours):
        sub = contour.reshape(-1, 2).astype(np.int64) - 1  # (C, R) in the doubled frame, unpadded
        corners = (sub + 1) // 2  # ceil(v / 2) for v >= 0
        rings[i] = _ring(corners.astype(np.float64), hierarchy[0, i, 3] < 0, tolerance)
    polygons = []
    for i, ring in rings.items():
        if hierarchy[0, i, 3] >= 0 or ring is None:
            continue
        holes = [h for j, h in rings.items() if hierarchy[0, j, 3] == i and h is not None]
        polygons.append([ring, *holes])
    return polygons


def mask_to_polygons(
    mask: np.ndarray, *, tolerance: float = 0.0, offset: tuple[float, float] = (0.0, 0.0)
) -> list[Polygon]:
    """The polygons of a mask, along its pixels' edges (module docstring).

    Args:
        mask: (H, W) bool (or integer, nonzero = in) array.
        tolerance: if > 0, each ring is simplified (`cv2.approxPolyDP`, in pixels); a hole
            that collapses (fewer than 3 distinct positions, or no area) is dropped, and so is
            a polygon whose exterior collapses. Simplified rings approximate the outline (a
            hole may then cross its exterior); the exact ones never do.
        offset: (x, y) added to every position, e.g. the corner of a crop in a larger image.
    Returns:
        A list of polygons, each `[exterior, hole, ...]` with each ring an (N, 2) float64 array
        of (x, y) positions, closed; [] for an empty mask. Without simplification,
        `polygons_to_mask(polygons, mask.shape)` is `mask`.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be an (H, W) array, got shape {mask.shape}")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise TypeError(f"mask must be an (H, W) bool array, got dtype {mask.dtype}")
    tolerance = check_tolerance(tolerance)
    ox, oy = _number_pair(offset, "offset")
    if mask.size == 0:
        return []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (mask != 0).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S
    )
    polygons: list[Polygon] = []
    for label in range(1, count):  # 0 is the background
        x, y, w, h = (int(v) for v in stats[label, :4])
        component = labels[y : y + h, x : x + w] == label
        shift = np.asarray([x + ox, y + oy])
        polygons.extend([ring + shift for ring in polygon] for polygon in _trace_component(component, tolerance))
    return polygons


def _as_ring(ring: object, where: str) -> np.ndarray:
    """`ring` as a closed (N, 2) float64 array of finite positions (closed if it was not)."""
    try:
        arr = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be an (N, 2) array of (x, y) numbers") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{where} must be an (N, 2) array of (x, y) numbers, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where} holds a position that is not finite")
    if len(arr) and np.any(arr[0] != arr[-1]):
        arr = np.concatenate([arr, arr[:1]])
    if len(arr) < 4:
        raise ValueError(f"{where} must have at least 3 distinct positions, closed (4 or more), got {len(arr)}")
    return arr


def _as_polygons(polygons: object, name: str = "polygons") -> list[Polygon]:
    if isinstance(polygons, (str, bytes, dict, np.ndarray)) or not isinstance(polygons, Iterable):
        raise TypeError(f"{name} must be a list of polygons [exterior, hole, ...], got {type(polygons).__name__}")
    out = []
    for i, polygon in enumerate(polygons):
        if isinstance(polygon, (str, bytes, dict)) or not isinstance(polygon, Iterable):
            raise TypeError(f"{name}[{i}] must be a list of rings [exterior, hole, ...]")
        rings = [_as_ring(ring, f"{name}[{i}][{j}]") for j, ring in enumerate(polygon)]
        if not rings:
            raise ValueError(f"{name}[{i}] must hold an exterior ring, got none")
        out.append(rings)
    return out


def polygons_to_mask(
    polygons: Sequence[Sequence[Any]], shape: tuple[int, int], *, offset: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Rasterises polygons: a pixel is in when its centre is inside (`mask_to_polygons`'s inverse).

    Each polygon is filled even-odd over all its rings (so holes are subtracted whatever
    their winding), and the polygons are joined.

    Args:
        polygons: polygons as `mask_to_polygons` returns them (array-likes of (x, y) rings).
        shape: (H, W) of the mask.
        offset: (x, y) of the mask's corner in the polygons' frame (subtracted from positions).
    Returns:
        (H, W) bool mask.
    """
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (H, W) ints, got {shape!r}") from None
    if h < 0 or w < 0:
        raise ValueError(f"shape must be (H, W) ints >= 0, got {shape!r}")
    ox, oy = _number_pair(offset, "offset")
    mask = np.zeros((h, w), bool)
    for polygon in _as_polygons(polygons):
        # The crossings of each ring edge with the rows of pixel centres (y = r + 0.5), as a
        # half-open span, so a vertex on a row is counted once.
        points = np.concatenate(polygon) - (ox, oy)
        p0 = np.concatenate([ring[:-1] for ring in polygon]) - (ox, oy)
        p1 = np.concatenate([ring[1:] for ring in polygon]) - (ox, oy)
        lo, hi = np.minimum(p0[:, 1], p1[:, 1]), np.maximum(p0[:, 1], p1[:, 1])
        first = np.clip(np.ceil(lo - 0.5), 0, h).astype(np.int64)
        stop = np.clip(np.ceil(hi - 0.5), 0, h).astype(np.int64)
        rows_per_edge = np.maximum(stop - first, 0)
        if rows_per_edge.sum() == 0:
            continue
        edge = np.repeat(np.arange(len(p0)), rows_per_edge)
        starts = np.cumsum(rows_per_edge) - rows_per_edge
        row = first[edge] + np.arange(len(edge)) - np.repeat(starts, rows_per_edge)
        t = (row + 0.5 - p0[edge, 1]) / (p1[edge, 1] - p0[edge, 1])
        x = p0[edge, 0] + t * (p1[edge, 0] - p0[edge, 0])
        # Only the polygon's box is filled: pixels whose centre lies right of a crossing
        # (c + 0.5 > x) toggle, and the parity of a running sum along the row is inside.
        r0, r1 = int(row.min()), int(row.max()) + 1
        c0 = int(np.clip(np.floor(points[:, 0].min() - 0.5) + 1, 0, w))
        c1 = int(np.clip(np.floor(points[:, 0].max() - 0.5) + 1, c0, w))
        col = np.clip(np.floor(x - 0.5).astype(np.int64) + 1, c0, c1) - c0
        toggles = np.zeros((r1 - r0, c1 - c0 + 1), np.int32)
        np.add.at(toggles, (row - r0, col), 1)
        mask[r0:r1, c0:c1] |= (np.cumsum(toggles[:, :-1], axis=1) % 2).astype(bool)
    return mask


def _check_transform(transform: object) -> tuple[float, ...] | None:
    """The six numbers (a, b, c, d, e, f) of an affine transform (also from a 3 x 3 `Affine`)."""
    if transform is None:
        return None
    message = (
        "transform must be 6 finite numbers (a, b, c, d, e, f) mapping pixel (x, y) to "
        f"(a*x + b*y + c, d*x + e*y + f), with a*e - b*d != 0; got {transform!r}"
    )
    try:
        values = tuple(float(v) for v in transform)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if len(values) == 9 and values[6:] == (0.0, 0.0, 1.0):  # an affine.Affine (rasterio) is 3 x 3
        values = values[:6]
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise ValueError(message)
    a, b, _, d, e, _ = values
    if a * e - b * d == 0:
        raise ValueError(message)
    return values


def _geojson_ring(ring: np.ndarray, exterior: bool, transform: tuple[float, ...] | None) -> list[list[float]]:
    if transform is not None:
        a, b, c, d, e, f = transform
        x, y = ring[:, 0], ring[:, 1]
        ring = np.stack([a * x + b * y + c, d * x + e * y + f], axis=1)
    # The windings are set after the transform: one that flips orientation (a north-up
    # raster, e < 0) would otherwise turn every exterior clockwise on the map.
    if (signed_area(ring) > 0) != exterior:
        ring = ring[::-1]
    return ring.tolist()


def polygons_to_geojson_geometry(polygons: Sequence[Sequence[Any]], transform: object = None) -> dict[str, Any]:
    """A GeoJSON geometry (RFC 7946) of polygons.

    Args:
        polygons: polygons as `mask_to_polygons` returns them.
        transform: None for pixel coordinates, or an affine transform in rasterio's order
            (a, b, c, d, e, f), which maps pixel (x, y) to (a*x + b*y + c, d*x + e*y + f), e.g.
            a GeoTIFF's `dataset.transform` (a 3 x 3 `affine.Affine` is taken too). GDAL's
            `GetGeoTransform()` gives (c, a, b, f, d, e): reorder it (`Affine.from_gdal`).
    Returns:
        `{"type": "Polygon", "coordinates": [...]}` for one polygon, `{"type": "MultiPolygon",
        "coordinates": [...]}` otherwise (an empty list for none), with lists of [x, y]
        positions; exteriors counter-clockwise and holes clockwise in the output frame (y up).
    """
    checked = _check_transform(transform)
    coordinates = [
        [_geojson_ring(ring, j == 0, checked) for j, ring in enumerate(polygon)] for polygon in _as_polygons(polygons)
    ]
    if len(coordinates) == 1:
        return {"type": "Polygon", "coordinates": coordinates[0]}
    return {"type": "MultiPolygon", "coordinates": coordinates}


def _geometry_polygons(geometry: dict[str, Any], where: str) -> list[Polygon]:
    kind = geometry.get("type")
    if kind == "Polygon":
        return _as_polygons([geometry["coordinates"]], where)
    if kind == "MultiPolygon":
        return _as_polygons(geometry["coordinates"], where)
    raise ValueError(f"{where} must be a GeoJSON Polygon or MultiPolygon, got type {kind!r}")


def record_polygons(record: dict[str, Any], tolerance: float = 0.0, where: str = "record") -> list[Polygon]:
    """The polygons of an automatic-mask record, from the first of these it holds:

    - `"polygons"`: polygons given as they are (e.g. in a larger image's coordinates);
    - `"segmentation"`: an (H, W) bool array, an uncompressed RLE (counts a list), a COCO RLE
      (counts a str), `{"size": [H, W], "polygons": [...]}` or a GeoJSON Polygon or
      MultiPolygon in pixel coordinates (`output_mode` "polygons" and "geojson").

    `tolerance` simplifies what is traced from a mask (given polygons are kept as they are).
    """
    if not isinstance(record, dict):
        raise TypeError(f"{where} must be a dict, got {type(record).__name__}")
    if "polygons" in record:
        return _as_polygons(record["polygons"], f"{where}['polygons']")
    if "segmentation" not in record:
        raise ValueError(f"{where} must hold 'segmentation' (a mask or an RLE) or 'polygons'")
    seg = record["segmentation"]
    name = f"{where}['segmentation']"
    if isinstance(seg, dict):
        if "polygons" in seg:
            return _as_polygons(seg["polygons"], f"{name}['polygons']")
        if "type" in seg:
            return _geometry_polygons(seg, name)
        if "counts" in seg and "size" in seg:
            return mask_to_polygons(_rle_mask(seg), tolerance=tolerance)
        raise ValueError(f"{name} must be a mask, an RLE {{'size', 'counts'}}, polygons or a GeoJSON geometry")
    if not isinstance(seg, np.ndarray) or seg.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) bool array or a dict (RLE, polygons, GeoJSON geometry)")
    return mask_to_polygons(seg, tolerance=tolerance)


def record_size(record: dict[str, Any]) -> list[int] | None:
    """[H, W] of a record's mask where its segmentation says it, None otherwise."""
    seg = record.get("segmentation")
    if isinstance(seg, dict):
        size = seg.get("size")
        return [int(v) for v in size] if size is not None else None
    if isinstance(seg, np.ndarray) and seg.ndim == 2:
        return [int(v) for v in seg.shape]
    return None


def _rle_mask(rle: dict[str, Any]) -> np.ndarray:
    if isinstance(rle["counts"], (str, bytes)):  # COCO's compressed form
        from pycocotools import mask as mask_utils

        counts = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
        return mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)
    return rle_to_mask(rle)


def to_json(value: Any) -> Any:
    """`value` with numpy arrays and scalars, and tuples, as JSON's lists and numbers."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def polygons_to_json(polygons: Sequence[Sequence[Any]]) -> list[list[list[list[float]]]]:
    """Polygons as nested lists: polygon -> rings -> [x, y] positions."""
    return [[ring.tolist() for ring in polygon] for polygon in _as_polygons(polygons)]


def records_to_geojson(records: Iterable[dict[str, Any]], transform: object = None, *, tolerance: float = 0.0) -> dict:
    """A GeoJSON FeatureCollection with one feature per automatic-mask record.

    Args:
        records: records as `generate_masks` returns them, in any `output_mode`, or records
            holding `"polygons"` instead of a segmentation (`record_polygons`).
        transform: as for `polygons_to_geojson_geometry` (None: pixel coordinates).
        tolerance: simplification of traced masks, in pixels (`mask_to_polygons`).
    Returns:
        `{"type": "FeatureCollection", "features": [...]}`; each feature's geometry is its
        mask's (`polygons_to_geojson_geometry`; an empty mask gives an empty MultiPolygon) and
        its properties are the record's other fields (area, bbox, predicted_iou,
        point_coords, stability_score, crop_box: pixel units, as in the record), with numpy
        values as JSON numbers and lists.
    """
    checked = _check_transform(transform)
    tolerance = check_tolerance(tolerance)
    features = []
    for i, record in enumerate(records):
        polygons = record_polygons(record, tolerance, f"records[{i}]")
        properties = {k: to_json(v) for k, v in record.items() if k not in ("segmentation", "polygons")}
        geometry = polygons_to_geojson_geometry(polygons, checked)
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}
