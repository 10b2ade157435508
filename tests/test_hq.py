"""SAM-HQ against its own package, `segment_anything_hq`, with every tensor randomised: the
official vit_tiny (Light HQ-SAM) through the predictor (embeddings, early features, logits,
IoU, masks; points, boxes, masks fed back, `hq_token_only` both ways; vit_b is in
`test_predict.py::test_vit_b_end_to_end`, beside SAM's),
SAM-HQ code ported by changing its imports, the official checkpoint format both ways, and a
small HQ model through `Sam.forward`, automatic masks, the embedding job and fine-tuning."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from conftest import assert_parity, rel_err
from PIL import Image
from test_amg import RANDOM_RELAXED, assert_same_records

import sam_jax
from sam_jax import config, conversion, formats, jobs, train
from sam_jax.data import SyntheticShapes
from sam_jax.testing import PARITY_LIMITS, SMALL, TINY, build_reference, make_image, randomize_, save_state_dict

SMALL_HQ = dataclasses.replace(SMALL, mask_decoder="hq")


def official(name: str, folder, seed: int) -> tuple[torch.nn.Module, str]:
    """segment_anything_hq's registry model `name`, every tensor randomised, saved as its
    official checkpoint."""
    from segment_anything_hq import sam_model_registry

    ref = randomize_(sam_model_registry[name]().eval(), seed=seed)
    return ref, str(save_state_dict(ref, folder / f"sam_hq_{name}.pth"))


@pytest.fixture(scope="module")
def hq_tiny(tmp_path_factory):
    return official("vit_tiny", tmp_path_factory.mktemp("hq_tiny"), seed=21)


@pytest.fixture(scope="module")
def hq_small(tmp_path_factory):
    """A small ViT SAM-HQ from segment_anything_hq's classes, and the same loaded by sam-jax."""
    ref = randomize_(build_reference(SMALL_HQ), seed=22)
    checkpoint = save_state_dict(ref, tmp_path_factory.mktemp("hq_small") / "small_hq.pth")
    params = sam_jax.load(checkpoint)
    assert params.config == SMALL_HQ
    return ref, params


# SAM-HQ's demo (`demo/demo_hqsam.py`), written once; run with each package's imports.
SAM_HQ_CODE = """
from {package} import sam_model_registry, SamPredictor

sam = sam_model_registry["vit_tiny"](checkpoint=checkpoint)
sam.to(device="cpu")
sam.eval()
predictor = SamPredictor(sam)
predictor.set_image(image)
features = predictor.get_image_embedding()
early = predictor.interm_features[0]
results = {{}}
for hq_token_only in (False, True):
    results["point", hq_token_only] = predictor.predict(
        point_coords=np.array([[200, 150]]), point_labels=np.array([1]), multimask_output=True,
        hq_token_only=hq_token_only,
    )
    results["box", hq_token_only] = predictor.predict(
        box=np.array([30, 40, 300, 220]), multimask_output=False, hq_token_only=hq_token_only
    )
    results["fed", hq_token_only] = predictor.predict(
        point_coords=np.array([[200, 150], [80, 60]]), point_labels=np.array([1, 0]),
        mask_input=results["point", False][2], multimask_output=False, hq_token_only=hq_token_only,
    )
boxes = torch.tensor([[30, 40, 300, 220], [150, 20, 330, 120]], dtype=torch.float)
boxes = predictor.transform.apply_boxes_torch(boxes, image.shape[:2])
results["boxes"] = predictor.predict_torch(point_coords=None, point_labels=None, boxes=boxes, multimask_output=False)
"""


def test_sam_hq_code_runs_by_changing_its_imports(hq_tiny):
    """Light HQ-SAM (TinyViT): SAM-HQ's demo code on both packages, every output compared.

    The code calls `sam.eval()`: segment_anything_hq's builder (as MobileSAM's) loads the
    checkpoint after its own `eval()`, which caches TinyViT's attention biases, so without a
    second `eval()` its model runs with the biases it was constructed with (docs/porting.md).
    """
    _, checkpoint = hq_tiny
    scopes = {}
    for package in ("segment_anything_hq", "sam_jax.segment_anything_hq"):
        scope = {"np": np, "torch": torch, "checkpoint": checkpoint, "image": make_image(260, 340, seed=9)}
        exec(SAM_HQ_CODE.format(package=package), scope)
        scopes[package] = scope
    theirs, ours = scopes["segment_anything_hq"], scopes["sam_jax.segment_anything_hq"]
    assert isinstance(ours["sam"], sam_jax.Sam) and ours["sam"].config == config.get_config("sam_hq_vit_tiny")
    assert rel_err(ours["features"], theirs["features"]) < PARITY_LIMITS["logit_rel_err"]
    assert rel_err(ours["early"], theirs["early"]) < PARITY_LIMITS["logit_rel_err"]
    for key, result in theirs["results"].items():
        figures = assert_parity(tuple(np.asarray(x) for x in result), ours["results"][key], str(key))
        assert figures["mask_agreement"] > 0.999
    assert type(ours["results"]["boxes"][0]) is torch.Tensor


