"""Official PyTorch SAM checkpoints <-> sam_jax checkpoints; Hugging Face `transformers`
SAM folders and files too (`convert.hf`).

This package and the tests are the only code that imports torch. Run as
`python -m convert CHECKPOINT OUTPUT_DIR`, `python -m convert --to-torch DIR OUT.pth` or
`python -m convert --to-hf DIR OUT_DIR`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

import sam_jax
from convert import hf
from convert.mapping import (
    ConversionError,
    describe,
    infer_config,
    state_dict_to_weights,
    torch_key,
    weights_to_state_dict,
)
from sam_jax.checkpoint import check_finite, checkpoint_directory, write_checkpoint
from sam_jax.config import MODEL_ALIASES, MODEL_REGISTRY, SamConfig, get_config
from sam_jax.io import atomic_write_bytes
from sam_jax.modeling.sam import SamParams

MODEL_TYPES = ("auto", *MODEL_ALIASES, *MODEL_REGISTRY)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a reference checkpoint (a state_dict, or `{"model": state_dict}`) as float32 numpy.

    Raises:
        ConversionError: unreadable, truncated or not a dict of tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path}: unreadable checkpoint ({first})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{path}: not a state_dict (got {type(obj).__name__})")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ConversionError(f"{path}: entry {key!r} is not a floating-point tensor")
        out[str(key)] = value.detach().to(torch.float32).cpu().numpy()
        if not np.all(np.isfinite(out[str(key)])):
            raise ConversionError(f"{path}: tensor {key!r} holds NaN or infinite values")
    return out


def convert_state_dict(
    state_dict: dict[str, np.ndarray],
    model_type: str = "auto",
    decoder_num_heads: int | None = None,
    *,
    config: SamConfig | None = None,
) -> SamParams:
    """Builds `SamParams` from a reference state_dict (numpy values).

    Args:
        state_dict: reference keys -> arrays.
        model_type: "auto" infers the architecture from shapes; "vit_b"/"vit_l"/"vit_h"
            (or "default", the reference registry's name for vit_h) requires that architecture.
        decoder_num_heads: the decoder's head count (not visible in shapes); default 8.
        config: an explicit architecture, overriding `model_type`.
    """
    check_finite(state_dict, "the state_dict")
    if config is not None:
        return SamParams(config=config, weights=state_dict_to_weights(state_dict, config))
    if model_type not in MODEL_TYPES:
        raise ConversionError(f"unknown model type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
    heads = {} if decoder_num_heads is None else {"decoder_num_heads": decoder_num_heads}
    try:
        inferred = infer_config(state_dict, **heads) if model_type == "auto" else get_config(model_type, **heads)
    except ConversionError:
        raise
    except ValueError as e:
        raise ConversionError(f"the tensors describe no valid SAM model: {e}") from None
    return SamParams(config=inferred, weights=state_dict_to_weights(state_dict, inferred))


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
    to `convert.hf.read_hf_checked`; `notes` receives what it assumed rather than read.
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
                params = convert_state_dict(state_dict, model_type, decoder_num_heads)
            except ConversionError as e:
                raise ConversionError(f"{checkpoint}: {e}") from None
        write_checkpoint(tmp, params, {"converted_from": Path(checkpoint).name, "model_type": describe(params.config)})
    return params


def export_torch(
    flax_dir: str | os.PathLike[str], output: str | os.PathLike[str], *, overwrite: bool = False
) -> dict[str, Any]:
    """Writes a sam_jax checkpoint (or an embedded model, by name) back as a reference
    state_dict file (atomically); an existing `output` is replaced only with `overwrite`.

    The result loads into the reference model with `load_state_dict(strict=True)`.
    """
    import io

    import torch

    output = Path(output)
    if output.exists() and (output.is_dir() or not overwrite):
        what = "is a folder" if output.is_dir() else "exists; pass --overwrite to replace it"
        raise ConversionError(f"{output}: {what}")

    try:
        params = sam_jax.load(flax_dir)  # a directory, or an embedded model's name
    except (OSError, ValueError) as e:
        raise ConversionError(str(e)) from None
    state_dict = {
        # np.require copies only arrays that are read-only views of device buffers.
        k: torch.from_numpy(np.require(v, requirements=["W", "C"]))
        for k, v in weights_to_state_dict(params.weights).items()
    }
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    atomic_write_bytes(output, buffer.getvalue(), overwrite=overwrite)
    return state_dict


__all__ = [
    "ConversionError",
    "convert_checkpoint",
    "convert_state_dict",
    "export_torch",
    "infer_config",
    "read_state_dict",
    "state_dict_to_weights",
    "torch_key",
    "weights_to_state_dict",
]
