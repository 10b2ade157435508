"""`sam-jax amg`: automatic masks for a collection, in the reference `scripts/amg.py` layout.
Each image is a chain of small, data-dependent steps, so the unit of parallelism is the
image: the weights are replicated on every local device and one worker per device takes
images from a shared stream decoded on host threads."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import threading
from collections.abc import Callable, Sequence

import jax

from sam_jax import vectors
from sam_jax.amg import AmgOptions, generate
from sam_jax.amg.tiling import check_tiling, coco_records, generate_tiled, polygon_records
from sam_jax.io import (
    DECODE_MEMORY_BUDGET,
    DEFAULT_MAX_PIXELS,
    ImageError,
    MemoryBudget,
    check_max_pixels,
)
from sam_jax.jobs import layout
from sam_jax.jobs.engine import Job, JobReport, Loaded, Reader, host_threads, load_original, loaded_in_order, one_line
from sam_jax.jobs.layout import InputItem, is_complete_masks, masks_output_path, write_masks
from sam_jax.jobs.tile_pieces import TilePieces, image_fingerprint, pieces_folder, tiling_fingerprint
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import check_params
from sam_jax.windowed import open_windows

POLYGON_MODES = ("polygons", "geojson")


def checked_options(params: SamParams, options: AmgOptions | None) -> tuple[SamParams, AmgOptions]:
    """The job's model and options (the reference's defaults when None), checked."""
    params = check_params(params)
    options = AmgOptions() if options is None else options
    if not isinstance(options, AmgOptions):
        raise TypeError(f"options must be an AmgOptions, got {type(options).__name__}")
    return params, options


def checked_simplify(simplify: float, mode: str) -> float:
    """`simplify` as a tolerance in pixels, refused for an output mode that writes no polygons."""
    simplify = vectors.check_tolerance(simplify, "simplify")
    if simplify and mode not in POLYGON_MODES:
        raise ValueError(f"simplify applies to output_mode 'polygons' or 'geojson', not {mode!r}")
    return simplify


def plan_masks_job(
    inputs: str | os.PathLike[str] | Sequence[InputItem],
    output_dir: str | os.PathLike[str],
    mode: str,
    process_index: int | None,
    process_count: int | None,
    progress: Callable[[int], None] | None,
) -> Job:
    """`Job.plan` for one masks file (or folder) of `mode` per image."""
    return Job.plan(
        inputs,
        output_dir,
        functools.partial(masks_output_path, output_mode=mode),
        functools.partial(is_complete_masks, output_mode=mode),
        process_index,
        process_count,
        progress,
    )


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
    simplify: float = 0.0,
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
        simplify: for `output_mode` "polygons" and "geojson", each ring simplified by this
            many pixels (`sam_jax.vectors.mask_to_polygons`'s tolerance; 0: exact outlines).
    Returns:
        A `JobReport`; `report.ok` is False when some image could not be read or processed.
    """
    params, options = checked_options(params, options)
    cfg = params.config
    options.check_memory(cfg.embedding_size, cfg.prompt_embed_dim, cfg.low_res_mask_size)
    mode = options.output_mode
    simplify = checked_simplify(simplify, mode)
    # The polygon modes trace each mask once, as they are written, with the simplification.
    generating = dataclasses.replace(options, output_mode="uncompressed_rle") if mode in POLYGON_MODES else options
    reader = Reader(check_max_pixels(max_pixels), MemoryBudget(DECODE_MEMORY_BUDGET))
    job = plan_masks_job(inputs, output_dir, mode, process_index, process_count, progress)
    out, report, todo = job.out, job.report, job.todo
    devices = list(jax.local_devices() if devices is None else devices)
    lock = threading.Lock()
    loaded = loaded_in_order(todo, functools.partial(load_original, reader), host_threads(threads))

    def process(replica: SamParams, entry: Loaded) -> str | None:
        """Masks of one image, written; the reason it failed otherwise."""
        assert entry.image is not None  # failures never reach here
        target = masks_output_path(out, entry.item, mode)
        try:
            records = generate(replica, entry.image, generating)
            write_masks(target, records, mode, tolerance=simplify)
        except ValueError as e:  # this image cannot be processed (e.g. too small for the crops)
            return one_line(e)
        except FileExistsError:
            with lock:
                job.appeared_meanwhile(entry.item, target)
            return None
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
    layout.write_failures(job.failures_path, report.failures)
    return report


