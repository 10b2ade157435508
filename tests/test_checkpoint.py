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


def test_config_tolerates_unknown_and_missing_fields(small, tmp_path):
    sam_jax.save(tmp_path / "ck", small.params)
    meta_path = tmp_path / "ck" / checkpoint.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["config"]["a_field_from_the_future"] = 1
    del meta["config"]["pixel_std"]  # written by an older version: the default applies
    meta_path.write_text(json.dumps(meta))
    assert sam_jax.load(tmp_path / "ck").config == small.params.config


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
