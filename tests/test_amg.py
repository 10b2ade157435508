"""Automatic mask generation against the installed reference `SamAutomaticMaskGenerator`.

Same weights on both sides: the embedded `tiny-shapes` exported with `--to-torch` (trained,
so its masks are localised objects) and a randomised reference model. Random weights give
large blobs whose boxes nearly all cover the image, so box NMS leaves one of them: those
cases lower `stability_score_offset` and the thresholds (the filters still reject most
candidates) and raise the NMS thresholds so many masks reach the comparison.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator as ReferenceGenerator

import sam_jax
from sam_jax import conversion, masks, transforms
from sam_jax.amg import scoring, utils
from sam_jax.data import SyntheticShapes
from sam_jax.testing import build_reference, make_image

KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}


@pytest.fixture(scope="module")
def tiny_shapes_pair(tmp_path_factory):
    """tiny-shapes in both implementations, via the exporter."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-shapes.pth"
    conversion.export_torch("tiny-shapes", path)
    params = sam_jax.load("tiny-shapes")
    ref = build_reference(params.config)
    ref.load_state_dict(torch.load(path), strict=True)
    return params, ref


@pytest.fixture(scope="module")
def scenes():
    """Two synthetic scenes and a non-square cut of a third (exercises resize and padding)."""
    data = SyntheticShapes(size=256, length=3, seed=4242)
    return [data[0].image, data[1].image, np.ascontiguousarray(data[2].image[:, 24:224])]


def to_mask(segmentation: Any) -> np.ndarray:
    if isinstance(segmentation, np.ndarray):
        return segmentation
    if isinstance(segmentation["counts"], str):  # COCO RLE
        return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()}) > 0
    return masks.rle_to_mask(segmentation)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def partners(records: list[dict], others: list[dict]) -> list[dict[str, float]]:
    """For each record, the record of `others` from the same prompt (crop box and point) whose
    mask overlaps it most: its mask IoU and score differences. A prompt yields up to three
    masks, so matching on the prompt first keeps near-duplicates from pairing crosswise."""
    other_masks = [to_mask(o["segmentation"]) for o in others]
    found = []
    for r in records:
        mask = to_mask(r["segmentation"])
        same_prompt = [
            i
            for i, o in enumerate(others)
            if o["crop_box"] == r["crop_box"] and np.allclose(o["point_coords"], r["point_coords"], atol=1e-4)
        ]
        best = max(same_prompt, key=lambda i: mask_iou(mask, other_masks[i]), default=None)
        if best is None:
            found.append({"iou": 0.0, "d_pred": np.inf, "d_stability": np.inf})
            continue
        o = others[best]
        found.append(
            {
                "iou": mask_iou(mask, other_masks[best]),
                "d_pred": abs(r["predicted_iou"] - o["predicted_iou"]),
                "d_stability": abs(r["stability_score"] - o["stability_score"]),
            }
        )
    return found


def assert_same_records(ref: list[dict], ours: list[dict], output_mode: str) -> dict[str, float]:
    """The parity criterion: every mask of either side has a partner with mask IoU >= 0.95 and
    predicted_iou and stability_score within 1e-3; the records have the reference's form."""
    for r in ours:
        assert set(r) == KEYS
        mask = to_mask(r["segmentation"])
        if output_mode == "binary_mask":
            assert r["segmentation"].dtype == bool
        assert r["area"] == int(mask.sum()) and isinstance(r["area"], int)
        assert all(isinstance(v, int) for v in r["bbox"])
        # Crop boxes have the reference's number type (float where one of its crops was empty).
        assert {type(v) for v in r["crop_box"]} == ({type(v) for v in ref[0]["crop_box"]} if ref else {int})
        ys, xs = np.nonzero(mask)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
    if output_mode != "binary_mask":
        assert [type(r["segmentation"]["counts"]) for r in ours] == [type(r["segmentation"]["counts"]) for r in ref]
    both = partners(ref, ours) + partners(ours, ref)
    figures = {
        "ref_masks": len(ref),
        "our_masks": len(ours),
        "min_iou": min((p["iou"] for p in both), default=1.0),
        "max_d_pred": max((p["d_pred"] for p in both), default=0.0),
        "max_d_stability": max((p["d_stability"] for p in both), default=0.0),
    }
    assert figures["min_iou"] >= 0.95, figures
    assert figures["max_d_pred"] <= 1e-3 and figures["max_d_stability"] <= 1e-3, figures
    return figures


