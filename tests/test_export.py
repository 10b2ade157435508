"""The decoder artifacts (`sam_jax.export`): our ONNX file and `jax.export` program against
the reference's own ONNX export of the same weights and against our `decode`; the
reference's ONNX notebook run on our file; `sam-jax export-decoder`."""

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

import sam_jax
from sam_jax import cli, transforms
from sam_jax.export import INPUT_NAMES, ExportOptions, export_decoder, reference_inputs
from sam_jax.testing import SMALL, build_reference, make_image

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


def onnx_inputs(small, emb, case: dict) -> dict[str, np.ndarray]:
    """The notebook's construction: box corners as labels 2 and 3, else a padding point."""
    pts, lab = np.asarray(case["points"]), np.asarray(case["labels"])
    if "box" in case:
        pts, lab = np.concatenate([pts, np.reshape(case["box"], (2, 2))]), np.concatenate([lab, [2, 3]])
    else:
        pts, lab = np.concatenate([pts, [[0.0, 0.0]]]), np.concatenate([lab, [-1]])
    coords = transforms.apply_coords(pts, SIZE, small.params.config.image_size)
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