def test_official_checkpoint_round_trip(hq_tiny, tmp_path):
    """sam_hq_vit_tiny.pth -> sam-jax -> .pth: every tensor bit for bit, loaded strictly by
    segment_anything_hq's own model."""
    from segment_anything_hq import sam_model_registry

    ref, checkpoint = hq_tiny
    params = conversion.convert_checkpoint(checkpoint, tmp_path / "jax")
    assert formats.describe(params.config) == "sam_hq_vit_tiny"
    conversion.export_torch(tmp_path / "jax", tmp_path / "back.pth")
    exported = torch.load(tmp_path / "back.pth", weights_only=True)
    for key, value in ref.state_dict().items():
        if not key.endswith("num_batches_tracked") and "head." not in key:
            assert torch.equal(exported[key], value), key
    sam_model_registry["vit_tiny"]().load_state_dict(exported, strict=True)


def test_a_config_without_early_features_is_one_line():
    no_global = dataclasses.replace(SMALL.image_encoder, global_attn_indexes=())
    with pytest.raises(ValueError, match=r"^invalid SamConfig: a SAM-HQ decoder needs .* no global-attention block"):
        dataclasses.replace(SMALL_HQ, image_encoder=no_global)
    params = sam_jax.modeling.sam.abstract_params(TINY)  # refused before anything runs
    embedding = sam_jax.ImageEmbedding(np.zeros((8, 8, 32), np.float32), (64, 64), (64, 64))
    with pytest.raises(ValueError, match="hq_token_only=True needs a SAM-HQ model"):
        sam_jax.decode(params, embedding, [[10, 10]], hq_token_only=True)


@torch.no_grad()
def test_small_hq_model_through_forward_automatic_masks_and_embeddings(hq_small, tmp_path):
    """`sam(batched_input, ..., hq_token_only)` as the reference's `Sam.forward`; automatic
    masks as its generator's; the embedding job stores the early features, and a decode from
    the file is the decode from `encode`."""
    from segment_anything_hq import SamAutomaticMaskGenerator as HQGenerator
    from segment_anything_hq.utils.transforms import ResizeLongestSide

    ref, params = hq_small
    image = make_image(180, 256, seed=3)
    resized = ResizeLongestSide(params.config.image_size).apply_image(image)
    record = {
        "image": torch.as_tensor(resized).permute(2, 0, 1).contiguous(),
        "original_size": image.shape[:2],
        "point_coords": torch.tensor([[[120.0, 80.0], [30.0, 40.0]]]),
        "point_labels": torch.tensor([[1, 0]]),
        "boxes": torch.tensor([[20.0, 10.0, 200.0, 150.0]]),
    }
    for multimask, hq_token_only in ((True, False), (False, True)):
        theirs = ref([record], multimask_output=multimask, hq_token_only=hq_token_only)[0]
        ours = sam_jax.Sam(params)([record], multimask_output=multimask, hq_token_only=hq_token_only)[0]
        keys = ("masks", "iou_predictions", "low_res_logits")
        assert_parity(tuple(theirs[k].numpy() for k in keys), tuple(ours[k].numpy() for k in keys))

    scene = np.ascontiguousarray(SyntheticShapes(size=256, length=3, seed=4242)[2].image[:, 24:224])
    for multimask in (True, False):  # its best multimask output, or its single one, with the HQ mask
        options = {**RANDOM_RELAXED, "output_mode": "coco_rle"}
        if not multimask:  # few single outputs of this random model pass the filters
            options.update(pred_iou_thresh=0.0, stability_score_thresh=0.0)
        theirs = HQGenerator(ref, **options).generate(scene, multimask_output=multimask)
        generator = sam_jax.SamAutomaticMaskGenerator(params, **options)
        figures = assert_same_records(theirs, generator.generate(scene, multimask_output=multimask), "coco_rle")
        assert figures["ref_masks"] > 0

    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "a.png")
    assert jobs.embed_images(params, tmp_path / "in", tmp_path / "emb", batch_size=1).ok
    stored, direct = sam_jax.load_embedding(tmp_path / "emb" / "a.npz"), sam_jax.encode(params, image)
    assert stored.early_features is not None and rel_err(stored.early_features, direct.early_features) < 1e-5
    prompt = dict(points=[[120, 80]], multimask_output=True, hq_token_only=True)
    np.testing.assert_allclose(
        sam_jax.decode(params, stored, **prompt)[2], sam_jax.decode(params, direct, **prompt)[2], atol=1e-4
    )
    no_early = dataclasses.replace(direct, early_features=None)
    with pytest.raises(ValueError, match=r"needs embedding.early_features of shape \(16, 16, 64\)"):
        sam_jax.decode(params, no_early, [[1, 1]])