def generate_tiled_masks_for_images(
    params: SamParams,
    inputs: str | os.PathLike[str] | Sequence[InputItem],
    output_dir: str | os.PathLike[str],
    options: AmgOptions | None = None,
    *,
    tile: int,
    overlap: int,
    device: jax.Device | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    progress: Callable[[int], None] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    simplify: float = 0.0,
) -> JobReport:
    """Automatic masks of large images, tile by tile (`sam_jax.amg.tiling.generate_tiled`):
    per image one file of `options.output_mode`'s (`masks_output_path`): "coco_rle" (also for
    "binary_mask", whose image-sized PNGs per mask tiling is there to avoid), "polygons" or
    "geojson" (polygons in the image's coordinates, traced from each cropped mask).

    An image is read a tile at a time where its format allows (`sam_jax.windowed`: tiled or
    stripped TIFFs), so neither it nor its masks are ever held at full size; other formats are
    decoded whole within `max_pixels`. Images run one after another on one device (their
    tiles, one after another); skipping of complete outputs, atomic writes, shares across
    processes and the failures file are as in `generate_masks_for_images`. A killed job
    resumes at the tile it was on: finished tiles are kept beside the image's output until
    it is written (`sam_jax.jobs.tile_pieces`).

    Args:
        params, inputs, output_dir, options, simplify: as for `generate_masks_for_images`.
        tile, overlap: tile side and pixels shared by neighbours (`check_tiling`).
        device: the device to run on (default: this process's first).
        process_index, process_count, progress: as for `embed_images`.
        max_pixels: the cap on an image decoded whole (not on windowed TIFFs).
    Returns:
        A `JobReport`; `report.ok` is False when some image could not be read or processed.
    """
    params, options = checked_options(params, options)
    check_tiling(tile, overlap, params.config.image_size)
    cfg = params.config
    options.check_memory(cfg.embedding_size, cfg.prompt_embed_dim, cfg.low_res_mask_size)
    max_pixels = check_max_pixels(max_pixels)
    mode = options.output_mode if options.output_mode in POLYGON_MODES else "coco_rle"
    simplify = checked_simplify(simplify, mode)
    job = plan_masks_job(inputs, output_dir, mode, process_index, process_count, progress)
    replica = jax.device_put(params, device or jax.local_devices()[0]) if job.todo else params
    fingerprint = tiling_fingerprint(params, options, tile, overlap) if job.todo else ""
    for item in job.todo:
        target = masks_output_path(job.out, item, mode)
        try:
            with open_windows(item.path, max_pixels=max_pixels) as source:
                size = (int(source.shape[0]), int(source.shape[1]))
                made_of = f"{fingerprint}:{image_fingerprint(item.path, size)}"
                pieces = TilePieces(pieces_folder(target), made_of, size)
                records = generate_tiled(
                    replica, source, options, tile=tile, overlap=overlap, tile_records=pieces.tile_records
                )
            if mode in POLYGON_MODES:
                write_masks(target, polygon_records(records, simplify), mode)
            else:
                write_masks(target, coco_records(records), mode)
        except (ImageError, ValueError) as e:  # unreadable, or this image cannot be processed
            job.record_failure(item, one_line(e))
        except FileExistsError:
            job.appeared_meanwhile(item, target)
        else:
            pieces.remove()
            job.report.written += 1
            job.report.masks += len(records)
        if progress:
            progress(1)
    layout.write_failures(job.failures_path, job.report.failures)
    return job.report
