"""Tiled automatic masks: the merge of pieces across tile borders on hand-made masks, the
image-sized RLE made from cropped masks, the windowed TIFF reader, and end to end on the
embedded model (a synthetic scene whose objects straddle tile borders, against an untiled
run) through the library and `sam-jax amg --tile`."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco

from sam_jax import cli, jobs, masks, vectors
from sam_jax.amg import AmgOptions, generate, tiling
from sam_jax.amg.tiling import CroppedMask, crop_mask, merge_tiles, tile_boxes
from sam_jax.data.synthetic import scattered_scene
from sam_jax.io import ImageError
from sam_jax.windowed import ArrayWindows, TiffWindows, open_windows, write_tiled_tiff

# ----------------------------------------------------------------------------- merging, by hand

SIZE = (200, 448)  # H, W: two tiles of 256 sharing the columns 192..255
TILES = tile_boxes(SIZE, 256, 64)


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def pieces_of(full: np.ndarray, score: float = 0.9) -> list[list[dict]]:
    """What each tile would report of an object: its part inside the tile."""
    out = []
    for x0, y0, x1, y1 in TILES:
        part = np.zeros(SIZE, bool)
        part[y0:y1, x0:x1] = full[y0:y1, x0:x1]
        out.append([record(part, score)] if part.any() else [])
    return out


def record(full: np.ndarray, score: float = 0.9) -> dict:
    m = crop_mask(full, 0, 0, SIZE)
    return tiling._record(m, score, [[0.0, 0.0]], score, [0, 0, 256, 200])


def merged(*objects: list[list[dict]]) -> list[np.ndarray]:
    per_tile = [[r for obj in objects for r in obj[t]] for t in range(len(TILES))]
    return [r["segmentation"].to_full() for r in merge_tiles(per_tile, TILES, SIZE)]


def test_tiles_cover_the_image_and_end_at_its_edge():
    assert TILES == [(0, 0, 256, 200), (192, 0, 448, 200)]
    assert tiling.tile_starts(512, 256, 64) == [0, 192, 256]
    assert tiling.tile_starts(100, 256, 64) == [0]
    assert tiling.tile_cores(TILES) == [(0, 0, 224, 200), (224, 0, 448, 200)]


def test_a_disc_cut_by_the_border_comes_out_whole():
    wide = disc(230, 100, 70)  # 160..300: neither tile holds it all
    out = merged(pieces_of(wide))
    assert len(out) == 1
    np.testing.assert_array_equal(out[0], wide)


def test_different_objects_side_by_side_stay_apart():
    left = disc(200, 50, 45) & (np.arange(SIZE[1]) < 256)[None]  # ends at the first tile's edge
    right = disc(250, 150, 45)  # shares the strip, not the rows
    pieces = pieces_of(left)
    pieces[1] = []  # the second tile does not see `left` at all
    out = merged(pieces, pieces_of(right))
    assert len(out) == 2
    assert {int(m.sum()) for m in out} == {int(left.sum()), int(right.sum())}


def test_duplicates_inside_the_strip_become_one():
    inside = disc(224, 100, 25)  # 199..249: wholly inside both tiles
    out = merged(pieces_of(inside, 0.8), pieces_of(inside, 0.9))
    assert len(out) == 1
    np.testing.assert_array_equal(out[0], inside)


def test_a_tile_mask_of_two_objects_does_not_chain_them():
    a, b = disc(215, 100, 45), disc(340, 100, 40)  # `a` cut by the border, `b` in the second tile only
    pieces = [[*x, *y] for x, y in zip(pieces_of(a), pieces_of(b), strict=True)]
    both = np.zeros(SIZE, bool)
    both[:, 192:] = (a | b)[:, 192:]
    pieces[1].append(record(both, 0.95))  # the second tile also proposes both as one mask
    out = merged(pieces)
    assert any(np.array_equal(m, a) for m in out) and any(np.array_equal(m, b) for m in out)


def test_a_piece_that_saw_the_whole_object_bounds_the_joined_mask():
    a, c = disc(230, 100, 30), disc(150, 100, 30)  # `a` whole in the second tile, cut in the first
    left = np.zeros(SIZE, bool)
    left[:, :256] = (a | c)[:, :256]  # the first tile's mask of `a` holds its neighbour `c` too
    pieces = [[record(left), record(c)], [record(a)]]
    out = merged(pieces)
    assert any(np.array_equal(m, a) for m in out) and any(np.array_equal(m, c) for m in out)


def test_records_are_in_image_coordinates_and_coco_rle_is_image_sized():
    wide = disc(230, 100, 70)
    (r,) = merge_tiles(pieces_of(wide), TILES, SIZE)
    ys, xs = np.nonzero(wide)
    assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
    assert r["area"] == wide.sum()
    (rle,) = tiling.coco_records([r])
    assert rle["segmentation"]["size"] == list(SIZE) and isinstance(rle["segmentation"]["counts"], str)
    decoded = coco.decode({**rle["segmentation"], "counts": rle["segmentation"]["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), wide)


def test_placed_rle_equals_the_full_masks():
    rng = np.random.default_rng(0)
    for _ in range(300):
        big_h, big_w = rng.integers(1, 24, 2)
        h, w = rng.integers(1, big_h + 1), rng.integers(1, big_w + 1)
        y0, x0 = rng.integers(0, big_h - h + 1), rng.integers(0, big_w - w + 1)
        small = rng.random((h, w)) < rng.random()
        full = np.zeros((big_h, big_w), bool)
        full[y0 : y0 + h, x0 : x0 + w] = small
        assert masks.placed_mask_to_rle(small, y0, x0, (big_h, big_w)) == masks.mask_to_rle(full)
    with pytest.raises(ValueError, match="does not fit"):
        masks.placed_mask_to_rle(np.ones((3, 3), bool), 0, 2, (3, 3))


def test_bad_tiling_is_refused_by_name():
    with pytest.raises(ValueError, match="overlap must be >= 0 and below half of tile 256"):
        tiling.check_tiling(256, 128)
    with pytest.raises(ValueError, match="--tile must be at least 128"):
        tiling.check_tiling(100, 10, 128, names=("--tile", "--overlap"))


# ----------------------------------------------------------------------------- windowed reading


def test_windows_of_tiled_and_stripped_tiffs_equal_the_decoded_image(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (150, 230, 3), np.uint8)
    write_tiled_tiff(tmp_path / "tiled.tif", image, tile=64)
    Image.fromarray(image).save(tmp_path / "strips.tif", compression="tiff_adobe_deflate")
    for name in ("tiled.tif", "strips.tif"):
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / name).convert("RGB")), image)
        with open_windows(tmp_path / name) as source:
            assert isinstance(source, TiffWindows) and source.shape == (150, 230)
            np.testing.assert_array_equal(source.read(37, 141, 63, 229), image[37:141, 63:229])


def test_unwindowed_formats_are_decoded_whole_within_the_cap(tmp_path):
    image = np.zeros((40, 50, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    assert isinstance(open_windows(tmp_path / "a.png"), ArrayWindows)
    with pytest.raises(ImageError, match=r"a\.png: declares 50x40 .* only a tiled or stripped TIFF"):
        open_windows(tmp_path / "a.png", max_pixels=1000)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00\x08\x00\x00\x00\x00\x00")
    with pytest.raises(ImageError, match=r"bad\.tif: damaged TIFF .*expected a tiled or stripped TIFF") as e:
        open_windows(tmp_path / "bad.tif")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- end to end

OPTIONS = {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.85}  # tiny-shapes' (tests/test_amg.py)


@pytest.fixture(scope="module")
def scene():
    return scattered_scene(448, 448, cell=128, seed=1)  # 2 x 2 tiles of 256 sharing 64 pixels


@pytest.fixture(scope="module")
def tiled(tiny_shapes, scene):
    return tiling.generate_tiled(tiny_shapes, scene[0], AmgOptions(points_per_side=8, **OPTIONS), tile=256, overlap=64)


def test_objects_across_tile_borders_come_out_once_and_as_well_as_untiled(tiny_shapes, scene, tiled):
    image, objects = scene
    untiled = [r["segmentation"] for r in generate(tiny_shapes, image, AmgOptions(points_per_side=16, **OPTIONS))]
    found = [r["segmentation"].to_full() for r in tiled]
    checked = 0
    for y0, x0, m in objects:
        h, w = m.shape
        if not any(x0 < e < x0 + w or y0 < e < y0 + h for e in (192, 256)):
            continue  # not cut by a tile border
        truth = np.zeros(image.shape[:2], bool)
        truth[y0 : y0 + h, x0 : x0 + w] = m
        reference = max(masks.iou(truth, u) for u in untiled)
        if reference < 0.5:
            continue  # the model misses it untiled too
        ious = [masks.iou(truth, f) for f in found]
        assert sum(i > 0.5 for i in ious) == 1, (x0, y0, ious)
        assert max(ious) >= reference - 0.02, (x0, y0, max(ious), reference)
        checked += 1
    assert checked >= 3


def test_the_command_writes_the_library_records_and_resumes(tiny_shapes, scene, tiled, tmp_path, capsys):
    write_tiled_tiff(tmp_path / "in" / "scene.tif", scene[0], tile=64)
    flags = ["--pred-iou-thresh", "0.6", "--stability-score-thresh", "0.85", "--points-per-side", "8"]
    argv = ["amg", "--checkpoint", "tiny-shapes", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    argv += ["--no-progress", "--tile", "256", "--overlap", "64", "--max-pixels", "1000", *flags]
    assert cli.main(argv) == 0  # the TIFF is far over --max-pixels: read by tiles
    written = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert written == json.loads(json.dumps(tiling.coco_records(tiled)))
    assert cli.main(argv) == 0
    assert "0 written, 0 masks, 1 already done" in capsys.readouterr().out
    other = ["amg", "--checkpoint", "tiny-shapes", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "other")]
    assert cli.main([*other, "--tile", "256", "--overlap", "128"]) == 1
    assert "--overlap must be >= 0 and below half of --tile 256, got 128" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_kept_tile_records_come_back_equal(tiled):
    image_size = tiled[0]["segmentation"].image_size
    back = tiling.tile_records_from_arrays(tiling.tile_records_to_arrays(tiled), image_size)
    assert json.dumps(tiling.coco_records(back)) == json.dumps(tiling.coco_records(tiled))
    for a, b in zip(back, tiled, strict=True):
        assert (a["segmentation"].y0, a["segmentation"].x0) == (b["segmentation"].y0, b["segmentation"].x0)
        np.testing.assert_array_equal(a["segmentation"].mask, b["segmentation"].mask)
    assert tiling.tile_records_from_arrays(tiling.tile_records_to_arrays([]), image_size) == []


def test_a_killed_tiled_job_resumes_at_its_tile(tiny_shapes, scene, tiled, tmp_path, monkeypatch):
    """Killed after some tiles, a job keeps them and makes only the others when run again,
    with the output of an uninterrupted run; tiles kept for other options are made again;
    a folder in the way that is not the job's is left as it is and the image fails."""
    write_tiled_tiff(tmp_path / "in" / "scene.tif", scene[0], tile=64)
    out = tmp_path / "out"
    kept = out / "scene.json.sam-jax-tiles"
    made = []

    def run(options: AmgOptions, kill_after: int | None = None) -> jobs.JobReport:
        made.clear()

        def counted(*args, **kwargs):
            if kill_after is not None and len(made) == kill_after:
                raise KeyboardInterrupt  # as a killed process: nothing after this tile runs
            made.append(1)
            return generate(*args, **kwargs)

        monkeypatch.setattr(tiling, "generate", counted)
        return jobs.generate_tiled_masks_for_images(tiny_shapes, tmp_path / "in", out, options, tile=256, overlap=64)

    options = AmgOptions(points_per_side=8, output_mode="coco_rle", **OPTIONS)
    with pytest.raises(KeyboardInterrupt):
        run(dataclasses.replace(options, points_per_side=4), kill_after=1)
    assert sorted(p.name for p in kept.iterdir()) == ["tile-y0-x0.npz", "tiles.json"]
    with pytest.raises(KeyboardInterrupt):
        run(options, kill_after=2)  # the kept tile was made with other options: made again
    assert len(list(kept.glob("tile-*.npz"))) == 2 and not (out / "scene.json").exists()
    tif = tmp_path / "in" / "scene.tif"
    with pytest.raises(KeyboardInterrupt):
        run(options, kill_after=0)  # nothing more made: the two tiles stay
    os.utime(tif, ns=(tif.stat().st_atime_ns, tif.stat().st_mtime_ns + 10**9))  # the input changed
    with pytest.raises(KeyboardInterrupt):
        run(options, kill_after=2)  # its kept tiles are made again
    assert run(options).ok and len(made) == 2  # 4 tiles, 2 kept
    assert json.loads((out / "scene.json").read_text()) == json.loads(json.dumps(tiling.coco_records(tiled)))
    assert not kept.exists()

    (out / "scene.json").unlink()
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    report = run(options)
    assert not report.ok and "is not a folder of tiles a job kept" in report.failures[0][1]
    assert (kept / "notes.txt").read_text() == "mine" and not (out / "scene.json").exists() and not made


def test_cropped_masks_never_hold_the_image(tiled):
    assert all(isinstance(r["segmentation"], CroppedMask) for r in tiled)
    assert all(r["segmentation"].mask.shape == (r["bbox"][3] + 1, r["bbox"][2] + 1) for r in tiled)


def test_polygon_records_are_in_image_coordinates():
    wide = disc(230, 100, 70)
    records = tiling.polygon_records(merge_tiles(pieces_of(wide), TILES, SIZE))
    assert "segmentation" not in records[0]
    np.testing.assert_array_equal(vectors.polygons_to_mask(records[0]["polygons"], SIZE), wide)
    (feature,) = vectors.records_to_geojson(records)["features"]
    assert feature["geometry"]["type"] == "Polygon" and feature["properties"]["area"] == wide.sum()
