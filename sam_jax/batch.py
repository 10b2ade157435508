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
from sam_jax.io import (
    DECODE_MEMORY_BUDGET,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    MemoryBudget,
    atomic_write_bytes,
    check_max_pixels,
    decode_image,
    decoded_bytes,
    only_names,
    read_image_bytes,
    write_directory,
)
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


def discover_inputs(path: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None) -> list[InputItem]:
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

    A folder search skips a job's output folder inside it (`exclude`) and every folder of
    automatic masks a job wrote (their mask PNGs are outputs, not new inputs).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"input {str(path)!r} does not exist")
    if root.is_dir():
        skip = Path(exclude).resolve() if exclude is not None else None
        items = []
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = sorted(
                d
                for d in dirs
                if (skip is None or (here / d).resolve() != skip) and not is_complete_masks(here / d, "binary_mask")
            )
            items.extend(
                InputItem(here / f, (here / f).relative_to(root).as_posix())
                for f in files
                if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith(".")
            )
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
        ValueError: naming the file, when it is not an embedding file (another archive, a
            `.npy`, pickled objects, impossible sizes, non-finite values).
    """
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not an embedding file (a single array; expected an .npz of sam-jax embed)")
        with loaded as f:
            missing = [k for k in EMBEDDING_KEYS if k not in f]
            if missing:
                raise ValueError(f"{path}: not an embedding file (missing {', '.join(missing)})")
            emb, original, inp = f["image_embedding"], f["original_size"], f["input_size"]
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable embedding file ({e})") from None
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable embedding file ({e})") from None
    if emb.ndim != 3 or emb.dtype.kind != "f" or original.shape != (2,) or inp.shape != (2,):
        raise ValueError(f"{path}: image_embedding must be float (E, E, C) and the sizes (2,)")
    if original.dtype.kind not in "iu" or inp.dtype.kind not in "iu" or min(*original, *inp) < 1:
        raise ValueError(f"{path}: original_size and input_size must be positive integers, got {original}, {inp}")
    if not np.all(np.isfinite(emb)):
        raise ValueError(f"{path}: image_embedding holds NaN or infinite values")
    return ImageEmbedding(jax.numpy.asarray(emb), tuple(int(v) for v in original), tuple(int(v) for v in inp))


# ----------------------------------------------------------------------------- the engine


@dataclasses.dataclass
class _Loaded:
    item: InputItem
    image: np.ndarray | None  # uint8, as the job wants it (resized and padded, or original); None on failure
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    error: str | None = None
    held: int = 0  # bytes of the decode budget this entry still holds


@dataclasses.dataclass(frozen=True)
class _Reader:
    """Reads and decodes a job's images: within the pixel cap and the decode memory budget."""

    max_pixels: int
    budget: MemoryBudget

    def decode(self, item: InputItem, ticket: int) -> tuple[np.ndarray | None, str | None, int]:
        """(image, error, bytes held); the budget is acquired in ticket order before decoding."""
        try:
            data = read_image_bytes(item.path, max_pixels=self.max_pixels)
            need = decoded_bytes(data, str(item.path))
        except ImageError as e:
            self.budget.skip(ticket)
            return None, _one_line(e), 0
        self.budget.acquire(ticket, need)
        try:
            return decode_image(data, name=str(item.path), max_pixels=self.max_pixels), None, need
        except ImageError as e:
            self.budget.release(need)
            return None, _one_line(e), 0


def _one_line(e: BaseException) -> str:
    return str(e).replace("\t", " ").replace("\n", " ")


def _load_for_encoder(reader: _Reader, item: InputItem, ticket: int, image_size: int) -> _Loaded:
    image, error, held = reader.decode(item, ticket)
    if image is None:
        return _Loaded(item, None, (0, 0), (0, 0), error)
    try:
        resized = transforms.resize_longest_side(image, image_size)
        return _Loaded(item, transforms.pad_to_square(resized, image_size), image.shape[:2], resized.shape[:2])
    finally:
        reader.budget.release(held)  # only the small resized copy lives on


def _load_original(reader: _Reader, item: InputItem, ticket: int) -> _Loaded:
    image, error, held = reader.decode(item, ticket)
    size = (0, 0) if image is None else image.shape[:2]
    return _Loaded(item, image, size, size, error, held)  # the consumer releases `held`


