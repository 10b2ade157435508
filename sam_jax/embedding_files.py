"""Embedding files: the `.npz` a `sam-jax embed` job writes per image, and `load_embedding`,
which reads one back as the `ImageEmbedding` that `decode` takes."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from sam_jax.predictor import ImageEmbedding

EMBEDDING_KEYS = ("image_embedding", "original_size", "input_size")
# Stored beside the embedding for a model whose decoder reads it (SAM-HQ).
EARLY_FEATURES_KEY = "early_features"


def embedding_bytes(
    embedding: np.ndarray,
    original_size: Sequence[int],
    input_size: Sequence[int],
    early_features: np.ndarray | None = None,
) -> bytes:
    buffer = io.BytesIO()
    arrays = {
        "image_embedding": np.asarray(embedding, np.float32),
        "original_size": np.asarray(original_size, np.int64),
        "input_size": np.asarray(input_size, np.int64),
    }
    if early_features is not None:
        arrays[EARLY_FEATURES_KEY] = np.asarray(early_features, np.float32)
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def is_complete_embedding(path: Path) -> bool:
    """True when `path` is a readable embedding file (outputs are written atomically, so this
    only fails for files damaged by something else)."""
    try:
        with zipfile.ZipFile(path) as z:
            return {f"{k}.npy" for k in EMBEDDING_KEYS} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_embedding(path: str | os.PathLike[str]) -> ImageEmbedding:
    """Reads a file written by `sam-jax embed` as the `ImageEmbedding` `sam_jax.decode` takes.

    Raises:
        ValueError: naming the file, when it is not an embedding file (another archive, a
            `.npy`, pickled objects, impossible sizes, non-finite values).
    """
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not an embedding file (a single array; expected an .npz of sam-jax embed)")
        with loaded as f:
            missing = [k for k in EMBEDDING_KEYS if k not in f]
            if missing:
                raise ValueError(f"{path}: not an embedding file (missing {', '.join(missing)})")
            emb, original, inp = f["image_embedding"], f["original_size"], f["input_size"]
            early = f[EARLY_FEATURES_KEY] if EARLY_FEATURES_KEY in f else None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable embedding file ({e})") from None
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable embedding file ({e})") from None
    if emb.ndim != 3 or emb.dtype.kind != "f" or original.shape != (2,) or inp.shape != (2,):
        raise ValueError(f"{path}: image_embedding must be float (E, E, C) and the sizes (2,)")
    if original.dtype.kind not in "iu" or inp.dtype.kind not in "iu" or min(*original, *inp) < 1:
        raise ValueError(f"{path}: original_size and input_size must be positive integers, got {original}, {inp}")
    if not np.all(np.isfinite(emb)):
        raise ValueError(f"{path}: image_embedding holds NaN or infinite values")
    if early is not None and (early.ndim != 3 or early.dtype.kind != "f" or not np.all(np.isfinite(early))):
        raise ValueError(f"{path}: {EARLY_FEATURES_KEY} must be finite float (E, E, D)")
    return ImageEmbedding(
        jax.numpy.asarray(emb),
        (int(original[0]), int(original[1])),
        (int(inp[0]), int(inp[1])),
        None if early is None else jax.numpy.asarray(early),
    )
