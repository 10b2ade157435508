"""PyTorch `.pth` files: reference state_dicts read as numpy and written back.

The only library module that imports torch, and only inside these functions: reading a
checkpoint needs torch's unpickler, and nothing else in sam-jax does.
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sam_jax.formats.reference import BATCH_COUNTER, ConversionError


def require_torch(path: str | os.PathLike[str]) -> None:
    """Raises ImportError with the way out when torch is missing for the PyTorch file `path`."""
    if importlib.util.find_spec("torch") is None:
        raise ImportError(
            f"checkpoint {str(path)!r} is a PyTorch file and torch is not installed: install the "
            f"'convert' extra, or convert it once elsewhere with `sam-jax convert {path} OUT_DIR`"
        )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a reference checkpoint (a state_dict, or `{"model": state_dict}`) as float32 numpy.

    BatchNorm's integer batch counters (`*.num_batches_tracked`) come through as int64;
    every other entry must be a floating-point tensor.

    Raises:
        ConversionError: unreadable, truncated or not a dict of tensors.
        ImportError: torch is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    require_torch(path)
    import torch

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
        if str(key).endswith("." + BATCH_COUNTER) and isinstance(value, torch.Tensor) and value.numel() == 1:
            out[str(key)] = value.detach().cpu().numpy().astype(np.int64)
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ConversionError(f"{path}: entry {key!r} is not a floating-point tensor")
        out[str(key)] = value.detach().to(torch.float32).cpu().numpy()
        if not np.all(np.isfinite(out[str(key)])):
            raise ConversionError(f"{path}: tensor {key!r} holds NaN or infinite values")
    return out


def state_dict_bytes(state_dict: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of `torch.save(state_dict)`, each array a tensor of its dtype (same values,
    bit for bit), for an atomic write by the caller."""
    import torch

    # np.require copies only arrays that are read-only views of device buffers.
    tensors = {k: torch.from_numpy(np.require(v, requirements=["W", "C"])) for k, v in state_dict.items()}
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()
