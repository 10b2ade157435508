"""Checkpoint formats other than sam-jax's own, read into `SamParams` and written back.

- `reference`: the official `segment_anything` state_dict: the one naming rule between its
  keys and the weights tree, layouts, and the architecture inferred from tensor shapes;
- `torch_files`: `.pth` files (torch imported only inside its functions);
- `hf`: Hugging Face `transformers` `SamModel` folders and files (numpy and json; safetensors).

Nothing here reads or writes sam-jax checkpoints (`sam_jax.checkpoint`) or knows the
embedded models (`sam_jax.loading`).
"""

from sam_jax.formats.reference import (
    MODEL_TYPES,
    ConversionError,
    convert_state_dict,
    describe,
    infer_config,
    state_dict_to_weights,
    torch_key,
    weights_to_state_dict,
)
from sam_jax.formats.torch_files import read_state_dict, state_dict_bytes

__all__ = [
    "MODEL_TYPES",
    "ConversionError",
    "convert_state_dict",
    "describe",
    "infer_config",
    "read_state_dict",
    "state_dict_bytes",
    "state_dict_to_weights",
    "torch_key",
    "weights_to_state_dict",
]
