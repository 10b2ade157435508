"""Saving and loading `SamParams`: an orbax checkpoint of the weights plus a JSON config.

Layout of a checkpoint directory::

    DIR/sam_jax.json   {"format": "sam_jax", "version": 1, "config": {...}, "weights_sha256": "...",
                        "weights_files": {"<file under weights/>": <bytes>, ...}}
    DIR/weights/       orbax PyTree checkpoint of `SamParams.weights`

Writes are atomic (a complete temporary sibling is renamed into place) and never touch
what is not a checkpoint: a folder holding anything else is refused, an existing checkpoint
is replaced only when asked. Loading checks the config's fields, the recorded weight files'
sizes, the stored shapes, then the weights' checksum and that every weight is finite, and
names the file at fault.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sam_jax.config import SamConfig
from sam_jax.io import only_names, write_directory
from sam_jax.modeling.sam import SamParams, abstract_params

FORMAT = "sam_jax"
# 2: the config names its image encoder (`SamConfig.image_encoder`); 1: the ViT's fields
# at the config's top level. Both are read; a newer version is refused rather than guessed at.
VERSION = 2
READABLE_VERSIONS = (1, 2)
META_FILE = "sam_jax.json"
WEIGHTS_DIR = "weights"
CHECKPOINT_NAMES = (META_FILE, WEIGHTS_DIR)


def flatten_weights(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(`image_encoder/blocks_0/attn/qkv/kernel`, leaf) pairs of a weights tree, in tree order."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flatten_weights(v, f"{prefix}/{k}" if prefix else str(k))
    else:
        yield prefix, tree


def weights_digest(weights: Any) -> str:
    """SHA-256 of the weights as float32, over sorted paths, shapes and bytes."""
    h = hashlib.sha256()
    for path, leaf in sorted(flatten_weights(weights), key=lambda item: item[0]):
        a = np.ascontiguousarray(np.asarray(leaf, np.float32))
        h.update(f"{path}:{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def tree_digest(tree: Any) -> str:
    """SHA-256 of any pytree's leaves as stored (dtype, shape, bytes), in tree order: the
    optimiser state's checksum, whose leaves are not all float32."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def check_finite(weights: Any, source: str) -> None:
    """Raises ValueError naming `source` and the first weight holding NaN or infinity."""
    for path, leaf in flatten_weights(weights):
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(f"{source}: weight {path!r} holds NaN or infinite values")


def is_checkpoint_dir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder holding a sam_jax checkpoint and nothing else."""
    p = Path(path)
    if not p.is_dir() or not only_names(p, lambda name: name in CHECKPOINT_NAMES):
        return False
    try:
        return json.loads((p / META_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_checkpoint(directory: Path, params: SamParams, extra: dict[str, Any] | None = None) -> None:
    """Writes a checkpoint into an existing, empty directory (no atomicity: see `save`)."""
    import orbax.checkpoint as ocp

    weights = jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), params.weights)
    check_finite(weights, "the weights to save")
    ocp.PyTreeCheckpointer().save(str(directory / WEIGHTS_DIR), weights)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": params.config.to_dict(),
        "weights_sha256": weights_digest(weights),
        "weights_files": weights_file_sizes(directory / WEIGHTS_DIR),
        **(extra or {}),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def weights_file_sizes(weights_path: Path) -> dict[str, int]:
    """Every file under `weights_path` (POSIX path relative to it) and its size in bytes."""
    files = (p for p in weights_path.rglob("*") if p.is_file())
    return {p.relative_to(weights_path).as_posix(): p.stat().st_size for p in sorted(files)}


def check_weights_files(weights_path: Path, meta_path: Path, recorded: Any) -> None:
    """Checks the files `save` recorded before orbax reads any of them.

    A truncated or missing file then fails here, in one line, instead of inside orbax's
    concurrent reads (whose late failures print tracebacks from storage threads).

    Raises:
        ValueError naming the file at fault (or the malformed record in `meta_path`).
    """
    if not isinstance(recorded, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in recorded.items()
    ):
        raise ValueError(f"{meta_path}: weights_files must map file names to sizes in bytes")
    for name, size in recorded.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{meta_path}: weights_files names {name!r}, not a file inside {WEIGHTS_DIR}/")
        file = weights_path / name
        found = file.stat().st_size if file.is_file() else None
        if found != size:
            what = "is missing" if found is None else f"is {found} bytes"
            raise ValueError(
                f"{file}: unreadable weights ({what}, {meta_path} records {size}; an incomplete or damaged copy)"
            )


def save(path: str | os.PathLike[str], params: SamParams, *, overwrite: bool = False) -> None:
    """Saves `params` to the directory `path` atomically.

    Args:
        path: a directory path: absent or empty (created), or an earlier checkpoint (replaced
            only with `overwrite`). A folder holding anything else is refused untouched.
        params: the `SamParams` to save.
        overwrite: replace a sam_jax checkpoint already at `path`.
    Raises:
        FileExistsError: `path` holds other files, or a checkpoint and `overwrite` is False.
    """
    if isinstance(path, SamParams) and not isinstance(params, SamParams):
        raise TypeError("save takes the folder first, then the model: sam_jax.save(path, params)")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"path must be a folder path (str or os.PathLike), got {type(path).__name__} {path!r:.40}")
    if "sam_jax.nnx" in sys.modules:  # an NNX model exists only once its module is imported
        from sam_jax.nnx import Sam, from_nnx

        params = from_nnx(params) if isinstance(params, Sam) else params
    if not isinstance(params, SamParams):
        raise TypeError(
            "params must be SamParams (from sam_jax.load or sam_jax.init) or a sam_jax.nnx.Sam, "
            f"got {type(params).__name__}"
        )
    with checkpoint_directory(path, overwrite) as tmp:
        write_checkpoint(tmp, params)


def checkpoint_directory(path: str | os.PathLike[str], overwrite: bool) -> Any:
    """`write_directory` for a checkpoint: yields the temporary folder to write it into."""
    return write_directory(path, owns=is_checkpoint_dir, overwrite=overwrite, what="a sam_jax checkpoint")


# Inside a training run step (`sam_jax.train.store.CheckpointStore`): `<step>/meta/metadata`.
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


def read_meta(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The metadata of a checkpoint, checked: (its file, its contents)."""
    _, meta_path = resolve(path)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{meta_path}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{meta_path}: not a sam_jax checkpoint (format {found!r})")
    version = meta.get("version", 1)
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ValueError(
            f"{meta_path}: checkpoint format version {version!r}; this sam-jax reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (a newer sam-jax wrote it?)"
        )
    return meta_path, meta


