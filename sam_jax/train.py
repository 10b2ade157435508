"""Training and fine-tuning (SAM paper, Kirillov et al. 2023, section 3 and appendix A).

- Losses: focal + dice on mask logits (20:1), plus MSE between predicted and actual IoU;
  with an ambiguous prompt (one point) only the best of the multimask outputs is trained.
- Prompts are simulated from ground-truth masks on the device: a random foreground point
  or a noisy box first, then correction clicks sampled uniformly from the error region
  (foreground where the prediction misses, background where it spills), with the
  previous low-res logits fed back as `mask_input`.
- One jitted step over a batch of images x prompts, data parallel over all local devices
  through `jax.sharding` (the batch axis is sharded, parameters replicated).
- Frozen parameters are not differentiated and have no optimiser state.
- Exact resume: the per-step randomness is `fold_in(seed, step)` and the data order a pure
  function of the seed, so (params, optimiser state, step, data cursor) is the whole state.

Masks are trained at the low-res resolution (4x the embedding grid, 256 for SAM) against
the ground truth resized to the same grid, or, with `loss_upsample`, on the low-res logits
bilinearly upsampled as the predictor does: a binary target on the low-res grid teaches
saturated logits whose upsampled boundary is a staircase of low-res cells (on 128-px
synthetic scenes with a 32-px grid even perfect such logits reach only 0.88 mean IoU at
full resolution; the upsampled loss lets the model place the boundary between cells).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from sam_jax import checkpoint, transforms
from sam_jax.config import SamConfig, config_from_json, config_to_json
from sam_jax.modeling.prompt_encoder import LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_PADDING
from sam_jax.modeling.sam import (
    SamParams,
    check_compute_dtype,
    image_encoder_forward,
    mask_decoder_forward,
    normalize_and_pad,
    prompt_encoder_forward,
)

# The random-Fourier matrix is a fixed buffer in the reference, never trained.
ALWAYS_FROZEN = ("prompt_encoder/pe_layer/positional_encoding_gaussian_matrix",)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run (hashable: a static argument of the step).

    Attributes:
        steps: optimiser steps in the run.
        batch_size: images per step (a multiple of the local device count).
        prompts_per_image: object instances (each with its own prompts) per image.
        learning_rate: peak learning rate (AdamW) after linear warm-up.
        warmup_steps: linear warm-up from 0; then cosine decay to 1% of the peak.
        weight_decay: AdamW decoupled weight decay.
        grad_clip: global-norm clipping threshold.
        correction_rounds: correction clicks after the first prompt (the paper uses 8 + 2).
        box_probability: chance that a step starts from boxes instead of one point.
        focal_weight, dice_weight, iou_weight: loss weights (paper: 20, 1, 1).
        loss_upsample: the mask loss, the IoU head's targets and the correction clicks use
            the low-res logits bilinearly upsampled by this factor (1: the low-res grid, as
            the paper; 4: the model input resolution), against ground truth at that size.
        all_candidates_weight: weight of the mask loss averaged over every multimask
            candidate, added to the best candidate's (paper: 0). For data without
            ambiguity (every pixel belongs to one object, as in `SyntheticShapes`) it keeps
            the other candidates useful, so the mask picked by predicted IoU is good too.
        freeze: module names or path patterns (`image_encoder`, `mask_decoder/transformer/*`).
        remat: gradient checkpointing of encoder blocks.
        compute_dtype: "float32" or "bfloat16" for the image encoder; weights stay float32.
        seed: the one seed of data order, prompt sampling and initialisation.
    """

    steps: int = 1000
    batch_size: int = 8
    prompts_per_image: int = 4
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    correction_rounds: int = 2
    box_probability: float = 0.5
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    all_candidates_weight: float = 0.0
    loss_upsample: int = 1
    freeze: tuple[str, ...] = ()
    remat: bool = False
    compute_dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "freeze", tuple(self.freeze))
        check_compute_dtype(self.compute_dtype)
        for name in ("steps", "batch_size", "prompts_per_image", "loss_upsample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.correction_rounds < 0 or self.warmup_steps < 0:
            raise ValueError("correction_rounds and warmup_steps must be >= 0")
        for name in ("focal_weight", "dice_weight", "iou_weight", "all_candidates_weight", "weight_decay"):
            if not getattr(self, name) >= 0 or not np.isfinite(getattr(self, name)):  # NaN fails every compare
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "grad_clip"):
            if not getattr(self, name) > 0 or not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0 <= self.box_probability <= 1:
            raise ValueError(f"box_probability must be in [0, 1], got {self.box_probability}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_json(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return config_from_json(cls, d)


# ----------------------------------------------------------------------------- losses


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
    """Focal loss (Lin et al. 2017) averaged over the last two (pixel) axes -> (...)."""
    t = targets.astype(logits.dtype)
    p = jax.nn.sigmoid(logits)
    ce = optax.sigmoid_binary_cross_entropy(logits, t)
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return jnp.mean(alpha_t * ce * (1 - p_t) ** gamma, axis=(-2, -1))


def dice_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """1 - soft Dice coefficient over the last two axes -> (...); +1 smoothing as in DETR."""
    p = jax.nn.sigmoid(logits)
    t = targets.astype(p.dtype)
    num = 2 * jnp.sum(p * t, axis=(-2, -1)) + 1
    return 1 - num / (jnp.sum(p, axis=(-2, -1)) + jnp.sum(t, axis=(-2, -1)) + 1)


def mask_iou(pred: jax.Array, target: jax.Array) -> jax.Array:
    """IoU of boolean masks over the last two axes -> (...); 1 when both are empty."""
    inter = jnp.sum(pred & target, axis=(-2, -1))
    union = jnp.sum(pred | target, axis=(-2, -1))
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)


