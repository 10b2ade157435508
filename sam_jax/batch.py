"""Batch jobs over image collections on every local device, one host or many.

The engine is JAX's own SPMD machinery: a batch is a `jax.Array` sharded over a 1-D mesh of
this process's devices (`jax.sharding`), the weights are replicated, and with
`jax.distributed` each process takes a disjoint, deterministic share of the inputs. There is
no scheduler: the share is `sorted inputs[process_index::process_count]`.

Safety: every output is written atomically (temporary name, then rename), so an output that
exists is complete; a re-run skips those and a killed run loses only the batches in flight.
Unreadable images are recorded in `failures*.tsv` in the output folder and the rest go on.

`embed_images` writes, for each image, `OUT/<path relative to the input>.npz` with
`image_embedding` (E, E, C) float32 NHWC, `original_size` (H, W) and `input_size` (h, w);
`load_embedding` reads one back as the `ImageEmbedding` that `sam_jax.decode` takes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import json
import logging
import os
import queue
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from sam_jax import transforms
from sam_jax.automatic_mask_generator import AmgOptions, _generate
from sam_jax.checkpoint import atomic_directory, atomic_write_bytes
from sam_jax.data import IMAGE_EXTENSIONS, DataError, _load_rgb
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import ImageEmbedding, _check_params, _encode_padded

_log = logging.getLogger(__name__)

EMBEDDING_KEYS = ("image_embedding", "original_size", "input_size")
LIST_SUFFIXES = (".txt", ".lst")


@dataclasses.dataclass(frozen=True)
class InputItem:
    """One image of a job: where to read it and its output key (a relative POSIX path)."""

    path: Path
    key: str


# ----------------------------------------------------------------------------- inputs


def _safe_key(text: str, where: str) -> str:
    parts = [p for p in PurePosixPath(text.replace(os.sep, "/")).parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"{where}: {text!r} cannot name an output (empty or climbs out with '..')")
    return "/".join(parts)


def discover_inputs(path: str | os.PathLike[str]) -> list[InputItem]:
    """The images a job covers, sorted by output key.

    Args:
        path: an image file; a folder, searched recursively for `IMAGE_EXTENSIONS`; or a
            text file (`.txt`/`.lst`) with one image path per line (relative paths are taken
            from the list's folder; blank lines and lines starting with '#' are ignored).
    Returns:
        Items whose keys are the image's path relative to the folder (or the list's folder,
        or for an absolute listed path, that path without its root; for a file, its name).
    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: a folder without images, a list naming nothing, an unsupported file, or
            two inputs that would write the same output.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"input {str(path)!r} does not exist")
    if root.is_dir():
        items = [
            InputItem(p, p.relative_to(root).as_posix())
            for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        ]
        if not items:
            raise ValueError(f"input folder {str(path)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    elif root.suffix.lower() in LIST_SUFFIXES:
        items = []
        for n, line in enumerate(root.read_text().splitlines(), 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            listed = Path(text)
            items.append(
                InputItem(listed if listed.is_absolute() else root.parent / listed, _safe_key(text, f"{root}:{n}"))
            )
        if not items:
            raise ValueError(f"input list {str(path)!r} names no images")
    elif root.suffix.lower() in IMAGE_EXTENSIONS:
        items = [InputItem(root, root.name)]
    else:
        raise ValueError(
            f"input {str(path)!r} must be an image ({', '.join(IMAGE_EXTENSIONS)}), a folder, or a list "
            f"file ({', '.join(LIST_SUFFIXES)})"
        )
    items.sort(key=lambda it: it.key)
    outputs = [str(PurePosixPath(it.key).with_suffix("")) for it in items]
    if len(set(outputs)) != len(outputs):
        dup = next(o for o in outputs if outputs.count(o) > 1)
        raise ValueError(f"inputs {dup}.* differ only in their suffix and would write the same output")
    return items


def process_share(items: Sequence[InputItem], process_index: int, process_count: int) -> list[InputItem]:
    """This process's disjoint share; the shares of all processes cover `items`."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    return list(items[process_index::process_count])


def output_path(output_dir: str | os.PathLike[str], item: InputItem, suffix: str = ".npz") -> Path:
    return Path(output_dir) / PurePosixPath(item.key).with_suffix(suffix)


# ----------------------------------------------------------------------------- embedding files


def embedding_bytes(embedding: np.ndarray, original_size: Sequence[int], input_size: Sequence[int]) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        image_embedding=np.asarray(embedding, np.float32),
        original_size=np.asarray(original_size, np.int64),
        input_size=np.asarray(input_size, np.int64),
    )
    return buffer.getvalue()


def is_complete_embedding(path: Path) -> bool:
    """True when `path` is a readable embedding file (outputs are written atomically, so this
    only fails for files damaged by something else)."""
    try:
        with zipfile.ZipFile(path) as z:
            return {f"{k}.npy" for k in EMBEDDING_KEYS} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_embedding(path: str | os.PathLike[str]) -> ImageEmbedding:
    """Reads a file written by `sam-jax embed` as the `ImageEmbedding` `sam_jax.decode` takes.

    Raises:
        ValueError: the file is not an embedding file.
    """
    try:
        with np.load(path) as f:
            missing = [k for k in EMBEDDING_KEYS if k not in f]
            if missing:
                raise ValueError(f"{path}: not an embedding file (missing {', '.join(missing)})")
            emb, original, inp = f["image_embedding"], f["original_size"], f["input_size"]
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable embedding file ({e})") from None
    if emb.ndim != 3 or original.shape != (2,) or inp.shape != (2,):
        raise ValueError(f"{path}: image_embedding must be (E, E, C) and the sizes (2,)")
    return ImageEmbedding(jax.numpy.asarray(emb), tuple(int(v) for v in original), tuple(int(v) for v in inp))


# ----------------------------------------------------------------------------- the engine


@dataclasses.dataclass
class _Loaded:
    item: InputItem
    image: np.ndarray | None  # uint8, as the job wants it (resized and padded, or original); None on failure
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    error: str | None = None


def _read(item: InputItem) -> tuple[np.ndarray | None, str | None]:
    try:
        return _load_rgb(item.path), None
    except (DataError, OSError) as e:
        return None, str(e).replace("\t", " ").replace("\n", " ")


def _load_for_encoder(item: InputItem, image_size: int) -> _Loaded:
    image, error = _read(item)
    if image is None:
        return _Loaded(item, None, (0, 0), (0, 0), error)
    resized = transforms.resize_longest_side(image, image_size)
    return _Loaded(item, transforms.pad_to_square(resized, image_size), image.shape[:2], resized.shape[:2])


def _load_original(item: InputItem) -> _Loaded:
    image, error = _read(item)
    size = (0, 0) if image is None else image.shape[:2]
    return _Loaded(item, image, size, size, error)


def _loaded_in_order(
    items: Sequence[InputItem], load: Callable[[InputItem], _Loaded], threads: int
) -> Iterator[_Loaded]:
    """Decodes (and resizes) images on host threads, a bounded window ahead of the consumer."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sam-jax-load") as pool:
        window: queue.SimpleQueue[concurrent.futures.Future[_Loaded]] = queue.SimpleQueue()
        ahead = 4 * threads
        it = iter(items)
        pending = 0
        for item in it:
            window.put(pool.submit(load, item))
            pending += 1
            if pending >= ahead:
                break
        while pending:
            loaded = window.get().result()
            pending -= 1
            nxt = next(it, None)
            if nxt is not None:
                window.put(pool.submit(load, nxt))
                pending += 1
            yield loaded


def _host_threads(threads: int | None) -> int:
    """Image-decoding threads: as asked, else one per CPU, at most 8."""
    return threads or min(os.cpu_count() or 1, 8)


def _batches(
    loaded: Iterator[_Loaded], batch_size: int, on_failure: Callable[[_Loaded], None]
) -> Iterator[list[_Loaded]]:
    batch: list[_Loaded] = []
    for entry in loaded:
        if entry.error is not None:
            on_failure(entry)
            continue
        batch.append(entry)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclasses.dataclass
class JobReport:
    """What a job did in this process."""

    total: int  # this process's share
    skipped: int  # already complete
    written: int
    failures: list[tuple[str, str]]  # (path, reason)
    masks: int = 0  # automatic-mask jobs: masks in the outputs written

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclasses.dataclass
class _Job:
    """This process's part of a job: its share still to do, its report, its failures file."""

    out: Path
    todo: list[InputItem]
    report: JobReport
    failures_path: Path

    @classmethod
    def plan(
        cls,
        inputs: str | os.PathLike[str] | Sequence[InputItem],
        output_dir: str | os.PathLike[str],
        is_done: Callable[[Path, InputItem], bool],
        process_index: int | None,
        process_count: int | None,
        progress: Callable[[int], None] | None,
    ) -> _Job:
        index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        out = Path(output_dir)
        items = inputs if isinstance(inputs, (list, tuple)) else discover_inputs(inputs)
        share = process_share(items, index, count)
        todo = [it for it in share if not is_done(out, it)]
        report = JobReport(total=len(share), skipped=len(share) - len(todo), written=0, failures=[])
        if progress and report.skipped:
            progress(report.skipped)
        return cls(out, todo, report, failures_file(out, index, count))

    def record_failure(self, entry: _Loaded) -> None:
        """Logs an unreadable image and rewrites the failures file (atomically) with it."""
        _log.warning("failed: %s", entry.error)
        self.report.failures.append((str(entry.item.path), entry.error or "unknown error"))
        _write_failures(self.failures_path, self.report.failures)


def local_mesh() -> Mesh:
    """A 1-D mesh ("data") over this process's devices."""
    return Mesh(np.asarray(jax.local_devices()), ("data",))


def failures_file(output_dir: Path, process_index: int, process_count: int) -> Path:
    name = "failures.tsv" if process_count == 1 else f"failures.{process_index}-of-{process_count}.tsv"
    return output_dir / name


def _write_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    if failures:
        atomic_write_bytes(path, "".join(f"{p}\t{r}\n" for p, r in failures).encode())
    elif path.exists():
        path.unlink()  # a re-run that succeeded everywhere clears the old record


def embed_images(
    params: SamParams,
    inputs: str | os.PathLike[str] | Sequence[InputItem],
    output_dir: str | os.PathLike[str],
    batch_size: int = 8,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> JobReport:
    """Embeds every image of `inputs` into `output_dir` (see the module docstring).

    Args:
        params: model weights and config.
        inputs: an image, a folder or a list file, or what `discover_inputs` made of one.
        output_dir: where the `.npz` files (and any failures file) go.
        batch_size: images per device step, rounded up to a multiple of the local device
            count; a last, short batch is padded and the padding dropped.
        process_index, process_count: this process's share; default `jax.process_index()`
            and `jax.process_count()` (1 process without `jax.distributed`).
        threads: host threads decoding images (default: CPU count, at most 8).
        progress: called with the number of images finished (written, skipped or failed).
    Returns:
        A `JobReport`; `report.ok` is False when some image could not be read.
    """
    params = _check_params(params)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    job = _Job.plan(
        inputs,
        output_dir,
        lambda out, it: is_complete_embedding(output_path(out, it)),
        process_index,
        process_count,
        progress,
    )
    out, report, todo = job.out, job.report, job.todo
    if not todo:
        _write_failures(job.failures_path, [])
        return report

    mesh = local_mesh()
    n_dev = mesh.devices.size
    step = -(-batch_size // n_dev) * n_dev
    data = NamedSharding(mesh, PartitionSpec("data"))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    size = params.config.image_size

    def record_failure(entry: _Loaded) -> None:
        job.record_failure(entry)
        if progress:
            progress(1)

    # One writer thread: writes stay in order and only it touches `report.written`.
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-jax-write")
    writes: list[concurrent.futures.Future[None]] = []

    def write(batch: list[_Loaded], emb: jax.Array) -> None:
        host = np.asarray(emb)  # waits for this batch only; the next one is already dispatched
        for entry, e in zip(batch, host, strict=False):
            atomic_write_bytes(output_path(out, entry.item), embedding_bytes(e, entry.original_size, entry.input_size))
        report.written += len(batch)
        if progress:
            progress(len(batch))

    n_threads = _host_threads(threads)
    previous: tuple[list[_Loaded], jax.Array] | None = None
    try:
        loaded = _loaded_in_order(todo, functools.partial(_load_for_encoder, image_size=size), n_threads)
        for batch in _batches(loaded, step, record_failure):
            images = np.zeros((step, size, size, 3), np.uint8)
            hws = np.full((step, 2), size, np.int32)
            for i, entry in enumerate(batch):
                images[i], hws[i] = entry.image, entry.input_size
            emb = _encode_padded(params, jax.device_put(images, data), jax.device_put(hws, data))
            if previous is not None:  # write batch k-1 while the device runs batch k
                writes.append(writer.submit(write, *previous))
            previous = (batch, emb)
        if previous is not None:
            writes.append(writer.submit(write, *previous))
        for w in writes:
            w.result()
    finally:
        writer.shutdown(wait=True)
    _write_failures(job.failures_path, report.failures)
    return report


# ----------------------------------------------------------------------------- automatic masks

# The reference `scripts/amg.py` layout: per image a folder with <i>.png (0/255) per mask and
# this CSV (no trailing newline), or with --convert-to-rle one JSON list of records.
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,"
    "predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


def masks_output_path(output_dir: str | os.PathLike[str], item: InputItem, output_mode: str) -> Path:
    """`OUT/<key without suffix>/` for binary masks, `OUT/<key without suffix>.json` otherwise."""
    return output_path(output_dir, item, "" if output_mode == "binary_mask" else ".json")


def is_complete_masks(path: Path, output_mode: str) -> bool:
    """Outputs appear by an atomic rename, so existing means complete."""
    return (path / "metadata.csv").is_file() if output_mode == "binary_mask" else path.is_file()


def _metadata_row(i: int, record: dict[str, Any]) -> str:
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


def write_masks(path: Path, records: list[dict[str, Any]], output_mode: str) -> None:
    """Writes one image's records atomically in the reference script's layout."""
    if output_mode != "binary_mask":
        atomic_write_bytes(path, json.dumps(records).encode())
        return
    with atomic_directory(path) as tmp:
        for i, record in enumerate(records):
            Image.fromarray(record["segmentation"].astype(np.uint8) * 255).save(tmp / f"{i}.png")
        rows = [METADATA_HEADER] + [_metadata_row(i, r) for i, r in enumerate(records)]
        (tmp / "metadata.csv").write_text("\n".join(rows))


def generate_masks_for_images(
    params: SamParams,
    inputs: str | os.PathLike[str] | Sequence[InputItem],
    output_dir: str | os.PathLike[str],
    options: AmgOptions | None = None,
    *,
    devices: Sequence[jax.Device] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> JobReport:
    """Automatic masks for every image of `inputs`, written in the reference script's layout.

    Images are independent and each one's work is a sequence of small, data-dependent steps
    (crops, point batches, filters), so the unit of parallelism is the image: the weights
    are replicated on every local device and each device works through images taken in
    turn from one shared, host-decoded stream. Shares across processes, skipping of complete
    outputs, atomic writes and the failures file are as in `embed_images`.

    Args:
        params: model weights and config.
        inputs: an image, a folder or a list file, or what `discover_inputs` made of one.
        output_dir: where the outputs go (see `masks_output_path`).
        options: `AmgOptions` (default: the reference's defaults).
        devices: devices to use (default: all of this process's).
        process_index, process_count, threads, progress: as for `embed_images`.
    Returns:
        A `JobReport`; `report.ok` is False when some image could not be read.
    """
    params = _check_params(params)
    options = AmgOptions() if options is None else options
    if not isinstance(options, AmgOptions):
        raise TypeError(f"options must be an AmgOptions, got {type(options).__name__}")
    mode = options.output_mode
    job = _Job.plan(
        inputs,
        output_dir,
        lambda out, it: is_complete_masks(masks_output_path(out, it, mode), mode),
        process_index,
        process_count,
        progress,
    )
    out, report, todo = job.out, job.report, job.todo
    devices = list(jax.local_devices() if devices is None else devices)
    lock = threading.Lock()
    loaded = _loaded_in_order(todo, _load_original, _host_threads(threads))

    def work(replica: SamParams) -> None:
        while True:
            with lock:  # the stream is a generator: one consumer at a time
                entry = next(loaded, None)
                if entry is not None and entry.error is not None:
                    job.record_failure(entry)
            if entry is None:
                return
            if entry.image is not None:
                records = _generate(replica, entry.image, options)
                write_masks(masks_output_path(out, entry.item, mode), records, mode)
                with lock:
                    report.written += 1
                    report.masks += len(records)
            if progress:
                progress(1)

    if todo:
        replicas = [jax.device_put(params, d) for d in devices]
        with concurrent.futures.ThreadPoolExecutor(len(replicas), thread_name_prefix="sam-jax-amg") as pool:
            for done in [pool.submit(work, r) for r in replicas]:
                done.result()
    _write_failures(job.failures_path, report.failures)
    return report
