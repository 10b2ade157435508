"""Masks as vectors (sam_jax.vectors): polygons along the pixel edges rasterise back to the
mask exactly, with RFC 7946's windings, and GeoJSON of automatic-mask records (the
structure checked here by hand: no GeoJSON library). Synthetic masks only, no model."""

from __future__ import annotations

import itertools
import json
import math

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sam_jax import vectors
from sam_jax.jobs import layout
from sam_jax.masks import mask_to_rle


def _disc(size: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2


def _ring_in_ring() -> np.ndarray:
    """A disc with a hole, and an island inside the hole (with its own one-pixel hole)."""
    return _disc(40, (20, 20), 16) & ~_disc(40, (20, 20), 10) | (_disc(40, (20, 20), 5) & ~_disc(40, (20, 20), 0))


def _lines() -> np.ndarray:
    m = np.zeros((12, 15), bool)
    m[2, 1:14] = True  # one pixel high
    m[4:11, 3] = True  # one pixel wide
    m[np.arange(5, 11), np.arange(6, 12)] = True  # a diagonal: pixels touching at corners only
    return m


def _checkerboard() -> np.ndarray:
    return (np.add.outer(np.arange(5), np.arange(6)) % 2 == 0).astype(bool)


def _border() -> np.ndarray:
    m = np.zeros((9, 11), bool)
    m[:, 0] = m[0, :] = True  # along two sides, corner included
    m[4:, 7:] = True  # the opposite corner
    m[6, 9] = False  # a hole next to the border
    return m


def _blobs() -> np.ndarray:
    rng = np.random.default_rng(7)
    noise = cv2.GaussianBlur(rng.random((48, 40)).astype(np.float32), (7, 7), 0)
    return noise > np.median(noise)


def _noise() -> np.ndarray:
    return np.random.default_rng(11).random((23, 29)) < 0.5  # every corner case of contact


MASKS = {
    "ring_in_ring": _ring_in_ring,
    "lines": _lines,
    "checkerboard": _checkerboard,
    "border": _border,
    "full": lambda: np.ones((5, 7), bool),
    "one_pixel": lambda: np.eye(1, dtype=bool),
    "blobs": _blobs,
    "noise": _noise,
}


def _area(ring: np.ndarray) -> float:
    """Shoelace area with y up: > 0 counter-clockwise (written here, not taken from the module)."""
    x, y = np.asarray(ring, float).T
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2)


