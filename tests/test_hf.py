"""Hugging Face `transformers` SAM checkpoints: parity with the installed `transformers`
`SamModel` and `SamHQModel`, bit-exact round trips, every source form, and one-line refusals."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_parity, rel_err
from safetensors.numpy import load_file, save_file
from transformers import SamConfig as HFSamConfig
from transformers import SamHQConfig as HFSamHQConfig
from transformers import (
    SamHQMaskDecoderConfig,
    SamHQModel,
    SamHQProcessor,
    SamHQPromptEncoderConfig,
    SamHQVisionConfig,
    SamImageProcessor,
    SamMaskDecoderConfig,
    SamModel,
    SamProcessor,
    SamPromptEncoderConfig,
    SamVisionConfig,
)

import sam_jax
from sam_jax.cli.convert import main
from sam_jax.compat.registry import build_sam
from sam_jax.config import PIXEL_MEAN, PIXEL_STD
from sam_jax.formats import hf
from sam_jax.formats.reference import describe
from sam_jax.testing import make_image, randomize_

REPO = Path(__file__).resolve().parents[1]

# 64-px input, 8-px patches: an 8 x 8 grid, windows of 6 (padded to 12) and one global block.
VISION = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    global_attn_indexes=[1],
    image_size=64,
    patch_size=8,
    window_size=6,
    output_channels=32,
    num_pos_feats=16,
)
PROMPT = dict(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=8)
DECODER = dict(hidden_size=32, mlp_dim=64, num_attention_heads=8, iou_head_hidden_dim=32)
# Pruned widths as in SlimSAM: an encoder width of 168 with 12 heads (14 per head), an
# encoder MLP of 696 (not a whole multiple), and a decoder of other sizes throughout.
PRUNED_VISION = dict(hidden_size=168, num_attention_heads=12, mlp_dim=696)
PRUNED_DECODER = dict(mlp_dim=40, num_attention_heads=4, iou_head_depth=4, iou_head_hidden_dim=24)
CASES = {
    "eps=1e-6": (1e-6, {}, {}),
    "eps=1e-5": (1e-5, {}, {}),
    "pruned": (1e-6, PRUNED_VISION, PRUNED_DECODER),
}
# Two prompt kinds per case (each decoder signature compiles once per model: ~4 s here).
CASE_PROMPTS = {"eps=1e-6": ("points", "point+mask"), "eps=1e-5": ("box", "points+box"), "pruned": ("points", "box")}
# SAM-HQ: the same small model with two global blocks, so that the early features (the first
# one's output, what SAM-HQ reads) differ from the last one's; `vit_dim` is the encoder's width.
HQ_VISION = {**VISION, "global_attn_indexes": [1, 2]}
HQ_DECODER = {**DECODER, "vit_dim": VISION["hidden_size"]}
# SAM-HQ's convolutions whose outputs go through a LayerNorm2d (eps 1e-6 in both implementations).
HQ_NORMED_CONVS = ("compress_vit_conv1", "encoder_conv1", "mask_conv1")


def quiet_decoder_(model: SamModel | SamHQModel) -> SamModel | SamHQModel:
    """Scales down the inputs of two decoder LayerNorms (a block's and the final one) so
    their epsilon shows: with these, a wrong epsilon moves the logits by ~1e-1 (1e-6 for the
    right one), far outside the tolerances, where at unit scale it moved them by ~6e-6.
    In a SAM-HQ decoder, the inputs of its own three LayerNorm2d's too: 1e-5 for their 1e-6
    then moves the HQ mask's logits by ~2e-1 (~8e-5 at unit scale, within the tolerances)."""
    t = model.mask_decoder.transformer
    hq = [getattr(model.mask_decoder, name) for name in HQ_NORMED_CONVS if hasattr(model.mask_decoder, name)]
    with torch.no_grad():
        for module in (
            t.layers[0].self_attn.out_proj,
            t.layers[-1].layer_norm3,
            t.final_attn_token_to_image.out_proj,
            *hq,
        ):
            module.weight.mul_(0.01)
            module.bias.mul_(0.01)
    return model


def hf_model(eps: float, vision: dict | None = None, decoder: dict | None = None, seed: int = 0) -> SamModel:
    """A transformers `SamModel` of the small config, every tensor randomised."""
    config = HFSamConfig(
        vision_config={**VISION, **(vision or {})},
        prompt_encoder_config=PROMPT,
        mask_decoder_config={**DECODER, "layer_norm_eps": eps, **(decoder or {})},
    )
    return quiet_decoder_(randomize_(SamModel(config).eval(), seed))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[SamModel, Path]]:
    """Each case's model and its `save_pretrained` folder."""
    out = {}
    for i, (name, (eps, vision, decoder)) in enumerate(CASES.items()):
        model = hf_model(eps, vision, decoder, seed=i)
        folder = tmp_path_factory.mktemp("hf") / name
        model.save_pretrained(folder)
        out[name] = (model, folder)
    return out


