"""`sam_jax.load` of Hugging Face `transformers` SAM checkpoints.

Only the detection lives here; the names and the config mapping are the converter's
(`convert.hf`, numpy and json only), imported when such a checkpoint is loaded. A
`.safetensors` file or folder loads without torch; a `pytorch_model.bin` is refused
with the command that converts it once.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

from sam_jax.checkpoint import META_FILE
from sam_jax.modeling.sam import SamParams

HF_CONFIG_FILE = "config.json"


def is_hf_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a `.safetensors` file or a folder with a config.json that is not
    a sam_jax checkpoint."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".safetensors"
    return p.is_dir() and not (p / META_FILE).is_file() and (p / HF_CONFIG_FILE).is_file()


def load_hf(path: str | os.PathLike[str]) -> SamParams:
    """Converts a transformers SAM folder or `.safetensors` file in memory.

    What a bare file's shapes cannot tell (decoder heads and LayerNorm epsilon, pixel
    statistics) is assumed and reported with `warnings.warn`.

    Raises:
        ValueError (`convert.ConversionError`) naming the file and the first problem.
    """
    from convert.hf import read_hf, warn_notes

    params, notes = read_hf(path, allow_torch=False)
    warn_notes(notes)
    return params.replace(weights=jax.tree.map(lambda x: jax.numpy.asarray(np.asarray(x, np.float32)), params.weights))