def _inside(ring: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon by ray casting to the right, point by point of the grid."""
    inside = np.zeros(px.shape, bool)
    for (x0, y0), (x1, y1) in itertools.pairwise(ring):
        if y0 == y1:
            continue
        crosses = (py >= min(y0, y1)) & (py < max(y0, y1))
        x_at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (px < x_at)
    return inside


def _rasterise(polygons: list, shape: tuple[int, int], offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """An independent rasteriser: a pixel is in when its centre is inside an exterior and in no hole."""
    py, px = np.mgrid[: shape[0], : shape[1]] + 0.5
    px, py = px + offset[0], py + offset[1]
    out = np.zeros(shape, bool)
    for polygon in polygons:
        region = _inside(np.asarray(polygon[0]), px, py)
        for hole in polygon[1:]:
            region &= ~_inside(np.asarray(hole), px, py)
        out |= region
    return out


def _check_rings(polygons: list) -> None:
    """Closed rings of >= 4 positions on the pixel grid, axis-aligned edges, no position
    repeated in a ring, exteriors counter-clockwise and holes clockwise (y up)."""
    for polygon in polygons:
        for j, ring in enumerate(polygon):
            assert ring.dtype == np.float64 and ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 4
            np.testing.assert_array_equal(ring[0], ring[-1])
            assert len({tuple(p) for p in ring[:-1].tolist()}) == len(ring) - 1  # a ring never touches itself
            np.testing.assert_array_equal(ring, np.round(ring))
            steps = np.diff(ring, axis=0)
            assert np.all((steps[:, 0] == 0) != (steps[:, 1] == 0))
            assert (_area(ring) > 0) == (j == 0)


@pytest.mark.parametrize("name", list(MASKS))
def test_polygons_rasterise_back_to_the_mask_exactly(name):
    mask = MASKS[name]()
    polygons = vectors.mask_to_polygons(mask)
    _check_rings(polygons)
    np.testing.assert_array_equal(_rasterise(polygons, mask.shape), mask)
    np.testing.assert_array_equal(vectors.polygons_to_mask(polygons, mask.shape), mask)
    # A polygon is a 4-connected group of pixels, its area the group's.
    count = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)[0] - 1
    assert len(polygons) == count
    assert sum(sum(_area(r) for r in p) for p in polygons) == mask.sum()


def test_holes_islands_and_corner_contacts_make_the_polygons_they_should():
    polygons = vectors.mask_to_polygons(_ring_in_ring())
    assert sorted(len(p) for p in polygons) == [2, 2]  # the ring and its hole; the island and its hole
    island = min(polygons, key=lambda p: _area(p[0]))
    assert _area(island[1]) == -1  # the one-pixel hole in the island
    # Pixels touching only at corners are separate squares.
    for polygon in vectors.mask_to_polygons(_checkerboard()):
        assert len(polygon) == 1 and len(polygon[0]) == 5 and _area(polygon[0]) == 1
    assert len(vectors.mask_to_polygons(_checkerboard())) == 15
    # A pixel's square: its four corners, clockwise on screen (y down), counter-clockwise with y up.
    mask = np.zeros((4, 5), bool)
    mask[2, 3] = True
    (ring,) = vectors.mask_to_polygons(mask)[0]
    assert {tuple(p) for p in ring.tolist()} == {(3, 2), (4, 2), (4, 3), (3, 3)} and _area(ring) == 1


def test_empty_masks_give_no_polygons():
    assert vectors.mask_to_polygons(np.zeros((6, 4), bool)) == []
    assert vectors.mask_to_polygons(np.zeros((0, 4), bool)) == []
    assert not vectors.polygons_to_mask([], (3, 2)).any()
    assert vectors.polygons_to_geojson_geometry([]) == {"type": "MultiPolygon", "coordinates": []}


def test_offset_places_a_crop_in_the_larger_image():
    crop = _ring_in_ring()
    polygons = vectors.mask_to_polygons(crop, offset=(30, 7))
    for shifted, plain in zip(polygons, vectors.mask_to_polygons(crop), strict=True):
        for a, b in zip(shifted, plain, strict=True):
            np.testing.assert_array_equal(a, b + np.array([30, 7]))
    canvas = np.zeros((60, 80), bool)
    canvas[7:47, 30:70] = crop
    np.testing.assert_array_equal(vectors.polygons_to_mask(polygons, canvas.shape), canvas)
    np.testing.assert_array_equal(_rasterise(polygons, canvas.shape), canvas)
    np.testing.assert_array_equal(vectors.polygons_to_mask(polygons, crop.shape, offset=(30, 7)), crop)


def test_rasterising_hand_made_polygons():
    square = [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]
    hole = [[1, 1], [1, 3], [3, 3], [3, 1]]  # not closed: closed for the caller
    expected = np.zeros((5, 6), bool)
    expected[:4, :4] = True
    expected[1:3, 1:3] = False
    expected[3:5, 4:6] = True
    polygons = [[square, hole], [[[4, 3], [6, 3], [6, 6], [4, 6]]]]  # the second runs past the edge
    np.testing.assert_array_equal(vectors.polygons_to_mask(polygons, (5, 6)), expected)
    # A hole of either winding is subtracted; a triangle takes the pixels whose centres it holds.
    np.testing.assert_array_equal(vectors.polygons_to_mask([[square, hole[::-1]]], (4, 4)), expected[:4, :4])
    triangle = vectors.polygons_to_mask([[[[0, 0], [4.5, 0], [0, 4.5]]]], (4, 4))  # x + y < 4.5
    np.testing.assert_array_equal(triangle, np.add.outer(np.arange(4), np.arange(4)) + 1 < 4.5)


def test_simplification_drops_vertices_keeps_the_shape_and_drops_what_collapses():
    mask = _disc(80, (40, 40), 30)
    mask[40, 40] = False  # a one-pixel hole
    mask[2, 2] = True  # a one-pixel island
    exact = vectors.mask_to_polygons(mask)
    simple = vectors.mask_to_polygons(mask, tolerance=1.5)
    disc = max(exact, key=lambda p: _area(p[0]))
    assert len(exact) == 2 and len(disc) == 2
    assert len(simple) == 1 and len(simple[0]) == 1  # the island and the hole collapsed
    assert len(simple[0][0]) < len(disc[0]) // 4
    assert _area(simple[0][0]) > 0 and np.array_equal(simple[0][0][0], simple[0][0][-1])
    back = vectors.polygons_to_mask(simple, mask.shape)
    assert (back & mask).sum() / (back | mask).sum() >= 0.97
    blobs = _blobs()
    back = vectors.polygons_to_mask(vectors.mask_to_polygons(blobs, tolerance=1.0), blobs.shape)
    assert (back & blobs).sum() / (back | blobs).sum() >= 0.9


def _check_geojson_geometry(geometry: dict) -> list:
    """RFC 7946's structure of a Polygon or MultiPolygon (3.1.1, 3.1.6, 3.1.7); its polygons."""
    assert set(geometry) == {"type", "coordinates"} and geometry["type"] in ("Polygon", "MultiPolygon")
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    assert isinstance(polygons, list)
    for polygon in polygons:
        assert isinstance(polygon, list) and len(polygon) >= 1
        for j, ring in enumerate(polygon):
            assert isinstance(ring, list) and len(ring) >= 4 and ring[0] == ring[-1]
            for position in ring:
                assert isinstance(position, list) and len(position) == 2
                assert all(isinstance(v, float) and math.isfinite(v) for v in position)
            assert (_area(np.asarray(ring)) > 0) == (j == 0)  # exterior counter-clockwise, holes clockwise
    json.dumps(geometry, allow_nan=False)
    return [[np.asarray(r) for r in p] for p in polygons]


def test_geojson_geometry_in_pixels_and_through_a_north_up_transform():
    mask = _ring_in_ring()
    geometry = vectors.polygons_to_geojson_geometry(vectors.mask_to_polygons(mask))
    assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2
    np.testing.assert_array_equal(_rasterise(_check_geojson_geometry(geometry), mask.shape), mask)
    one = np.zeros((4, 5), bool)
    one[2, 3] = True
    single = vectors.polygons_to_geojson_geometry(vectors.mask_to_polygons(one))
    assert single["type"] == "Polygon" and len(single["coordinates"]) == 1
    # North up: 0.5 map units a pixel, the image's corner at (100, 200), y running down the image.
    north_up = (0.5, 0.0, 100.0, 0.0, -0.5, 200.0)
    mapped = vectors.polygons_to_geojson_geometry(vectors.mask_to_polygons(one), north_up)
    _check_geojson_geometry(mapped)
    assert {tuple(p) for p in mapped["coordinates"][0]} == {
        (101.5, 199.0),
        (102.0, 199.0),
        (102.0, 198.5),
        (101.5, 198.5),
    }
    polygons = _check_geojson_geometry(vectors.polygons_to_geojson_geometry(vectors.mask_to_polygons(mask), north_up))
    # Back to pixels: x = (X - 100) / 0.5, y = (200 - Y) / 0.5.
    pixels = [[(r - (100, 200)) / (0.5, -0.5) for r in p] for p in polygons]
    np.testing.assert_array_equal(_rasterise(pixels, mask.shape), mask)
    # A rotation with a shear keeps the windings too; a 3 x 3 affine matrix is taken as its 6 numbers.
    _check_geojson_geometry(
        vectors.polygons_to_geojson_geometry(vectors.mask_to_polygons(mask), (1, 0.3, 0, 0.2, -2, 0))
    )
    matrix = (*north_up, 0.0, 0.0, 1.0)
    assert vectors.polygons_to_geojson_geometry(vectors.mask_to_polygons(one), matrix) == mapped


@pytest.mark.parametrize(
    "transform",
    [(1, 0, 0, 0, 1), (1, 0, 0, 0, float("nan"), 0), (1, 2, 0, 2, 4, 0), "abcdef", 3, (1, 0, 0, 0, 1, 0, 0, 1, 1)],
)
def test_bad_transforms_are_refused_in_one_line(transform):
    with pytest.raises(ValueError, match=r"^transform must be 6 finite numbers \(a, b, c, d, e, f\)") as e:
        vectors.polygons_to_geojson_geometry(vectors.mask_to_polygons(np.ones((2, 2), bool)), transform)
    assert "\n" not in str(e.value)


def _records() -> tuple[list[dict], list[np.ndarray]]:
    """Records as the generator makes them, one per kind of segmentation, numpy values in places."""
    masks = [_ring_in_ring(), np.zeros((40, 40), bool), _disc(40, (5, 30), 6)]
    masks[1][10:13, 0:4] = True
    common = {
        "area": np.int64(1),
        "bbox": np.array([0, 1, 2, 3]),
        "predicted_iou": np.float32(0.75),
        "point_coords": [[np.float64(1.5), 2.0]],
        "stability_score": 0.96,
        "crop_box": (0, 0, 40, 40),
    }
    coco = mask_utils.encode(np.asfortranarray(masks[2].astype(np.uint8)))
    coco["counts"] = coco["counts"].decode()
    records = [
        {"segmentation": masks[0], **common},
        {"segmentation": mask_to_rle(masks[1]), **common},
        {"segmentation": coco, **common},
    ]
    return records, masks


def test_records_to_geojson_from_masks_rles_and_given_polygons():
    records, masks = _records()
    collection = vectors.records_to_geojson(records)
    assert set(collection) == {"type", "features"} and collection["type"] == "FeatureCollection"
    text = json.dumps(collection, allow_nan=False)
    assert json.loads(text) == collection
    assert len(collection["features"]) == 3
    for feature, mask in zip(collection["features"], masks, strict=True):
        assert feature["type"] == "Feature" and set(feature) == {"type", "geometry", "properties"}
        np.testing.assert_array_equal(_rasterise(_check_geojson_geometry(feature["geometry"]), mask.shape), mask)
        assert feature["properties"] == {
            "area": 1,
            "bbox": [0, 1, 2, 3],
            "predicted_iou": 0.75,
            "point_coords": [[1.5, 2.0]],
            "stability_score": 0.96,
            "crop_box": [0, 0, 40, 40],
        }
    # Polygons given in a larger image's coordinates are taken as they are (no simplification).
    given = {"polygons": vectors.mask_to_polygons(masks[0], offset=(1000, 500)), "area": 5}
    (feature,) = vectors.records_to_geojson([given], tolerance=3)["features"]
    polygons = _check_geojson_geometry(feature["geometry"])
    assert feature["properties"] == {"area": 5}
    np.testing.assert_array_equal(_rasterise(polygons, masks[0].shape, offset=(1000, 500)), masks[0])
    # The generator's polygon modes are taken back too.
    as_polygons = {"segmentation": {"size": [40, 40], "polygons": given["polygons"]}}
    as_geometry = {"segmentation": feature["geometry"]}
    again = vectors.records_to_geojson([as_polygons, as_geometry])["features"]
    assert again[0]["geometry"] == again[1]["geometry"] == feature["geometry"]
    with pytest.raises(ValueError, match=r"records\[0\] must hold 'segmentation'"):
        vectors.records_to_geojson([{"area": 1}])


@pytest.mark.parametrize("mode", ["polygons", "geojson"])
def test_write_masks_in_the_vector_modes_is_atomic_resumable_and_exact(tmp_path, mode):
    records, masks = _records()
    item = layout.InputItem(tmp_path / "in" / "a.png", "sub/a.png")
    path = layout.masks_output_path(tmp_path / "out", item, mode)
    assert path == tmp_path / "out" / "sub" / ("a.polygons.json" if mode == "polygons" else "a.geojson")
    assert not layout.is_complete_masks(path, mode)
    layout.write_masks(path, records, mode)
    assert layout.is_complete_masks(path, mode)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    data = json.loads(path.read_text())
    if mode == "polygons":
        assert [r["segmentation"]["size"] for r in data] == [[40, 40]] * 3
        assert all(r["area"] == 1 and r["predicted_iou"] == 0.75 for r in data)
        got = [vectors.polygons_to_mask(r["segmentation"]["polygons"], (40, 40)) for r in data]
    else:
        got = [_rasterise(_check_geojson_geometry(f["geometry"]), (40, 40)) for f in data["features"]]
    for a, b in zip(got, masks, strict=True):
        np.testing.assert_array_equal(a, b)
    # A resumed job never rewrites it; a file of the user's in its place is no output of ours.
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        layout.write_masks(path, records[:1], mode)
    assert path.read_bytes() == before
    path.write_text('{"type": "Feature"}' if mode == "geojson" else '{"mine": 1}')
    assert not layout.is_complete_masks(path, mode)
    # Empty outputs are complete outputs; COCO RLE's json is another path.
    empty = path.with_name("empty" + path.name[1:])
    layout.write_masks(empty, [], mode)
    assert layout.is_complete_masks(empty, mode)
    assert layout.masks_output_path(tmp_path / "out", item, "coco_rle") != path


def test_simplification_in_the_written_polygons(tmp_path):
    records, _ = _records()
    exact, simple = tmp_path / "exact.polygons.json", tmp_path / "simple.polygons.json"
    layout.write_masks(exact, records[:1], "polygons")
    layout.write_masks(simple, records[:1], "polygons", tolerance=2.0)

    def vertices(path):
        return sum(len(r) for p in json.loads(path.read_text())[0]["segmentation"]["polygons"] for r in p)

    assert vertices(simple) < vertices(exact) // 2


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda: vectors.mask_to_polygons(np.ones((2, 2, 2), bool)), "mask must be an (H, W) array"),
        (lambda: vectors.mask_to_polygons(np.ones((2, 2)), tolerance=0), "mask must be an (H, W) bool array"),
        (lambda: vectors.mask_to_polygons(np.ones((2, 2), bool), tolerance=-1), "tolerance must be a number"),
        (lambda: vectors.mask_to_polygons(np.ones((2, 2), bool), offset=(1, "x")), "offset must be two numbers"),
        (lambda: vectors.polygons_to_mask([[[[0, 0], [1, 1]]]], (2, 2)), "polygons[0][0] must have at least 3"),
        (
            lambda: vectors.polygons_to_mask([[[[0, 0], [1, np.inf], [0, 1]]]], (2, 2)),
            "polygons[0][0] holds a position",
        ),
    ],
)
def test_bad_arguments_are_refused_in_one_line(call, needle):
    with pytest.raises((ValueError, TypeError)) as e:
        call()
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)


