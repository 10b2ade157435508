"""The engine of the batch jobs (see the package docstring): inputs and this process's share
of them, decoding on host threads within a pixel cap and a memory budget, and a job's plan
(what is left to do, what is in the way) with its failures file."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import queue
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

import jax
import numpy as np
from jax.sharding import Mesh

from sam_jax import transforms
from sam_jax.config import SamConfig
from sam_jax.io import (
    IMAGE_EXTENSIONS,
    ImageError,
    MemoryBudget,
    decode_image,
    decoded_bytes,
    is_temporary,
    read_image_bytes,
    read_regular_file,
    remove_abandoned_temporaries,
)
from sam_jax.jobs import layout
from sam_jax.jobs.layout import InputItem, is_complete_masks

_log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".lst")
# The largest list file read (a million paths of 100 characters).
MAX_LIST_BYTES = 100 << 20


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

    A folder search skips a job's output folder inside it (`exclude`), every folder of
    automatic masks a job wrote (their mask PNGs are outputs, not new inputs) and the
    temporary folders of writes in progress or killed (`sam_jax.io.is_temporary`). Entries
    that are not regular files (a FIFO, a link to a device) are listed like any image and
    refused when read, before they are opened.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"input {str(path)!r} does not exist")
    if root.is_dir():
        skip = Path(exclude).resolve() if exclude is not None else None
        items: list[InputItem] = []
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = sorted(
                d
                for d in dirs
                if (skip is None or (here / d).resolve() != skip)
                and not is_temporary(here / d)
                and not is_complete_masks(here / d, "binary_mask")
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
        try:
            text_of_list = read_regular_file(root, MAX_LIST_BYTES).decode("utf-8", "surrogateescape")
        except ValueError as e:
            raise ValueError(f"input list {e}") from None
        for n, line in enumerate(text_of_list.splitlines(), 1):
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


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Loaded:
    item: InputItem
    image: np.ndarray | None  # uint8, as the job wants it (resized and padded, or original); None on failure
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    error: str | None = None
    held: int = 0  # bytes of the decode budget this entry still holds


@dataclasses.dataclass(frozen=True)
class Reader:
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
            return None, one_line(e), 0
        self.budget.acquire(ticket, need)
        try:
            return decode_image(data, name=str(item.path), max_pixels=self.max_pixels), None, need
        except ImageError as e:
            self.budget.release(need)
            return None, one_line(e), 0


def one_line(e: BaseException) -> str:
    return str(e).replace("\t", " ").replace("\n", " ")


def load_for_encoder(reader: Reader, item: InputItem, ticket: int, config: SamConfig) -> Loaded:
    image, error, held = reader.decode(item, ticket)
    if image is None:
        return Loaded(item, None, (0, 0), (0, 0), error)
    try:
        resized = transforms.resize_to_model(image, config)
        return Loaded(item, transforms.pad_to_square(resized, config.image_size), image.shape[:2], resized.shape[:2])
    finally:
        reader.budget.release(held)  # only the small resized copy lives on


def load_original(reader: Reader, item: InputItem, ticket: int) -> Loaded:
    image, error, held = reader.decode(item, ticket)
    size = (0, 0) if image is None else image.shape[:2]
    return Loaded(item, image, size, size, error, held)  # the consumer releases `held`


def loaded_in_order(
    items: Sequence[InputItem], load: Callable[[InputItem, int], Loaded], threads: int
) -> Iterator[Loaded]:
    """Decodes (and resizes) images on host threads, a bounded window ahead of the consumer;
    `load(item, ticket)` gets the item's position, its ticket for the decode budget."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sam-jax-load") as pool:
        window: queue.SimpleQueue[concurrent.futures.Future[Loaded]] = queue.SimpleQueue()
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


def host_threads(threads: int | None) -> int:
    """Image-decoding threads: as asked, else one per CPU, at most 8."""
    return threads or min(os.cpu_count() or 1, 8)


def batches(loaded: Iterator[Loaded], batch_size: int, on_failure: Callable[[Loaded], None]) -> Iterator[list[Loaded]]:
    batch: list[Loaded] = []
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
class Job:
    """This process's part of a job: its share still to do, its report, its failures file."""

    out: Path
    todo: list[InputItem]
    report: JobReport
    failures_path: Path
    is_ours: Callable[[Path], bool]

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
    ) -> Job:
        """Finds this process's share and what of it is left to do.

        An output that exists and `is_ours` is complete (outputs appear by an atomic rename)
        and is skipped; one that exists and is not ours is something the user put there: it
        is recorded as a failure and never touched. A file of the user's where the failures
        file goes is refused before anything is done; temporary folders that killed runs left
        in the output folder are removed (`sam_jax.io.remove_abandoned_temporaries`).
        """
        index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        out = Path(output_dir)
        if out.exists() and not out.is_dir():
            raise ValueError(f"output {str(output_dir)!r} exists and is not a folder")
        failures_path = layout.failures_file(out, index, count)
        layout.check_failures_file(failures_path)
        if out.is_dir():
            for left in remove_abandoned_temporaries(out):
                _log.info("removed %s, left behind by a killed run", left)
        items = discover_inputs(inputs, exclude=out) if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        share = process_share(items, index, count)
        job = cls(
            out,
            [],
            JobReport(total=len(share), skipped=0, written=0, failures=[]),
            failures_path,
            is_ours,
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

    def appeared_meanwhile(self, item: InputItem, target: Path) -> None:
        """Something appeared at `target` while the job ran: a complete output of ours (a
        second run on the same output wrote it) counts as done; anything else is a failure."""
        if self.is_ours(target):
            self.report.skipped += 1
        else:
            self.record_failure(item, f"output {target} appeared meanwhile; left untouched")

    def record_failure(self, item: InputItem, reason: str) -> None:
        """Logs an image that failed and rewrites the failures file (atomically) with it."""
        _log.warning("failed: %s", reason)
        self.report.failures.append((str(item.path), reason))
        layout.write_failures(self.failures_path, self.report.failures)


def local_mesh() -> Mesh:
    """A 1-D mesh ("data") over this process's devices."""
    return Mesh(np.asarray(jax.local_devices()), ("data",))
