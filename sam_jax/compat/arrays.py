"""Arrays of the caller's kind, for the reference-shaped classes: torch tensors in, torch
tensors out; jax in, jax out; numpy (or lists) in, numpy out.

Ported code calls torch's methods on what the reference returns (`masks.cpu().numpy()`,
`embedding.to(device)`); numpy results therefore come as `TensorLikeArray`, a numpy array
that also answers those few methods, so such lines run where no torch tensor went in.
torch is never imported here unless the caller passed a torch tensor.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("numpy", "jax", "torch")


class TensorLikeArray(np.ndarray):
    """A numpy array with the torch methods ported code calls on results: `cpu()`,
    `detach()`, `to(...)` return it, `numpy()` the plain array, `float()` a float32 copy."""

    def cpu(self) -> TensorLikeArray:
        return self

    def detach(self) -> TensorLikeArray:
        return self

    def to(self, *args: Any, **kwargs: Any) -> TensorLikeArray:
        return self

    def numpy(self) -> np.ndarray:
        return self.view(np.ndarray)

    def float(self) -> TensorLikeArray:
        return np.asarray(self, np.float32).view(TensorLikeArray)


def is_torch(value: Any) -> bool:
    """Whether `value` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def kind_of(*values: Any) -> str:
    """The kind the results of a call with these arguments come back as: torch if any is a
    torch tensor, else jax if any is a jax array, else numpy."""
    if any(is_torch(v) for v in values):
        return "torch"
    if any(isinstance(v, jax.Array) for v in values):
        return "jax"
    return "numpy"


def device_of(*values: Any) -> Any:
    """The device of the first torch tensor among `values` (None when there is none)."""
    return next((v.device for v in values if is_torch(v)), None)


def to_numpy(value: Any) -> Any:
    """Any array (a torch tensor on any device too) as numpy; anything else unchanged, for the
    caller's checks to name."""
    if value is None:
        return None
    if is_torch(value):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception:
        return value


def as_kind(value: Any, kind: str, device: Any = None) -> Any:
    """A result in the caller's kind: a torch tensor (on `device` when given; from a CPU jax
    array without a copy, through DLPack), a jax array, or a `TensorLikeArray`."""
    if kind == "jax":
        return jnp.asarray(value)
    if kind == "torch":
        import torch

        if isinstance(value, jax.Array) and value.dtype != jnp.bool_:
            try:
                tensor = torch.from_dlpack(value)
            except Exception:  # a device or dtype DLPack cannot hand over: copy
                tensor = torch.from_numpy(np.array(value))
        else:
            tensor = torch.from_numpy(np.array(value))
        return tensor if device is None else tensor.to(device)
    return np.asarray(value).view(TensorLikeArray)
