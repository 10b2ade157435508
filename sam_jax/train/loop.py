"""`train`: the training loop, with checkpoints every few steps, exact resume, periodic evaluation
and a progress bar."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.config import SamConfig, ViTConfig
from sam_jax.modeling.sam import (
    SamParams,
)
from sam_jax.predictor import check_params
from sam_jax.train.config import TrainConfig
from sam_jax.train.data import BatchStream, EmbeddingCache, prefetch, target_side
from sam_jax.train.step import make_optimizer, merge, partition, step_uses_box, train_step
from sam_jax.train.store import CheckpointStore, step_metadata


def _resume(
    store: CheckpointStore, config: SamConfig, cfg: TrainConfig, opt_state: Any, log: Any
) -> tuple[int, int, Any, Any]:
    """(step, data cursor, weights, optimiser state) of the newest intact step of a run.

    Each step's model is checked against `config` from its metadata first (restoring another
    model's arrays would fail deep inside orbax). A damaged step is named and the previous
    one tried; once an intact one is found, the damaged newer ones are set aside (renamed in
    the run folder, never deleted), so the resumed run can save their step numbers again.
    If no step is intact, nothing is moved.
    """
    damaged: list[tuple[int, str]] = []
    for step in store.steps():
        try:
            meta = store.read_meta(step)
            run_config = SamConfig.from_dict(meta["config"])
        except ValueError as e:
            log(f"warning: {e}; trying the step before it")
            damaged.append((step, str(e)))
            continue
        if run_config != config:
            raise ValueError(
                f"checkpoint directory {store.directory}: the run there trains another model "
                f"({_describe(run_config)}, not {_describe(config)}); resume with the same --config/--init or choose "
                "a new folder"
            )
        try:
            weights, restored = store.restore(step, opt_state)
        except ValueError as e:
            log(f"warning: {e}; trying the step before it")
            damaged.append((step, str(e)))
            continue
        for bad, reason in damaged:
            log(f"note: damaged step {bad} moved aside to {store.set_aside(bad, reason)} (kept, not deleted)")
        run_cfg = TrainConfig.from_dict(meta["train"])
        if run_cfg != cfg:
            changes = _changes(run_cfg, cfg)
            log(f"note: resuming {store.directory} from step {step} with changed training options: {changes}")
        return step, int(meta["data_cursor"]), weights, restored
    raise ValueError(f"checkpoint directory {store.directory}: no step of the run can be read (see the warnings)")


def _figures_line(when: str, figures: dict[str, float]) -> str:
    """`step 4: point_miou 0.7012  box_miou ...`: one evaluation's log line."""
    return f"{when}: " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items())


def _changes(before: TrainConfig, after: TrainConfig) -> str:
    """The options that differ, `name run -> now`, and what a resume keeps."""
    old, new = before.to_dict(), after.to_dict()
    changed = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k))
    return f"{changed} (the run's own weights are resumed: the starting weights given now are not read)"


def _describe(config: SamConfig) -> str:
    encoder = config.image_encoder
    if isinstance(encoder, ViTConfig):
        return f"embed {encoder.embed_dim}, depth {encoder.depth}, image {config.image_size}"
    return f"TinyViT {'/'.join(map(str, encoder.embed_dims))}, image {config.image_size}"