def pixel_values(image: np.ndarray, size: int) -> torch.Tensor:
    """The reference's `Sam.preprocess` of an image already at the model's scale (NCHW)."""
    x = (image.astype(np.float32) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    x = np.pad(x, ((0, size - x.shape[0]), (0, size - x.shape[1]), (0, 0)))
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def prompts(s: int, low: int) -> dict[str, dict]:
    """Prompts in pixels of an image whose longest side is the model's input (the frame
    transformers' SamModel takes); the mask input is random logits."""
    pts = np.array([[0.3 * s, 0.4 * s], [0.6 * s, 0.5 * s]], np.float32)
    box = np.array([0.1 * s, 0.15 * s, 0.7 * s, 0.6 * s], np.float32)
    mask = np.random.default_rng(0).normal(0, 3, (1, low, low)).astype(np.float32)
    return {
        "points": dict(points=pts, labels=np.array([1, 0]), multimask_output=True),
        "box": dict(box=box, multimask_output=False),
        "points+box": dict(points=pts[:1], labels=np.array([1]), box=box, multimask_output=True),
        "point+mask": dict(points=pts[:1], labels=np.array([1]), mask_input=mask, multimask_output=True),
    }


def hf_prompt(p: dict) -> dict:
    """One prompt of `prompts` as transformers' SamModel / SamHQModel keywords (one image, one prompt)."""
    kw: dict = {}
    if "points" in p:
        kw["input_points"] = torch.from_numpy(p["points"])[None, None]
        kw["input_labels"] = torch.from_numpy(p["labels"])[None, None]
    if "box" in p:
        kw["input_boxes"] = torch.from_numpy(p["box"])[None, None]
    if "mask_input" in p:
        kw["input_masks"] = torch.from_numpy(p["mask_input"])[None]
    return kw


def hf_forward(model: SamModel, pixels: torch.Tensor, p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """transformers' SamModel on one image and one prompt -> (embedding NHWC, iou (M,), logits (M, L, L))."""
    with torch.no_grad():
        embedding = model.get_image_embeddings(pixels)
        out = model(image_embeddings=embedding, multimask_output=p["multimask_output"], **hf_prompt(p))
    return embedding[0].permute(1, 2, 0).numpy(), out.iou_scores[0, 0].numpy(), out.pred_masks[0, 0].numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_transformers(folders, case):
    model, folder = folders[case]
    params = sam_jax.load(folder)
    eps = CASES[case][0]
    assert params.config.decoder_layer_norm_eps == eps
    s, low = params.config.image_size, params.config.low_res_mask_size
    if case == "pruned":
        c = params.config
        assert (c.image_encoder.embed_dim, c.image_encoder.num_heads, c.decoder_num_heads) == (168, 12, 4)
        assert int(c.image_encoder.embed_dim * c.image_encoder.mlp_ratio) == 696 and c.iou_head_depth == 4
    image = make_image(s, s * 3 // 4, seed=3)  # longest side at the model's size: no resizing on either side
    pixels = pixel_values(image, s)
    embedding = sam_jax.encode(params, image)
    figures = {}
    for name in CASE_PROMPTS[case]:
        p = prompts(s, low)[name]
        hf_embedding, hf_iou, hf_low = hf_forward(model, pixels, p)
        figures["embedding"] = rel_err(embedding.image_embedding, hf_embedding)
        assert figures["embedding"] < 1e-3
        kw = {k: p[k] for k in ("points", "labels", "box", "mask_input") if k in p}
        _, iou, low_res = sam_jax.decode(params, embedding, multimask_output=p["multimask_output"], **kw)
        figures[name] = assert_parity((hf_low > 0, hf_iou, hf_low), (np.asarray(low_res) > 0, iou, low_res), name)
    print(case, figures)
    if case == "eps=1e-6":  # run at the reference's 1e-5, the same weights miss the tolerance by far
        wrong = params.replace(config=dataclasses.replace(params.config, decoder_layer_norm_eps=1e-5))
        low_res = sam_jax.decode(wrong, embedding, p["points"], p["labels"], mask_input=p["mask_input"])[2]
        assert np.abs(np.asarray(low_res) - hf_low).max() > 1e-2 * np.abs(hf_low).max()


def test_round_trip_hf_to_sam_jax_to_hf_is_bit_exact(folders, tmp_path, capsys):
    _, folder = folders["pruned"]
    assert main([str(folder), str(tmp_path / "jax")]) == 0
    assert main(["--to-hf", str(tmp_path / "jax"), str(tmp_path / "back")]) == 0
    original, back = load_file(folder / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(back) == set(original)
    for key, value in original.items():
        assert back[key].dtype == np.float32 and back[key].shape == value.shape, key
        assert np.array_equal(back[key], value), key  # bit for bit
    ignore = {"transformers_version", "_name_or_path"}
    a, b = (HFSamConfig.from_pretrained(f).to_dict() for f in (folder, tmp_path / "back"))
    # With mlp_dim given (696), transformers never reads mlp_ratio: the original keeps its
    # default 4.0, the export the ratio sam_jax builds 696 from.
    assert (a["vision_config"].pop("mlp_ratio"), b["vision_config"].pop("mlp_ratio")) == (4.0, 696 / 168)
    assert a["vision_config"]["mlp_dim"] == b["vision_config"]["mlp_dim"] == 696
    assert {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}
    assert sam_jax.load(tmp_path / "back").config == sam_jax.load(tmp_path / "jax").config


def hq_model(seed: int = 0) -> SamHQModel:
    """A transformers `SamHQModel` of the small config, every tensor randomised."""
    config = HFSamHQConfig(vision_config=HQ_VISION, prompt_encoder_config=PROMPT, mask_decoder_config=HQ_DECODER)
    return quiet_decoder_(randomize_(SamHQModel(config).eval(), seed))


@pytest.fixture(scope="module")
def hq_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[SamHQModel, Path]:
    """The SAM-HQ model and its `save_pretrained` folder."""
    model = hq_model(seed=7)
    folder = tmp_path_factory.mktemp("hf") / "sam_hq"
    model.save_pretrained(folder)
    return model, folder


# transformers' SamHQMaskDecoder (as installed) binds its two-way transformer's output image
# tokens to a name it then overwrites, and upscales the transformer's *input* (the image
# embedding plus the dense prompt, its height and width swapped) into the masks' features,
# where segment_anything_hq (and transformers' own SamMaskDecoder) upscale the output. The
# checkpoints are segment_anything_hq's weights, which sam_jax runs as segment_anything_hq
# does; the masks are compared with SamHQModel's decoder with that one line as SamModel's.
SAM_HQ_DEVIATION = (
    "point_embedding, iou_token_out = self.transformer(",
    "point_embedding, image_embeddings = self.transformer(",
)


def correct_sam_hq_decoder(monkeypatch: pytest.MonkeyPatch) -> bool:
    """Patches `SamHQMaskDecoder.forward` to upscale the transformer's output image tokens
    (`SAM_HQ_DEVIATION`) for the rest of the test.

    Returns:
        Whether the installed transformers had the deviation (False: nothing patched).
    """
    import transformers.models.sam_hq.modeling_sam_hq as module

    source = textwrap.dedent(inspect.getsource(module.SamHQMaskDecoder.forward))
    if SAM_HQ_DEVIATION[0] not in source:
        return False
    namespace: dict = {}
    exec(compile(source.replace(*SAM_HQ_DEVIATION), module.__file__, "exec"), vars(module), namespace)
    monkeypatch.setattr(module.SamHQMaskDecoder, "forward", namespace["forward"])
    return True


def hf_hq_decode(
    model: SamHQModel, embeddings: tuple, p: dict, multimask_output: bool, hq_token_only: bool
) -> tuple[np.ndarray, np.ndarray]:
    """transformers' SamHQModel on `get_image_embeddings`' output and one prompt -> (iou (M,), logits (M, L, L))."""
    embedding, intermediate = embeddings
    with torch.no_grad():
        out = model(
            image_embeddings=embedding,
            intermediate_embeddings=intermediate,
            multimask_output=multimask_output,
            hq_token_only=hq_token_only,
            **hf_prompt(p),
        )
    return out.iou_scores[0, 0].numpy(), out.pred_masks[0, 0].numpy()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread during the test: on a small model, its thread pool contending with
    JAX's for the cores costs far more than the parallelism saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_hq_parity_with_transformers(hq_folder, monkeypatch, one_torch_thread):
    """A SamHQModel folder loads as a SAM-HQ model that computes what SamHQModel does: the
    embedding, the early features (the first global block's output) and, for points and a
    box, every combination of multimask_output and hq_token_only (the masks with
    `SAM_HQ_DEVIATION` corrected; as installed, the same IoU predictions and other masks)."""
    model, folder = hq_folder
    params = sam_jax.load(folder)
    c = params.config
    assert c.hq and c.decoder_layer_norm_eps == 1e-6 and c.image_encoder.early_block == 1
    s, low = c.image_size, c.low_res_mask_size
    image = make_image(s, s * 3 // 4, seed=3)  # longest side at the model's size: no resizing on either side
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixel_values(image, s))
    assert len(embeddings[1]) == 2  # one per global block; SamHQModel reads the first
    embedding = sam_jax.encode(params, image)
    deviates = correct_sam_hq_decoder(monkeypatch)
    figures = {
        "embedding": rel_err(embedding.image_embedding, embeddings[0][0].permute(1, 2, 0).numpy()),
        "early": rel_err(embedding.early_features, embeddings[1][0][0].numpy()),
    }
    assert figures["embedding"] < 1e-3 and figures["early"] < 1e-3, figures
    expected = {}
    for name in ("points", "box"):
        p = prompts(s, low)[name]
        kw = {k: p[k] for k in ("points", "labels", "box") if k in p}
        for multimask in (True, False):
            for hq_only in (False, True):
                hf_iou, hf_low = hf_hq_decode(model, embeddings, p, multimask, hq_only)
                # SamHQModel returns SAM's multimask outputs sorted by predicted IoU, each plus
                # the HQ mask (the HQ mask once with hq_token_only); segment_anything_hq and
                # sam_jax return the best one: transformers' first.
                assert (len(hf_iou), len(hf_low)) == ((3 if multimask else 1), (3 if multimask and not hq_only else 1))
                expected[name, multimask, hq_only] = hf_iou, hf_low
                hf_iou, hf_low = hf_iou[:1], hf_low[:1]
                _, iou, low_res = sam_jax.decode(
                    params, embedding, multimask_output=multimask, hq_token_only=hq_only, **kw
                )
                what = f"{name} multimask={multimask} hq_token_only={hq_only}"
                figures[what] = assert_parity(
                    (hf_low > 0, hf_iou, hf_low), (np.asarray(low_res) > 0, iou, low_res), what
                )
    monkeypatch.undo()  # transformers as installed: the same IoU predictions, masks far off
    if deviates:
        for (name, multimask, hq_only), (hf_iou, hf_low) in expected.items():
            installed_iou, installed_low = hf_hq_decode(model, embeddings, prompts(s, low)[name], multimask, hq_only)
            np.testing.assert_array_equal(installed_iou, hf_iou)
            figures[f"installed {name} multimask={multimask} hq_token_only={hq_only}"] = err = rel_err(
                installed_low, hf_low
            )
            assert err > 1e-1, figures
    print(figures)


def test_hq_round_trip_hf_to_sam_jax_to_hf_is_bit_exact(hq_folder, tmp_path):
    """SamHQModel folder -> `sam-jax convert` -> `--to-hf` -> a SamHQModel folder with every
    tensor equal, that `SamHQModel.from_pretrained` loads strictly, with the same config."""
    model, folder = hq_folder
    assert main([str(folder), str(tmp_path / "jax")]) == 0
    assert main(["--to-hf", str(tmp_path / "jax"), str(tmp_path / "back")]) == 0
    original, back = load_file(folder / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(back) == set(original) == set(model.state_dict()) - {hf.TIED_PE}
    for key, value in original.items():
        assert back[key].dtype == np.float32 and back[key].shape == value.shape, key
        assert np.array_equal(back[key], value), key  # bit for bit
    loaded, info = SamHQModel.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert {k: list(v) for k, v in info.items() if v} == {}, info
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ignore = {"transformers_version", "_name_or_path"}
    a, b = (HFSamHQConfig.from_pretrained(f).to_dict() for f in (folder, tmp_path / "back"))
    assert {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}
    assert isinstance(SamHQProcessor.from_pretrained(tmp_path / "back"), SamHQProcessor)
    params = sam_jax.load(tmp_path / "jax")
    assert sam_jax.load(tmp_path / "back").config == params.config and params.config.hq
    # The other entry points: the compat registry, and a bare tensor file (architecture from shapes).
    assert_same_weights(build_sam(params.config, folder).params, params)
    (tmp_path / "bare").mkdir()
    shutil.copy(folder / "model.safetensors", tmp_path / "bare" / "sam_hq.safetensors")
    with pytest.warns(UserWarning, match="inferred from tensor shapes"):
        assert_same_weights(sam_jax.load(tmp_path / "bare" / "sam_hq.safetensors"), params)


def test_export_loads_in_transformers_strictly_and_computes_the_same(small, tmp_path):
    """A reference-converted checkpoint (decoder eps 1e-5) as a transformers folder: loaded by
    `SamModel.from_pretrained` with nothing missing, unexpected or mis-shaped, preprocessed
    by `SamProcessor` from the written preprocessor_config.json, it computes what sam_jax does."""
    out = tmp_path / "hf"
    assert main(["--to-hf", str(small.directory), str(out)]) == 0
    model, info = SamModel.from_pretrained(out, output_loading_info=True)
    assert {k: list(v) for k, v in info.items() if v} == {}, info
    model.eval()
    processor = SamProcessor.from_pretrained(out)
    s = small.params.config.image_size
    image = make_image(s, s * 3 // 4, seed=5)
    point = [[0.4 * s, 0.3 * s]]
    inputs = processor(images=image, input_points=[[point]], return_tensors="pt")
    np.testing.assert_allclose(inputs["pixel_values"][0], pixel_values(image, s)[0], atol=1e-5)  # same input
    with torch.no_grad():
        out_hf = model(**inputs)
    hf_iou, hf_low = out_hf.iou_scores[0, 0].numpy(), out_hf.pred_masks[0, 0].numpy()
    _, iou, low_res = sam_jax.predict(small.params, image, point)
    figures = assert_parity((hf_low > 0, hf_iou, hf_low), (np.asarray(low_res) > 0, iou, low_res), "export")
    print("export", figures)


@pytest.mark.parametrize(
    "config_class,model_class,name,count",
    [(HFSamConfig, SamModel, "vit_b", 315), (HFSamHQConfig, SamHQModel, "sam_hq_vit_b", 340)],
)
def test_vit_b_names_and_shapes_map_one_to_one(config_class, model_class, name, count):
    """transformers' default SamModel and SamHQModel (vit_b sizes), built on the meta device:
    315 (340) tensors, all but one of which are the reference's (`segment_anything_hq`'s)
    under new names, plus the tied duplicate."""
    config = config_class()
    with torch.device("meta"):
        model = model_class(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = hf.config_from_hf(config.to_dict(), "config.json")
    assert ours == sam_jax.get_config(name, decoder_layer_norm_eps=1e-6)
    assert describe(ours) == f"{name} (decoder LayerNorm eps 1e-06)"
    mapped = hf.hf_key_map(ours)
    assert (len(shapes), len(mapped)) == (count, count - 1)
    assert set(shapes) - set(mapped) == {hf.TIED_PE}
    assert {k: shape for k, (_, shape) in mapped.items()} == {k: v for k, v in shapes.items() if k != hf.TIED_PE}
    bare = hf.reference_state_dict({k: np.broadcast_to(np.float32(0), v) for k, v in shapes.items()})
    assert set(bare) - {ref for ref, _ in mapped.values()} == {hf.TIED_PE}  # names invert without a config


def test_defaults_are_transformers_defaults():
    for model_type, name, cls in (
        ("sam", "vision_config", SamVisionConfig),
        ("sam", "prompt_encoder_config", SamPromptEncoderConfig),
        ("sam", "mask_decoder_config", SamMaskDecoderConfig),
        ("sam_hq", "vision_config", SamHQVisionConfig),
        ("sam_hq", "prompt_encoder_config", SamHQPromptEncoderConfig),
        ("sam_hq", "mask_decoder_config", SamHQMaskDecoderConfig),
    ):
        installed = cls().to_dict()
        family = hf.FAMILIES[model_type]
        assert installed["model_type"] == family.sub_model_types[name]
        for key, value in family.defaults(name).items():
            if (name, key) == ("vision_config", "mlp_dim"):  # None resolves to hidden_size * mlp_ratio in __post_init__
                assert installed[key] == 3072
                continue
            assert installed[key] == (tuple(value) if isinstance(installed[key], tuple) else value), (cls, key)


@pytest.fixture(scope="module")
def reference_weights(folders):
    return sam_jax.load(folders["eps=1e-6"][1])


def assert_same_weights(params, expected) -> None:
    assert params.config == expected.config
    for a, b in zip(hf.weights_to_hf(params).values(), hf.weights_to_hf(expected).values(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_source_form(folders, reference_weights, tmp_path, capsys):
    model, folder = folders["eps=1e-6"]
    # Sharded safetensors, through the converter and through sam_jax.load.
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / hf.SAFETENSORS_INDEX).is_file()
    assert_same_weights(sam_jax.load(tmp_path / "sharded"), reference_weights)
    assert main([str(tmp_path / "sharded"), str(tmp_path / "a")]) == 0
    assert_same_weights(sam_jax.load(tmp_path / "a"), reference_weights)
    # A .safetensors file beside its config.json takes that config.
    assert_same_weights(sam_jax.load(folder / "model.safetensors"), reference_weights)
    # A bare .safetensors file: shapes give the architecture; what they cannot is noted.
    (tmp_path / "bare").mkdir()
    shutil.copy(folder / "model.safetensors", tmp_path / "bare" / "sam.safetensors")
    capsys.readouterr()
    assert main([str(tmp_path / "bare" / "sam.safetensors"), str(tmp_path / "b")]) == 0
    note = capsys.readouterr().err
    assert "inferred from tensor shapes" in note and "decoder heads 8" in note and "eps 1e-06" in note, note
    assert_same_weights(sam_jax.load(tmp_path / "b"), reference_weights)
    with pytest.warns(UserWarning, match="inferred from tensor shapes"):
        assert_same_weights(sam_jax.load(tmp_path / "bare" / "sam.safetensors"), reference_weights)
    # An HF-keyed pytorch_model.bin: the state_dict holds the tied duplicate, equal to its source.
    state_dict = model.state_dict()
    assert hf.TIED_PE in state_dict
    (tmp_path / "bin").mkdir()
    torch.save(state_dict, tmp_path / "bin" / "sam.bin")
    assert main([str(tmp_path / "bin" / "sam.bin"), str(tmp_path / "c")]) == 0
    assert_same_weights(sam_jax.load(tmp_path / "c"), reference_weights)
    # A folder with pytorch_model.bin: the converter reads it; sam_jax.load (no torch) says how.
    shutil.copy(folder / "config.json", tmp_path / "bin" / "config.json")
    (tmp_path / "bin" / "sam.bin").rename(tmp_path / "bin" / "pytorch_model.bin")
    assert main([str(tmp_path / "bin"), str(tmp_path / "d")]) == 0
    assert_same_weights(sam_jax.load(tmp_path / "d"), reference_weights)
    with pytest.raises(ValueError, match=r"needs torch|readable only with torch") as e:
        sam_jax.load(tmp_path / "bin")
    assert "sam-jax convert" in str(e.value) and len(str(e.value).splitlines()) == 1


def test_pixel_statistics_from_the_processor_transformers_saves(folders, reference_weights, tmp_path):
    """transformers 5 saves the image processor nested in processor_config.json; its
    statistics (0..1 units, rescaled by 1/255) become sam_jax's (0..255 units)."""
    folder = tmp_path / "with-processor"
    shutil.copytree(folders["eps=1e-6"][1], folder)
    processor = SamProcessor(
        image_processor=SamImageProcessor(image_mean=[0.5, 0.25, 0.125], image_std=[0.2, 0.4, 0.8])
    )
    processor.save_pretrained(folder)
    params = sam_jax.load(folder)
    assert params.config.pixel_mean == (127.5, 63.75, 31.875) and params.config.pixel_std == (51.0, 102.0, 204.0)
    assert_same_weights(params, reference_weights.replace(config=params.config))


def test_runtime_reads_hf_without_torch_or_transformers(folders):
    code = (
        "import sys, numpy as np, sam_jax;"
        f"p = sam_jax.load({str(folders['eps=1e-6'][1])!r});"
        "sam_jax.predict(p, np.zeros((30, 40, 3), np.uint8), [[5, 5]]);"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'segment_anything')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=REPO)


def edited_folder(folder: Path, tmp_path: Path, how: str) -> Path:
    """A copy of a transformers folder with one defect (those named hq-* of a SAM-HQ folder)."""
    bad = tmp_path / how
    shutil.copytree(folder, bad)
    tensors = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    if how == "missing":
        del tensors["mask_decoder.iou_prediction_head.proj_out.bias"]
    elif how == "extra":
        tensors["mask_decoder.hq_token.weight"] = np.zeros((1, 32), np.float32)
    elif how == "misshaped":
        tensors["vision_encoder.layers.1.mlp.lin1.weight"] = np.zeros((10, 64), np.float32)
    elif how == "tied-differs":
        tensors[hf.TIED_PE] = tensors[hf.SHARED_PE] + 1
    elif how == "activation":
        config["mask_decoder_config"]["hidden_act"] = "gelu"
    elif how == "downsample":
        config["mask_decoder_config"]["attention_downsample_rate"] = 4
    elif how == "sam_hq":  # a SamModel's tensors under a SamHQModel config
        config["model_type"] = "sam_hq"
        config["mask_decoder_config"]["vit_dim"] = config["vision_config"]["hidden_size"]
    elif how == "hq-vit_dim":
        config["mask_decoder_config"]["vit_dim"] = 32
    elif how == "hq-no-global":  # SamHQModel would run it without the early features
        config["vision_config"]["global_attn_indexes"] = []
    elif how == "vit":
        config = {"model_type": "vit", "architectures": ["ViTModel"], "hidden_size": 768}
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    (bad / "config.json").write_text(json.dumps(config))
    return bad


@pytest.mark.parametrize(
    "how,needle",
    [
        ("missing", "'mask_decoder.iou_prediction_head.proj_out.bias'"),
        ("extra", "'mask_decoder.hq_token.weight'"),
        ("misshaped", "'vision_encoder.layers.1.mlp.lin1.weight' has shape (10, 64), expected (256, 64)"),
        ("tied-differs", "differs from 'shared_image_embedding.positional_embedding'"),
        ("activation", "mask_decoder_config.hidden_act is 'gelu'"),
        ("downsample", "mask_decoder_config.attention_downsample_rate is 4"),
        (
            "sam_hq",
            "missing tensor 'mask_decoder.compress_vit_conv1.bias' (needed for a custom (embed 64, depth 3, "
            "image 64, HQ decoder) model)",
        ),
        ("hq-vit_dim", "mask_decoder_config.vit_dim (32) differs from vision_config.hidden_size (64)"),
        ("hq-no-global", "a SAM-HQ decoder needs the encoder's early features, but it has no global-attention block"),
        (
            "vit",
            "config (model_type 'vit', expected 'sam' or 'sam_hq'; "
            "no vision_config, prompt_encoder_config, mask_decoder_config)",
        ),
    ],
)
def test_refusals_name_the_problem_in_one_line_and_write_nothing(folders, hq_folder, tmp_path, capsys, how, needle):
    source = hq_folder[1] if how.startswith("hq-") else folders["eps=1e-6"][1]
    bad = edited_folder(source, tmp_path, how)
    out = tmp_path / "out"
    assert main([str(bad), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and needle in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="^" + re.escape(str(bad))) as e:
        sam_jax.load(bad)
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1


def test_outputs_replace_only_their_own_folders(small, folders, tmp_path, capsys):
    mine = tmp_path / "mine"
    assert main(["--to-hf", str(small.directory), str(mine)]) == 0
    assert main(["--to-hf", "tiny-shapes", str(mine)]) == 1  # its own earlier output: only with --overwrite
    assert "already holds a transformers SAM folder" in capsys.readouterr().err
    assert main(["--to-hf", "tiny-shapes", str(mine), "--overwrite"]) == 0
    assert sam_jax.load(mine).config.image_size == 128
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for target in (foreign, mine / "model.safetensors"):
        capsys.readouterr()
        assert main(["--to-hf", str(small.directory), str(target), "--overwrite"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(target) in err and "refusing to" in err, err
    # transformers -> sam_jax: into a folder of something else, refused; over a sam_jax checkpoint, replaced.
    capsys.readouterr()
    assert main([str(folders["eps=1e-6"][1]), str(foreign)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(foreign) in err and "refusing to" in err, err
    assert (foreign / "notes.txt").read_text() == "keep me" and sorted(p.name for p in foreign.iterdir()) == [
        "notes.txt"
    ]
    assert main([str(folders["eps=1e-6"][1]), str(tmp_path / "replace-me")]) == 0
    assert main([str(folders["pruned"][1]), str(tmp_path / "replace-me"), "--overwrite"]) == 0
    assert sam_jax.load(tmp_path / "replace-me").config.image_encoder.embed_dim == 168
    # A transformers folder someone else saved (no sam_jax marker) is not replaced either.
    capsys.readouterr()
    hf_saved = tmp_path / "saved"
    SamModel(
        HFSamConfig(vision_config=VISION, prompt_encoder_config=PROMPT, mask_decoder_config=DECODER)
    ).save_pretrained(hf_saved)
    assert main(["--to-hf", str(small.directory), str(hf_saved), "--overwrite"]) == 1
    assert "refusing to write a transformers SAM folder into it" in capsys.readouterr().err


def test_model_type_is_checked_against_the_config(folders, tmp_path, capsys):
    folder = folders["eps=1e-6"][1]
    assert main([str(folder), str(tmp_path / "a"), "--model-type", "vit_b"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err and "not vit_b" in err, err
    assert main([str(folder), str(tmp_path / "b"), "--model-type", "vit_x"]) == 1
    assert "unknown model type 'vit_x'" in capsys.readouterr().err
    assert main([str(folder), str(tmp_path / "c"), "--decoder-num-heads", "4"]) == 1
    assert "contradicts" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abc")


def test_export_follows_the_umask(small, tmp_path):
    """safetensors creates its file with mode 600; every file of the folder gets what the umask gives."""
    import os

    old = os.umask(0o027)
    try:
        hf.export_hf(small.params, tmp_path / "hf")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert modes == {name: 0o640 for name in ("config.json", "preprocessor_config.json", hf.SAFETENSORS_FILE)}
    assert (tmp_path / "hf").stat().st_mode & 0o777 == 0o750