# Thresholds for tiny-shapes: the reference's ViT-H defaults (0.88 / 0.95) keep few or none
# of its masks (README: the embedded default); these keep a few objects per image.
TINY_RELAXED = {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.85}
RANDOM_RELAXED = {
    "pred_iou_thresh": 0.3,
    "stability_score_thresh": 0.6,
    "stability_score_offset": 0.05,
    "box_nms_thresh": 1.0,
    "points_per_side": 8,
}

# The reference's 32 x 32 grid once (its defaults); the other cases on 16 x 16 (four batches
# of 64 prompts), enough for what each exercises at a quarter of the reference's time.
CASES = {
    "tiny-defaults": ("tiny", {}),
    "tiny-relaxed": ("tiny", {**TINY_RELAXED, "points_per_side": 16}),
    # No IoU filter: every prompt of a batch keeps candidates (the mask stage's no-copy path).
    "tiny-no-iou-filter": ("tiny", {**TINY_RELAXED, "points_per_side": 16, "pred_iou_thresh": 0.0}),
    "tiny-crops-uncompressed-rle": (
        "tiny",
        {**TINY_RELAXED, "points_per_side": 8, "crop_n_layers": 1, "output_mode": "uncompressed_rle"},
    ),
    "tiny-min-area-coco-rle": (
        "tiny",
        {**TINY_RELAXED, "points_per_side": 16, "min_mask_region_area": 60, "output_mode": "coco_rle"},
    ),
    "tiny-two-crop-layers": (
        "tiny",
        {**TINY_RELAXED, "points_per_side": 8, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2},
    ),
    "random": ("random", {**RANDOM_RELAXED}),
    "random-crops-min-area-coco-rle": (
        "random",
        {
            **RANDOM_RELAXED,
            "crop_n_layers": 1,
            "crop_nms_thresh": 1.0,
            "min_mask_region_area": 100,
            "output_mode": "coco_rle",
        },
    ),
}


# Cases whose cost is in their options (the 32 x 32 grid, 21 crops an image) run on one
# scene (an index into `scenes`): for the crops, the non-square one (resize and padding),
# whose sub-crops keep masks; for the default thresholds, one where tiny-shapes passes them
# (predicted IoU 0.905 against 0.88, stability 0.959 against 0.95), so that there is
# something to compare.
ONE_SCENE = {"tiny-defaults": 1, "tiny-two-crop-layers": 2}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, tiny_shapes_pair, small, scenes):
    check_case(case, tiny_shapes_pair, small, scenes)


@pytest.mark.parametrize("case", ["tiny-crops-uncompressed-rle", "random"])
def test_matches_reference_through_the_level_maps(case, tiny_shapes_pair, small, scenes, monkeypatch):
    """The official models' path (256x256 logits: gathered upsampling written as int8 level
    maps, then scored), forced on the test models' small logits."""
    monkeypatch.setattr(transforms, "GATHER_MIN_LOW_RES", 0)
    calls = []
    original = scoring.score_levels
    monkeypatch.setattr(scoring, "score_levels", lambda *a: calls.append(1) or original(*a))
    check_case(case, tiny_shapes_pair, small, scenes[2:])  # a code path: the padded, non-square scene is enough
    assert calls


def check_case(case: str, tiny_shapes_pair: Any, small: Any, scenes: list[np.ndarray]) -> None:
    which, options = CASES[case]
    params, ref_model = tiny_shapes_pair if which == "tiny" else (small.params, small.ref)
    images = scenes if which == "tiny" else [make_image(200, 300, 0), make_image(256, 192, 1)]
    if case in ONE_SCENE:
        images = [images[ONE_SCENE[case]]]
    reference = ReferenceGenerator(ref_model, **options)
    ours = sam_jax.SamAutomaticMaskGenerator(params, **options)
    counts, from_sub_crops, reshaped = [], 0, 0
    for image in images:
        ref_records = reference.generate(image)
        our_records = ours.generate(image)
        assert_same_records(ref_records, our_records, options.get("output_mode", "binary_mask"))
        counts.append(len(ref_records))
        full = [0, 0, image.shape[1], image.shape[0]]
        from_sub_crops += sum(r["crop_box"] != full for r in our_records)
        if options.get("min_mask_region_area"):
            plain = sam_jax.generate_masks(params, image, **{**options, "min_mask_region_area": 0})
            reshaped += sum(r["area"] not in {p["area"] for p in plain} for r in our_records)
    assert min(counts) >= 1 and sum(counts) >= min(3, len(images)), counts
    # The case exercises what it names: masks found in sub-crops (random blobs touch the crop
    # edges, so the edge filter drops them all), masks changed by the clean-up.
    if which == "tiny":
        assert (from_sub_crops > 0) == (options.get("crop_n_layers", 0) > 0), from_sub_crops
    if options.get("min_mask_region_area"):
        assert reshaped > 0