def _loaded_in_order(
    items: Sequence[InputItem], load: Callable[[InputItem, int], _Loaded], threads: int
) -> Iterator[_Loaded]:
    """Decodes (and resizes) images on host threads, a bounded window ahead of the consumer;
    `load(item, ticket)` gets the item's position, its ticket for the decode budget."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sam-jax-load") as pool:
        window: queue.SimpleQueue[concurrent.futures.Future[_Loaded]] = queue.SimpleQueue()
        ahead = 4 * threads
        it = enumerate(items)
        pending = 0
        for ticket, item in it:
            window.put(pool.submit(load, item, ticket))
            pending += 1
            if pending >= ahead:
                break
        while pending:
            loaded = window.get().result()
            pending -= 1
            nxt = next(it, None)
            if nxt is not None:
                window.put(pool.submit(load, nxt[1], nxt[0]))
                pending += 1
            yield loaded


def _host_threads(threads: int | None) -> int:
    """Image-decoding threads: as asked, else one per CPU, at most 8."""
    return threads or min(os.cpu_count() or 1, 8)


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def check_batch_memory(params: SamParams, batch_size: int, name: str = "batch_size") -> None:
    """Refuses a batch whose host-side images and embeddings alone would take more than a
    quarter of this machine's memory (before anything is allocated)."""
    cfg = params.config
    per_image = 3 * cfg.image_size**2 + 4 * cfg.embedding_size**2 * cfg.prompt_embed_dim
    limit = _host_memory() // 4
    if batch_size * per_image > limit:
        raise ValueError(
            f"{name} {batch_size} needs {batch_size * per_image / 2**30:.1f} GiB of host memory for one batch's "
            f"images and embeddings; at most {max(limit // per_image, 1)} fit in a quarter of this machine's "
            f"{_host_memory() / 2**30:.0f} GiB"
        )


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
        output_of: Callable[[Path, InputItem], Path],
        is_ours: Callable[[Path], bool],
        process_index: int | None,
        process_count: int | None,
        progress: Callable[[int], None] | None,
    ) -> _Job:
        """Finds this process's share and what of it is left to do.

        An output that exists and `is_ours` is complete (outputs appear by an atomic rename)
        and is skipped; one that exists and is not ours is something the user put there: it
        is recorded as a failure and never touched.
        """
        index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        out = Path(output_dir)
        if out.exists() and not out.is_dir():
            raise ValueError(f"output {str(output_dir)!r} exists and is not a folder")
        items = inputs if isinstance(inputs, (list, tuple)) else discover_inputs(inputs, exclude=out)
        share = process_share(items, index, count)
        job = cls(
            out, [], JobReport(total=len(share), skipped=0, written=0, failures=[]), failures_file(out, index, count)
        )
        for it in share:
            target = output_of(out, it)
            if not (target.exists() or target.is_symlink()):
                job.todo.append(it)
            elif is_ours(target):
                job.report.skipped += 1
            else:
                job.record_failure(it, f"output {target} exists and was not written by sam-jax; left untouched")
        if progress and len(share) > len(job.todo):
            progress(len(share) - len(job.todo))
        return job

    def record_failure(self, item: InputItem, reason: str) -> None:
        """Logs an image that failed and rewrites the failures file (atomically) with it."""
        _log.warning("failed: %s", reason)
        self.report.failures.append((str(item.path), reason))
        _write_failures(self.failures_path, self.report.failures)


def local_mesh() -> Mesh:
    """A 1-D mesh ("data") over this process's devices."""
    return Mesh(np.asarray(jax.local_devices()), ("data",))


def failures_file(output_dir: Path, process_index: int, process_count: int) -> Path:
    name = "failures.tsv" if process_count == 1 else f"failures.{process_index}-of-{process_count}.tsv"
    return output_dir / name


def _is_failures_file(path: Path) -> bool:
    """Whether `path` is a failures file as jobs write them (lines of path TAB reason)."""
    try:
        return all(line.count("\t") == 1 for line in path.read_text().splitlines())
    except (OSError, UnicodeDecodeError):
        return False


