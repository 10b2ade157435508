"""Research code written for `segment_anything`, run on both packages with only its import
lines changed: direct calls of the three networks with torch tensors (MedSAM's inference),
batched boxes through `predict_torch` with `.to(device)` / `.cpu()` on the results
(Grounded-SAM), `postprocess_masks` of fine-tuning scripts, the reference's module paths, and
`scripts/amg.py`'s output files byte for byte."""

from __future__ import annotations

import csv
import importlib
import io

import numpy as np
import pytest
import torch
from conftest import rel_err
from test_notebooks import register_small

import sam_jax
from sam_jax.compat.arrays import TensorLikeArray
from sam_jax.testing import PARITY_LIMITS, make_image

# MedSAM's `MedSAM_Inference.py`, its model calls as written (the resize to the model's input
# side, `S`, is numpy's here: MedSAM uses skimage, which is not installed).
MEDSAM = """
import torch
import torch.nn.functional as F
from {package} import sam_model_registry

medsam_model = sam_model_registry["small"](checkpoint=checkpoint)
medsam_model = medsam_model.to(device)
medsam_model.eval()
S = medsam_model.image_encoder.img_size
H, W, _ = img_3c.shape
img_S = img_3c[np.linspace(0, H - 1, S).astype(int)][:, np.linspace(0, W - 1, S).astype(int)]
img_S = (img_S - img_S.min()) / np.clip(img_S.max() - img_S.min(), a_min=1e-8, a_max=None)
img_S_tensor = torch.tensor(img_S).float().permute(2, 0, 1).unsqueeze(0).to(device)
box_S = box_np / np.array([W, H, W, H]) * S
with torch.no_grad():
    image_embedding = medsam_model.image_encoder(img_S_tensor)
box_torch = torch.as_tensor(box_S, dtype=torch.float, device=image_embedding.device)
if len(box_torch.shape) == 2:
    box_torch = box_torch[:, None, :]
sparse_embeddings, dense_embeddings = medsam_model.prompt_encoder(points=None, boxes=box_torch, masks=None)
low_res_logits, iou = medsam_model.mask_decoder(
    image_embeddings=image_embedding,
    image_pe=medsam_model.prompt_encoder.get_dense_pe(),
    sparse_prompt_embeddings=sparse_embeddings,
    dense_prompt_embeddings=dense_embeddings,
    multimask_output=False,
)
low_res_pred = torch.sigmoid(low_res_logits)
low_res_pred = F.interpolate(low_res_pred, size=(H, W), mode="bilinear", align_corners=False)
medsam_seg = (low_res_pred.squeeze().cpu().numpy() > 0.5).astype(np.uint8)
# A fine-tuning script's loss input: the decoder's logits back at the image size.
input_size = tuple(img_S_tensor.shape[-2:])
upscaled = medsam_model.postprocess_masks(low_res_logits, input_size, (H, W))
"""

# Grounded-SAM's segmentation step: detector boxes, transformed in torch, a batch of prompts.
GROUNDED_SAM = """
import torch
from {package} import sam_model_registry, SamPredictor

predictor = SamPredictor(sam_model_registry["small"](checkpoint=checkpoint).to(device))
predictor.set_image(image)
boxes_filt = torch.tensor([[20.0, 30.0, 150.0, 110.0], [100.0, 10.0, 300.0, 200.0]])
transformed_boxes = predictor.transform.apply_boxes_torch(boxes_filt, image.shape[:2]).to(device)
masks, scores, _ = predictor.predict_torch(
    point_coords=None, point_labels=None, boxes=transformed_boxes.to(device), multimask_output=False
)
masks_np = masks.cpu().numpy()
embedding = predictor.get_image_embedding().cpu().numpy()
"""


