"""The evaluation protocol's pieces, and an end-to-end run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from segment_anything.utils.amg import batched_mask_to_box

import sam_jax
from sam_jax import masks
from sam_jax.data import SyntheticShapes
from sam_jax.modeling.sam import SamParams
from sam_jax.train import evaluation


def test_interior_point_is_farthest_from_the_boundary():
    mask = np.zeros((20, 30), bool)
    mask[2:12, 5:25] = True  # 10 x 20: rows 6-7 are 5 pixels from the boundary
    x, y = evaluation.interior_point(mask)
    assert mask[int(y), int(x)] and 6 <= y <= 7 and 9 <= x <= 20
    edge = np.zeros((10, 10), bool)
    edge[:, :4] = True  # touches the image border: the border counts as boundary
    assert evaluation.interior_point(edge)[0] in (1.0, 2.0)


def test_tight_box_matches_the_reference():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = np.zeros((40, 50), bool)
        y0, x0 = rng.integers(0, 20, 2)
        mask[y0 : y0 + rng.integers(1, 20), x0 : x0 + rng.integers(1, 30)] = True
        ref = batched_mask_to_box(torch.as_tensor(mask)[None]).numpy()[0]
        np.testing.assert_array_equal(evaluation.tight_box(mask), ref)


def test_iou():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2], b[0, 1:3] = True, True  # 4 shared of 12
    np.testing.assert_allclose(masks.iou(a, b), [1 / 3, 1.0])


def test_evaluate_counts_every_instance(small):
    data = SyntheticShapes(size=96, length=4, seed=5, max_objects=3)
    figures = evaluation.evaluate(small.params, data, num_images=4, clicks=(1, 2))
    assert figures["instances"] == sum(len(data[i].masks) for i in range(4))
    for key in ("point_miou", "box_miou", "click1_miou", "click2_miou"):
        assert 0.0 <= figures[key] <= 1.0
    assert set(figures) == {"point_miou", "box_miou", "click1_miou", "click2_miou", "instances"} | {
        "small_point_miou",
        "small_box_miou",
        "small_instances",
    }
    areas = np.concatenate([data[i].masks.sum(axis=(1, 2)) for i in range(4)])
    assert figures["small_instances"] == (areas < 0.01 * 96 * 96).sum()
    assert sam_jax.get_config("tiny-shapes").decoder_num_heads == 8  # the reference's fixed choice


def test_evaluation_embeddings_are_kept_while_the_encoder_is(small):
    """A later evaluation with the same encoder arrays (a frozen encoder, a trained decoder)
    encodes nothing and gives what encoding anew gives; a new encoder, or other pixels at
    the same position, are encoded again; nothing is kept past the budget."""
    params = small.params
    data = SyntheticShapes(size=96, length=3, seed=5, max_objects=3)
    kept = evaluation.EvaluationEmbeddings(2**30)
    evaluation.evaluate(params, data, num_images=3, clicks=(1,), embeddings=kept)
    assert kept.computed == 3 and kept.kept_bytes > 0
    decoder = jax.tree.map(lambda x: x * 1.01, params.weights["mask_decoder"])
    trained = SamParams(params.config, {**params.weights, "mask_decoder": decoder})
    figures = evaluation.evaluate(trained, data, num_images=3, clicks=(1,), embeddings=kept)
    assert kept.computed == 3
    np.testing.assert_equal(figures, evaluation.evaluate(trained, data, num_images=3, clicks=(1,)))
    encoder = jax.tree.map(jnp.copy, params.weights["image_encoder"])
    evaluation.evaluate(SamParams(params.config, {**params.weights, "image_encoder": encoder}), data, 1, (), kept)
    assert kept.computed == 4
    other = SyntheticShapes(size=96, length=1, seed=6, max_objects=3)
    evaluation.evaluate(SamParams(params.config, {**params.weights, "image_encoder": encoder}), other, 1, (), kept)
    assert kept.computed == 5
    none_kept = evaluation.EvaluationEmbeddings(0)
    for _ in range(2):
        evaluation.evaluate(params, data, num_images=1, clicks=(), embeddings=none_kept)
    assert none_kept.computed == 2 and none_kept.kept_bytes == 0


def test_evaluate_automatic_matches_generated_masks_to_instances():
    tiny = sam_jax.load("tiny-shapes")
    data = SyntheticShapes(size=128, length=3, seed=11)
    loose = evaluation.evaluate_automatic(tiny, data, 3, pred_iou_thresh=0.6, stability_score_thresh=0.85)
    assert loose["instances_per_image"] == sum(len(data[i].masks) for i in range(3)) / 3
    assert loose["recall"] >= 0.5 and loose["precision"] >= 0.5 and loose["found_miou"] >= 0.5, loose
    none = evaluation.evaluate_automatic(
        tiny, data, 3, pred_iou_thresh=0.6, stability_score_thresh=0.85, box_nms_thresh=0.0
    )
    # NMS at IoU 0 keeps only masks whose boxes do not overlap: fewer masks, fewer found
    assert none["masks_per_image"] < loose["masks_per_image"] and none["recall"] < loose["recall"], (none, loose)