def read_config(path: str | os.PathLike[str]) -> SamConfig:
    """Reads only the configuration of a checkpoint directory, validated field by field."""
    meta_path, meta = read_meta(path)
    try:
        return SamConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{meta_path}: invalid config: {e}") from None


def check_weights(config: SamConfig, shapes: Any, source: str) -> None:
    """Checks that a weights tree (of arrays, or of anything with a `.shape`) has exactly
    the parameters `config` needs.

    Relative-position tables may differ in length (they are interpolated at run time).

    Raises:
        ValueError naming `source` and the first missing, unexpected or mis-shaped key.
    """
    expected = dict(flatten_weights(abstract_params(config).weights))
    found = dict(flatten_weights(shapes))
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


class _Shape:
    """A leaf of stored-array metadata, as `check_weights` reads it."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


def _stored_shapes(weights_path: Path) -> Any:
    """The shapes orbax recorded for a weights checkpoint, read without reading the arrays."""
    import orbax.checkpoint as ocp

    metadata = ocp.PyTreeCheckpointer().metadata(str(weights_path))
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, dict):
        raise ValueError("its metadata cannot be read")
    return jax.tree.map(lambda m: _Shape(tuple(m.shape)), dict(tree), is_leaf=lambda m: hasattr(m, "shape"))


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Keeps a failed orbax read to the one-line error its caller raises.

    Orbax logs each failed read, and when it gives up its event loop closes while storage
    reads are still in flight: as those finish, each reports `RuntimeError: Event loop is
    closed` through `sys.unraisablehook`, from storage threads, after the error is raised.
    Only exactly that report is dropped, and only once a read has failed.
    """
    loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    except BaseException:
        _drop_closed_loop_reports()
        raise
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _drop_closed_loop_reports() -> None:
    previous = sys.unraisablehook
    if getattr(previous, "_sam_jax_filter", False):
        return

    def hook(report: Any) -> None:
        closed = isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed"
        if not closed:
            previous(report)

    hook._sam_jax_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def load_directory(path: str | os.PathLike[str]) -> SamParams:
    """Loads a checkpoint directory written by `save`, the converter or a training run.

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: naming the file: an invalid config, weights of other shapes, damaged or
            altered weights (checksum), or non-finite weights.
    """
    import orbax.checkpoint as ocp

    meta_path, meta = read_meta(path)
    config = read_config(path)
    weights_path = (resolve(path)[0] / WEIGHTS_DIR).absolute()
    if not weights_path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint has no {WEIGHTS_DIR}/ directory")
    if "weights_files" in meta:  # checkpoints saved before this record load without it
        check_weights_files(weights_path, meta_path, meta["weights_files"])
    with quiet_orbax():
        try:
            check_weights(config, _stored_shapes(weights_path), str(path))
            weights = ocp.PyTreeCheckpointer().restore(str(weights_path))
        except ValueError as e:
            if str(e).startswith(str(path)):
                raise
            raise ValueError(f"{weights_path}: unreadable weights ({type(e).__name__}: {e})") from None
        except Exception as e:  # orbax raises many types for a damaged checkpoint
            raise ValueError(f"{weights_path}: unreadable weights ({type(e).__name__}: {e})") from None
    check_weights(config, weights, str(path))
    weights = jax.tree.map(lambda x: np.asarray(x, np.float32), weights)
    expected = meta.get("weights_sha256")
    if expected is not None and weights_digest(weights) != expected:
        raise ValueError(f"{weights_path}: the weights do not match the checksum in {meta_path} (damaged or altered)")
    check_finite(weights, str(weights_path))
    return SamParams(config=config, weights=jax.tree.map(jax.numpy.asarray, weights))
