"""Saving and loading `SamParams`: an orbax checkpoint of the weights plus a JSON config.

Layout of a checkpoint directory::

    DIR/sam_jax.json   {"format": "sam_jax", "version": 1, "config": {...}}
    DIR/weights/       orbax PyTree checkpoint of `SamParams.weights`

Writes are atomic: everything goes to a temporary sibling directory that is renamed
into place only when complete, so a killed save never leaves a half-written DIR.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sam_jax.config import SamConfig
from sam_jax.modeling.sam import SamParams, abstract_params

FORMAT = "sam_jax"
VERSION = 1
META_FILE = "sam_jax.json"
WEIGHTS_DIR = "weights"


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary directory that replaces `path` when the block ends without error.

    On error the temporary directory is removed and `path` is left as it was.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes a file through a temporary sibling and `os.replace`."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), tree)


def write_checkpoint(directory: Path, params: SamParams, extra: dict[str, Any] | None = None) -> None:
    """Writes a checkpoint into an existing, empty directory (no atomicity: see `save`)."""
    import orbax.checkpoint as ocp

    meta = {"format": FORMAT, "version": VERSION, "config": params.config.to_dict(), **(extra or {})}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    ocp.PyTreeCheckpointer().save(str(directory / WEIGHTS_DIR), _to_numpy(params.weights))


def save(path: str | os.PathLike[str], params: SamParams) -> None:
    """Saves `params` to the directory `path` atomically, replacing any previous one.

    Args:
        path: a directory path (created; an existing checkpoint there is replaced).
        params: the `SamParams` to save.
    """
    if not isinstance(params, SamParams):
        raise TypeError(f"params must be SamParams (from sam_jax.load or sam_jax.init), got {type(params).__name__}")
    with atomic_directory(path) as tmp:
        write_checkpoint(tmp, params)


# Inside a training run step (`sam_jax.train.CheckpointStore`): `<step>/meta/metadata`.
RUN_META_FILE = ("meta", "metadata")


def resolve(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Finds the weights directory's parent and the metadata file of a checkpoint.

    Accepts a directory written by `save` or the converter, a training-run step directory,
    or a training-run directory (its latest complete step).

    Returns:
        (directory holding `weights/`, metadata JSON path).
    """
    p = Path(path)
    if (p / META_FILE).is_file():
        return p, p / META_FILE
    if p.joinpath(*RUN_META_FILE).is_file():
        return p, p.joinpath(*RUN_META_FILE)
    steps = (
        sorted(int(c.name) for c in p.iterdir() if c.name.isdigit() and c.joinpath(*RUN_META_FILE).is_file())
        if p.is_dir()
        else []
    )
    if steps:
        return resolve(p / str(steps[-1]))
    raise FileNotFoundError(f"{path}: not a sam_jax checkpoint directory (no {META_FILE}, nor a training run)")


def read_config(path: str | os.PathLike[str]) -> SamConfig:
    """Reads only the configuration of a checkpoint directory."""
    _, meta_path = resolve(path)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: unreadable checkpoint metadata ({e})") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ValueError(f"{meta_path}: not a sam_jax checkpoint (format {meta.get('format')!r})")
    return SamConfig.from_dict(meta["config"])


def check_weights(config: SamConfig, weights: Any, source: str) -> None:
    """Checks that `weights` has exactly the parameters `config` needs.

    Relative-position tables may differ in length (they are interpolated at run time).

    Raises:
        ValueError naming `source` and the first missing, unexpected or mis-shaped key.
    """
    expected = dict(_flatten(abstract_params(config).weights))
    found = dict(_flatten(weights))
    for key in expected:
        if key not in found:
            raise ValueError(f"{source}: missing parameter {key!r}")
    for key in found:
        if key not in expected:
            raise ValueError(f"{source}: unexpected parameter {key!r}")
    for key, want in expected.items():
        got = tuple(np.shape(found[key]))
        resizable = key.rsplit("/", 1)[-1] in ("rel_pos_h", "rel_pos_w") and got[1:] == tuple(want.shape[1:])
        if got != tuple(want.shape) and not resizable:
            raise ValueError(f"{source}: parameter {key!r} has shape {got}, expected {tuple(want.shape)}")


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}/{k}" if prefix else str(k))
    else:
        yield prefix, tree


def load_directory(path: str | os.PathLike[str]) -> SamParams:
    """Loads a checkpoint directory written by `save` or by the converter."""
    import orbax.checkpoint as ocp

    config = read_config(path)
    weights_path = (resolve(path)[0] / WEIGHTS_DIR).absolute()
    if not weights_path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint has no {WEIGHTS_DIR}/ directory")
    try:
        weights = ocp.PyTreeCheckpointer().restore(str(weights_path))
    except Exception as e:  # orbax raises many types for a damaged checkpoint
        raise ValueError(f"{weights_path}: unreadable weights ({type(e).__name__}: {e})") from None
    check_weights(config, weights, str(path))
    weights = jax.tree.map(lambda x: jax.numpy.asarray(np.asarray(x, np.float32)), weights)
    return SamParams(config=config, weights=weights)
