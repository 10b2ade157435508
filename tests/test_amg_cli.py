"""`sam-jax amg`: the reference scripts/amg.py layout in both output modes, equal to the
library (and, for COCO RLE, to the reference generator), on 1 and 8 devices, resumable,
with unreadable images recorded while the rest succeed."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator as ReferenceGenerator
from test_amg import TINY_RELAXED, assert_same_records

import sam_jax
from sam_jax import cli, conversion, jobs
from sam_jax.data import SyntheticShapes
from sam_jax.testing import build_reference

OPTIONS = {**TINY_RELAXED, "points_per_side": 16}
FLAGS = (
    "--pred-iou-thresh",
    str(TINY_RELAXED["pred_iou_thresh"]),
    "--stability-score-thresh",
    str(TINY_RELAXED["stability_score_thresh"]),
    "--points-per-side",
    "16",
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three scenes (one in a sub-folder, one not square, one JPEG) and an unreadable file."""
    root = tmp_path_factory.mktemp("amg-in")
    scenes = SyntheticShapes(size=256, length=3, seed=909)
    (root / "sub").mkdir()
    Image.fromarray(scenes[0].image).save(root / "a.png")
    Image.fromarray(scenes[1].image).save(root / "sub" / "b.png")
    Image.fromarray(np.ascontiguousarray(scenes[2].image[16:, :200])).save(root / "c.jpg", quality=95)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def _image(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def _run(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = subprocess_env(devices)
    cmd = [sys.executable, "-m", "sam_jax.cli", "amg", "--no-progress", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_png_folders_match_the_library(folder, tmp_path, capsys):
    out = tmp_path / "out"
    status = cli.main(["amg", "--checkpoint", "tiny-shapes", "--input", str(folder), "--output", str(out), *FLAGS])
    assert status == 1  # broken.png
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sam-jax: error: 1 image(s) failed") and "failures.tsv" in err[-1]
    assert (out / "failures.tsv").read_text().split("\t")[0].endswith("broken.png")
    params = sam_jax.load("tiny-shapes")
    total = 0
    for name in ("a", "sub/b", "c"):
        source = next(folder.glob(f"{name}.*"))
        records = sam_jax.generate_masks(params, _image(source), **OPTIONS)
        total += len(records)
        if name == "a":
            first = records
        with open(out / name / "metadata.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(records) == len(list((out / name).glob("*.png")))
        for i, (row, record) in enumerate(zip(rows, records, strict=True)):
            png = np.array(Image.open(out / name / f"{i}.png"))
            assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
            np.testing.assert_array_equal(png == 255, record["segmentation"])
            assert int(row["id"]) == i and int(row["area"]) == record["area"]
            assert [int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_w", "bbox_h")] == record["bbox"]
            assert [float(row["point_input_x"]), float(row["point_input_y"])] == record["point_coords"][0]
            assert float(row["predicted_iou"]) == record["predicted_iou"]
            assert float(row["stability_score"]) == record["stability_score"]
            assert [int(row[f"crop_box_{k}"]) for k in ("x0", "y0", "w", "h")] == record["crop_box"]
    assert total >= 2
    # The same masks as GeoJSON, one image (its programs are compiled by now): each feature
    # rasterises to its mask, its properties are the record's.
    vec = tmp_path / "vec"
    args = ["amg", "--checkpoint", "tiny-shapes", "--input", str(folder / "a.png"), "--output", str(vec)]
    assert cli.main([*args, *FLAGS, "--output-format", "geojson", "--no-progress"]) == 0
    collection = json.loads((vec / "a.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == len(first) >= 1
    for feature, record in zip(collection["features"], first, strict=True):
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        np.testing.assert_array_equal(
            sam_jax.polygons_to_mask(polygons, record["segmentation"].shape), record["segmentation"]
        )
        assert feature["properties"] == {k: v for k, v in record.items() if k != "segmentation"}


def test_coco_rle_json_matches_the_reference_generator(folder, tmp_path):
    out = tmp_path / "out"
    args = ["amg", "--checkpoint", "tiny-shapes", "--input", str(folder), "--output", str(out), "--convert-to-rle"]
    assert cli.main([*args, *FLAGS, "--no-progress"]) == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == ["a.json", "c.json", "sub/b.json"]
    path = tmp_path / "tiny.pth"
    conversion.export_torch("tiny-shapes", path)
    ref = build_reference(sam_jax.get_config("tiny-shapes"))
    ref.load_state_dict(torch.load(path), strict=True)
    reference = ReferenceGenerator(ref, **OPTIONS, output_mode="coco_rle")
    for name in ("a", "sub/b", "c"):
        ours = json.loads((out / f"{name}.json").read_text())
        theirs = reference.generate(_image(next(folder.glob(f"{name}.*"))))
        assert_same_records(theirs, ours, "coco_rle")
        for record in ours:
            rle = {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()}
            assert int(mask_utils.area(rle)) == record["area"]


def test_eight_devices_equal_one_and_resume(folder, tmp_path):
    one, eight = tmp_path / "one", tmp_path / "eight"
    base = ("--checkpoint", "tiny-shapes", "--input", str(folder), "--convert-to-rle", *FLAGS)
    r1 = _run(*base, "--output", str(one))
    r8 = _run(*base, "--output", str(eight), devices=8)
    assert r1.returncode == r8.returncode == 1, (r1.stderr, r8.stderr)
    assert "8 device(s)" in r8.stdout and "1 failed of 4" in r8.stdout
    for p in one.rglob("*.json"):
        # Equal up to fp32 rounding (XLA splits work differently with 8 host devices).
        a, b = json.loads(p.read_text()), json.loads((eight / p.relative_to(one)).read_text())
        assert len(a) == len(b)
        assert_same_records(a, b, "coco_rle")
    # A re-run skips the finished outputs (they are not rewritten) and still reports the failure.
    stamps = {p: p.stat().st_mtime_ns for p in eight.rglob("*.json")}
    again = _run(*base, "--output", str(eight), devices=8)
    assert again.returncode == 1 and "0 written, 0 masks, 3 already done, 1 failed" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in eight.rglob("*.json")} == stamps


def test_library_job_refuses_bad_options(folder, tmp_path):
    with pytest.raises(TypeError, match="options must be an AmgOptions"):
        jobs.generate_masks_for_images(sam_jax.load("tiny-shapes"), folder, tmp_path, {"points_per_side": 4})


@pytest.mark.parametrize(
    "extra",
    [
        ("--pred-iou-thresh", "1.5"),
        ("--points-per-side", "0"),
        ("--model-type", "vit_b"),
        ("--device", "no-such-platform"),
    ],
)
def test_cli_refuses_bad_arguments_in_one_line(folder, tmp_path, capsys, extra):
    args = ["amg", "--checkpoint", "tiny-shapes", "--input", str(folder), "--output", str(tmp_path / "o"), *extra]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("sam-jax: error:"), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (("--convert-to-rle", "--output-format", "geojson"), "argument --output-format: not allowed with"),
        (("--output-format", "svg"), "argument --output-format: invalid choice"),
        (("--output-format", "polygons", "--simplify", "-1"), "argument --simplify: must be a finite number >= 0"),
        (("--simplify", "1"), "--simplify applies to --output-format polygons or geojson, not png"),
        (("--convert-to-rle", "--simplify", "1"), "--simplify applies to --output-format polygons or geojson"),
    ],
)
def test_cli_refuses_conflicting_output_formats_in_one_line(folder, tmp_path, capsys, extra, needle):
    args = ["amg", "--checkpoint", "tiny-shapes", "--input", str(folder), "--output", str(tmp_path / "o"), *extra]
    try:
        status = cli.main(args)
    except SystemExit as e:  # argparse's refusals exit
        status = e.code
    assert status == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sam-jax: error: {needle}"), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (("--crop-n-layers", "99"), "--crop-n-layers 99 makes a billion or more crops; at most"),
        (("--points-per-side", "1000000"), "--points-per-side 1000000 makes a grid of 1000000000000 points; at most"),
        (("--points-per-batch", "10000000"), "--points-per-batch 10000000 needs"),
    ],
)
def test_cli_bounds_work_multiplying_options_by_the_machine(folder, tmp_path, capsys, extra, needle):
    args = ["amg", "--checkpoint", "tiny-shapes", "--input", str(folder), "--output", str(tmp_path / "o"), *extra]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sam-jax: error: {needle}") and "quarter of this machine's" in err
    assert not (tmp_path / "o").exists()
