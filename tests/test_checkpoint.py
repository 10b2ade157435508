"""save/load round trips, atomic writes, tolerant loading, and torch-free runtime."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import sam_jax
from sam_jax import checkpoint


def test_save_load_round_trip(small, tmp_path):
    sam_jax.save(tmp_path / "ck", small.params)
    loaded = sam_jax.load(tmp_path / "ck")
    assert loaded.config == small.params.config
    for a, b in zip(jax.tree.leaves(loaded.weights), jax.tree.leaves(small.params.weights), strict=True):
        np.testing.assert_array_equal(a, b)
    # Saving again over an existing checkpoint needs overwrite=True, and replaces it whole.
    with pytest.raises(FileExistsError, match="already holds a sam_jax checkpoint"):
        sam_jax.save(tmp_path / "ck", sam_jax.init(small.params.config, seed=5))
    sam_jax.save(tmp_path / "ck", sam_jax.init(small.params.config, seed=5), overwrite=True)
    assert not np.array_equal(
        jax.tree.leaves(sam_jax.load(tmp_path / "ck").weights)[0], jax.tree.leaves(small.params.weights)[0]
    )


def test_failed_save_leaves_previous_checkpoint(small, tmp_path, monkeypatch):
    sam_jax.save(tmp_path / "ck", small.params)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "write_checkpoint", boom)
    with pytest.raises(OSError, match="disk full"):
        sam_jax.save(tmp_path / "ck", small.params, overwrite=True)
    monkeypatch.undo()
    assert sam_jax.load(tmp_path / "ck").config == small.params.config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_config_fills_missing_fields_and_refuses_unknown_ones(small, tmp_path):
    """A field an older version did not write takes its default: the model is the one it
    meant. A field this version does not know is refused: it changes the model in a way this
    version cannot honour (or is a typo), so loading on would silently build another model."""
    sam_jax.save(tmp_path / "ck", small.params)
    meta_path = tmp_path / "ck" / checkpoint.META_FILE
    meta = json.loads(meta_path.read_text())
    del meta["config"]["pixel_std"]  # written by an older version: the default applies
    meta_path.write_text(json.dumps(meta))
    assert sam_jax.load(tmp_path / "ck").config == small.params.config
    meta["config"]["a_field_from_the_future"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError) as info:
        sam_jax.load(tmp_path / "ck")
    assert str(info.value) == (
        f"{meta_path}: invalid config: unknown field a_field_from_the_future (not a field of SamConfig in this "
        "sam-jax: misspelt, or written by a newer version)"
    )


def test_save_names_a_bad_path_argument(small, tmp_path):
    with pytest.raises(TypeError, match=r"^path must be a folder path \(str or os.PathLike\), got NoneType None$"):
        sam_jax.save(None, small.params)
    with pytest.raises(TypeError, match=r"^save takes the folder first, then the model: sam_jax.save\(path, params\)$"):
        sam_jax.save(small.params, tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []


def test_load_accepts_rel_pos_tables_of_another_length(small, tmp_path):
    """A table trained at another resolution loads; attention interpolates it."""
    weights = jax.tree.map(np.asarray, small.params.weights)
    block = weights["image_encoder"]["blocks_0"]["attn"]
    block["rel_pos_h"] = np.concatenate([block["rel_pos_h"], block["rel_pos_h"]])[:21]
    params = sam_jax.SamParams(config=small.params.config, weights=weights)
    sam_jax.save(tmp_path / "ck", params)
    loaded = sam_jax.load(tmp_path / "ck")
    masks, _, _ = sam_jax.predict(loaded, np.zeros((50, 50, 3), np.uint8), [[10, 10]])
    assert masks.shape == (3, 50, 50)


def test_load_refuses_mismatched_weights(small, tmp_path):
    weights = jax.tree.map(np.asarray, small.params.weights)
    weights["mask_decoder"]["iou_token"]["embedding"] = np.zeros((2, 32), np.float32)
    sam_jax.save(tmp_path / "ck", sam_jax.SamParams(config=small.params.config, weights=weights))
    with pytest.raises(ValueError, match="mask_decoder/iou_token/embedding"):
        sam_jax.load(tmp_path / "ck")


def test_damaged_weights_are_reported(small, tmp_path):
    sam_jax.save(tmp_path / "ck", small.params)
    for f in (tmp_path / "ck" / checkpoint.WEIGHTS_DIR).rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"unreadable weights|missing parameter"):
        sam_jax.load(tmp_path / "ck")


def test_runtime_never_imports_torch(small):
    code = (
        "import sys, numpy as np, sam_jax;"
        f"p = sam_jax.load({str(small.directory)!r});"
        "sam_jax.predict(p, np.zeros((30, 40, 3), np.uint8), [[5, 5]]);"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'segment_anything')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# The config of a vit_b checkpoint as the release before TinyViT wrote it (sam_jax.json
# "version": 1): the encoder's fields at the top level. Kept verbatim: such files must load.
FIRST_FORMAT_VIT_B = {
    "encoder_embed_dim": 768,
    "encoder_depth": 12,
    "encoder_num_heads": 12,
    "encoder_global_attn_indexes": [2, 5, 8, 11],
    "image_size": 1024,
    "patch_size": 16,
    "encoder_window_size": 14,
    "encoder_mlp_ratio": 4.0,
    "qkv_bias": True,
    "use_abs_pos": True,
    "use_rel_pos": True,
    "prompt_embed_dim": 256,
    "mask_in_chans": 16,
    "decoder_depth": 2,
    "decoder_num_heads": 8,
    "decoder_mlp_dim": 2048,
    "attention_downsample_rate": 2,
    "num_multimask_outputs": 3,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
    "decoder_layer_norm_eps": 1e-05,
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
}


def test_configs_of_the_first_format_load_as_the_same_model(small, tmp_path):
    assert sam_jax.SamConfig.from_dict(FIRST_FORMAT_VIT_B) == sam_jax.get_config("vit_b")
    # A whole checkpoint written in the first format (the small model's weights) loads, and
    # saving it again writes the current format, which loads to the same config.
    sam_jax.save(tmp_path / "ck", small.params)
    meta_path = tmp_path / "ck" / checkpoint.META_FILE
    meta = json.loads(meta_path.read_text())
    vit = meta["config"].pop("image_encoder")
    assert vit.pop("kind") == "vit"
    meta["config"].update({old: vit[new] for old, new in sam_jax.config.LEGACY_VIT_FIELDS.items()})
    meta["version"] = 1
    meta_path.write_text(json.dumps(meta))
    old = sam_jax.load(tmp_path / "ck")
    assert old.config == small.params.config
    sam_jax.save(tmp_path / "again", old)
    assert (
        json.loads((tmp_path / "again" / checkpoint.META_FILE).read_text())["config"]["image_encoder"]["kind"] == "vit"
    )
    assert sam_jax.load(tmp_path / "again").config == small.params.config


@pytest.mark.parametrize("version", [3, "2", True])
def test_a_format_version_this_release_does_not_know_is_refused(small, tmp_path, version):
    sam_jax.save(tmp_path / "ck", small.params)
    meta_path = tmp_path / "ck" / checkpoint.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["version"] = version
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"sam_jax.json: checkpoint format version .*; this sam-jax reads versions 1, 2"
    ):
        sam_jax.load(tmp_path / "ck")