def test_filters_reject_candidates(small):
    """The random-weight options do filter: tightening them changes what survives."""
    image = make_image(200, 300, 0)
    loose = sam_jax.generate_masks(small.params, image, **RANDOM_RELAXED)
    tight = sam_jax.generate_masks(small.params, image, **{**RANDOM_RELAXED, "stability_score_thresh": 0.8})
    assert 0 < len(tight) < len(loose) < 3 * 64


def test_function_and_class_agree(tiny_shapes_pair, scenes):
    params, _ = tiny_shapes_pair
    a = sam_jax.generate_masks(params, scenes[0], **TINY_RELAXED)
    b = sam_jax.SamAutomaticMaskGenerator(params, **TINY_RELAXED).generate(scenes[0])
    assert len(a) == len(b) >= 1
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x["segmentation"], y["segmentation"]) and x["predicted_iou"] == y["predicted_iou"]


def test_points_per_batch_does_not_change_results(tiny_shapes_pair, scenes):
    params, _ = tiny_shapes_pair
    a = sam_jax.generate_masks(params, scenes[1], **TINY_RELAXED, points_per_batch=64)
    b = sam_jax.generate_masks(params, scenes[1], **TINY_RELAXED, points_per_batch=100)
    assert [r["bbox"] for r in a] == [r["bbox"] for r in b] and len(a) >= 1


def test_explicit_point_grids(tiny_shapes_pair, scenes):
    params, ref_model = tiny_shapes_pair
    grid = utils.build_point_grid(12)
    options = {**TINY_RELAXED, "points_per_side": None, "point_grids": [grid]}
    ref_records = ReferenceGenerator(ref_model, **options).generate(scenes[0])
    assert_same_records(ref_records, sam_jax.generate_masks(params, scenes[0], **options), "binary_mask")


def test_nothing_survives_returns_empty_list_even_with_crops(tiny_shapes_pair, scenes):
    params, ref_model = tiny_shapes_pair
    # A stability score is an IoU, never above 1: the filter (> 1) keeps nothing, whatever the weights.
    options = {"stability_score_thresh": 1.0, "crop_n_layers": 1, "points_per_side": 4}
    assert sam_jax.generate_masks(params, scenes[0], **options) == []
    # The reference fails here (indexing an empty tensor in its crop NMS); we do not.
    with pytest.raises(IndexError):
        ReferenceGenerator(ref_model, **options).generate(scenes[0])
    assert sam_jax.generate_masks(params, scenes[0], stability_score_thresh=1.0) == []


