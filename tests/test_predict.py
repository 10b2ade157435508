"""`sam_jax.predict` / `encode` / `decode` end to end against the reference `SamPredictor`."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import torch
from conftest import assert_parity, rel_err
from segment_anything import SamPredictor

import sam_jax
from sam_jax import predictor, transforms
from sam_jax.testing import make_image, randomize_, save_state_dict

# Shrinking (non-square both ways, large) and growing images.
SIZES = [(427, 640), (640, 427), (1500, 1000), (90, 120)]


def prompt_cases(h: int, w: int) -> dict[str, dict]:
    pts = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.6 * h], [0.5 * w, 0.2 * h]])
    box = np.array([0.1 * w, 0.15 * h, 0.8 * w, 0.9 * h])
    return {
        "one-point": dict(point_coords=pts[:1], point_labels=np.array([1])),
        "points-fg-bg": dict(point_coords=pts, point_labels=np.array([1, 0, 1])),
        "box": dict(box=box),
        "points+box": dict(point_coords=pts[:2], point_labels=np.array([1, 0]), box=box),
    }


def ours_kwargs(case: dict) -> dict:
    return dict(points=case.get("point_coords"), labels=case.get("point_labels"), box=case.get("box"))


@pytest.fixture(scope="module")
def small_predictors(small):
    """(reference predictor, our embedding) per image size, encoded once."""
    out = {}
    for h, w in SIZES:
        image = make_image(h, w, seed=h + w)
        ref = SamPredictor(small.ref)
        ref.set_image(image)
        out[(h, w)] = (image, ref, sam_jax.encode(small.params, image))
    return out


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_encode_matches_set_image(small_predictors, size):
    _, ref, emb = small_predictors[size]
    assert emb.original_size == ref.original_size and emb.input_size == ref.input_size
    assert rel_err(emb.image_embedding, ref.features[0].permute(1, 2, 0).numpy()) < 1e-3


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
@pytest.mark.parametrize("multimask_output", [True, False])
def test_decode_matches_predict(small, small_predictors, size, multimask_output):
    _, ref, emb = small_predictors[size]
    for name, case in prompt_cases(*size).items():
        expected = ref.predict(**case, multimask_output=multimask_output)
        got = sam_jax.decode(small.params, emb, **ours_kwargs(case), multimask_output=multimask_output)
        assert_parity(expected, got, f"{size} {name}")
        # Feed the low-res logits back as a mask prompt, as in interactive use.
        mask_input = expected[2][np.argmax(expected[1])][None]
        expected2 = ref.predict(**case, mask_input=mask_input, multimask_output=multimask_output)
        got2 = sam_jax.decode(
            small.params, emb, **ours_kwargs(case), mask_input=mask_input, multimask_output=multimask_output
        )
        assert_parity(expected2, got2, f"{size} {name} + mask_input")


def test_mask_only_prompt_and_logits(small, small_predictors):
    _, ref, emb = small_predictors[(427, 640)]
    mask_input = np.random.default_rng(0).normal(0, 5, (1, 64, 64)).astype(np.float32)
    expected = ref.predict(mask_input=mask_input, return_logits=True)
    got = sam_jax.decode(small.params, emb, mask_input=mask_input, return_logits=True)
    assert got[0].dtype == np.float32
    assert_parity(expected, got, "mask only, logits")


def test_predict_end_to_end(small, small_predictors):
    image, ref, _ = small_predictors[(1500, 1000)]
    case = prompt_cases(1500, 1000)["points+box"]
    assert_parity(ref.predict(**case), sam_jax.predict(small.params, image, **ours_kwargs(case)), "predict")


def test_labels_default_to_foreground(small, small_predictors):
    _, ref, emb = small_predictors[(640, 427)]
    pts = np.array([[100.0, 200.0], [300.0, 50.0]])
    expected = ref.predict(point_coords=pts, point_labels=np.ones(2))
    assert_parity(expected, sam_jax.decode(small.params, emb, pts), "default labels")


@pytest.mark.parametrize("with_box", [False, True])
def test_batched_prompts_match_predict_torch(small, small_predictors, with_box):
    _, ref, emb = small_predictors[(427, 640)]
    rng = np.random.default_rng(7)
    b, n = 5, 3
    pts = rng.uniform(0, 400, (b, n, 2))
    labels = rng.integers(0, 2, (b, n))
    boxes = np.sort(rng.uniform(0, 400, (b, 2, 2)), axis=1).reshape(b, 4) if with_box else None
    size, long_side = ref.original_size, small.params.config.image_size
    expected = ref.predict_torch(
        torch.as_tensor(transforms.apply_coords(pts, size, long_side), dtype=torch.float),
        torch.as_tensor(labels, dtype=torch.int),
        None if boxes is None else torch.as_tensor(transforms.apply_boxes(boxes, size, long_side), dtype=torch.float),
    )
    got = sam_jax.decode(small.params, emb, pts, labels, box=boxes)
    assert got[0].shape == (b, 3, *size)
    assert_parity([t.numpy() for t in expected], got, "batched")


def test_batched_decode_equals_one_by_one(small, small_predictors):
    _, _, emb = small_predictors[(90, 120)]
    pts = np.array([[[10.0, 20.0]], [[60.0, 40.0]], [[100.0, 80.0]]])
    batched = sam_jax.decode(small.params, emb, pts)
    for i in range(3):
        single = sam_jax.decode(small.params, emb, pts[i])
        for a, b in zip(batched, single, strict=True):
            np.testing.assert_allclose(np.asarray(a[i], np.float32), np.asarray(b, np.float32), atol=1e-5)


def test_encode_batch_of_images(small, small_predictors):
    images = np.stack([make_image(427, 640, seed=s) for s in (1, 2)])
    batch = sam_jax.encode(small.params, images)
    assert batch.image_embedding.shape == (2, 16, 16, 32) and len(batch) == 2
    for i in range(2):
        single = sam_jax.encode(small.params, images[i])
        np.testing.assert_allclose(np.asarray(batch[i].image_embedding), np.asarray(single.image_embedding), atol=1e-5)
    with pytest.raises(ValueError, match=r"embedding\[i\]"):
        sam_jax.decode(small.params, batch, [[1, 2]])


def test_other_image_size_does_not_recompile_encoder(small):
    sam_jax.encode(small.params, make_image(300, 200))
    compiled = predictor.encode_cache_size()
    emb = sam_jax.encode(small.params, make_image(123, 456))
    sam_jax.encode(small.params, make_image(800, 801))
    assert predictor.encode_cache_size() == compiled
    sam_jax.decode(small.params, emb, [[1, 2]])
    decoders = predictor.decode_cache_size()
    sam_jax.decode(small.params, sam_jax.encode(small.params, make_image(55, 66)), [[3, 4]])
    assert predictor.decode_cache_size() == decoders  # same prompt shapes, other image: no new decoder
    sam_jax.decode(small.params, emb, np.arange(26).reshape(13, 2))  # 13 points: used nowhere else
    assert predictor.decode_cache_size() == decoders + 1  # a new prompt count compiles the decoder only
    assert predictor.encode_cache_size() == compiled


def test_embedding_is_a_pytree(small, small_predictors):
    _, _, emb = small_predictors[(90, 120)]
    leaves, treedef = jax.tree.flatten(emb)
    assert len(leaves) == 1
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.original_size == (90, 120) and rebuilt.input_size == emb.input_size


@pytest.mark.slow
def test_vit_b_end_to_end(tmp_path):
    """The full vit_b configuration at 1024, SAM's and SAM-HQ's, each converted from its
    official-format checkpoint, every tensor randomised; against `segment_anything` and
    `segment_anything_hq`. The two share their image encoder's weights, so each side encodes
    the image once (SAM-HQ's encoder also returns its early features) and both decoders run
    on that embedding."""
    from segment_anything import sam_model_registry
    from segment_anything_hq import SamPredictor as HQPredictor
    from segment_anything_hq import sam_model_registry as hq_registry

    hq_ref = randomize_(hq_registry["vit_b"]().eval(), seed=1)
    hq_keys = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")
    plain_state = {k: v for k, v in hq_ref.state_dict().items() if k.split(".")[1] not in hq_keys}
    ref = sam_model_registry["vit_b"]().eval()
    ref.load_state_dict(plain_state, strict=True)
    params = sam_jax.load(save_state_dict(ref, tmp_path / "sam_vit_b.pth"))
    hq_params = sam_jax.load(save_state_dict(hq_ref, tmp_path / "sam_hq_vit_b.pth"))
    assert params.config == sam_jax.get_config("vit_b") and hq_params.config == sam_jax.get_config("sam_hq_vit_b")

    image = make_image(427, 640, seed=11)
    hq_pred = HQPredictor(hq_ref)
    hq_pred.set_image(image)
    pred = SamPredictor(ref)  # the same encoder's output, given to the reference's predictor
    pred.features, pred.original_size, pred.input_size = hq_pred.features, image.shape[:2], hq_pred.input_size
    pred.is_image_set = True
    hq_emb = sam_jax.encode(hq_params, image, prepare=False)  # parity only: no session to prepare
    emb = sam_jax.ImageEmbedding(hq_emb.image_embedding, hq_emb.original_size, hq_emb.input_size)
    figures = {
        "embedding_rel_err": rel_err(emb.image_embedding, pred.features[0].permute(1, 2, 0).numpy()),
        "early_features_rel_err": rel_err(hq_emb.early_features, hq_pred.interm_features[0][0].numpy()),
    }
    assert figures["embedding_rel_err"] < 1e-3 and figures["early_features_rel_err"] < 1e-3
    for name, case in prompt_cases(427, 640).items():
        for multimask_output in (True, False):
            got = sam_jax.decode(params, emb, **ours_kwargs(case), multimask_output=multimask_output)
            f = assert_parity(pred.predict(**case, multimask_output=multimask_output), got, name)
            for k, v in f.items():
                worst = min if k == "mask_agreement" else max
                figures[k] = worst(figures.get(k, v), v)
            hq_case = dict(multimask_output=multimask_output, hq_token_only=not multimask_output)
            got = sam_jax.decode(hq_params, hq_emb, **ours_kwargs(case), **hq_case)
            assert_parity(hq_pred.predict(**case, **hq_case), got, f"SAM-HQ, {name}, {hq_case}")
    # SAM-HQ's logits fed back (the reference's on both sides), multimask off.
    case = prompt_cases(427, 640)["points-fg-bg"]
    fed = dict(**case, mask_input=hq_pred.predict(**case)[2], multimask_output=False)
    got = sam_jax.decode(hq_params, hq_emb, **ours_kwargs(case), mask_input=fed["mask_input"], multimask_output=False)
    assert_parity(hq_pred.predict(**fed), got, "SAM-HQ, logits fed back")
    print("vit_b parity:", json.dumps(figures))
    if os.environ.get("SAM_JAX_PARITY_REPORT"):
        with open(os.environ["SAM_JAX_PARITY_REPORT"], "w") as f:
            json.dump(figures, f, indent=2)


def test_bfloat16_compute_agrees_with_float32(small):
    """bf16 encoder arithmetic (fp32 weights) gives the fp32 masks: mean IoU >= 0.98 over
    the parity images and prompts (issue 6), and embeddings stay float32."""
    params16 = sam_jax.load(small.directory, compute_dtype="bfloat16")
    assert params16.compute_dtype == "bfloat16" and small.params.compute_dtype == "float32"
    ious = []
    for h, w in SIZES:
        image = make_image(h, w, seed=h + w)
        emb32 = sam_jax.encode(small.params, image)
        emb16 = sam_jax.encode(params16, image)
        assert emb16.image_embedding.dtype == np.float32
        # Rounding to 8 mantissa bits does change the embedding, but not by much.
        assert 1e-5 < rel_err(emb16.image_embedding, emb32.image_embedding) < 5e-2
        for case in prompt_cases(h, w).values():
            m32, _, _ = sam_jax.decode(small.params, emb32, **ours_kwargs(case))
            m16, _, _ = sam_jax.decode(small.params, emb16, **ours_kwargs(case))
            m32, m16 = np.asarray(m32), np.asarray(m16)
            ious.extend((m32 & m16).sum(axis=(-2, -1)) / np.maximum((m32 | m16).sum(axis=(-2, -1)), 1))
    assert np.mean(ious) >= 0.98, np.mean(ious)
    # The per-call override and `predict` take the same option.
    image = make_image(90, 120, seed=1)
    via_call = sam_jax.encode(small.params, image, compute_dtype="bfloat16").image_embedding
    np.testing.assert_array_equal(via_call, sam_jax.encode(params16, image).image_embedding)
    masks, _, _ = sam_jax.predict(small.params, image, [[60, 45]], compute_dtype="bfloat16")
    assert masks.shape == (3, 90, 120)


@pytest.mark.parametrize("bad", ["float16", "bf16", 16, None])
def test_bad_compute_dtype_is_refused(small, bad):
    with pytest.raises(ValueError, match="compute_dtype must be 'float32' or 'bfloat16'"):
        sam_jax.load(small.directory, compute_dtype=bad)
    if bad is not None:  # None means "as params say" for encode/predict
        with pytest.raises(ValueError, match="compute_dtype"):
            sam_jax.encode(small.params, make_image(8, 8, seed=0), compute_dtype=bad)