def test_the_papers_recipe_trains_only_what_hq_adds():
    """`--freeze all-but-hq`: every SAM weight frozen (training SAM-HQ models runs in
    `test_train.py::test_frozen_parameters_stay_bit_identical`)."""
    weights = sam_jax.modeling.sam.abstract_params(dataclasses.replace(TINY, mask_decoder="hq")).weights
    trainable, frozen = train.partition(weights, ("all-but-hq",))
    hq_parts = {"hf_token", "hf_mlp"} | {
        f"{m}_{i}" for m in ("compress_vit_feat", "embedding_encoder", "embedding_maskfeature") for i in (0, 1, 3)
    }
    assert list(trainable) == ["mask_decoder"] and set(trainable["mask_decoder"]) == hq_parts
    assert set(frozen) == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert not hq_parts & set(frozen["mask_decoder"])
    with pytest.raises(ValueError, match="all-but-hq leaves nothing to train"):
        train.partition(sam_jax.modeling.sam.abstract_params(TINY).weights, ("all-but-hq",))


def test_small_hq_model_through_the_commands(hq_small, tmp_path):
    """`sam-jax convert` of an official-format SAM-HQ file, then `amg` and the page's
    predict endpoint on the converted model (`hq_token_only` both ways): each once, in-process."""
    from pycocotools import mask as mask_utils
    from starlette.testclient import TestClient

    from sam_jax import cli
    from sam_jax.serve import create_app

    ref, params = hq_small
    checkpoint = save_state_dict(ref, tmp_path / "small_hq.pth")
    assert cli.main(["convert", str(checkpoint), str(tmp_path / "model")]) == 0
    assert sam_jax.load(tmp_path / "model").config == SMALL_HQ
    image = make_image(150, 200, seed=4)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "a.png")
    flags = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--no-progress"]
    args = ["amg", "--checkpoint", str(tmp_path / "model"), "--input", str(tmp_path / "in")]
    assert cli.main([*args, "--output", str(tmp_path / "out"), *flags]) == 0
    records = sam_jax.generate_masks(params, image, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    assert len(list((tmp_path / "out" / "a").glob("*.png"))) == len(records) > 0

    png = io.BytesIO()
    Image.fromarray(image).save(png, "PNG")
    with TestClient(create_app(params, model_name="small-hq")) as client:
        uploaded = client.post("/api/images", files={"file": ("a.png", png.getvalue(), "application/octet-stream")})
        image_id = uploaded.json()["image_id"]
        answers = {
            hq_only: client.post(
                f"/api/images/{image_id}/predict", json={"points": [[100, 60]], "labels": [1], "hq_token_only": hq_only}
            )
            for hq_only in (False, True)
        }
    embedding = sam_jax.encode(params, image)
    for hq_only, answer in answers.items():
        assert answer.status_code == 200, answer.text
        masks, scores, _ = sam_jax.decode(params, embedding, [[100, 60]], hq_token_only=hq_only)
        np.testing.assert_allclose(answer.json()["scores"], np.asarray(scores), atol=1e-5)
        got = [mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in answer.json()["masks"]]
        assert (np.stack(got).astype(bool) != np.asarray(masks)).mean() < 1e-3, hq_only
    assert answers[False].json()["masks"] != answers[True].json()["masks"], "hq_token_only changed nothing"
