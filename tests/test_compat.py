"""The reference's classes (`sam_jax.compat`) against the installed `segment_anything`:
`sam_model_registry`, `Sam`, `SamPredictor`, `ResizeLongestSide`, the automatic mask
generator's reference signature, and `sam_jax.forward` on images of different sizes."""

from __future__ import annotations

import importlib.util
import inspect

import cv2
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_parity, rel_err
from segment_anything import SamAutomaticMaskGenerator as ReferenceGenerator
from segment_anything import SamPredictor as ReferencePredictor
from segment_anything import sam_model_registry as reference_registry
from segment_anything.utils.transforms import ResizeLongestSide as ReferenceResize
from test_amg import RANDOM_RELAXED, assert_same_records

import sam_jax
from sam_jax import cli, conversion, end_to_end, formats
from sam_jax.cli.convert import main as convert_main
from sam_jax.compat import Sam, SamPredictor, build_sam
from sam_jax.config import MODEL_REGISTRY
from sam_jax.testing import SMALL, TINY, make_image


@pytest.fixture(scope="module")
def sam(small) -> Sam:
    """The small model through the registry's path for an official `.pth` (converted in memory)."""
    return build_sam(SMALL, small.checkpoint)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_image(120, 180, seed=3)


@pytest.fixture(scope="module")
def predictors(small, sam, image):
    """The reference's and our predictor, the same image set on both."""
    ref = ReferencePredictor(small.ref)
    ref.set_image(image)
    ours = SamPredictor(sam)
    ours.set_image(image)
    return ref, ours


@pytest.fixture
def encoder_calls(monkeypatch):
    """The batch sizes `encode_padded` runs on (the real function, counted)."""
    calls: list[int] = []
    original = end_to_end.encode_padded

    def counted(params, images, input_hw):
        calls.append(len(images))
        return original(params, images, input_hw)

    monkeypatch.setattr(end_to_end, "encode_padded", counted)
    return calls


def same_weights(a: sam_jax.SamParams, b: sam_jax.SamParams) -> bool:
    leaves_a, tree_a = jax.tree.flatten(a.weights)
    leaves_b, tree_b = jax.tree.flatten(b.weights)
    return tree_a == tree_b and all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))


# ----------------------------------------------------------------------------- registry and model


def test_registry_has_the_references_names_and_loads_every_checkpoint_kind(small, sam, tmp_path):
    from mobile_sam import sam_model_registry as mobile_sam_registry

    # The reference's names and MobileSAM's (its "vit_t"), then sam-jax's own models by name.
    own = {"lite_medsam", "medsam", "tiny-shapes", "sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny"}
    assert set(sam_jax.sam_model_registry) == {*reference_registry, *mobile_sam_registry, *own}
    assert sam_jax.sam_model_registry["default"] is sam_jax.sam_model_registry["vit_h"]
    assert same_weights(sam.params, small.params) and sam.config == SMALL  # official .pth, in memory
    assert same_weights(build_sam(SMALL, small.directory).params, small.params)  # sam_jax checkpoint folder
    conversion.export_hf_checkpoint(small.directory, tmp_path / "hf")
    assert same_weights(build_sam(SMALL, tmp_path / "hf").params, small.params)  # transformers folder
    embedded = build_sam("tiny-shapes", "tiny-shapes")
    assert same_weights(embedded.params, sam_jax.load("tiny-shapes"))
    assert isinstance(embedded.params.weights["mask_decoder"]["iou_token"]["embedding"], jax.Array)


def test_no_checkpoint_gives_the_initialisation(monkeypatch):
    """`sam_jax.init` (the reference's zero pos_embed and rel_pos), watched rather than run twice:
    each init compiles for seconds."""
    from sam_jax.compat import registry

    made = []
    init = registry.init
    monkeypatch.setattr(registry, "init", lambda config, seed=0: made.append(init(config, seed)) or made[-1])
    model = build_sam(TINY)
    assert len(made) == 1 and model.params is made[0] and model.config == TINY
    assert not np.any(model.params.weights["image_encoder"]["pos_embed"])