def run_both(code: str, scope: dict, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """`code` run with `segment_anything`'s imports and with `sam_jax`'s, each in a fresh copy
    of `scope`; the two namespaces after."""
    register_small(monkeypatch)
    results = []
    for package in ("segment_anything", "sam_jax"):
        namespace = {"np": np, "device": "cpu", **scope}
        exec(code.format(package=package), namespace)
        results.append(namespace)
    return results[0], results[1]


def test_medsam_style_direct_calls_with_torch_tensors(small, monkeypatch):
    image = make_image(180, 240, seed=2)
    theirs, ours = run_both(
        MEDSAM,
        {"checkpoint": str(small.checkpoint), "img_3c": image, "box_np": np.array([[30, 40, 200, 150]])},
        monkeypatch,
    )
    for name in ("image_embedding", "sparse_embeddings", "dense_embeddings", "low_res_logits", "iou", "upscaled"):
        assert isinstance(ours[name], torch.Tensor), name  # torch in, torch out
        assert ours[name].shape == theirs[name].shape, name
        assert rel_err(ours[name].numpy(), theirs[name].numpy()) < PARITY_LIMITS["logit_rel_err"], name
    assert np.mean(ours["medsam_seg"] == theirs["medsam_seg"]) >= PARITY_LIMITS["mask_agreement"]
    assert ours["medsam_seg"].any()


def test_grounded_sam_style_batched_boxes_with_device_calls(small, monkeypatch):
    theirs, ours = run_both(
        GROUNDED_SAM, {"checkpoint": str(small.checkpoint), "image": make_image(220, 330, seed=4)}, monkeypatch
    )
    assert isinstance(ours["transformed_boxes"], torch.Tensor) and isinstance(ours["masks"], torch.Tensor)
    np.testing.assert_array_equal(ours["transformed_boxes"].numpy(), theirs["transformed_boxes"].numpy())
    assert ours["masks_np"].shape == theirs["masks_np"].shape == (2, 1, 220, 330)
    assert np.mean(ours["masks_np"] == theirs["masks_np"]) >= PARITY_LIMITS["mask_agreement"]
    np.testing.assert_allclose(ours["scores"].numpy(), theirs["scores"].numpy(), atol=PARITY_LIMITS["score_abs_err"])
    assert rel_err(ours["embedding"], theirs["embedding"]) < PARITY_LIMITS["logit_rel_err"]


def test_results_come_back_as_the_kind_given(small):
    sam = sam_jax.Sam(small.params)
    x = np.zeros((1, 3, 256, 256), np.float32)
    assert isinstance(sam.image_encoder(x), TensorLikeArray)
    assert isinstance(sam.image_encoder(torch.as_tensor(x)), torch.Tensor)
    import jax

    assert isinstance(sam.image_encoder(jax.numpy.asarray(x)), jax.Array)
    embedding = sam.image_encoder(x)
    assert embedding.cpu().numpy().shape == (1, 32, 16, 16) and type(embedding.numpy()) is np.ndarray
    predictor = sam_jax.SamPredictor(sam)
    predictor.set_image(make_image(64, 96))
    assert isinstance(predictor.get_image_embedding(), TensorLikeArray)  # a numpy image was set
    assert tuple(sam.pixel_mean.shape) == (3, 1, 1) and tuple(sam.pixel_std.shape) == (3, 1, 1)
    reference_state = small.ref.state_dict()
    state = sam.state_dict()
    assert set(state) == set(reference_state) and all(torch.equal(state[k], reference_state[k]) for k in state)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda sam: sam.image_encoder(np.zeros((1, 256, 256, 3), np.float32)), "x must have shape (B, 3, 256, 256)"),
        (lambda sam: sam.prompt_encoder(boxes=np.zeros((2, 2, 4))), "boxes must have shape (B, 4) or (B, 1, 4)"),
        (lambda sam: sam.prompt_encoder(points=np.zeros((1, 2, 2))), "points must be a pair (coords (B, N, 2)"),
        (
            lambda sam: sam.mask_decoder(
                np.zeros((1, 16, 16, 32)),
                np.zeros((1, 32, 16, 16)),
                np.zeros((1, 2, 32)),
                np.zeros((1, 32, 16, 16)),
                False,
            ),
            "image_embeddings must have shape (B, 32, 16, 16)",
        ),
        (lambda sam: sam.postprocess_masks(np.zeros((1, 3, 64)), (10, 10), (20, 20)), "masks must have shape"),
        (lambda sam: sam.parameters(), "sam-jax models are trained with JAX, not torch optimisers"),
        (lambda sam: sam.train(), "sam-jax finetune"),
    ],
)
def test_a_wrong_layout_is_one_line_naming_it(small, call, needle):
    with pytest.raises((ValueError, TypeError, NotImplementedError)) as e:
        call(sam_jax.Sam(small.params))
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)