def test_thresholds_at_or_below_zero_mean_no_filter(tiny_shapes_pair, scenes):
    """As the reference: only a threshold above 0 filters, so -1 keeps what 0 keeps."""
    params, _ = tiny_shapes_pair
    options = dict(points_per_side=4, stability_score_thresh=0.0)
    unfiltered = sam_jax.generate_masks(params, scenes[0], pred_iou_thresh=0.0, **options)
    negative = sam_jax.generate_masks(params, scenes[0], pred_iou_thresh=-1.0, **options)
    assert len(unfiltered) == len(negative) > 0
    assert [r["predicted_iou"] for r in negative] == [r["predicted_iou"] for r in unfiltered]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"points_per_side": 0}, ValueError, "points_per_side"),
        ({"points_per_side": 2.5}, TypeError, "points_per_side"),
        ({"points_per_batch": 0}, ValueError, "points_per_batch"),
        ({"pred_iou_thresh": 1.5}, ValueError, "pred_iou_thresh"),
        ({"stability_score_thresh": "high"}, TypeError, "stability_score_thresh"),
        ({"stability_score_offset": -1.0}, ValueError, "stability_score_offset"),
        ({"box_nms_thresh": float("nan")}, ValueError, "box_nms_thresh"),
        ({"crop_n_layers": -1}, ValueError, "crop_n_layers"),
        ({"crop_overlap_ratio": 2.0}, ValueError, "crop_overlap_ratio"),
        ({"min_mask_region_area": -5}, ValueError, "min_mask_region_area"),
        ({"output_mode": "png"}, ValueError, "output_mode"),
        ({"points_per_side": 8, "point_grids": [np.zeros((4, 2))]}, ValueError, "exactly one"),
        ({"points_per_side": None, "point_grids": [np.zeros((4, 3))]}, ValueError, r"point_grids\[0\]"),
        ({"points_per_side": None, "point_grids": [np.full((4, 2), 2.0)]}, ValueError, "normalised"),
        ({"points_per_side": None, "point_grids": [np.zeros((4, 2))], "crop_n_layers": 1}, ValueError, "one grid per"),
        ({"points_per_sid": 8}, TypeError, "points_per_sid"),
    ],
)
def test_bad_options_are_refused_by_name(tiny_shapes_pair, options, error, match):
    with pytest.raises(error, match=match):
        sam_jax.SamAutomaticMaskGenerator(tiny_shapes_pair[0], **options)


def test_bad_image_is_refused(tiny_shapes_pair):
    with pytest.raises((ValueError, TypeError), match="image"):
        sam_jax.generate_masks(tiny_shapes_pair[0], np.zeros((32, 32), np.uint8))
    with pytest.raises(TypeError, match="params"):
        sam_jax.generate_masks({"not": "params"}, np.zeros((32, 32, 3), np.uint8))


def test_stability_score_matches_reference_formula():
    from segment_anything.utils.amg import calculate_stability_score

    logits = np.random.default_rng(0).normal(size=(5, 40, 30)).astype(np.float32)
    logits[0] = -10  # both masks empty: 0 / 0
    ours = np.asarray(sam_jax.amg.stability_score(logits, 0.0, 0.5))
    ref = calculate_stability_score(torch.as_tensor(logits), 0.0, 0.5).numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours[1:], ref[1:], rtol=1e-6)


def test_masks_to_boxes_matches_reference():
    from segment_anything.utils.amg import batched_mask_to_box

    masks = np.random.default_rng(1).random((6, 23, 31)) > 0.97
    masks[0] = False
    ours = np.asarray(sam_jax.amg.masks_to_boxes(masks))
    np.testing.assert_array_equal(ours, batched_mask_to_box(torch.as_tensor(masks)).numpy())


def test_options_that_multiply_memory_are_bounded_by_the_machine(tiny_shapes_pair, monkeypatch):
    from sam_jax.amg import options

    monkeypatch.setattr(options, "host_memory", lambda: 8 << 30)  # a quarter: 2 GiB
    assert (options.max_crop_layers(), options.max_points_per_side()) == (9, 5792)
    started = time.perf_counter()
    for kwargs, message in (
        (
            dict(crop_n_layers=99),
            "crop_n_layers 99 makes a billion or more crops; at most 9 layers' crops fit in a "
            "quarter of this machine's 8 GiB",
        ),
        (dict(crop_n_layers=10**9), "crop_n_layers 1000000000 makes a billion or more crops"),
        (dict(crop_n_layers=10), "crop_n_layers 10 makes 1398101 crops; at most 9"),
        (
            dict(points_per_side=10**6),
            "points_per_side 1000000 makes a grid of 1000000000000 points; at most 5792 points per side fit",
        ),
    ):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
            sam_jax.AmgOptions(**kwargs)
    params = tiny_shapes_pair[0]
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(
        ValueError, match=r"^points_per_batch 100000 needs .* GiB for one batch of this model's decoder"
    ):
        sam_jax.generate_masks(params, image, points_per_batch=100_000)
    # Within the bounds, a tiny image is refused from the layers' sizes, before 4**9 crop boxes are made.
    with pytest.raises(ValueError, match="an image of 8x8 pixels is too small for crop_n_layers=9: its layer-4"):
        sam_jax.generate_masks(params, image, crop_n_layers=9, points_per_side=1)
    assert time.perf_counter() - started < 5
