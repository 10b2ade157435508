"""A tiled job's finished tiles, kept while their image is in progress, so that a killed
job resumes at the tile it was on rather than at the image's first.

An image in progress has a folder beside its output, `<output>.sam-jax-tiles/`, holding a
marker (`tiles.json`: the fingerprint of the model, options, tiling and image file the tiles
were made with) and one `.npz` per finished tile (`amg.tiling.tile_records_to_arrays`), each
written atomically. A folder of that name that is not the job's (no marker, or other
files) is left as it is and the image recorded as a failure. Tiles of another fingerprint
are the job's own: removed and made again. The folder is removed once the image's output
is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sam_jax.amg import AmgOptions
from sam_jax.amg.tiling import Box, tile_records_from_arrays, tile_records_to_arrays
from sam_jax.io import TEMP_INFIX, atomic_write_bytes
from sam_jax.modeling.sam import SamParams

SUFFIX = ".sam-jax-tiles"
MARKER = "tiles.json"
MARKER_KEY = "sam-jax tiles"


class TilesInTheWay(ValueError):
    """Something that is not a job's kept tiles is where they would go; it was left as it is."""


def pieces_folder(output: Path) -> Path:
    """Where the finished tiles of the image whose output goes to `output` are kept."""
    return output.with_name(output.name + SUFFIX)


def image_fingerprint(path: Path, image_size: tuple[int, int]) -> str:
    """Which image a kept tile was made of: its file's size and modification time and the
    image's size (reading every pixel of a large image again would cost a pass over it)."""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}:{image_size[0]}x{image_size[1]}"


def tiling_fingerprint(params: SamParams, options: AmgOptions, tile: int, overlap: int) -> str:
    """What a kept tile must have been made with: the model (config, compute dtype, every
    weight's bytes), the options and the tiling (`image_fingerprint` adds the image)."""
    digest = hashlib.sha256(repr((params.config, params.compute_dtype, options, tile, overlap)).encode())
    for leaf in jax.tree.leaves(params.weights):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def _tile_name(box: Box) -> str:
    x0, y0, _, _ = box
    return f"tile-y{y0}-x{x0}.npz"


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_ours(name: str) -> bool:
    return name == MARKER or (name.startswith("tile-") and name.endswith(".npz")) or TEMP_INFIX in name


class TilePieces:
    """One image's kept tiles (module docstring); `tile_records` is `generate_tiled`'s hook.

    Raises `TilesInTheWay` when the folder exists and is not a tiles folder of a job.
    """

    def __init__(self, folder: Path, fingerprint: str, image_size: tuple[int, int]) -> None:
        self.folder, self.image_size = folder, image_size
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise TilesInTheWay(f"{folder}: is in the way of this image's kept tiles; it was left as it is")
        if folder.exists():
            names = [entry.name for entry in folder.iterdir()]
            marker = _read_marker(folder / MARKER) if MARKER in names else {}
            # Tiles only under a marker; a folder of temporary files alone is a killed job's
            # (killed while writing its marker).
            kept = [n for n in names if n != MARKER and TEMP_INFIX not in n]
            if not all(_is_ours(n) for n in names) or ((kept or MARKER in names) and marker.get(MARKER_KEY) != 1):
                raise TilesInTheWay(f"{folder}: is not a folder of tiles a job kept; it was left as it is")
            if names and marker.get("fingerprint") != fingerprint:
                self.remove()  # made with another model, options, tiling or image: ours, and stale
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / MARKER).exists():
            atomic_write_bytes(folder / MARKER, json.dumps({MARKER_KEY: 1, "fingerprint": fingerprint}).encode())

    def tile_records(self, box: Box, make: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """The tile's kept records, or `make()`'s, kept before they are returned."""
        path = self.folder / _tile_name(box)
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as arrays:
                    records = tile_records_from_arrays(arrays, self.image_size)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # unreadable (written atomically, so not by a killed job): made again
            else:
                return records
        records = make()
        buffer = io.BytesIO()
        np.savez(buffer, **tile_records_to_arrays(records))  # type: ignore[arg-type]
        atomic_write_bytes(path, buffer.getvalue())
        return records

    def remove(self) -> None:
        """Removes the job's files and the folder (what it holds besides them stays)."""
        for entry in self.folder.iterdir():
            if _is_ours(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink()
        with contextlib.suppress(OSError):  # not empty: something else is there, left as it is
            os.rmdir(self.folder)