def _write_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    if failures:
        if path.exists() and not _is_failures_file(path):
            raise ValueError(f"{path} exists and is not a failures file written by sam-jax; left untouched")
        atomic_write_bytes(path, "".join(f"{p}\t{r}\n" for p, r in failures).encode())
    elif path.is_file() and _is_failures_file(path):
        path.unlink()  # a re-run that succeeded everywhere clears its old record


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
    max_pixels: int = DEFAULT_MAX_PIXELS,
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
        max_pixels: images declaring more pixels are recorded as failures, not decoded.
    Returns:
        A `JobReport`; `report.ok` is False when some image could not be read.
    """
    params = _check_params(params)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_batch_memory(params, batch_size)
    reader = _Reader(check_max_pixels(max_pixels), MemoryBudget(DECODE_MEMORY_BUDGET))
    job = _Job.plan(inputs, output_dir, output_path, is_complete_embedding, process_index, process_count, progress)
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
        job.record_failure(entry.item, entry.error or "unknown error")
        if progress:
            progress(1)

    # One writer thread: writes stay in order and only it touches `report.written`.
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-jax-write")
    writes: list[concurrent.futures.Future[None]] = []

    def write(batch: list[_Loaded], emb: jax.Array) -> None:
        host = np.asarray(emb)  # waits for this batch only; the next one is already dispatched
        for entry, e in zip(batch, host, strict=False):
            data = embedding_bytes(e, entry.original_size, entry.input_size)
            try:
                atomic_write_bytes(output_path(out, entry.item), data, overwrite=False)
                report.written += 1
            except FileExistsError as err:  # something appeared there while the job ran
                job.record_failure(entry.item, f"output {err.filename} appeared meanwhile; left untouched")
        if progress:
            progress(len(batch))

    n_threads = _host_threads(threads)
    previous: tuple[list[_Loaded], jax.Array] | None = None
    try:
        loaded = _loaded_in_order(todo, functools.partial(_load_for_encoder, reader, image_size=size), n_threads)
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
    """Whether `path` is an output this job writes (they appear by an atomic rename, so an
    output of ours that exists is complete): a folder of `<i>.png` and a `metadata.csv` with
    the reference's header, or a JSON list of records."""
    try:
        if output_mode == "binary_mask":
            return (
                path.is_dir()
                and only_names(path, lambda name: name == "metadata.csv" or _is_mask_png(name))
                and (path / "metadata.csv").read_text().startswith(METADATA_HEADER)
            )
        with open(path, "rb") as f:
            head = f.read(32).lstrip()
        return path.is_file() and (head == b"[]" or head.startswith(b'[{"segmentation":'))
    except (OSError, UnicodeDecodeError):
        return False


def _is_mask_png(name: str) -> bool:
    stem, dot, ext = name.partition(".")
    return stem.isdigit() and dot == "." and ext == "png"


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
    """Writes one image's records atomically in the reference script's layout.

    Raises:
        FileExistsError: something exists at `path` (it is left untouched).
    """
    if output_mode != "binary_mask":
        atomic_write_bytes(path, json.dumps(records).encode(), overwrite=False)
        return
    owns = functools.partial(is_complete_masks, output_mode=output_mode)
    with write_directory(path, owns=owns, overwrite=False, what="automatic masks") as tmp:
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
    max_pixels: int = DEFAULT_MAX_PIXELS,
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
        process_index, process_count, threads, progress, max_pixels: as for `embed_images`.
    Returns:
        A `JobReport`; `report.ok` is False when some image could not be read or processed.
    """
    params = _check_params(params)
    options = AmgOptions() if options is None else options
    if not isinstance(options, AmgOptions):
        raise TypeError(f"options must be an AmgOptions, got {type(options).__name__}")
    mode = options.output_mode
    reader = _Reader(check_max_pixels(max_pixels), MemoryBudget(DECODE_MEMORY_BUDGET))
    job = _Job.plan(
        inputs,
        output_dir,
        functools.partial(masks_output_path, output_mode=mode),
        functools.partial(is_complete_masks, output_mode=mode),
        process_index,
        process_count,
        progress,
    )
    out, report, todo = job.out, job.report, job.todo
    devices = list(jax.local_devices() if devices is None else devices)
    lock = threading.Lock()
    loaded = _loaded_in_order(todo, functools.partial(_load_original, reader), _host_threads(threads))

    def process(replica: SamParams, entry: _Loaded) -> str | None:
        """Masks of one image, written; the reason it failed otherwise."""
        try:
            records = _generate(replica, entry.image, options)
            write_masks(masks_output_path(out, entry.item, mode), records, mode)
        except ValueError as e:  # this image cannot be processed (e.g. too small for the crops)
            return _one_line(e)
        except FileExistsError as e:
            return f"output {e.filename} appeared meanwhile; left untouched"
        finally:
            reader.budget.release(entry.held)
        with lock:
            report.written += 1
            report.masks += len(records)
        return None

    def work(replica: SamParams) -> None:
        while True:
            with lock:  # the stream is a generator: one consumer at a time
                entry = next(loaded, None)
            if entry is None:
                return
            error = entry.error if entry.image is None else process(replica, entry)
            if error is not None:
                with lock:
                    job.record_failure(entry.item, error)
            if progress:
                progress(1)

    if todo:
        replicas = [jax.device_put(params, d) for d in devices]
        with concurrent.futures.ThreadPoolExecutor(len(replicas), thread_name_prefix="sam-jax-amg") as pool:
            for done in [pool.submit(work, r) for r in replicas]:
                done.result()
    _write_failures(job.failures_path, report.failures)
    return report
