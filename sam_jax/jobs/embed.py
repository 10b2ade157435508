"""`sam-jax embed`: image embeddings for a collection, a batch sharded over this process's
devices (a `jax.Array` over a 1-D mesh, the weights replicated), written as `.npz` files
that `sam_jax.load_embedding` reads back."""

from __future__ import annotations

import concurrent.futures
import functools
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sam_jax.embedding_files import embedding_bytes, is_complete_embedding
from sam_jax.io import (
    DECODE_MEMORY_BUDGET,
    DEFAULT_MAX_PIXELS,
    MemoryBudget,
    atomic_write_bytes,
    check_max_pixels,
    host_memory,
)
from sam_jax.jobs import layout
from sam_jax.jobs.engine import (
    Job,
    JobReport,
    Loaded,
    Reader,
    batches,
    host_threads,
    load_for_encoder,
    loaded_in_order,
    local_mesh,
)
from sam_jax.jobs.layout import InputItem
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import check_params, encode_padded


def check_batch_memory(params: SamParams, batch_size: int, name: str = "batch_size") -> None:
    """Refuses a batch whose host-side images and embeddings alone would take more than a
    quarter of this machine's memory (before anything is allocated)."""
    cfg = params.config
    per_image = 3 * cfg.image_size**2 + 4 * cfg.embedding_size**2 * cfg.prompt_embed_dim
    limit = host_memory() // 4
    if batch_size * per_image > limit:
        raise ValueError(
            f"{name} {batch_size} needs {batch_size * per_image / 2**30:.1f} GiB of host memory for one batch's "
            f"images and embeddings; at most {max(limit // per_image, 1)} fit in a quarter of this machine's "
            f"{host_memory() / 2**30:.0f} GiB"
        )


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
    params = check_params(params)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_batch_memory(params, batch_size)
    reader = Reader(check_max_pixels(max_pixels), MemoryBudget(DECODE_MEMORY_BUDGET))
    job = Job.plan(
        inputs, output_dir, layout.output_path, is_complete_embedding, process_index, process_count, progress
    )
    out, report, todo = job.out, job.report, job.todo
    if not todo:
        layout.write_failures(job.failures_path, [])
        return report

    mesh = local_mesh()
    n_dev = mesh.devices.size
    step = -(-batch_size // n_dev) * n_dev
    data = NamedSharding(mesh, PartitionSpec("data"))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    size = params.config.image_size

    def record_failure(entry: Loaded) -> None:
        job.record_failure(entry.item, entry.error or "unknown error")
        if progress:
            progress(1)

    # One writer thread: writes stay in order and only it touches `report.written`.
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-jax-write")
    writes: list[concurrent.futures.Future[None]] = []

    def write(batch: list[Loaded], emb: jax.Array, early: jax.Array | None) -> None:
        host = np.asarray(emb)  # waits for this batch only; the next one is already dispatched
        early_host = [None] * len(host) if early is None else np.asarray(early)
        for entry, e, f in zip(batch, host, early_host, strict=False):
            data = embedding_bytes(e, entry.original_size, entry.input_size, f)
            target = layout.output_path(out, entry.item)
            try:
                atomic_write_bytes(target, data, overwrite=False)
                report.written += 1
            except FileExistsError:  # something appeared there while the job ran
                job.appeared_meanwhile(entry.item, target)
        if progress:
            progress(len(batch))

    n_threads = host_threads(threads)
    previous: tuple[list[Loaded], jax.Array, jax.Array | None] | None = None
    try:
        loaded = loaded_in_order(todo, functools.partial(load_for_encoder, reader, config=params.config), n_threads)
        for batch in batches(loaded, step, record_failure):
            images = np.zeros((step, size, size, 3), np.uint8)
            hws = np.full((step, 2), size, np.int32)
            for i, entry in enumerate(batch):
                assert entry.image is not None  # failures were taken out of the batches
                images[i], hws[i] = entry.image, entry.input_size
            emb, early = encode_padded(params, jax.device_put(images, data), jax.device_put(hws, data))
            if previous is not None:  # write batch k-1 while the device runs batch k
                writes.append(writer.submit(write, *previous))
            previous = (batch, emb, early)
        if previous is not None:
            writes.append(writer.submit(write, *previous))
        for w in writes:
            w.result()
    finally:
        writer.shutdown(wait=True)
    layout.write_failures(job.failures_path, report.failures)
    return report
