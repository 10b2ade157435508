"""Checkpoint files converted once, file to file: official `.pth` and Hugging Face folders
into sam-jax checkpoint folders, and sam-jax checkpoints back out to both.

What `sam-jax convert` (and `python -m convert`) runs; every write is atomic and refuses
what it did not write.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam_jax.checkpoint import checkpoint_directory, write_checkpoint
from sam_jax.config import MODEL_ALIASES
from sam_jax.formats import hf
from sam_jax.formats.reference import ConversionError, convert_state_dict, describe, params_to_state_dict
from sam_jax.formats.torch_files import read_state_dict, state_dict_bytes
from sam_jax.io import atomic_write_bytes
from sam_jax.loading import load
from sam_jax.modeling.sam import SamParams


def convert_checkpoint(
    checkpoint: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    model_type: str = "auto",
    decoder_num_heads: int | None = None,
    notes: list[str] | None = None,
    *,
    overwrite: bool = False,
) -> SamParams:
    """Converts an official checkpoint file into a sam_jax checkpoint directory (atomically).

    `output_dir` must be absent, empty, or (with `overwrite`) a sam_jax checkpoint; a folder
    holding anything else is refused before the checkpoint is read, and left untouched.
    A transformers folder, a .safetensors file or a state_dict with transformers' names goes
    to `formats.hf.read_hf_checked`; `notes` receives what it assumed rather than read.
    """
    model_type = MODEL_ALIASES.get(model_type, model_type)
    with checkpoint_directory(output_dir, overwrite) as tmp:
        state_dict = None if hf.is_hf_source(checkpoint) else read_state_dict(checkpoint)
        if state_dict is None or hf.is_hf_state_dict(state_dict):
            params, found = hf.read_hf_checked(checkpoint, model_type, decoder_num_heads, state_dict=state_dict)
            if notes is not None:
                notes.extend(found)
        else:
            try:
                params = convert_state_dict(state_dict, model_type, decoder_num_heads, notes=notes)
            except ConversionError as e:
                raise ConversionError(f"{checkpoint}: {e}") from None
        write_checkpoint(tmp, params, {"converted_from": Path(checkpoint).name, "model_type": describe(params.config)})
    return params


def load_for_export(source: str | os.PathLike[str]) -> SamParams:
    """`load(source)` with its failures as `ConversionError` (one line for the command)."""
    try:
        return load(source)  # a directory, or an embedded model's name
    except (OSError, ValueError) as e:
        raise ConversionError(str(e)) from None


def export_torch(
    flax_dir: str | os.PathLike[str], output: str | os.PathLike[str], *, overwrite: bool = False
) -> dict[str, np.ndarray]:
    """Writes a sam_jax checkpoint (or an embedded model, by name) back as a reference
    state_dict file (atomically); an existing `output` is replaced only with `overwrite`.

    The result loads into the reference model with `load_state_dict(strict=True)`.

    Returns:
        The state_dict written (reference keys -> float32 arrays).
    """
    output = Path(output)
    if output.exists() and (output.is_dir() or not overwrite):
        what = "is a folder" if output.is_dir() else "exists; pass --overwrite to replace it"
        raise ConversionError(f"{output}: {what}")
    state_dict = params_to_state_dict(load_for_export(flax_dir))
    atomic_write_bytes(output, state_dict_bytes(state_dict), overwrite=overwrite)
    return state_dict


def export_hf_checkpoint(
    flax_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> dict[str, np.ndarray]:
    """A sam_jax checkpoint (or an embedded model, by name, or anything `load` reads) as a
    transformers folder, see `formats.hf.export_hf`."""
    return hf.export_hf(load_for_export(flax_dir), output_dir, overwrite=overwrite)