def test_the_generators_vector_output_modes_give_the_masks_polygons():
    from sam_jax.amg import generator  # jax: imported here, for this test only

    mask = _ring_in_ring()
    data = {
        "rles": [mask_to_rle(mask)],
        "boxes": np.array([[4, 4, 36, 36]]),
        "iou_preds": np.array([0.9], np.float32),
        "points": np.array([[20.0, 5.0]]),
        "stability_score": np.array([0.97], np.float32),
        "crop_boxes": np.array([[0, 0, 40, 40]]),
    }
    as_polygons = generator._record(data, 0, "polygons")
    assert as_polygons["segmentation"]["size"] == [40, 40]
    np.testing.assert_array_equal(vectors.polygons_to_mask(as_polygons["segmentation"]["polygons"], (40, 40)), mask)
    as_geometry = generator._record(data, 0, "geojson")
    np.testing.assert_array_equal(_rasterise(_check_geojson_geometry(as_geometry["segmentation"]), (40, 40)), mask)
    as_mask = generator._record(data, 0, "binary_mask")
    expected = vectors.records_to_geojson([as_mask])
    assert vectors.records_to_geojson([as_polygons]) == vectors.records_to_geojson([as_geometry]) == expected


def test_written_polygons_given_in_another_frame_have_no_size(tmp_path):
    tile = np.zeros((8, 8), bool)
    tile[2:4, 3:6] = True
    record = {"segmentation": mask_to_rle(tile), "polygons": vectors.mask_to_polygons(tile, offset=(512, 256))}
    path = tmp_path / "t.polygons.json"
    layout.write_masks(path, [record], "polygons")
    (written,) = json.loads(path.read_text())
    assert set(written) == {"segmentation"} and set(written["segmentation"]) == {"polygons"}  # no tile size
    np.testing.assert_array_equal(
        vectors.polygons_to_mask(written["segmentation"]["polygons"], (8, 8), offset=(512, 256)), tile
    )