@pytest.mark.parametrize(
    "module",
    [
        "build_sam",
        "predictor",
        "automatic_mask_generator",
        "modeling",
        "utils.transforms",
        "utils.amg",
    ],
)
def test_the_reference_module_tree(module):
    ours = importlib.import_module(f"sam_jax.segment_anything.{module}")
    theirs = importlib.import_module(f"segment_anything.{module}")
    wanted = {
        "build_sam": ["build_sam", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l", "sam_model_registry"],
        "predictor": ["SamPredictor"],
        "automatic_mask_generator": ["SamAutomaticMaskGenerator"],
        "modeling": ["Sam"],
        "utils.transforms": ["ResizeLongestSide"],
        "utils.amg": [
            n
            for n in dir(theirs)
            if not n.startswith("_")
            and callable(getattr(theirs, n))
            and getattr(getattr(theirs, n), "__module__", "") == theirs.__name__
            and n != "MaskData"
        ],
    }[module]
    assert wanted and all(hasattr(ours, name) for name in wanted), [n for n in wanted if not hasattr(ours, n)]


def test_amg_helpers_match_the_reference():
    from segment_anything.utils import amg as theirs

    from sam_jax.segment_anything.utils import amg as ours

    rng = np.random.default_rng(0)
    masks = torch.as_tensor(rng.random((2, 3, 20, 30)) > 0.7)
    masks[0, 1] = False  # an empty mask: a zero box
    assert torch.equal(ours.batched_mask_to_box(masks), theirs.batched_mask_to_box(masks))
    logits = torch.as_tensor(rng.normal(0, 3, (4, 20, 30)).astype(np.float32))
    np.testing.assert_allclose(
        ours.calculate_stability_score(logits, 0.0, 1.0).numpy(), theirs.calculate_stability_score(logits, 0.0, 1.0)
    )
    assert ours.mask_to_rle_pytorch(masks[1]) == theirs.mask_to_rle_pytorch(masks[1])
    assert ours.generate_crop_boxes((534, 800), 1, 512 / 1500) == theirs.generate_crop_boxes((534, 800), 1, 512 / 1500)
    grids = zip(ours.build_all_layer_point_grids(8, 1, 2), theirs.build_all_layer_point_grids(8, 1, 2), strict=True)
    assert all(np.array_equal(a, b) for a, b in grids)
    boxes = torch.tensor([[0.0, 2.0, 10.0, 12.0], [5.0, 5.0, 30.0, 40.0]])
    assert torch.equal(
        ours.is_box_near_crop_edge(boxes, [0, 0, 30, 40], [0, 0, 60, 80]),
        theirs.is_box_near_crop_edge(boxes, [0, 0, 30, 40], [0, 0, 60, 80]),
    )
    assert list(ours.batch_iterator(2, [1, 2, 3], "abc")) == list(theirs.batch_iterator(2, [1, 2, 3], "abc"))


def write_masks_to_folder(masks: list, path) -> None:
    """`scripts/amg.py`'s writer, as the reference wrote it (the script is not installed)."""
    import cv2

    header = (
        "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,"
        "predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
    )
    metadata = [header]
    for i, mask_data in enumerate(masks):
        cv2.imwrite(str(path / f"{i}.png"), mask_data["segmentation"] * 255)
        row = [
            str(i),
            str(mask_data["area"]),
            *[str(x) for x in mask_data["bbox"]],
            *[str(x) for x in mask_data["point_coords"][0]],
            str(mask_data["predicted_iou"]),
            str(mask_data["stability_score"]),
            *[str(x) for x in mask_data["crop_box"]],
        ]
        metadata.append(",".join(row))
    (path / "metadata.csv").write_text("\n".join(metadata))


@pytest.fixture(scope="module")
def tiny_shapes_files(tmp_path_factory):
    """tiny-shapes exported to the reference, and the sample scene as a file."""
    from sam_jax import conversion
    from sam_jax.demo import ASSETS
    from sam_jax.testing import build_reference

    folder = tmp_path_factory.mktemp("tiny-shapes")
    conversion.export_torch("tiny-shapes", folder / "tiny-shapes.pth")
    ref = build_reference(sam_jax.get_config("tiny-shapes"))
    ref.load_state_dict(torch.load(folder / "tiny-shapes.pth", weights_only=True), strict=True)
    return ref.eval(), ASSETS / "sample.png"


def test_amg_cli_files_are_the_reference_scripts_with_crops(tiny_shapes_files, tmp_path):
    """`sam-jax amg` and `scripts/amg.py` on the same weights and image, with a crop layer and
    thresholds of 0 and below (the reference's "no filter"): the same header and fields, every
    number written as the reference writes it (float crop boxes with crops), and the same
    bytes for every mask the two generators agree on (the scores differ in their last digits,
    so metadata.csv cannot be byte for byte)."""
    import cv2
    from segment_anything import SamAutomaticMaskGenerator

    from sam_jax import cli

    ref_model, image_path = tiny_shapes_files
    image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    options = dict(points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0, crop_n_layers=1)
    (tmp_path / "ref").mkdir()
    write_masks_to_folder(SamAutomaticMaskGenerator(ref_model, **options).generate(image), tmp_path / "ref")
    flags = ["--points-per-side", "4", "--pred-iou-thresh", "-1", "--stability-score-thresh", "0"]
    args = ["amg", "--checkpoint", "tiny-shapes", "--input", str(image_path), "--output", str(tmp_path / "ours")]
    assert cli.main([*args, *flags, "--crop-n-layers", "1", "--no-progress"]) == 0
    ours_dir = tmp_path / "ours" / image_path.stem
    theirs_rows = list(csv.reader(io.StringIO((tmp_path / "ref" / "metadata.csv").read_text())))
    ours_rows = list(csv.reader(io.StringIO((ours_dir / "metadata.csv").read_text())))
    assert ours_rows[0] == theirs_rows[0] and len(ours_rows) == len(theirs_rows) > 2
    same = 0
    for i, (a, b) in enumerate(zip(ours_rows[1:], theirs_rows[1:], strict=True)):
        assert a[10:] == b[10:]  # crop boxes, as the reference formats them
        assert [x.count(".") for x in a] == [x.count(".") for x in b]  # ints stay ints, floats floats
        assert a[6:8] == b[6:8]  # the grid point that made the mask
        if a[:6] == b[:6]:  # the same mask's area and box: the same PNG file and predicted IoU
            assert (ours_dir / f"{i}.png").read_bytes() == (tmp_path / "ref" / f"{i}.png").read_bytes()
            assert abs(float(a[8]) - float(b[8])) <= 1e-3
            # Unfiltered masks of stability ~0.1: one pixel of a +-1 logit mask moves it by ~1e-3.
            assert a[9] == b[9] == "nan" or abs(float(a[9]) - float(b[9])) <= 1e-2  # nan: both masks empty
            same += 1
    assert same >= len(ours_rows) // 2, (same, len(ours_rows))


def test_crop_boxes_are_floats_where_the_references_are(small):
    """The reference's crop boxes turn float when a crop yields no mask (its empty tensor is
    float); its records and CSV show `0.0`. The same image and options on both sides."""
    from segment_anything import SamAutomaticMaskGenerator

    image = make_image(120, 160)
    options = dict(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, crop_n_layers=1)
    theirs = SamAutomaticMaskGenerator(small.ref, **options).generate(image)
    ours = sam_jax.generate_masks(small.params, image, **options)
    assert theirs and ours
    assert {type(x) for r in theirs for x in r["crop_box"]} == {type(x) for r in ours for x in r["crop_box"]} == {float}