def test_model_exposes_what_user_code_reads(small, sam):
    assert sam.image_encoder.img_size == small.ref.image_encoder.img_size == 256
    assert sam.mask_threshold == small.ref.mask_threshold and sam.image_format == small.ref.image_format
    assert sam.to(device="cuda") is sam and sam.to("cpu") is sam and sam.eval() is sam
    assert sam.device == torch.device("cpu") and isinstance(sam.jax_device, jax.Device)
    assert isinstance(sam.params, sam_jax.SamParams)


def test_registry_refuses_in_one_line(small, monkeypatch):
    with pytest.raises(ValueError, match=r"holds a custom .* model, not vit_b") as e:
        sam_jax.sam_model_registry["vit_b"](checkpoint=small.checkpoint)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="holds a tiny-shapes model, not vit_h"):
        sam_jax.sam_model_registry["default"](checkpoint="tiny-shapes")
    with pytest.raises(TypeError, match="checkpoint must be a file or folder path"):
        sam_jax.sam_model_registry["vit_b"](checkpoint=123)
    with pytest.raises(FileNotFoundError):
        sam_jax.sam_model_registry["vit_b"](checkpoint="/no/such/checkpoint")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a))
    with pytest.raises(
        ImportError, match=r"torch is not installed: .* convert it once elsewhere with `sam-jax convert .*small\.pth"
    ):
        build_sam(SMALL, small.checkpoint)


# ----------------------------------------------------------------------------- SamPredictor


def predict_cases(h: int, w: int, low_res: np.ndarray) -> dict[str, tuple[dict, dict]]:
    """(reference arguments, our arguments) per input form; ours may be lists or tensors
    where the reference takes numpy only."""
    pts = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.6 * h]])
    box = np.array([0.1 * w, 0.15 * h, 0.8 * w, 0.9 * h])
    one = {"point_coords": pts[:1], "point_labels": np.array([1])}
    cases = {
        "one-point": (one, one),
        "one-point-as-lists": (one, {"point_coords": pts[:1].tolist(), "point_labels": [1]}),
        "labels-default-to-foreground": (one, {"point_coords": pts[:1]}),
        "points-fg-bg-single": (
            {"point_coords": pts, "point_labels": np.array([1, 0]), "multimask_output": False},
            {"point_coords": torch.as_tensor(pts), "point_labels": torch.tensor([1, 0]), "multimask_output": False},
        ),
        "box-(4,)": ({"box": box}, {"box": box}),
        "box-(1, 4)": ({"box": box[None]}, {"box": box[None]}),
        "points+box": ({**one, "box": box[None], "multimask_output": False},) * 2,
        "mask_input+points": ({**one, "mask_input": low_res[None], "multimask_output": False},) * 2,
        "return_logits": ({"box": box, "return_logits": True},) * 2,
    }
    return cases


def test_predict_every_input_form(predictors, image):
    ref, ours = predictors
    low_res = ref.predict(point_coords=np.array([[40.0, 50.0]]), point_labels=np.array([1]))[2][0]
    for name, (ref_kwargs, our_kwargs) in predict_cases(*image.shape[:2], low_res).items():
        expected = ref.predict(**ref_kwargs)
        got = ours.predict(**our_kwargs)
        assert all(isinstance(x, np.ndarray) for x in got), name
        assert [(x.shape, x.dtype) for x in got] == [(x.shape, x.dtype) for x in expected], name
        assert_parity(expected, got, name)