def sam_loss(
    logits: jax.Array, iou_pred: jax.Array, target: jax.Array, cfg: TrainConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SAM's loss for N prompts with M candidate masks each.

    Args:
        logits: (N, M, L, L) low-res mask logits.
        iou_pred: (N, M) predicted IoU.
        target: (N, L, L) bool ground truth.
    Returns:
        (scalar loss, metrics) where the mask loss takes, per prompt, the candidate with
        the lowest loss (the paper's answer to ambiguity) and the IoU head is trained on
        every candidate.
    """
    t = target[:, None]
    mask_loss = cfg.focal_weight * sigmoid_focal_loss(logits, t) + cfg.dice_weight * dice_loss(logits, t)
    best = jnp.argmin(mask_loss, axis=1)
    actual_iou = jax.lax.stop_gradient(mask_iou(logits > 0, t))
    iou_loss = jnp.mean((iou_pred - actual_iou) ** 2)
    chosen = jnp.take_along_axis(mask_loss, best[:, None], axis=1)[:, 0]
    loss = jnp.mean(chosen) + cfg.iou_weight * iou_loss
    if cfg.all_candidates_weight and logits.shape[1] > 1:
        loss = loss + cfg.all_candidates_weight * jnp.mean(mask_loss)
    best_iou = jnp.take_along_axis(actual_iou, best[:, None], axis=1)[:, 0]
    return loss, {"mask_loss": jnp.mean(chosen), "iou_loss": iou_loss, "iou": jnp.mean(best_iou)}


# ----------------------------------------------------------------------------- prompt simulation


def upsample_logits(logits: jax.Array, factor: int) -> jax.Array:
    """(..., L, L) low-res logits -> (..., L * factor, L * factor), bilinear as the
    predictor's `postprocess_masks` (torch `F.interpolate`, align_corners=False)."""
    if factor == 1:
        return logits
    side = logits.shape[-1] * factor  # a square input frame of that side, nothing to crop
    # Products: the losses read the result several times, and their gradient is a product
    # too (a gather's is a scatter-add).
    return transforms.postprocess_masks(logits, (side, side), (side, side), side, gather=False)


def _cell_to_input(cells: jax.Array, jitter: jax.Array, scale: float) -> jax.Array:
    """Low-res cell (row, col) plus jitter in [0, 1) -> input-frame pixel (x, y)."""
    return (cells[..., ::-1].astype(jnp.float32) + jitter) * scale


def sample_points_from(key: jax.Array, region: jax.Array, image_size: int) -> tuple[jax.Array, jax.Array]:
    """One point per mask, uniform over the mask's cells.

    Args:
        region: (N, L, L) bool.
    Returns:
        points (N, 2) input-frame (x, y); found (N,) False where the region is empty.
    """
    n, side, _ = region.shape
    k_idx, k_jit = jax.random.split(key)
    flat = region.reshape(n, -1)
    logits = jnp.where(flat, 0.0, -jnp.inf)
    idx = jax.random.categorical(k_idx, jnp.where(flat.any(axis=1, keepdims=True), logits, 0.0), axis=-1)
    cells = jnp.stack([idx // side, idx % side], axis=-1)
    points = _cell_to_input(cells, jax.random.uniform(k_jit, (n, 2)), image_size / side)
    return points, flat.any(axis=1)


def noisy_boxes(key: jax.Array, target: jax.Array, image_size: int) -> jax.Array:
    """Tight boxes of (N, L, L) masks in the input frame, each coordinate perturbed by noise
    with std 10% of the box side, at most 20 pixels (paper appendix A) -> (N, 4) XYXY."""
    side = target.shape[-1]
    scale = image_size / side
    rows, cols = target.any(axis=2), target.any(axis=1)
    idx = jnp.arange(side)
    y0 = jnp.min(jnp.where(rows, idx, side), axis=1)
    y1 = jnp.max(jnp.where(rows, idx + 1, 0), axis=1)
    x0 = jnp.min(jnp.where(cols, idx, side), axis=1)
    x1 = jnp.max(jnp.where(cols, idx + 1, 0), axis=1)
    box = jnp.stack([x0, y0, x1, y1], axis=-1).astype(jnp.float32) * scale
    side_wh = jnp.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]] * 2, axis=-1)
    std = jnp.minimum(0.1 * side_wh, 20.0)
    box = box + jax.random.normal(key, box.shape) * std
    return jnp.clip(box, 0, image_size)


def correction_click(
    key: jax.Array, pred: jax.Array, target: jax.Array, image_size: int
) -> tuple[jax.Array, jax.Array]:
    """The next click: uniform over the error region, foreground on a miss, background on a spill.

    Args:
        pred, target: (N, L, L) bool.
    Returns:
        points (N, 1, 2), labels (N, 1) (-1, a padding point, where there is no error).
    """
    error = pred ^ target
    points, found = sample_points_from(key, error, image_size)
    side = target.shape[-1]
    cells = jnp.clip((points[:, ::-1] / (image_size / side)).astype(jnp.int32), 0, side - 1)
    on_target = target[jnp.arange(target.shape[0]), cells[:, 0], cells[:, 1]]
    labels = jnp.where(on_target, LABEL_FOREGROUND, LABEL_BACKGROUND)
    labels = jnp.where(found, labels, LABEL_PADDING)
    return points[:, None], labels[:, None].astype(jnp.int32)


# ----------------------------------------------------------------------------- parameters


def _path_str(path: tuple[str, ...]) -> str:
    return "/".join(path)


def is_frozen(path: str, patterns: Sequence[str]) -> bool:
    """Whether a weights path (`image_encoder/blocks_0/attn/qkv/kernel`) matches a freeze pattern.

    A pattern is a module prefix (`image_encoder`, `mask_decoder/transformer`) or an
    fnmatch pattern over the whole path (`image_encoder/blocks_[0-5]/*`).
    """
    return any(_matches(path, p) for p in (*patterns, *ALWAYS_FROZEN))


def _matches(path: str, pattern: str) -> bool:
    return path == pattern or path.startswith(pattern.rstrip("/") + "/") or fnmatch.fnmatchcase(path, pattern)


def partition(weights: dict[str, Any], freeze: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits a weights tree into (trainable, frozen) trees of the same nesting.

    Raises:
        ValueError: a freeze pattern that matches no parameter (a typo would train everything).
    """
    flat = flax.traverse_util.flatten_dict(weights)
    paths = [_path_str(k) for k in flat]
    for pattern in freeze:
        if not any(_matches(path, pattern) for path in paths):
            raise ValueError(
                f"freeze pattern {pattern!r} matches no parameter; give a module ({', '.join(weights)}) "
                "or a path pattern such as image_encoder/blocks_[0-5]/*"
            )
    trainable = {k: v for k, v in flat.items() if not is_frozen(_path_str(k), freeze)}
    frozen = {k: v for k, v in flat.items() if k not in trainable}
    return flax.traverse_util.unflatten_dict(trainable), flax.traverse_util.unflatten_dict(frozen)


def merge(trainable: dict[str, Any], frozen: dict[str, Any]) -> dict[str, Any]:
    flat = flax.traverse_util.flatten_dict(trainable) | flax.traverse_util.flatten_dict(frozen)
    return flax.traverse_util.unflatten_dict(flat)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay, after global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.steps, cfg.warmup_steps + 1), cfg.learning_rate / 100
    )
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(schedule, weight_decay=cfg.weight_decay))


# ----------------------------------------------------------------------------- the step


@flax.struct.dataclass
class Batch:
    """One step's data, already in the model frame.

    images: (B, S, S, 3) uint8 padded; input_hw: (B, 2) int32; targets: (B, P, L, L) bool.
    """

    images: jax.Array
    input_hw: jax.Array
    targets: jax.Array


def forward_rounds(
    weights: dict[str, Any],
    config: SamConfig,
    batch: Batch,
    key: jax.Array,
    cfg: TrainConfig,
    use_box: bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the simulated interactive session of one step and returns the mean loss."""
    params = SamParams(config=config, weights=weights, compute_dtype=cfg.compute_dtype)
    x = normalize_and_pad(config, batch.images, batch.input_hw)
    emb = image_encoder_forward(params, x, remat=cfg.remat)
    b, p, side, _ = batch.targets.shape
    emb = jnp.repeat(emb, p, axis=0)  # (B * P, E, E, C): each prompt sees its image
    target = batch.targets.reshape(b * p, side, side)
    size = config.image_size
    keys = jax.random.split(key, cfg.correction_rounds + 2)

    if use_box:
        points, labels, boxes = None, None, noisy_boxes(keys[0], target, size)
    else:
        first, _ = sample_points_from(keys[0], target, size)
        points, labels, boxes = first[:, None], jnp.full((b * p, 1), LABEL_FOREGROUND, jnp.int32), None
    mask_input = None
    losses, metrics = [], []
    for r in range(cfg.correction_rounds + 1):
        multimask = r == 0 and not use_box  # one point is ambiguous; later prompts are not
        sparse, dense, pe = prompt_encoder_forward(params, points, labels, boxes, mask_input)
        logits, iou_pred = mask_decoder_forward(params, emb, pe, sparse, dense, multimask)
        loss, m = sam_loss(upsample_logits(logits, cfg.loss_upsample), iou_pred, target, cfg)
        losses.append(loss)
        metrics.append(m)
        if r == cfg.correction_rounds:
            break
        # Feed back the candidate the model itself ranks best, as a user's tool would.
        best = jnp.argmax(iou_pred, axis=1)
        prev = jax.lax.stop_gradient(jnp.take_along_axis(logits, best[:, None, None, None], axis=1))
        pred = upsample_logits(prev[:, 0], cfg.loss_upsample) > 0
        click, click_label = correction_click(keys[r + 1], pred, target, size)
        points = click if points is None else jnp.concatenate([points, click], axis=1)
        labels = click_label if labels is None else jnp.concatenate([labels, click_label], axis=1)
        mask_input = jnp.moveaxis(prev, 1, -1)
    out = {k: jnp.mean(jnp.stack([m[k] for m in metrics])) for k in metrics[0]}
    out["first_iou"] = metrics[0]["iou"]
    out["last_iou"] = metrics[-1]["iou"]
    return jnp.mean(jnp.stack(losses)), out


@functools.partial(jax.jit, static_argnames=("config", "cfg", "use_box"), donate_argnames=("trainable", "opt_state"))
def train_step(
    trainable: dict[str, Any],
    frozen: dict[str, Any],
    opt_state: optax.OptState,
    batch: Batch,
    step: jax.Array,
    config: SamConfig,
    cfg: TrainConfig,
    use_box: bool,
) -> tuple[dict[str, Any], optax.OptState, dict[str, jax.Array]]:
    """One optimiser step; gradients flow only to `trainable`."""
    key = jax.random.fold_in(jax.random.key(cfg.seed), step)

    def loss_fn(tr: dict[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
        return forward_rounds(merge(tr, frozen), config, batch, key, cfg, use_box)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = make_optimizer(cfg).update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
    return trainable, opt_state, metrics


def step_uses_box(cfg: TrainConfig, step: int) -> bool:
    """Host-side, deterministic choice of the step's first prompt kind."""
    return bool(np.random.default_rng([cfg.seed, step, 7]).random() < cfg.box_probability)


# ----------------------------------------------------------------------------- data


def resize_mask(mask: np.ndarray, input_hw: tuple[int, int], image_size: int, side: int) -> np.ndarray:
    """A full-resolution (H, W) bool mask -> (side, side) bool in the padded model frame.

    Resized with the image (bilinear, then > 0.5), zero-padded to the model input, then
    area-averaged to the low-res grid and thresholded at one half.
    """
    h, w = input_hw
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BILINEAR)) > 127
    padded = np.zeros((image_size, image_size), np.float32)
    padded[:h, :w] = m
    f = image_size // side
    return padded.reshape(side, f, side, f).mean(axis=(1, 3)) >= 0.5


def target_side(config: SamConfig, cfg: TrainConfig) -> int:
    """Side of the training targets: the low-res side times `cfg.loss_upsample`."""
    side = config.low_res_mask_size * cfg.loss_upsample
    if config.image_size % side:
        raise ValueError(
            f"loss_upsample {cfg.loss_upsample} must divide image_size / low-res side "
            f"({config.image_size} / {config.low_res_mask_size})"
        )
    return side


def prepare_sample(
    image: np.ndarray, masks: np.ndarray, config: SamConfig, side: int | None = None
) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """(H, W, 3) uint8 and (K, H, W) bool -> padded image, input (h, w), (K', L, L) bool targets
    with L = `side` (default: the low-res side).

    Instances that vanish at that resolution are dropped.
    """
    resized = transforms.resize_longest_side(image, config.image_size)
    input_hw = resized.shape[:2]
    side = side or config.low_res_mask_size
    targets = np.stack([resize_mask(m, input_hw, config.image_size, side) for m in masks]) if len(masks) else None
    if targets is not None:
        targets = targets[targets.any(axis=(1, 2))]
    empty = np.zeros((0, side, side), bool)
    return transforms.pad_to_square(resized, config.image_size), input_hw, targets if targets is not None else empty


class BatchStream:
    """Deterministic batches: the data order is a pure function of (seed, cursor).

    The stream visits the datasets' samples in a seeded permutation per epoch; `cursor`
    counts samples consumed (images without usable instances are skipped and counted), so
    a resumed run that restores the cursor sees exactly the batches it would have seen.
    """

    def __init__(self, datasets: Sequence[Any], config: SamConfig, cfg: TrainConfig, cursor: int = 0) -> None:
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        self.total = sum(self.sizes)
        if self.total == 0:
            raise ValueError("the training data is empty")
        self.config, self.cfg, self.cursor = config, cfg, cursor
        self.side = target_side(config, cfg)
        self.skipped_images = 0
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def _order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation, computed once per epoch (a million-sample shuffle costs
        ~15 ms of the CPU the step needs)."""
        if self._epoch != epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.cfg.seed, epoch]).permutation(self.total)
        return self._perm

    def _sample(self, position: int) -> Any:
        epoch, offset = divmod(position, self.total)
        index = int(self._order(epoch)[offset])
        for dataset, size in zip(self.datasets, self.sizes, strict=True):
            if index < size:
                return dataset[index]
            index -= size
        raise AssertionError("unreachable")

    def next_batch(self) -> tuple[Batch, int]:
        """Returns (batch, cursor after it)."""
        images, hws, targets = [], [], []
        p = self.cfg.prompts_per_image
        misses = 0
        while len(images) < self.cfg.batch_size:
            position = self.cursor
            self.cursor += 1
            sample = self._sample(position)
            padded, hw, t = prepare_sample(sample.image, sample.masks, self.config, self.side)
            if len(t) == 0:
                self.skipped_images += 1
                misses += 1
                if misses > 100 * self.cfg.batch_size:
                    raise ValueError("no usable instance masks found in 100 batches of training data")
                continue
            rng = np.random.default_rng([self.cfg.seed, position, 3])
            pick = rng.choice(len(t), size=p, replace=len(t) < p)
            images.append(padded)
            hws.append(hw)
            targets.append(t[pick])
        batch = Batch(np.stack(images), np.asarray(hws, np.int32), np.stack(targets))
        return batch, self.cursor

    def __iter__(self) -> Iterator[tuple[Batch, int]]:
        while True:
            yield self.next_batch()


# ----------------------------------------------------------------------------- the loop


def _prefetch(stream: BatchStream, depth: int = 2) -> Iterator[tuple[Batch, int]]:
    """Prepares batches on a host thread while the device runs the previous step."""
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                q.put(stream.next_batch())
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class CheckpointStore:
    """Orbax `CheckpointManager` over a run directory: `<dir>/<step>/{weights,opt_state,meta}`.

    `weights/` has the layout of `sam_jax.save`, so a step directory, or the run
    directory (its latest step), loads with `sam_jax.load` and exports with
    `python -m convert --to-torch`.
    """

    def __init__(self, directory: str, keep: int) -> None:
        import os

        import orbax.checkpoint as ocp

        check_run_directory(directory)
        self.directory = Path(directory)
        self.ocp = ocp
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("weights", "opt_state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """The saved steps, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def read_meta(self, step: int) -> dict[str, Any]:
        """A step's metadata, read without restoring anything else."""
        path = self.directory / str(step) / "meta" / "metadata"
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable step metadata ({e})") from None
        if not isinstance(meta, dict) or not {"config", "train", "data_cursor"} <= set(meta):
            raise ValueError(f"{path}: not the metadata of a sam_jax training step")
        return meta

    def save(self, step: int, weights: Any, opt_state: Any, meta: dict[str, Any]) -> None:
        ocp = self.ocp
        host = jax.tree.map(np.asarray, weights)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                weights=ocp.args.PyTreeSave(host),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, step: int, opt_state_template: Any) -> tuple[Any, Any]:
        """A step's weights and optimiser state, checked against the checksum in its metadata.

        Raises:
            ValueError: naming the step's folder when it cannot be read or was altered.
        """
        ocp = self.ocp
        meta = self.read_meta(step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, opt_state_template)
        where = self.directory / str(step)
        composite = ocp.args.Composite(weights=ocp.args.PyTreeRestore(), opt_state=ocp.args.StandardRestore(abstract))
        try:
            with checkpoint.quiet_orbax():
                r = self.manager.restore(step, args=composite)
        except Exception as e:  # orbax raises many types for a damaged step
            raise ValueError(f"{where}: unreadable step ({type(e).__name__}: {str(e)[:200]})") from None
        weights = jax.tree.map(lambda x: np.asarray(x, np.float32), r["weights"])
        expected = meta.get("weights_sha256")
        if expected is not None and checkpoint.weights_digest(weights) != expected:
            raise ValueError(f"{where}/weights: the weights do not match the checksum in its metadata")
        checkpoint.check_finite(weights, f"{where}/weights")
        return weights, r["opt_state"]

    def close(self) -> None:
        self.manager.close()


def _is_run_entry(entry: Path) -> bool:
    if ".orbax-checkpoint-tmp" in entry.name:  # a save a kill interrupted; orbax ignores it
        return True
    return entry.name.isdigit() and entry.is_dir() and entry.joinpath(*checkpoint.RUN_META_FILE).is_file()


def check_run_directory(directory: str | os.PathLike[str]) -> None:
    """Refuses a `--checkpoint-dir` that holds anything but a training run's steps: the
    checkpoint manager deletes old steps, and must never meet a folder of the user's."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint directory {directory}: exists and is not a folder")
    if path.is_dir():
        foreign = [e.name for e in path.iterdir() if not _is_run_entry(e)]
        if foreign:
            raise ValueError(
                f"checkpoint directory {directory}: holds {foreign[0]!r}, which is not a step of a sam_jax training "
                "run; choose a new or empty folder"
            )


def _resume(
    store: CheckpointStore, config: SamConfig, cfg: TrainConfig, opt_state: Any, log: Any
) -> tuple[int, int, Any, Any]:
    """(step, data cursor, weights, optimiser state) of the newest intact step of a run.

    The run's model is checked against `config` from the metadata first (restoring another
    model's arrays would fail deep inside orbax); a damaged step is named and the previous
    one tried.
    """
    latest = store.steps()[0]
    run_config = SamConfig.from_dict(store.read_meta(latest)["config"])
    if run_config != config:
        raise ValueError(
            f"checkpoint directory {store.directory}: the run there trains another model "
            f"({_describe(run_config)}, not {_describe(config)}); resume with the same --config/--init or choose "
            "a new folder"
        )
    for step in store.steps():
        try:
            meta = store.read_meta(step)
            weights, restored = store.restore(step, opt_state)
        except ValueError as e:
            log(f"warning: {e}; trying the step before it")
            continue
        if TrainConfig.from_dict(meta["train"]) != cfg:
            log(f"note: resuming {store.directory} with changed training options")
        return step, int(meta["data_cursor"]), weights, restored
    raise ValueError(f"checkpoint directory {store.directory}: no step of the run can be read (see the warnings)")


def _describe(config: SamConfig) -> str:
    return f"embed {config.encoder_embed_dim}, depth {config.encoder_depth}, image {config.image_size}"


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
) -> SamParams:
    """Trains `params` on `datasets` and returns the result.

    Args:
        params: the starting weights (a checkpoint, or `sam_jax.init` for scratch).
        datasets: objects with `len()` and `[i] -> Sample` (see `sam_jax.data`).
        cfg: hyper-parameters.
        checkpoint_dir: orbax run directory; saved every `save_every` steps and at the end,
            the last `keep` kept. With `resume`, a run there continues from its latest step.
        evaluate_fn: `f(params) -> dict of figures`, called every `eval_every` steps and at the end.
        final_evaluate_fn: used instead of `evaluate_fn` at the end (e.g. on more images).
        log: where progress lines go (default: printed, flushed at once so a log file is live).
        progress: show a progress bar.
        stop_after: stop before this step without saving, as a kill would (tests use it).
    Returns:
        The trained `SamParams`.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    log = log or functools.partial(print, flush=True)
    target_side(params.config, cfg)  # refuses a bad loss_upsample before any work
    for name, value, low in (("save_every", save_every, 1), ("keep", keep, 1), ("eval_every", eval_every, 0)):
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

    def meta_at(step: int, cur: int, figures: dict[str, float], weights: Any) -> dict[str, Any]:
        return {
            "format": checkpoint.FORMAT,
            "version": checkpoint.VERSION,
            "weights_sha256": checkpoint.weights_digest(weights),
            "config": params.config.to_dict(),
            "train": cfg.to_dict(),
            "step": step,
            "data_cursor": cur,
            "seed": cfg.seed,
            "rng": f"fold_in(key({cfg.seed}), step)",
            "metrics": figures,
        }

    stream = BatchStream(datasets, params.config, cfg, cursor)
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

    step = start
    with bar:
        task = bar.add_task("train", total=cfg.steps, completed=start, rate=0.0, loss=float("nan"), iou=float("nan"))
        t0, steps_timed = time.perf_counter(), 0
        batches = _prefetch(stream)
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
                log(f"step {done}: " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items()))
            if store is not None and (done % save_every == 0 or done == cfg.steps):
                weights = jax.tree.map(np.asarray, merge(trainable, frozen))
                store.save(done, weights, opt_state, meta_at(done, cursor, {**running, **figures}, weights))
        else:
            step = cfg.steps
        batches.close()
    result = SamParams(params.config, merge(trainable, frozen))
    final_evaluate_fn = final_evaluate_fn or evaluate_fn
    if final_evaluate_fn is not None and step >= cfg.steps:
        figures = final_evaluate_fn(result)
        log("final: " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    if store is not None:
        store.close()
    log(f"trained {step - start} steps ({stream.skipped_images} images without usable masks skipped)")
    return result
