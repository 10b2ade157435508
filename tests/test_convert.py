"""The converter: round trips, strict refusals, and configuration inference."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

import sam_jax
from sam_jax import formats
from sam_jax.cli.convert import main
from sam_jax.formats.reference import infer_config, to_torch_layout, torch_key
from sam_jax.modeling.sam import abstract_params
from sam_jax.testing import SMALL, build_reference, make_image

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convert", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_cli_round_trip_is_bit_exact_and_loads_strictly(small, tmp_path):
    out = tmp_path / "jax"
    result = run_cli(small.checkpoint, out)
    assert result.returncode == 0, result.stderr
    back = tmp_path / "back.pth"
    result = run_cli("--to-torch", out, back)
    assert result.returncode == 0, result.stderr
    original = torch.load(small.checkpoint, weights_only=True)
    exported = torch.load(back, weights_only=True)
    assert set(exported) == set(original)
    for key, value in original.items():
        assert exported[key].dtype == torch.float32 and exported[key].shape == value.shape, key
        assert torch.equal(exported[key], value), key  # bit for bit
    fresh = build_reference(SMALL)
    fresh.load_state_dict(exported, strict=True)
    image = make_image(200, 300)
    a, b = SamPredictor(small.ref), SamPredictor(fresh.eval())
    a.set_image(image)
    b.set_image(image)
    for x, y in zip(
        a.predict(np.array([[50, 60]]), np.array([1])), b.predict(np.array([[50, 60]]), np.array([1])), strict=True
    ):
        np.testing.assert_array_equal(x, y)


def test_wrapped_state_dict(small, tmp_path):
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": torch.load(small.checkpoint, weights_only=True)}, wrapped)
    assert main([str(wrapped), str(tmp_path / "out")]) == 0
    params = sam_jax.load(tmp_path / "out")
    assert params.config == SMALL
    for a, b in zip(jax.tree.leaves(params.weights), jax.tree.leaves(small.params.weights), strict=True):
        np.testing.assert_array_equal(a, b)


def test_decoder_heads_override(small, tmp_path):
    assert main([str(small.checkpoint), str(tmp_path / "o"), "--decoder-num-heads", "4"]) == 0
    assert sam_jax.load(tmp_path / "o").config.decoder_num_heads == 4


def corrupt(small, tmp_path: Path, how: str) -> Path:
    sd = torch.load(small.checkpoint, weights_only=True)
    path = tmp_path / f"{how}.pth"
    if how == "missing":
        del sd["mask_decoder.transformer.layers.1.norm3.bias"]
    elif how == "extra":
        sd["mask_decoder.extra_head.weight"] = torch.zeros(3)
    elif how == "misshaped":
        sd["image_encoder.blocks.2.mlp.lin1.weight"] = torch.zeros(10, 64)
    elif how == "truncated":
        path.write_bytes(small.checkpoint.read_bytes()[:5000])
        return path
    elif how == "garbage":
        path.write_bytes(b"this is not a checkpoint")
        return path
    torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    "how,needle",
    [
        ("missing", "mask_decoder.transformer.layers.1.norm3.bias"),
        ("extra", "mask_decoder.extra_head.weight"),
        ("misshaped", "image_encoder.blocks.2.mlp.lin1.weight"),
        ("truncated", "unreadable"),
        ("garbage", "unreadable"),
    ],
)
def test_refusals_name_file_and_key_and_leave_nothing(small, tmp_path, capsys, how, needle):
    bad = corrupt(small, tmp_path, how)
    out = tmp_path / "out"
    assert main([str(bad), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and needle in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_refusal_through_the_real_entry_point(small, tmp_path):
    existing = tmp_path / "existing"
    assert main([str(small.checkpoint), str(existing)]) == 0
    before = sorted(p.relative_to(existing) for p in existing.rglob("*"))
    result = run_cli(corrupt(small, tmp_path, "missing"), existing)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.relative_to(existing) for p in existing.rglob("*")) == before  # old output untouched
    assert sam_jax.load(existing).config == SMALL


def test_unknown_model_type_and_wrong_model_type(small, tmp_path, capsys):
    assert main([str(small.checkpoint), str(tmp_path / "a"), "--model-type", "vit_x"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vit_x" in err and "vit_b" in err
    assert main([str(small.checkpoint), str(tmp_path / "b"), "--model-type", "vit_b"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(small.checkpoint) in err and "image_encoder." in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_input_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.pth"), str(tmp_path / "out")]) == 1
    assert "nope.pth" in capsys.readouterr().err


def test_to_torch_refuses_a_non_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--to-torch", str(tmp_path / "empty"), str(tmp_path / "x.pth")]) == 1
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_shapes_map_one_to_one(name):
    """Every official tensor has exactly one parameter of matching shape, and the inferred
    config is the registry's. Built on torch's meta device: shapes without memory. With the
    small model's bit-exact round trip through the command (above), this is what a full-size
    round trip would show, without writing 2.5 GB files."""
    with torch.device("meta"):
        ref = sam_model_registry[name]()
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    shape_only = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
    config = infer_config(shape_only)
    assert config == sam_jax.get_config(name)
    mapped = {}
    for path, spec in jax.tree_util.tree_flatten_with_path(abstract_params(config).weights)[0]:
        keys = tuple(p.key for p in path)
        key = torch_key(keys)
        mapped[key] = to_torch_layout(key, keys[-1], np.broadcast_to(np.uint8(0), spec.shape)).shape
    assert mapped == shapes


def test_convert_state_dict_api_names_the_key(small):
    sd = {k: v.numpy() for k, v in torch.load(small.checkpoint, weights_only=True).items()}
    sd.pop("prompt_encoder.not_a_point_embed.weight")
    with pytest.raises(formats.ConversionError, match=re.escape("prompt_encoder.not_a_point_embed.weight")):
        formats.convert_state_dict(sd)


def test_sam_jax_convert_subcommand(small, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sam_jax.cli", "convert", str(small.checkpoint), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert sam_jax.load(tmp_path / "out").config == SMALL
