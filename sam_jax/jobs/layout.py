"""What jobs write where, and how an output of theirs is recognised: a job skips its own
complete outputs, records as a failure anything else in their place, and never touches it.

- `sam-jax embed`: `OUT/<image path relative to the input>.npz` (`sam_jax.io` embedding files);
- `sam-jax amg`: per image the reference `scripts/amg.py` layout, a folder of `<i>.png` masks
  with `metadata.csv`, or with COCO RLE one `OUT/<...>.json` list of records; or polygons,
  `OUT/<...>.polygons.json` (the records, each segmentation `{"size", "polygons"}`), or one
  GeoJSON FeatureCollection `OUT/<...>.geojson` (`sam_jax.vectors`);
- `failures.tsv` (or `failures.I-of-N.tsv` per process): the images that failed, and why,
  after a marker line that makes it recognisably a job's (`FAILURES_MARKER`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from sam_jax import vectors
from sam_jax.io import (
    OutputExistsError,
    atomic_write_bytes,
    only_names,
    write_directory,
)


@dataclasses.dataclass(frozen=True)
class InputItem:
    """One image of a job: where to read it and its output key (a relative POSIX path)."""

    path: Path
    key: str


def output_path(output_dir: str | os.PathLike[str], item: InputItem, suffix: str = ".npz") -> Path:
    return Path(output_dir) / PurePosixPath(item.key).with_suffix(suffix)


def failures_file(output_dir: Path, process_index: int, process_count: int) -> Path:
    name = "failures.tsv" if process_count == 1 else f"failures.{process_index}-of-{process_count}.tsv"
    return output_dir / name


# The first line of every failures file a job writes: how a job recognises its own (a file
# without it is the user's, never replaced or removed), and how to read the rest.
FAILURES_MARKER = (
    "# sam-jax failures: path<TAB>reason per line; backslash, tab, CR and newline escaped as \\\\ \\t \\r \\n"
)
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\r": "\\r", "\n": "\\n"}
_UNESCAPES = {"\\": "\\", "t": "\t", "r": "\r", "n": "\n"}


def escape_field(text: str) -> str:
    """`text` as one field of a failures line: no tab or line break is left in it."""
    return "".join(_ESCAPES.get(c, c) for c in text)


def unescape_field(field: str) -> str:
    out, chars = [], iter(field)
    for c in chars:
        out.append(_UNESCAPES.get(next(chars, ""), "\\") if c == "\\" else c)
    return "".join(out)


def is_failures_file(path: Path) -> bool:
    """Whether `path` is a failures file a job wrote: a regular file whose first line is the
    marker jobs write (whatever the rest looks like, a file without it is the user's)."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with open(path, "rb") as f:
            return f.readline(len(FAILURES_MARKER) + 2).rstrip(b"\n").decode() == FAILURES_MARKER
    except (OSError, UnicodeDecodeError):
        return False


def read_failures(path: Path) -> list[tuple[str, str]]:
    """The (path, reason) pairs of a failures file a job wrote."""
    lines = path.read_bytes().decode("utf-8", "surrogateescape").split("\n")[:-1]  # names may hold any byte
    if not lines or lines[0] != FAILURES_MARKER:
        raise ValueError(f"{path}: not a failures file written by sam-jax")
    pairs = [line.split("\t") for line in lines[1:]]
    return [(unescape_field(p), unescape_field(r)) for p, r in pairs]


def check_failures_file(path: Path) -> None:
    """Refuses, before a job starts, a file of the user's where its failures file goes."""
    if (path.exists() or path.is_symlink()) and not is_failures_file(path):
        raise OutputExistsError(
            path,
            "exists and was not written by sam-jax (a job's failures file starts with its marker line); "
            "it is left untouched: move it, or choose another output folder",
        )


def write_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    """Writes the failures file (atomically), or removes the one an earlier run wrote when
    nothing failed; a file of the user's there is refused and never touched."""
    if failures:
        check_failures_file(path)
        lines = [FAILURES_MARKER] + [f"{escape_field(p)}\t{escape_field(r)}" for p, r in failures]
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    elif is_failures_file(path):
        path.unlink()  # a re-run that succeeded everywhere clears its old record


# this CSV (no trailing newline), or with --convert-to-rle one JSON list of records.
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,"
    "predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


# Each mode's file suffix (binary masks are a folder). Polygons have their own, so a folder
# of COCO RLE outputs is never taken for complete polygon outputs, nor the other way round.
MASKS_SUFFIXES = {
    "binary_mask": "",
    "uncompressed_rle": ".json",
    "coco_rle": ".json",
    "polygons": ".polygons.json",
    "geojson": ".geojson",
}
# How each file output begins (`json.dumps` of what `write_masks` writes).
_RECORDS_HEAD = b'[{"segmentation":'
_GEOJSON_HEAD = b'{"type": "FeatureCollection", "features": ['


def masks_output_path(output_dir: str | os.PathLike[str], item: InputItem, output_mode: str) -> Path:
    """`OUT/<key without suffix>/` for binary masks, `OUT/<key without suffix><suffix>` for the
    file outputs (`MASKS_SUFFIXES`)."""
    if output_mode not in MASKS_SUFFIXES:
        raise ValueError(f"output_mode must be one of {', '.join(MASKS_SUFFIXES)}; got {output_mode!r}")
    return output_path(output_dir, item, MASKS_SUFFIXES[output_mode])


def is_complete_masks(path: Path, output_mode: str) -> bool:
    """Whether `path` is an output this job writes (they appear by an atomic rename, so an
    output of ours that exists is complete): a folder of `<i>.png` and a `metadata.csv` with
    the reference's header, a JSON list of records, or a GeoJSON FeatureCollection."""
    try:
        if output_mode == "binary_mask":
            return (
                path.is_dir()
                and only_names(path, lambda name: name == "metadata.csv" or is_mask_png(name))
                and (path / "metadata.csv").read_text().startswith(METADATA_HEADER)
            )
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
        if output_mode == "geojson":
            return path.is_file() and head.startswith(_GEOJSON_HEAD)
        return path.is_file() and (head == b"[]" or head.startswith(_RECORDS_HEAD))
    except (OSError, UnicodeDecodeError):
        return False


def is_mask_png(name: str) -> bool:
    stem, dot, ext = name.partition(".")
    return stem.isdigit() and dot == "." and ext == "png"


def metadata_row(i: int, record: dict[str, Any]) -> str:
    fields = [
        i,
        record["area"],
        *record["bbox"],
        *record["point_coords"][0],
        record["predicted_iou"],
        record["stability_score"],
        *record["crop_box"],
    ]
    return ",".join(str(f) for f in fields)


def polygon_records(records: list[dict[str, Any]], tolerance: float = 0.0) -> list[dict[str, Any]]:
    """Records for JSON with each segmentation as polygons: `{"size": [H, W], "polygons": [...]}`
    (size left out where a record does not say it, or gives its polygons in another frame as
    `"polygons"`), nested lists of [x, y] positions along the pixel edges, polygon ->
    [exterior, hole, ...] (`sam_jax.vectors`); the other fields as JSON."""
    out = []
    for i, record in enumerate(records):
        polygons = vectors.record_polygons(record, tolerance, f"records[{i}]")
        size = None if "polygons" in record else vectors.record_size(record)
        segmentation = {"polygons": vectors.polygons_to_json(polygons)}
        rest = {k: vectors.to_json(v) for k, v in record.items() if k not in ("segmentation", "polygons")}
        out.append({"segmentation": segmentation if size is None else {"size": size, **segmentation}, **rest})
    return out


def write_masks(path: Path, records: list[dict[str, Any]], output_mode: str, *, tolerance: float = 0.0) -> None:
    """Writes one image's records atomically in the reference script's layout, or as polygons
    (`polygon_records`) or a GeoJSON FeatureCollection in pixel coordinates
    (`sam_jax.vectors.records_to_geojson`).

    Args:
        path: where (`masks_output_path`).
        records: the image's records (`generate_masks`'s, any `output_mode` for the polygon modes).
        output_mode: an `AmgOptions.output_mode`.
        tolerance: for "polygons" and "geojson", simplification of each ring in pixels (0: none).
    Raises:
        FileExistsError: something exists at `path` (it is left untouched).
    """
    if output_mode != "binary_mask":
        if output_mode == "polygons":
            data = json.dumps(polygon_records(records, tolerance)).encode()
        elif output_mode == "geojson":
            data = json.dumps(vectors.records_to_geojson(records, tolerance=tolerance)).encode()
        else:
            data = json.dumps(records).encode()
        atomic_write_bytes(path, data, overwrite=False)
        return
    owns = functools.partial(is_complete_masks, output_mode=output_mode)
    with write_directory(path, owns=owns, overwrite=False, what="automatic masks") as tmp:
        for i, record in enumerate(records):
            # OpenCV's PNG encoder, as scripts/amg.py writes them: the same bytes.
            ok, png = cv2.imencode(".png", record["segmentation"].astype(np.uint8) * 255)
            if not ok:
                raise OSError(f"{path}: could not encode mask {i} as PNG")
            (tmp / f"{i}.png").write_bytes(png.tobytes())
        rows = [METADATA_HEADER] + [metadata_row(i, r) for i, r in enumerate(records)]
        (tmp / "metadata.csv").write_text("\n".join(rows))
