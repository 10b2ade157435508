"""Datasets: synthetic scenes, image folders, COCO json, and `open_dataset` specs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_jax.data import (
    BROAD_SHAPES,
    FAMILIES,
    HELDOUT_SHAPES,
    MIN_VISIBLE_PIXELS,
    SHAPE_KINDS,
    CocoDataset,
    DataError,
    Dataset,
    FolderDataset,
    Sample,
    SyntheticShapes,
    make_scene,
    open_dataset,
)

# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_index():
    ds = SyntheticShapes(size=128, length=20, seed=7)
    a = ds[5]
    ds[3], ds[11]  # other accesses in between must not matter
    b = ds[5]
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.name == b.name == "synthetic:7:5"
    assert a.kinds == b.kinds


def test_synthetic_same_seed_agrees_and_other_seed_differs():
    a, b, c = SyntheticShapes(size=96, seed=1), SyntheticShapes(size=96, seed=1), SyntheticShapes(size=96, seed=2)
    for i in (0, 4, 9):
        np.testing.assert_array_equal(a[i].image, b[i].image)
        np.testing.assert_array_equal(a[i].masks, b[i].masks)
        assert not np.array_equal(a[i].image, c[i].image)
    assert not np.array_equal(a[0].image, a[1].image)


def test_synthetic_samples_are_well_formed():
    ds = SyntheticShapes(size=128, length=50, seed=0, max_objects=6)
    assert isinstance(ds, Dataset)
    assert len(ds) == 50
    for i in range(len(ds)):
        s = ds[i]
        assert isinstance(s, Sample)
        assert s.image.dtype == np.uint8 and s.image.shape == (128, 128, 3)
        assert s.masks.dtype == bool and s.masks.ndim == 3 and s.masks.shape[1:] == (128, 128)
        assert 0 <= len(s.masks) <= 6
        assert s.kinds is not None and len(s.kinds) == len(s.masks)
        assert all(m.sum() >= MIN_VISIBLE_PIXELS for m in s.masks)
        # Visible parts after occlusion never overlap.
        assert s.masks.sum(axis=0).max(initial=0) <= 1


def test_synthetic_objects_differ_from_background():
    s = SyntheticShapes(size=128, seed=3)[0]
    background = ~s.masks.any(axis=0)
    for m in s.masks:
        # Mean colours are far apart by construction (>= 100 RGB units, minus texture).
        gap = np.linalg.norm(s.image[m].mean(axis=0) - s.image[background].mean(axis=0))
        assert gap > 40


def test_synthetic_shape_variety():
    ds = SyntheticShapes(size=128, seed=0)
    kinds = {k for i in range(50) for k in ds[i].kinds}
    assert kinds == set(SHAPE_KINDS)
    counts = [len(ds[i].masks) for i in range(50)]
    assert len(set(counts)) >= 3  # the number of objects varies too


def test_synthetic_indexing():
    ds = SyntheticShapes(size=64, length=10)
    np.testing.assert_array_equal(ds[-1].image, ds[9].image)
    np.testing.assert_array_equal(ds[np.int64(2)].image, ds[2].image)
    with pytest.raises(IndexError, match="10"):
        ds[10]
    with pytest.raises(TypeError, match="integer"):
        ds[1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"size": 8}, "size"), ({"length": 0}, "length"), ({"seed": -1}, "seed"), ({"max_objects": 0}, "max_objects")],
)
def test_synthetic_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticShapes(**kwargs)


def test_make_scene():
    image, masks = make_scene(np.random.default_rng(0), 64, 3)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert masks.dtype == bool and masks.shape[1:] == (64, 64) and len(masks) <= 3


# ----------------------------------------------------------------------------- folder


def _save_image(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _save_mask(path: Path, mask: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).convert(mode).save(path)


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def folder(tmp_path):
    """Two images: b.png with two masks (one RGBA), a.jpg with one mask and one empty mask."""
    root = tmp_path / "ds"
    _save_image(root / "images" / "b.png", 20, 30)
    _save_mask(root / "masks" / "b" / "0.png", _box(20, 30, 2, 8, 3, 9))
    _save_mask(root / "masks" / "b" / "1.png", _box(20, 30, 10, 18, 12, 28), mode="RGBA")
    _save_image(root / "images" / "a.jpg", 16, 12)
    _save_mask(root / "masks" / "a" / "inst.png", _box(16, 12, 0, 4, 0, 4))
    _save_mask(root / "masks" / "a" / "zero.png", np.zeros((16, 12), bool))
    return root


def test_folder_loads(folder, caplog):
    ds = FolderDataset(folder)
    assert isinstance(ds, Dataset)
    assert len(ds) == 2
    assert ds.skipped_empty == 0  # empty masks are found on loading
    with caplog.at_level(logging.WARNING, logger="sam_jax.data"):
        a, b = ds[0], ds[1]
        ds[0]
    assert ds.skipped_empty == 1  # the empty mask is counted and logged once, however often it is met
    assert [r.getMessage().count("zero.png") for r in caplog.records] == [1]
    assert a.name == "a.jpg" and b.name == "b.png"
    assert a.image.shape == (16, 12, 3) and a.image.dtype == np.uint8
    assert b.image.shape == (20, 30, 3)
    np.testing.assert_array_equal(b.image, np.asarray(Image.open(folder / "images" / "b.png").convert("RGB")))
    assert b.masks.dtype == bool and b.masks.shape == (2, 20, 30)
    np.testing.assert_array_equal(b.masks[0], _box(20, 30, 2, 8, 3, 9))
    np.testing.assert_array_equal(b.masks[1], _box(20, 30, 10, 18, 12, 28))
    np.testing.assert_array_equal(a.masks, _box(16, 12, 0, 4, 0, 4)[None])


def test_folder_converts_images_to_rgb(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((6, 7), 99, np.uint8)).save(root / "images" / "g.png")
    _save_mask(root / "masks" / "g" / "m.png", _box(6, 7, 1, 3, 1, 3))
    s = FolderDataset(root)[0]
    assert s.image.shape == (6, 7, 3) and (s.image == 99).all()


def test_folder_allows_empty_mask_folder(tmp_path):
    root = tmp_path / "ds"
    _save_image(root / "images" / "x.png", 5, 5)
    (root / "masks" / "x").mkdir(parents=True)
    assert FolderDataset(root)[0].masks.shape == (0, 5, 5)


def test_folder_refuses_mask_folder_without_image(folder):
    _save_mask(folder / "masks" / "orphan" / "0.png", _box(4, 4, 0, 2, 0, 2))
    with pytest.raises(DataError, match=r"orphan.*image is missing"):
        FolderDataset(folder)


def test_folder_refuses_image_without_mask_folder(folder):
    _save_image(folder / "images" / "lonely.png", 4, 4)
    with pytest.raises(DataError, match=r"lonely\.png.*mask folder"):
        FolderDataset(folder)


def test_folder_refuses_unreadable_mask(folder):
    (folder / "masks" / "b" / "garbage.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"garbage\.png"):
        FolderDataset(folder)


def test_folder_refuses_unreadable_image(folder):
    (folder / "images" / "b.png").write_bytes(b"\x00\x01 nope")
    with pytest.raises(DataError, match=r"b\.png.*not a readable image"):
        FolderDataset(folder)


def test_folder_refuses_mask_of_other_size(folder):
    _save_mask(folder / "masks" / "b" / "small.png", _box(10, 10, 0, 5, 0, 5))
    with pytest.raises(DataError, match=r"small\.png.*10x10.*30x20"):
        FolderDataset(folder)


def test_folder_refuses_missing_masks_folder(tmp_path):
    _save_image(tmp_path / "ds" / "images" / "a.png", 4, 4)
    with pytest.raises(DataError, match="masks"):
        FolderDataset(tmp_path / "ds")


def test_folder_refuses_unsupported_image_file(folder):
    (folder / "images" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt"):
        FolderDataset(folder)


# ----------------------------------------------------------------------------- COCO

H, W = 24, 32


def _rle_box() -> dict:
    rle = mask_utils.encode(np.asfortranarray(_box(H, W, 12, 20, 2, 10).astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])) != 0)
    counts = np.diff(np.concatenate([[0], edges])).tolist()
    if flat[0]:
        counts = [0, *counts]
    assert sum(counts) == mask.size
    return {"size": list(mask.shape), "counts": counts}


def _coco_json(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    images = images or [
        {"id": 1, "file_name": "one.png", "height": H, "width": W},
        {"id": 2, "file_name": "two.png", "height": H, "width": W},
        {"id": 3, "file_name": "crowd.png", "height": H, "width": W},
    ]
    for image in images:
        if not (tmp_path / "images" / image["file_name"]).exists():
            _save_image(tmp_path / "images" / image["file_name"], image["height"], image["width"])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return path


POLYGON = {"id": 10, "image_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 8, 2, 8]]}
RLE = {"id": 11, "image_id": 1, "iscrowd": 0, "segmentation": _rle_box()}
UNCOMPRESSED = {"id": 12, "image_id": 2, "iscrowd": 0, "segmentation": _uncompressed_rle(_box(H, W, 0, 5, 20, 30))}
CROWD = {"id": 13, "image_id": 3, "iscrowd": 1, "segmentation": _rle_box()}


def test_coco_loads(tmp_path):
    ds = CocoDataset(_coco_json(tmp_path, [POLYGON, RLE, UNCOMPRESSED, CROWD]), tmp_path / "images")
    assert isinstance(ds, Dataset)
    assert len(ds) == 2  # crowd.png has only a crowd annotation
    assert ds.skipped_crowd == 1 and ds.skipped_empty == 1
    one, two = ds[0], ds[1]
    assert one.name == "one.png" and two.name == "two.png"
    assert one.image.shape == (H, W, 3) and one.image.dtype == np.uint8
    assert one.masks.dtype == bool and one.masks.shape == (2, H, W)
    # The polygon covers pixels (x 2..11, y 2..7) give or take its boundary.
    assert one.masks[0][3:7, 3:11].all() and not one.masks[0][10:].any()
    np.testing.assert_array_equal(one.masks[1], _box(H, W, 12, 20, 2, 10))
    np.testing.assert_array_equal(two.masks, _box(H, W, 0, 5, 20, 30)[None])


def test_coco_merges_multi_polygon_and_skips_empty(tmp_path):
    two_parts = {**POLYGON, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4], [20, 10, 30, 10, 30, 20, 20, 20]]}
    empty = {**UNCOMPRESSED, "segmentation": _uncompressed_rle(np.zeros((H, W), bool))}
    ds = CocoDataset(_coco_json(tmp_path, [two_parts, empty]), tmp_path / "images")
    assert len(ds) == 1 and ds.skipped_empty == 2 and ds.skipped_empty_annotations == 1
    (mask,) = ds[0].masks
    assert mask[1:3, 1:3].all() and mask[12:18, 22:28].all() and not mask[8, 10]


def test_coco_refuses_missing_image(tmp_path):
    path = _coco_json(tmp_path, [POLYGON, UNCOMPRESSED])
    (tmp_path / "images" / "two.png").unlink()
    with pytest.raises(DataError, match=r"two\.png.*missing"):
        CocoDataset(path, tmp_path / "images")


def test_coco_refuses_rle_of_other_size(tmp_path):
    wrong = {**RLE, "segmentation": {**_rle_box(), "size": [H + 1, W]}}
    with pytest.raises(DataError, match=r"ann\.json.*one\.png"):
        CocoDataset(_coco_json(tmp_path, [wrong]), tmp_path / "images")


def test_coco_refuses_image_of_other_size(tmp_path):
    path = _coco_json(tmp_path, [POLYGON])
    _save_image(tmp_path / "images" / "one.png", H, W + 3)  # the json says W
    ds = CocoDataset(path, tmp_path / "images")
    with pytest.raises(DataError, match=r"ann\.json.*one\.png"):
        ds[0]


def test_coco_refuses_unreadable_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"broken\.json"):
        CocoDataset(path, tmp_path)


def test_coco_refuses_malformed_annotation(tmp_path):
    bad = {**POLYGON, "image_id": 99}
    with pytest.raises(DataError, match=r"ann\.json.*annotations\[0\]"):
        CocoDataset(_coco_json(tmp_path, [bad]), tmp_path / "images")


@pytest.mark.parametrize(
    "segmentation,needle",
    [
        ({**_rle_box(), "counts": "!!!!"}, "segmentation RLE is not a valid compressed RLE string"),
        ({**_rle_box(), "counts": "0"}, f"segmentation RLE counts sum to 0, not height x width = {H * W}"),
        ({**_rle_box(), "counts": ""}, f"segmentation RLE counts sum to 0, not height x width = {H * W}"),
        ({**_rle_box(), "counts": _rle_box()["counts"][:-1]}, "segmentation RLE"),
        ([[2, 2, 12, 2, float("nan"), 8, 2, 8]], "a polygon must be a list of finite numbers"),
        ({"size": [H, W], "counts": [H * W - 1, 1.5]}, "uncompressed RLE counts must be integers >= 0"),
    ],
)
def test_coco_refuses_damaged_segmentations_naming_the_file(tmp_path, segmentation, needle):
    """pycocotools reads a damaged RLE string past its end or raises without naming the
    file, and rasterises a NaN polygon to nothing (the data then looks empty)."""
    with pytest.raises(DataError, match=rf"ann\.json: annotations\[0\]: {re.escape(needle)}"):
        CocoDataset(_coco_json(tmp_path, [{**POLYGON, "segmentation": segmentation}]), tmp_path / "images")


# ----------------------------------------------------------------------------- families


@pytest.mark.parametrize("family", ["broad", "heldout-family"])
def test_family_scenes_are_well_formed_and_varied(family):
    ds = SyntheticShapes(size=128, length=60, seed=0, max_objects=10, family=family)
    assert ds[5].image.tobytes() == ds[5].image.tobytes() and ds[5].name == f"synthetic:{family}:0:5"
    shapes, kinds, fractions = set(), set(), []
    for i in range(60):
        s = ds[i]
        h, w = s.image.shape[:2]
        assert max(h, w) == 128 and min(h, w) >= 64 and s.image.dtype == np.uint8
        assert s.masks.shape == (len(s.kinds), h, w) and s.masks.sum(axis=0).max(initial=0) <= 1  # disjoint
        assert (s.masks.sum(axis=(1, 2)) >= FAMILIES[family].min_visible).all()
        shapes.add((h, w))
        kinds.update(s.kinds)
        fractions.extend(s.masks.sum(axis=(1, 2)) / (h * w))
    assert kinds == set(FAMILIES[family].shapes) and len(shapes) > 20
    assert min(fractions) < 0.005 and max(fractions) > 0.2  # tiny objects and large ones


def test_heldout_family_shares_no_shape_kind_with_training():
    assert not set(HELDOUT_SHAPES) & set(BROAD_SHAPES)
    assert set(SHAPE_KINDS) < set(BROAD_SHAPES)
    assert "dots" not in FAMILIES["broad"].textures and "dots" in FAMILIES["heldout-family"].textures


@pytest.mark.parametrize("kind", [*BROAD_SHAPES[len(SHAPE_KINDS) :], *HELDOUT_SHAPES])
def test_family_shape_kinds_are_what_they_say(kind):
    from scipy import ndimage

    from sam_jax.data.families import family_shape_mask

    r = 40.0
    ys = np.arange(-48, 48, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(-48, 48, dtype=np.float32)[None, :] + 0.5
    mask = family_shape_mask(np.random.default_rng(1), kind, ys, xs, r)
    assert mask.any() and not (mask & (ys * ys + xs * xs > (r + 1) ** 2)).any()  # within its radius
    holes = ndimage.binary_fill_holes(mask).sum() - mask.sum()
    assert (holes > 50) == (kind in ("ring", "holed"))
    if kind in ("crescent", "lshape", "arrow", "cshape", "cross"):  # concave: well short of its convex hull
        from scipy.spatial import ConvexHull

        assert mask.sum() < 0.93 * ConvexHull(np.argwhere(mask)).volume
    if kind in ("bar", "cross", "lshape"):  # thin: no pixel lies farther than 0.3 r from the edge
        assert ndimage.distance_transform_edt(mask).max() <= 0.3 * r


# ----------------------------------------------------------------------------- open_dataset


def test_open_synthetic():
    ds = open_dataset("synthetic")
    assert isinstance(ds, SyntheticShapes) and len(ds) == 10_000 and ds.size == 256
    ds = open_dataset("synthetic:seed=3,length=500,size=64,max_objects=2")
    assert (ds.seed, ds.length, ds.size, ds.max_objects) == (3, 500, 64, 2)
    assert open_dataset("synthetic:length=7").length == 7


@pytest.mark.parametrize(
    "spec", ["synthetic:colour=3", "synthetic:seed", "synthetic:seed=x", "synthetic:seed=1,seed=2"]
)
def test_open_synthetic_refuses_bad_options(spec):
    with pytest.raises(ValueError, match="seed") as info:
        open_dataset(spec)
    if "colour" in spec:
        assert "seed, length, size, max_objects, family" in str(info.value)


def test_open_synthetic_family():
    ds = open_dataset("synthetic:family=broad,size=96")
    assert ds.family == "broad" and ds.size == 96 and ds[0].name == "synthetic:broad:0:0"
    with pytest.raises(ValueError, match="family must be 'classic' or one of broad, heldout-family, got 'wild'"):
        open_dataset("synthetic:family=wild")


def test_open_folder(folder):
    ds = open_dataset(str(folder))
    assert isinstance(ds, FolderDataset) and len(ds) == 2


def test_open_coco(tmp_path):
    path = _coco_json(tmp_path, [POLYGON, RLE])
    ds = open_dataset(str(path))
    assert isinstance(ds, CocoDataset) and len(ds) == 1 and ds.image_dir == tmp_path / "images"
    (tmp_path / "images").rename(tmp_path / "elsewhere")
    ds = open_dataset(f"{path}::{tmp_path / 'elsewhere'}")
    assert isinstance(ds, CocoDataset) and len(ds) == 1 and ds[0].masks.shape == (2, H, W)


@pytest.mark.parametrize("name", ["nowhere", "file.txt", "plain_folder", "absent.json"])
def test_open_refuses_other_paths(tmp_path, name):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "plain_folder").mkdir()
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        open_dataset(str(tmp_path / name))
