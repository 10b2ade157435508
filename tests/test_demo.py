"""The demo job, run on a converted random model (test_embedded runs it on tiny-shapes)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from sam_jax import demo


def test_demo_writes_overlays_and_masks(small, tmp_path):
    out = tmp_path / "demo-output"
    assert demo.main(["--output", str(out), "--checkpoint", str(small.directory), "--photos-checkpoint", "none"]) == 0
    sample = np.asarray(Image.open(demo.ASSETS / "sample.png"))
    for name in ("points.png", "boxes.png"):
        pic = np.asarray(Image.open(out / name))
        assert pic.shape == sample.shape and not np.array_equal(pic, sample)
    records = json.loads((out / "masks.json").read_text())["masks"]
    objects = len(json.loads((demo.ASSETS / "sample.json").read_text())["objects"])
    assert sorted((r["prompt"], r["object"]) for r in records) == sorted(
        (kind, k) for kind in ("point", "box") for k in range(objects)
    )
    for r in records:
        seg = r["segmentation"]
        m = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
        assert m.shape == sample.shape[:2] and int(m.sum()) == r["area"]
        assert 0.0 <= r["iou_with_truth"] <= 1.0
    automatic = json.loads((out / "automatic.json").read_text())
    assert automatic["options"] == demo.AUTOMATIC_OPTIONS
    pic = np.asarray(Image.open(out / "automatic.png"))  # random weights: maybe no mask survives
    assert pic.shape == sample.shape and np.array_equal(pic, sample) == (not automatic["masks"])
    for r in automatic["masks"]:
        seg = r["segmentation"]
        assert int(mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).sum()) == r["area"]


def test_demo_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    assert demo.main(["--output", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err
    assert not (tmp_path / "o").exists()