def test_predict_torch_batched_prompts_in_the_resized_frame(predictors, image):
    ref, ours = predictors
    h, w = image.shape[:2]
    pts = torch.tensor([[[0.3 * w, 0.4 * h], [0.6 * w, 0.5 * h]], [[0.5 * w, 0.2 * h], [0.1 * w, 0.9 * h]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    boxes = torch.tensor([[0.1 * w, 0.15 * h, 0.8 * w, 0.9 * h], [0.5 * w, 0.1 * h, 0.9 * w, 0.5 * h]])
    t_pts = ref.transform.apply_coords_torch(pts, (h, w))
    t_boxes = ref.transform.apply_boxes_torch(boxes, (h, w))
    low_res = ref.predict_torch(t_pts, labels)[2][:, :1]
    cases = {
        "points": ((t_pts, labels), {}),
        "boxes": ((None, None), {"boxes": t_boxes, "multimask_output": False}),
        "points+boxes+mask_input": ((t_pts, labels), {"boxes": t_boxes, "mask_input": low_res}),
        "logits": ((None, None), {"boxes": t_boxes, "return_logits": True}),
    }
    for name, (args, kwargs) in cases.items():
        expected = [x.numpy() for x in ref.predict_torch(*args, **kwargs)]
        got = ours.predict_torch(*args, **kwargs)  # torch tensors in, torch tensors out
        assert all(isinstance(x, torch.Tensor) for x in got), name
        assert_parity(expected, [x.numpy() for x in got], name)
    # Numpy and jax arrays in, from our own transform: the same results, of the kind given.
    as_numpy = ours.transform.apply_coords_torch(pts.numpy(), (h, w))
    assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, t_pts.numpy())
    as_jax = ours.transform.apply_coords_torch(jax.numpy.asarray(pts.numpy()), (h, w))
    assert isinstance(as_jax, jax.Array) and np.array_equal(as_jax, t_pts.numpy())
    again = ours.predict_torch(as_jax, jax.numpy.asarray(labels.numpy()))
    assert all(isinstance(x, jax.Array) for x in again)
    assert_parity([x.numpy() for x in ours.predict_torch(t_pts, labels)], again, "jax in")
    numpy_out = ours.predict_torch(as_numpy, labels.numpy())
    assert all(isinstance(x, np.ndarray) for x in numpy_out)
    assert_parity(again, numpy_out, "numpy in")


def test_set_image_bgr_set_torch_image_embedding_and_reset(small, sam, predictors, image):
    ref, ours = predictors
    assert ours.is_image_set and ours.original_size == ref.original_size and ours.input_size == ref.input_size
    assert ours.get_image_embedding().shape == tuple(ref.get_image_embedding().shape) == (1, 32, 16, 16)
    assert np.array_equal(ours.features, ours.get_image_embedding())  # the same values, as numpy (numpy image set)
    assert isinstance(ours.get_image_embedding(), np.ndarray) and ours.get_image_embedding().cpu() is not None
    assert rel_err(ours.get_image_embedding(), ref.get_image_embedding().numpy()) < 1e-3
    assert ours.transform.target_length == 256 and ours.model is sam and ours.device == sam.device

    bgr = SamPredictor(sam)
    bgr.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    assert np.array_equal(bgr.get_image_embedding(), ours.get_image_embedding())

    # set_torch_image: the reference's own preparation (a torch uint8 tensor, (1, 3, h, w)).
    prepared = torch.as_tensor(ref.transform.apply_image(image)).permute(2, 0, 1).contiguous()[None]
    torch_set = SamPredictor(sam)
    torch_set.set_torch_image(prepared, image.shape[:2])
    assert torch_set.original_size == ref.original_size and torch_set.input_size == ref.input_size
    assert np.array_equal(torch_set.get_image_embedding(), ours.get_image_embedding())
    box = np.array([10, 20, 150, 100])
    assert_parity(ref.predict(box=box), torch_set.predict(box=box), "after set_torch_image")

    torch_set.reset_image()
    assert not torch_set.is_image_set and torch_set.features is None and torch_set.original_size is None
    with pytest.raises(RuntimeError, match=r"An image must be set with \.set_image\(\.\.\.\) before mask prediction"):
        torch_set.predict(box=box)
    with pytest.raises(RuntimeError, match="to generate an embedding"):
        torch_set.get_image_embedding()
    with pytest.raises(RuntimeError, match="An image must be set"):
        SamPredictor(small.params).predict_torch(None, None, boxes=np.zeros((1, 4)))


BAD_PREDICT = [
    ({"point_coords": np.zeros((1, 3)), "point_labels": [1]}, ValueError, "point_coords must have shape"),
    ({"point_coords": [[1, 2]], "point_labels": [1, 1]}, ValueError, "point_labels must have shape"),
    ({"point_coords": [[1, 2]], "point_labels": [5]}, ValueError, "point_labels must be "),
    ({"point_labels": [1]}, ValueError, "point_labels were given without point_coords"),
    ({"point_coords": [[np.nan, 2]]}, ValueError, "point_coords must be finite"),
    ({"point_coords": "a"}, TypeError, "point_coords must be an array of numbers"),
    ({"box": [1, 2, 3]}, ValueError, "box must be 4 numbers"),
    ({"box": np.zeros((2, 4))}, ValueError, "predict takes one prompt set.*predict_torch"),
    ({"point_coords": np.zeros((2, 1, 2))}, ValueError, "predict takes one prompt set"),
    ({"mask_input": np.zeros((64, 64))}, ValueError, r"mask_input must have shape \(1, 64, 64\)"),
    ({}, ValueError, "no prompt given"),
    ({"box": [1, 2, 3, 4], "multimask_output": "yes"}, TypeError, "multimask_output"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_PREDICT, ids=[m for _, _, m in BAD_PREDICT])
def test_predict_refuses_bad_prompts_naming_the_argument(predictors, kwargs, error, match):
    with pytest.raises(error, match=match) as e:
        predictors[1].predict(**kwargs)
    assert "\n" not in str(e.value)


def test_other_methods_refuse_bad_input_in_one_line(predictors, sam, image):
    ours = predictors[1]
    cases = [
        (lambda: ours.predict_torch(np.zeros((1, 2)), np.ones(1)), ValueError, "predict_torch takes batched prompts"),
        (lambda: ours.predict_torch(None, None, boxes=np.zeros((1, 3))), ValueError, "boxes must be 4 numbers"),
        (lambda: SamPredictor(sam).set_image(image, "BRG"), ValueError, "image_format must be 'RGB' or 'BGR'"),
        (lambda: SamPredictor(sam).set_image(image[..., 0]), ValueError, r"image must have shape \(H, W, 3\)"),
        (lambda: SamPredictor(sam).set_image(image.astype(float)), TypeError, "image must be a uint8"),
        (
            lambda: SamPredictor(sam).set_torch_image(np.zeros((1, 3, 100, 200), np.uint8), (10, 20)),
            ValueError,
            r"transformed_image must have shape \(1, 3, h, w\) with longest side 256",
        ),
        (
            lambda: SamPredictor(sam).set_torch_image(np.zeros((1, 3, 100, 256), np.uint8), (0, 20)),
            ValueError,
            "original_image_size must be the image size",
        ),
        (lambda: SamPredictor("sam"), TypeError, "sam_model must be a Sam"),
        (lambda: ours.transform.apply_coords(np.zeros((3, 3)), (10, 10)), ValueError, "coords must have shape"),
        (lambda: ours.transform.apply_boxes_torch([[1, 2]], (10, 10)), ValueError, "boxes must have shape"),
        (lambda: ours.transform.apply_coords([[1, 2]], (10,)), TypeError, "original_size must be the image size"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match) as e:
            call()
        assert "\n" not in str(e.value), match


# ----------------------------------------------------------------------------- ResizeLongestSide


def test_resize_longest_side_matches_the_reference():
    ref, ours = ReferenceResize(256), sam_jax.ResizeLongestSide(256)
    for h, w in [(120, 180), (300, 97), (64, 64)]:  # shrinking, both axes, growing
        image = make_image(h, w, seed=h)
        assert np.array_equal(ours.apply_image(image), ref.apply_image(image))
        assert ours.get_preprocess_shape(h, w, 256) == ref.get_preprocess_shape(h, w, 256)
        coords = np.random.default_rng(h).uniform(0, max(h, w), (3, 4, 2))
        for got, want in [
            (ours.apply_coords(coords, (h, w)), ref.apply_coords(coords, (h, w))),
            (ours.apply_coords(coords.astype(np.int64), (h, w)), ref.apply_coords(coords.astype(np.int64), (h, w))),
            (ours.apply_boxes(coords[0, :2].reshape(-1), (h, w)), ref.apply_boxes(coords[0, :2].reshape(-1), (h, w))),
            (ours.apply_boxes(coords.reshape(-1, 4), (h, w)), ref.apply_boxes(coords.reshape(-1, 4), (h, w))),
        ]:
            assert isinstance(got, np.ndarray) and got.shape == want.shape and got.dtype == want.dtype
            assert np.array_equal(got, want)
        tensor = torch.as_tensor(coords, dtype=torch.float64)
        for got, want in [
            (ours.apply_coords_torch(tensor, (h, w)), ref.apply_coords_torch(tensor, (h, w))),
            (
                ours.apply_boxes_torch(tensor.reshape(-1, 4), (h, w)),
                ref.apply_boxes_torch(tensor.reshape(-1, 4), (h, w)),
            ),
            (
                ours.apply_boxes_torch(tensor[0, 0, :].repeat(2), (h, w)),
                ref.apply_boxes_torch(tensor[0, 0].repeat(2), (h, w)),
            ),
        ]:
            assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == want.shape
            assert torch.equal(got, want)  # float32 arithmetic, bit for bit; torch in, torch out


def test_apply_image_torch_resizes_by_the_last_two_axes():
    """Where the reference's size (computed from the B and C axes) agrees with the image's own,
    the same antialiased resize; elsewhere torch's resize to the image's own longest side."""
    ref, ours = ReferenceResize(256), sam_jax.ResizeLongestSide(256)
    rng = np.random.default_rng(0)
    aligned = torch.as_tensor(rng.uniform(0, 255, (2, 3, 200, 300)).astype(np.float32))  # 2:3 as 200:300
    want = ref.apply_image_torch(aligned).numpy()
    got = ours.apply_image_torch(aligned)
    assert got.shape == want.shape == (2, 3, 171, 256) and float(np.abs(got - want).max()) < 1e-2
    tall = torch.as_tensor(rng.uniform(0, 255, (1, 3, 300, 200)).astype(np.float32))
    want = F.interpolate(tall, (256, 171), mode="bilinear", align_corners=False, antialias=True).numpy()
    got = ours.apply_image_torch(tall)
    assert got.shape == (1, 3, 256, 171) and float(np.abs(got - want).max()) < 1e-2


# ----------------------------------------------------------------------------- sam(batched_input) and forward


def batched_input(transform, images: list[np.ndarray], low_res: torch.Tensor) -> list[dict]:
    """Three records in the reference's format, each with other prompt kinds and counts."""
    records = []
    for image in images:
        prepared = torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1).contiguous()
        records.append({"image": prepared, "original_size": image.shape[:2]})
    (h0, w0), (h1, w1), (h2, w2) = (im.shape[:2] for im in images)
    pts = (
        torch.tensor([[[0.3 * w0, 0.4 * h0], [0.7 * w0, 0.6 * h0]]] * 3) * torch.tensor([1.0, 0.9, 0.8])[:, None, None]
    )
    records[0] |= {
        "point_coords": transform.apply_coords_torch(pts, (h0, w0)),
        "point_labels": torch.tensor([[1, 0]] * 3),
    }
    boxes = torch.tensor([[0.1 * w1, 0.1 * h1, 0.6 * w1, 0.8 * h1], [0.4 * w1, 0.2 * h1, 0.9 * w1, 0.9 * h1]])
    records[1] |= {"boxes": transform.apply_boxes_torch(boxes, (h1, w1))}
    records[2] |= {
        "point_coords": transform.apply_coords_torch(torch.tensor([[[0.5 * w2, 0.5 * h2]]]), (h2, w2)),
        "point_labels": torch.tensor([[0]]),
        "boxes": transform.apply_boxes_torch(torch.tensor([[0.2 * w2, 0.2 * h2, 0.8 * w2, 0.7 * h2]]), (h2, w2)),
        "mask_inputs": low_res,
    }
    return records


def assert_batched_parity(ref_outputs: list[dict], our_outputs: list[dict]) -> list[dict[str, float]]:
    """`assert_parity` per image; returns the figures."""
    assert len(our_outputs) == len(ref_outputs)
    keys = ("masks", "iou_predictions", "low_res_logits")
    figures = []
    for i, (r, o) in enumerate(zip(ref_outputs, our_outputs, strict=True)):
        assert list(o) == list(keys) == list(r)
        figures.append(assert_parity(tuple(r[k].numpy() for k in keys), tuple(o[k] for k in keys), f"image {i}"))
    return figures


def test_model_call_three_images_of_different_sizes(small, sam, encoder_calls):
    images = [make_image(120, 180, 0), make_image(200, 90, 1), make_image(64, 64, 2)]
    low_res = torch.as_tensor(np.random.default_rng(0).normal(0, 3, (1, 1, 64, 64)).astype(np.float32))
    records = batched_input(ReferenceResize(256), images, low_res)
    # multimask_output=False: the predictor notebook's batched cell (tests/test_notebooks.py).
    expected = small.ref(records, multimask_output=True)
    got = sam(records, multimask_output=True)
    assert [tuple(o["masks"].shape) for o in got] == [tuple(o["masks"].shape) for o in expected]
    assert [tuple(o["masks"].shape) for o in got] == [(3, 3, 120, 180), (2, 3, 200, 90), (1, 3, 64, 64)]
    assert_batched_parity(expected, got)
    assert encoder_calls == [3]  # all images in one encoder call


def test_forward_on_raw_images_equals_predict(small, encoder_calls):
    params = small.params
    images = [make_image(150, 100, 4), make_image(90, 220, 5), make_image(256, 256, 6)]
    records = [
        {"image": images[0], "point_coords": [[30, 40], [60, 100]], "point_labels": [1, 0]},
        {"image": images[1], "boxes": [[10, 10, 200, 80], [50, 5, 120, 60]]},
        {"image": images[2], "point_coords": [[[128, 128]]], "boxes": [[20, 30, 200, 220]]},
    ]
    got = sam_jax.forward(params, records, multimask_output=True)
    assert encoder_calls == [3]
    arguments = [
        ([[30, 40], [60, 100]], [1, 0], None),
        (None, None, [[10, 10, 200, 80], [50, 5, 120, 60]]),
        ([[[128, 128]]], None, [[20, 30, 200, 220]]),
    ]
    for image, out, (points, labels, box) in zip(images, got, arguments, strict=True):
        want = sam_jax.predict(params, image, points, labels, box=box)
        assert out["masks"].shape == want[0].shape
        assert_parity(want, (out["masks"], out["iou_predictions"], out["low_res_logits"]))


def test_model_call_and_forward_refuse_bad_records_before_encoding(sam, small, encoder_calls):
    image = torch.zeros(3, 256, 170, dtype=torch.uint8)
    good = {"image": image, "original_size": (300, 200), "boxes": torch.zeros(1, 4)}
    cases = [
        (lambda: sam("records", True), TypeError, "batched_input must be a list of dicts"),
        (lambda: sam([], True), ValueError, "at least one image record"),
        (lambda: sam([good, {"original_size": (3, 3)}], True), ValueError, r"batched_input\[1\] has no 'image'"),
        (lambda: sam([{**good, "original_size": None}], True), TypeError, r"\['original_size'\] must be the image"),
        (
            lambda: sam([{k: v for k, v in good.items() if k != "original_size"}], True),
            ValueError,
            "no 'original_size'",
        ),
        (lambda: sam([{**good, "image": torch.zeros(3, 300, 170)}], True), ValueError, "at most 256"),
        (lambda: sam([{**good, "image": torch.zeros(256, 170, 3)}], True), ValueError, r"must have shape \(3, h, w\)"),
        (lambda: sam([{**good, "boxes": torch.zeros(4)}], True), ValueError, r"batched_input\[0\]: prompts must be"),
        (lambda: sam([good, {**good, "boxes": torch.zeros(1, 5)}], True), ValueError, r"\[1\]: boxes must be 4"),
        (lambda: sam([good], "no"), TypeError, "multimask_output"),
        (lambda: sam_jax.forward(small.params, [{"image": np.zeros((9, 9), np.uint8)}]), ValueError, r"records\[0\]"),
        (
            lambda: sam_jax.forward(small.params, [{"image": np.zeros((9, 9, 3), np.uint8), "point_labels": [1]}]),
            ValueError,
            r"records\[0\]: point_labels were given without point_coords",
        ),
        (lambda: sam_jax.forward(small.params, {"image": 1}), TypeError, "records must be a list of dicts"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match) as e:
            call()
        assert "\n" not in str(e.value), match
    assert encoder_calls == []
    with pytest.raises(ValueError, match=r"sam_jax\.forward runs them together"):
        sam_jax.encode(small.params, [make_image(20, 30), make_image(30, 20)])


# ----------------------------------------------------------------------------- automatic masks and CLIs


def test_mask_generator_takes_the_model_and_the_references_positional_options(small, sam):
    reference_order = list(inspect.signature(ReferenceGenerator.__init__).parameters)[2:]
    ours = sam_jax.SamAutomaticMaskGenerator(sam, 8, 64, 0.3, 0.6, 0.05, 1.0)
    assert [f for f in ours.options.__dataclass_fields__] == reference_order
    by_name = {k: RANDOM_RELAXED[k] for k in reference_order if k in RANDOM_RELAXED}
    assert ours.options == sam_jax.AmgOptions(**by_name, points_per_batch=64)
    assert isinstance(ours.predictor, SamPredictor) and ours.predictor.model is sam and ours.params is sam.params
    keyword = sam_jax.SamAutomaticMaskGenerator(model=sam, **by_name)
    from_params = sam_jax.SamAutomaticMaskGenerator(small.params, **by_name)
    image = make_image(100, 140, 7)
    expected = ReferenceGenerator(small.ref, 8, 64, 0.3, 0.6, 0.05, 1.0).generate(image)
    for generator in (ours, keyword, from_params):
        assert_same_records(expected, generator.generate(image), "binary_mask")
    assert len(expected) >= 1
    for args, kwargs, match in [
        ((sam, 8), {"points_per_side": 8}, "points_per_side given by position and by name"),
        ((sam, *range(14)), {}, "at most 13 options by position"),
        ((), {}, "give the model once"),
        ((sam,), {"params": small.params}, "give the model once"),
        (("sam",), {}, "model must be a sam_jax.Sam"),
    ]:
        with pytest.raises(TypeError, match=match):
            sam_jax.SamAutomaticMaskGenerator(*args, **kwargs)


def test_model_type_default_in_every_cli(small, tmp_path, capsys):
    assert sam_jax.get_config("default") == MODEL_REGISTRY["vit_h"] and "default" in formats.MODEL_TYPES
    # `python -m convert --model-type default` means vit_h: the small model's tensors do not fit it.
    assert convert_main([str(small.checkpoint), str(tmp_path / "out"), "--model-type", "default"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image_encoder." in err and "unknown model type" not in err
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), make_image(40, 60))
    args = ["amg", "--checkpoint", "tiny-shapes", "--input", str(folder), "--output", str(tmp_path / "o")]
    assert cli.main([*args, "--model-type", "default"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "sam-jax: error: --checkpoint 'tiny-shapes' is not a default model", err