def train(
    params: SamParams,
    datasets: Sequence[Any],
    cfg: TrainConfig,
    checkpoint_dir: str | None = None,
    *,
    save_every: int = 500,
    keep: int = 3,
    resume: bool = True,
    evaluate_fn: Any = None,
    eval_every: int = 0,
    final_evaluate_fn: Any = None,
    log: Any = None,
    progress: bool = True,
    stop_after: int | None = None,
    embedding_cache_bytes: int = 2**31,
) -> SamParams:
    """Trains `params` on `datasets` and returns the result.

    Args:
        params: the starting weights (a checkpoint, or `sam_jax.init` for scratch).
        datasets: objects with `len()` and `[i] -> Sample` (see `sam_jax.data`).
        cfg: hyper-parameters.
        checkpoint_dir: orbax run directory; saved every `save_every` steps and at the end,
            the last `keep` kept. With `resume`, a run there continues from its latest step.
        evaluate_fn: `f(params) -> dict of figures`, called every `eval_every` steps (and before
            the first step of a new run when `eval_every` > 0) and at the end.
        final_evaluate_fn: used instead of `evaluate_fn` at the end (e.g. on more images).
        log: where progress lines go (default: printed, flushed at once so a log file is live).
        progress: show a progress bar.
        stop_after: stop before this step without saving, as a kill would (tests use it).
        embedding_cache_bytes: with the whole image encoder frozen, each training image's
            embedding is computed once and up to this many bytes of them kept on the host
            (`EmbeddingCache`; 4 MiB an image at SAM's 64 x 64 x 256); 0 runs the encoder
            in every step instead.
    Returns:
        The trained `SamParams`.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    log = log or functools.partial(print, flush=True)
    params = check_params(params)
    target_side(params.config, cfg)  # refuses a bad loss_upsample before any work
    limits = (("save_every", save_every, 1), ("keep", keep, 1), ("eval_every", eval_every, 0))
    for name, value, low in (*limits, ("embedding_cache_bytes", embedding_cache_bytes, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    devices = jax.devices()
    if cfg.batch_size % len(devices):
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the {len(devices)} devices")
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec("data"))

    trainable, frozen = partition(params.weights, cfg.freeze)
    optimizer = make_optimizer(cfg)
    opt_state = optimizer.init(trainable)
    start, cursor = 0, 0
    store = CheckpointStore(checkpoint_dir, keep) if checkpoint_dir else None
    if store is not None and store.steps() and not resume:
        raise ValueError(
            f"checkpoint directory {checkpoint_dir}: holds a run (latest step {store.steps()[0]}); resume it or "
            "choose a new folder"
        )
    if store is not None and store.steps():
        start, cursor, weights, opt_state = _resume(store, params.config, cfg, opt_state, log)
        trainable, frozen = partition(jax.tree.map(jnp.asarray, weights), cfg.freeze)
        log(f"resumed from step {start} (data cursor {cursor})")
    trainable, frozen, opt_state = jax.device_put((trainable, frozen, opt_state), replicated)
    # The step donates its trainable buffers; never donate the caller's own arrays.
    trainable, opt_state = jax.tree.map(jnp.copy, (trainable, opt_state))

    cache = None
    if embedding_cache_bytes and "image_encoder" not in trainable:
        encoder = SamParams(params.config, {"image_encoder": frozen["image_encoder"]}, cfg.compute_dtype)
        cache = EmbeddingCache(encoder, embedding_cache_bytes)
    stream = BatchStream(datasets, params.config, cfg, cursor, cache)
    figures: dict[str, float] = {}
    running: dict[str, float] = {}
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.2f} step/s  loss {task.fields[loss]:.4f}  IoU {task.fields[iou]:.3f}"),
        TimeRemainingColumn(),
        disable=not progress,
    )
    import time

    if evaluate_fn is not None and eval_every and start == 0:  # the "before" of a before/after
        # The arrays the later evaluations see (a frozen encoder's are the same objects).
        figures = evaluate_fn(SamParams(params.config, merge(trainable, frozen)))
        log(_figures_line("step 0", figures))
    step = start
    with bar:
        task = bar.add_task("train", total=cfg.steps, completed=start, rate=0.0, loss=float("nan"), iou=float("nan"))
        t0, steps_timed = time.perf_counter(), 0
        batches = prefetch(stream)
        for step in range(start, cfg.steps):
            if stop_after is not None and step >= stop_after:
                break
            batch, cursor = next(batches)
            batch = jax.device_put(batch, sharded)
            trainable, opt_state, metrics = train_step(
                trainable, frozen, opt_state, batch, jnp.int32(step), params.config, cfg, step_uses_box(cfg, step)
            )
            m = {k: float(v) for k, v in metrics.items()}
            for k, v in m.items():  # exponential moving averages for the bar
                running[k] = v if k not in running else 0.95 * running[k] + 0.05 * v
            steps_timed += 1
            rate = steps_timed / (time.perf_counter() - t0)
            bar.update(task, completed=step + 1, rate=rate, loss=running["loss"], iou=running["last_iou"])
            done = step + 1
            if evaluate_fn is not None and eval_every and done % eval_every == 0 and done < cfg.steps:
                figures = evaluate_fn(SamParams(params.config, merge(trainable, frozen)))
                log(_figures_line(f"step {done}", figures))
            if store is not None and (done % save_every == 0 or done == cfg.steps):
                weights = jax.tree.map(np.asarray, merge(trainable, frozen))
                store.save(
                    done,
                    weights,
                    opt_state,
                    step_metadata(params.config, cfg, done, cursor, {**running, **figures}, weights, opt_state),
                )
        else:
            step = cfg.steps
        batches.close()
    result = SamParams(params.config, merge(trainable, frozen))
    final_evaluate_fn = final_evaluate_fn or evaluate_fn
    if final_evaluate_fn is not None and step >= cfg.steps:
        figures = final_evaluate_fn(result)
        log(_figures_line("final", figures))
    if store is not None:
        store.close()
    log(f"trained {step - start} steps ({stream.skipped_images} images without usable masks skipped)")
    if cache is not None:
        log(
            f"frozen image encoder: {cache.computed} embeddings computed, {len(cache.kept)} kept "
            f"({cache.kept_bytes / 2**20:.0f} MiB)"
        )
    return result
