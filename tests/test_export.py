"""The decoder artifacts (`sam_jax.export`): our ONNX file and `jax.export` program against
the reference's own ONNX export of the same weights and against our `decode`; the
reference's ONNX notebook run on our file; `sam-jax export-decoder`; a SAM-HQ model's
against segment_anything_hq's `SamOnnxModel` and its ONNX export."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import jax
import numpy as np
import onnxruntime
import pytest
import torch
from conftest import assert_parity
from segment_anything.utils.onnx import SamOnnxModel
from segment_anything_hq import SamPredictor as SamPredictorHQ
from segment_anything_hq.utils.onnx import SamOnnxModel as SamOnnxModelHQ

import sam_jax
from sam_jax import cli, transforms
from sam_jax.export import (
    HQ_INPUT_NAMES,
    INPUT_NAMES,
    ExportOptions,
    HQExportOptions,
    export_decoder,
    reference_inputs,
    resolve_options,
)
from sam_jax.testing import SMALL, build_reference, make_image, randomize_, save_state_dict

SIZE = (300, 410)
OPTIONS = {
    "all-masks": ExportOptions(),
    "single-mask": ExportOptions(return_single_mask=True),
    "stability+metrics": ExportOptions(use_stability_score=True, return_extra_metrics=True),
}


def reference_onnx(ref: torch.nn.Module, options: ExportOptions, path: Path) -> onnxruntime.InferenceSession:
    """The reference `SamOnnxModel` exported as `scripts/export_onnx_model.py` does (opset 17,
    a dynamic number of points), through torch's TorchScript exporter.

    The trace turns the crop of the padding (`int(prepadded_size[0])`) into constants taken
    from the example `orig_im_size`: the reference's file is right only for images of that
    aspect ratio, so the example is our test size (the notebook's 1500 x 2250 example suits
    its 1200 x 1800 image).
    """
    model = SamOnnxModel(ref, options.return_single_mask, options.use_stability_score, options.return_extra_metrics)
    e, low = ref.prompt_encoder.image_embedding_size[0], ref.prompt_encoder.mask_input_size[0]
    dummy = {
        "image_embeddings": torch.randn(1, ref.prompt_encoder.embed_dim, e, e),
        "point_coords": torch.randint(0, 256, (1, 5, 2)).float(),
        "point_labels": torch.randint(0, 4, (1, 5)).float(),
        "mask_input": torch.randn(1, 1, low, low),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor(SIZE, dtype=torch.float),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(dummy.values()),
            str(path),
            export_params=True,
            opset_version=17,
            do_constant_folding=True,
            input_names=list(dummy),
            output_names=list(options.output_names()),
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            dynamo=False,
        )
    return onnxruntime.InferenceSession(str(path))


@pytest.fixture(scope="module")
def sessions(small, tmp_path_factory):
    """Per option set: (our ONNX session, the reference's ONNX session)."""
    d = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, options in OPTIONS.items():
        ours = onnxruntime.InferenceSession(export_decoder(small.params, "onnx", options))
        out[name] = (ours, reference_onnx(small.ref, options, d / f"ref-{name}.onnx"))
    return out


@pytest.fixture(scope="module")
def embedding(small):
    return sam_jax.encode(small.params, make_image(*SIZE, seed=9))


def prompt_cases(small) -> dict[str, dict]:
    """Prompts in original pixels (points, labels, box) and a mask to feed back."""
    rng = np.random.default_rng(4)
    mask = rng.normal(0, 4, (1, 64, 64)).astype(np.float32)
    return {
        "click": dict(points=[[120.0, 90.0]], labels=[1]),
        "3 clicks + mask": dict(points=[[120.0, 90.0], [300.0, 200.0], [50.0, 250.0]], labels=[1, 0, 1], mask=mask),
        "click + box": dict(points=[[200.0, 150.0]], labels=[0], box=[40.0, 30.0, 350.0, 260.0]),
    }


def notebook_prompt(case: dict, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's construction: box corners as labels 2 and 3, else a padding point;
    coordinates in the model input frame."""
    pts, lab = np.asarray(case["points"]), np.asarray(case["labels"])
    if "box" in case:
        pts, lab = np.concatenate([pts, np.reshape(case["box"], (2, 2))]), np.concatenate([lab, [2, 3]])
    else:
        pts, lab = np.concatenate([pts, [[0.0, 0.0]]]), np.concatenate([lab, [-1]])
    return transforms.apply_coords(pts, SIZE, image_size), lab


def onnx_inputs(small, emb, case: dict) -> dict[str, np.ndarray]:
    coords, lab = notebook_prompt(case, small.params.config.image_size)
    return reference_inputs(np.asarray(emb.image_embedding), coords, lab, case.get("mask"), SIZE)


def ours_decode(small, emb, case: dict, multimask: bool) -> tuple:
    return sam_jax.decode(
        small.params,
        emb,
        case["points"],
        case["labels"],
        box=case.get("box"),
        mask_input=case.get("mask"),
        multimask_output=multimask,
        return_logits=True,
    )


@pytest.mark.parametrize("name", list(OPTIONS))
def test_onnx_matches_reference_onnx_and_decode(small, sessions, embedding, name):
    ours, ref = sessions[name]
    for case_name, case in prompt_cases(small).items():
        inputs = onnx_inputs(small, embedding, case)
        got, expected = ours.run(None, inputs), ref.run(None, inputs)
        names = OPTIONS[name].output_names()
        got_d, exp_d = dict(zip(names, got, strict=True)), dict(zip(names, expected, strict=True))
        what = f"{name} {case_name}"
        triple = ("masks", "iou_predictions", "low_res_masks")
        assert_parity([exp_d[k] for k in triple], [got_d[k] for k in triple], what)
        if name == "stability+metrics":
            np.testing.assert_allclose(got_d["stability_scores"], exp_d["stability_scores"], atol=1e-3)
            assert got_d["areas"].dtype == exp_d["areas"].dtype == np.int64
            np.testing.assert_allclose(got_d["areas"], exp_d["areas"], rtol=1e-3)
        # Another aspect ratio: against the reference module itself (its exported file cannot).
        inputs["orig_im_size"] = np.asarray(SIZE[::-1], np.float32)
        module = SamOnnxModel(small.ref, **dataclasses.asdict(OPTIONS[name]))
        expected = [t.numpy() for t in module(*(torch.as_tensor(v) for v in inputs.values()))]
        got = ours.run(None, inputs)
        assert_parity(*[[x[names.index(k)] for k in triple] for x in (expected, got)], f"{what} portrait")
        if name == "all-masks":  # tokens 1.. are decode's multimask outputs, token 0 its single one
            inputs["orig_im_size"] = np.asarray(SIZE, np.float32)
            got = ours.run(None, inputs)
            for multimask, tokens in ((True, slice(1, None)), (False, slice(0, 1))):
                decoded = [np.asarray(x)[None] for x in ours_decode(small, embedding, case, multimask)]
                assert_parity(decoded, [x[:, tokens] for x in got], f"{what} vs decode multimask={multimask}")


FRESH_PROCESS = """
import json, sys
import numpy as np
import jax
inputs = dict(np.load(sys.argv[2]))
outputs = {}
for name, path in json.loads(sys.argv[1]).items():
    with open(path, "rb") as f:
        program = jax.export.deserialize(bytearray(f.read()))
    h, w = inputs["orig_im_size"].astype(int)
    args = [inputs[k] for k in ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")]
    for i, out in enumerate(program.call(*args, np.zeros((h, w), np.uint8))):
        outputs[f"{name}/{i}"] = np.asarray(out)
np.savez(sys.argv[3], **outputs)
assert not {"sam_jax", "flax", "torch", "onnxruntime"} & set(sys.modules), sorted(sys.modules)
print("modules ok")
"""


def test_jax_program_runs_without_the_package(small, sessions, embedding, tmp_path):
    """The serialized `jax.export` program, deserialized and called in a fresh process that
    imports only jax and numpy, equals the reference's ONNX export."""
    case = prompt_cases(small)["3 clicks + mask"]
    inputs = onnx_inputs(small, embedding, case)
    np.savez(tmp_path / "inputs.npz", **inputs)
    programs = {}
    for name in ("all-masks", "single-mask"):
        programs[name] = str(tmp_path / f"{name}.jax")
        Path(programs[name]).write_bytes(export_decoder(small.params, "jax", OPTIONS[name]))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS,
            json.dumps(programs),
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "o.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the repository: `import sam_jax` would not even resolve there
    )
    assert proc.returncode == 0 and "modules ok" in proc.stdout, proc.stderr[-3000:]
    outputs = np.load(tmp_path / "o.npz")
    for name in programs:
        expected = sessions[name][1].run(None, inputs)
        got = [outputs[f"{name}/{i}"] for i in range(3)]
        assert got[0].shape == (1, 4 if name == "all-masks" else 1, *SIZE)
        assert_parity(expected, got, f"jax program {name}")
    got = [outputs[f"all-masks/{i}"] for i in range(3)]
    for multimask, tokens in ((True, slice(1, None)), (False, slice(0, 1))):
        decoded = [np.asarray(x)[None] for x in ours_decode(small, embedding, case, multimask)]
        assert_parity(decoded, [x[:, tokens] for x in got], f"jax program vs decode multimask={multimask}")


def test_export_decoder_command(small, sessions, embedding, tmp_path, capsys):
    out = tmp_path / "sam_small.onnx"
    args = ["export-decoder", "--checkpoint", str(small.directory), "--output", str(out), "--return-single-mask"]
    assert cli.main(args) == 0
    inputs = onnx_inputs(small, embedding, prompt_cases(small)["click + box"])
    got = onnxruntime.InferenceSession(str(out)).run(None, inputs)
    assert_parity(sessions["single-mask"][1].run(None, inputs), got, "export-decoder command")
    before = out.read_bytes()
    assert cli.main(args) == 1  # an existing file is not replaced without --overwrite
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == before
    jax_out = tmp_path / "sam_small.jax"
    assert cli.main([*args[:3], "--output", str(jax_out), "--format", "jax"]) == 0
    assert jax_out.stat().st_size > 0
    assert cli.main(["export-decoder", "--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ the reference notebook


def reference_notebook() -> Path:
    """The reference's onnx_model_example code cells (tests/reference-notebooks/README.md)."""
    return Path(__file__).parent / "reference-notebooks" / "onnx_model_example.py"


# Cells not run: 7 installs packages in Colab (shell syntax), 18 is the reference's own
# export (the notebook says to skip to the next section when `onnx_model_path` is set),
# 20 quantizes with `quantize_dynamic(optimize_model=True)`, an argument onnxruntime no
# longer takes (it fails on the reference's export as well; the notebook marks it optional).
SKIPPED_CELLS = {7, 18, 20}


def notebook_substitutions(checkpoint: Path, onnx_path: Path) -> dict[int, list[tuple[str, str]]]:
    """The only edits to the cells: file names, the model (the `small` fixture's checkpoint
    under a registry name of its own), the device, and the small model's low-res mask size."""
    return {
        14: [('"sam_vit_h_4b8939.pth"', repr(str(checkpoint))), ('"vit_h"', '"small"')],
        17: [("onnx_model_path = None", f"onnx_model_path = {str(onnx_path)!r}")],
        28: [("device='cuda'", "device='cpu'")],
        38: [("(1, 1, 256, 256)", "(1, 1, 64, 64)")],
        59: [("(1, 1, 256, 256)", "(1, 1, 64, 64)")],
    }


class NoOp:
    """Stands for matplotlib and IPython's display: every attribute and call is a no-op."""

    def __getattr__(self, name: str) -> NoOp:
        return self

    def __call__(self, *args: object, **kwargs: object) -> NoOp:
        return self


def test_reference_notebook_runs_on_our_onnx_file(small, tmp_path, monkeypatch):
    from segment_anything import sam_model_registry

    onnx_path = tmp_path / "sam_small_single_mask.onnx"
    onnx_path.write_bytes(export_decoder(small.params, "onnx", ExportOptions(return_single_mask=True)))

    def build_small(checkpoint: str) -> torch.nn.Module:
        model = build_reference(SMALL)
        model.load_state_dict(torch.load(checkpoint))
        return model

    monkeypatch.setitem(sam_model_registry, "small", build_small)
    for name in ("matplotlib", "matplotlib.pyplot", "IPython", "IPython.display"):
        module = types.ModuleType(name)
        module.__getattr__ = lambda attr: NoOp()  # type: ignore[method-assign]
        monkeypatch.setitem(sys.modules, name, module)
    (tmp_path / "images").symlink_to(reference_notebook().parent / "images")
    monkeypatch.chdir(tmp_path)

    source = reference_notebook().read_text()
    cells = {int(n): code for n, code in re.findall(r"# %% cell (\d+)\n(.*?)(?=\n# %% cell |\Z)", source, re.S)}
    assert {14, 17, 36, 42, 52, 59} <= set(cells), sorted(cells)
    edits = notebook_substitutions(small.checkpoint, onnx_path)
    namespace: dict = {"__name__": "__notebook__"}
    seen = {}
    for n in sorted(cells):
        if n in SKIPPED_CELLS:
            continue
        code = cells[n]
        for old, new in edits.get(n, []):
            assert old in code, (n, old)
            code = code.replace(old, new)
        exec(compile(code, f"onnx_model_example cell {n}", "exec"), namespace)
        if n in (42, 52, 59):
            seen[n] = np.array(namespace["masks"])
    assert namespace["onnx_model_path"] == str(onnx_path)
    # Cell 20's quantization, less the argument onnxruntime dropped, works on our file too.
    quantized = tmp_path / "sam_small_quantized.onnx"
    namespace["quantize_dynamic"](
        model_input=str(onnx_path),
        model_output=str(quantized),
        per_channel=False,
        reduce_range=False,
        weight_type=namespace["QuantType"].QUInt8,
    )
    masks_q, _, _ = onnxruntime.InferenceSession(str(quantized)).run(None, namespace["ort_inputs"])
    assert masks_q.shape == seen[59].shape

    # The notebook's three prompts, through our decode: the single-mask choice of
    # `SamOnnxModel` is the best multimask output for one click, the single output from 3 points.
    image = namespace["image"]
    h, w = image.shape[:2]
    emb = sam_jax.encode(small.params, image)
    first, scores, low_res = sam_jax.decode(small.params, emb, [[500, 375]], [1])
    best = int(np.argmax(np.asarray(scores)))
    second, _, _ = sam_jax.decode(
        small.params,
        emb,
        [[500, 375], [1125, 625]],
        [1, 1],
        mask_input=np.asarray(low_res)[best][None],
        multimask_output=False,
    )
    third, _, _ = sam_jax.decode(small.params, emb, [[575, 750]], [0], box=[425, 600, 700, 875], multimask_output=False)
    for n, ours in ((42, np.asarray(first)[best]), (52, np.asarray(second)[0]), (59, np.asarray(third)[0])):
        assert seen[n].shape == (1, 1, h, w) and seen[n].dtype == bool
        agreement = float((seen[n][0, 0] == ours).mean())
        assert agreement >= 0.999, (n, agreement)


def test_artifacts_on_a_64x64_grid():
    """At the official models' 64 x 64 embedding the decoder's cross-attention takes its
    block-diagonal path (the `small` model's 16 x 16 grid does not): the shape-polymorphic
    program and the ONNX graph equal `decode` there too, for several point counts."""
    params = sam_jax.init(dataclasses.replace(SMALL, image_size=1024), seed=3)
    rng = np.random.default_rng(5)
    embedding = rng.normal(size=(64, 64, SMALL.prompt_embed_dim)).astype(np.float32)
    emb = sam_jax.ImageEmbedding(jax.device_put(embedding), SIZE, transforms.preprocess_shape(*SIZE, 1024))
    program = jax.export.deserialize(bytearray(export_decoder(params, "jax")))
    session = onnxruntime.InferenceSession(export_decoder(params, "onnx"))
    for n in (4, 20):  # layouts of 16 and 32 tokens
        pts, lab = rng.uniform(0, 300, (n, 2)), rng.integers(0, 2, n)
        coords = transforms.apply_coords(np.concatenate([pts, [[0.0, 0.0]]]), SIZE, 1024)
        inputs = reference_inputs(embedding, coords, np.concatenate([lab, [-1]]), None, SIZE)
        from_program = program.call(*[inputs[k] for k in INPUT_NAMES[:5]], np.zeros(SIZE, np.uint8))
        from_onnx = session.run(None, inputs)
        decoded = [np.asarray(x)[None] for x in sam_jax.decode(params, emb, pts, lab, return_logits=True)]
        for name, got in (("jax", from_program), ("onnx", from_onnx)):
            assert_parity(decoded, [np.asarray(x)[:, 1:] for x in got], f"{name} {n} points on 64x64")


# ------------------------------------------------------------------ SAM-HQ

HQ = dataclasses.replace(SMALL, mask_decoder="hq")
HQ_OPTIONS = {
    "sam+hq": HQExportOptions(),
    "hq-token-only": HQExportOptions(hq_token_only=True),
    "multimask, hq-token-only": HQExportOptions(hq_token_only=True, multimask_output=True),
    "multimask+stability+metrics": HQExportOptions(
        multimask_output=True, use_stability_score=True, return_extra_metrics=True
    ),
}
TRIPLE = ("masks", "iou_predictions", "low_res_masks")


@pytest.fixture(scope="module")
def small_hq(tmp_path_factory):
    """segment_anything_hq's model at the `small` size with every tensor randomised, its
    official-format checkpoint, our params loaded from that file, and the reference encoder's
    outputs for the test image (image embedding, its one intermediate embedding)."""
    d = tmp_path_factory.mktemp("hq")
    ref = randomize_(build_reference(HQ), seed=5)
    checkpoint = save_state_dict(ref, d / "sam_hq_small.pth")
    params = sam_jax.load(checkpoint)
    assert params.config == HQ
    predictor = SamPredictorHQ(ref)
    predictor.set_image(make_image(*SIZE, seed=9))
    assert len(predictor.interm_features) == 1  # the one global-attention block
    return types.SimpleNamespace(
        ref=ref,
        checkpoint=checkpoint,
        params=params,
        embedding=predictor.features[0].permute(1, 2, 0).numpy(),  # (E, E, C)
        early=predictor.interm_features[0][0].numpy(),  # (E, E, D)
    )


def hq_inputs(small_hq, case: dict, size: tuple[int, int] = SIZE) -> dict[str, np.ndarray]:
    """segment_anything_hq's ONNX inputs for a prompt, the reference encoder's outputs."""
    coords, lab = notebook_prompt(case, HQ.image_size)
    inputs = reference_inputs(small_hq.embedding, coords, lab, case.get("mask"), SIZE, early_features=small_hq.early)
    assert tuple(inputs) == HQ_INPUT_NAMES
    return {**inputs, "orig_im_size": np.asarray(size, np.float32)}


def reference_hq(small_hq, options: HQExportOptions, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """segment_anything_hq's `SamOnnxModel` in torch, with the same options."""
    module = SamOnnxModelHQ(small_hq.ref, **dataclasses.asdict(options))
    outputs = module(**{k: torch.as_tensor(v) for k, v in inputs.items()})
    return dict(zip(options.output_names(), (t.numpy() for t in outputs), strict=True))


def assert_hq_parity(expected: dict, got: dict, what: str, areas_dtype: type = np.int64) -> None:
    assert_parity([expected[k] for k in TRIPLE], [got[k] for k in TRIPLE], what)
    if "areas" in expected:
        np.testing.assert_allclose(got["stability_scores"], expected["stability_scores"], atol=1e-3)
        assert expected["areas"].dtype == np.int64 and got["areas"].dtype == areas_dtype, what
        np.testing.assert_allclose(got["areas"], expected["areas"], rtol=1e-3)


@pytest.mark.parametrize("name", list(HQ_OPTIONS))
def test_hq_onnx_matches_segment_anything_hq(small_hq, name):
    """Our ONNX file of a SAM-HQ model in onnxruntime against segment_anything_hq's
    `SamOnnxModel` in torch: a click, clicks with a mask fed back, a box; the test size and
    its portrait."""
    options = HQ_OPTIONS[name]
    session = onnxruntime.InferenceSession(export_decoder(small_hq.params, "onnx", options))
    assert [i.name for i in session.get_inputs()] == list(HQ_INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == list(options.output_names())
    for case_name, case in prompt_cases(small_hq).items():
        for size in (SIZE, SIZE[::-1]):
            inputs = hq_inputs(small_hq, case, size)
            got = dict(zip(options.output_names(), session.run(None, inputs), strict=True))
            assert got["masks"].shape == (1, 1, *size) and got["low_res_masks"].shape == (1, 1, 64, 64)
            assert_hq_parity(reference_hq(small_hq, options, inputs), got, f"{name} {case_name} {size}")


def reference_hq_onnx(small_hq, path: Path) -> onnxruntime.InferenceSession:
    """segment_anything_hq's `SamOnnxModel` exported as its `scripts/export_onnx_model.py`
    does (opset 17, a dynamic number of points, default options; `interm_embeddings` holds
    the encoder's intermediate embeddings, one for this model); the example size is the
    test size (the trace fixes the padding crop to its aspect ratio: `reference_onnx`)."""
    ref, e = small_hq.ref, HQ.embedding_size
    dummy = {
        "image_embeddings": torch.randn(1, HQ.prompt_embed_dim, e, e),
        "interm_embeddings": torch.randn(1, 1, *small_hq.early.shape),
        "point_coords": torch.randint(0, 256, (1, 5, 2)).float(),
        "point_labels": torch.randint(0, 4, (1, 5)).float(),
        "mask_input": torch.randn(1, 1, 4 * e, 4 * e),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor(SIZE, dtype=torch.float),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SamOnnxModelHQ(ref),
            tuple(dummy.values()),
            str(path),
            export_params=True,
            opset_version=17,
            do_constant_folding=True,
            input_names=list(dummy),
            output_names=list(TRIPLE),
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            dynamo=False,
        )
    return onnxruntime.InferenceSession(str(path))


def test_hq_interface_matches_segment_anything_hq_export(small_hq, tmp_path):
    """Our file has the inputs and outputs of segment_anything_hq's own ONNX export (names,
    dtypes, fixed dimensions), computes what it computes, and takes any number of stacked
    intermediate embeddings (the reference's export fixes it to the encoder's count)."""
    ref = reference_hq_onnx(small_hq, tmp_path / "sam_hq_ref.onnx")
    ours = onnxruntime.InferenceSession(export_decoder(small_hq.params, "onnx"))  # default: HQExportOptions()
    for kind in ("get_inputs", "get_outputs"):
        r_args, o_args = getattr(ref, kind)(), getattr(ours, kind)()
        assert [(a.name, a.type) for a in o_args] == [(a.name, a.type) for a in r_args], kind
        for r, o in zip(r_args, o_args, strict=True):
            assert len(o.shape) == len(r.shape), (r.name, r.shape, o.shape)
            fixed = [(i, d) for i, d in enumerate(r.shape) if isinstance(d, int)]
            # Dimensions the reference fixes: ours equal, but for the intermediate count.
            assert all(o.shape[i] == d for i, d in fixed if (r.name, i) != ("interm_embeddings", 0)), (r, o)
    assert ours.get_inputs()[1].shape[0] == "num_interm"
    case = prompt_cases(small_hq)["click + box"]
    inputs = hq_inputs(small_hq, case)
    got = ours.run(None, inputs)
    assert_parity(ref.run(None, inputs), got, "vs segment_anything_hq's ONNX export")
    rng = np.random.default_rng(0)
    later = rng.normal(size=(2, *inputs["interm_embeddings"].shape[1:])).astype(np.float32)
    stacked = {**inputs, "interm_embeddings": np.concatenate([inputs["interm_embeddings"], later])}
    for a, b in zip(ours.run(None, stacked), got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_hq_jax_program_matches_segment_anything_hq(small_hq):
    """The `jax.export` program of a SAM-HQ model (segment_anything_hq's inputs, the original
    size as the last argument's shape) against its `SamOnnxModel` in torch."""
    # A call compiles the program for its shapes: few calls (points and box, both ways of
    # hq_token_only, the stability scores' choice among SAM's multimask outputs).
    cases = {
        "sam+hq": ("click", "click + box"),
        "multimask, hq-token-only": ("click + box",),
        "multimask+stability+metrics": ("click",),
    }
    for name, case_names in cases.items():
        options = HQ_OPTIONS[name]
        program = jax.export.deserialize(bytearray(export_decoder(small_hq.params, "jax", options)))
        assert len(program.in_avals) == len(HQ_INPUT_NAMES) and len(program.out_avals) == len(options.output_names())
        for case_name in case_names:
            inputs = hq_inputs(small_hq, prompt_cases(small_hq)[case_name])
            args = [inputs[k] for k in HQ_INPUT_NAMES[:-1]]
            outputs = program.call(*args, np.zeros(SIZE, np.uint8))
            got = {k: np.asarray(x) for k, x in zip(options.output_names(), outputs, strict=True)}
            expected = reference_hq(small_hq, options, inputs)
            # JAX computes in 32-bit integers unless x64 is enabled.
            assert_hq_parity(expected, got, f"jax program {name} {case_name}", areas_dtype=np.int32)


def test_export_decoder_command_hq(small_hq, small, tmp_path, capsys):
    out = tmp_path / "sam_hq_small.onnx"
    args = ["export-decoder", "--checkpoint", str(small_hq.checkpoint), "--output", str(out)]
    assert cli.main([*args, "--hq-token-only", "--multimask-output"]) == 0
    assert "SAM-HQ" in capsys.readouterr().out
    inputs = hq_inputs(small_hq, prompt_cases(small_hq)["3 clicks + mask"])
    options = HQ_OPTIONS["multimask, hq-token-only"]
    got = dict(zip(TRIPLE, onnxruntime.InferenceSession(str(out)).run(None, inputs), strict=True))
    assert_hq_parity(reference_hq(small_hq, options, inputs), got, "export-decoder --hq-token-only --multimask-output")
    # Each decoder's options are refused on the other's model, naming them.
    other = tmp_path / "x.onnx"
    assert cli.main([*args[:3], "--output", str(other), "--return-single-mask"]) == 1
    assert "return_single_mask" in capsys.readouterr().err and not other.exists()
    sam_args = ["export-decoder", "--checkpoint", str(small.directory), "--output", str(other), "--hq-token-only"]
    assert cli.main(sam_args) == 1
    assert "hq_token_only" in capsys.readouterr().err and not other.exists()
    # The options both references have carry over.
    assert resolve_options(HQ, ExportOptions(use_stability_score=True)) == HQExportOptions(use_stability_score=True)
    metrics = ExportOptions(return_extra_metrics=True)
    assert resolve_options(SMALL, HQExportOptions(return_extra_metrics=True)) == metrics
    with pytest.raises(ValueError, match="multimask_output"):
        export_decoder(small.params, "jax", HQExportOptions(multimask_output=True))
