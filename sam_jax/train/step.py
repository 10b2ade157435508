"""One optimiser step: the simulated interactive session of a batch, its loss and gradient,
frozen parameters split off (not differentiated, no optimiser state)."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from sam_jax.config import SamConfig
from sam_jax.modeling.prompt_encoder import LABEL_FOREGROUND
from sam_jax.modeling.sam import (
    SamParams,
    encoder_outputs,
    mask_decoder_forward,
    normalize_and_pad,
    prompt_encoder_forward,
)
from sam_jax.train.config import TrainConfig
from sam_jax.train.losses import sam_loss
from sam_jax.train.prompts import correction_click, noisy_boxes, sample_points_from, upsample_logits

# Never trained: the random-Fourier features' fixed matrix (a buffer in the reference), and
# BatchNorm's running statistics (TinyViT), which inference reads and fine-tuning keeps as
# trained: small fine-tuning batches would estimate them worse.
ALWAYS_FROZEN = ("prompt_encoder/pe_layer/positional_encoding_gaussian_matrix", "*/running_mean", "*/running_var")


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
    if pattern in FREEZE_PRESETS:
        return not any(fnmatch.fnmatchcase(path, kept) for kept in FREEZE_PRESETS[pattern])
    return path == pattern or path.startswith(pattern.rstrip("/") + "/") or fnmatch.fnmatchcase(path, pattern)


# Named freezes: each freezes every weight but those its patterns match. "all-but-hq" is
# SAM-HQ's recipe: SAM's weights stay as they are, only what HQ adds is trained.
FREEZE_PRESETS: dict[str, tuple[str, ...]] = {
    "all-but-hq": tuple(
        f"mask_decoder/{part}/*"
        for part in ("hf_token", "hf_mlp", "compress_vit_feat_*", "embedding_encoder_*", "embedding_maskfeature_*")
    ),
}


def partition(weights: dict[str, Any], freeze: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits a weights tree into (trainable, frozen) trees of the same nesting.

    Raises:
        ValueError: a freeze pattern that matches no parameter (a typo would train everything),
            or patterns that leave nothing to train.
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
    if not trainable:
        raise ValueError(f"freeze {', '.join(freeze)} leaves nothing to train")
    frozen = {k: v for k, v in flat.items() if k not in trainable}
    return flax.traverse_util.unflatten_dict(trainable), flax.traverse_util.unflatten_dict(frozen)


def merge(trainable: dict[str, Any], frozen: dict[str, Any]) -> dict[str, Any]:
    flat = flax.traverse_util.flatten_dict(trainable) | flax.traverse_util.flatten_dict(frozen)
    return flax.traverse_util.unflatten_dict(flat)


# A run's values that shape no program (its length, learning rate, weight decay, clipping,
# seed, box probability): the step takes them as arrays, so runs that differ only in them
# (a resume with another learning rate, a longer run, the test suite) share one compiled step.
VALUE_FIELDS = ("steps", "learning_rate", "warmup_steps", "weight_decay", "grad_clip", "seed", "box_probability")


@functools.lru_cache(maxsize=16)
def program_config(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its `VALUE_FIELDS` at their defaults: the step's static configuration."""
    defaults = TrainConfig()
    return dataclasses.replace(cfg, **{f: getattr(defaults, f) for f in VALUE_FIELDS})


@functools.lru_cache(maxsize=16)  # made once per run, not on every step
def value_arrays(cfg: TrainConfig) -> dict[str, ArrayLike]:
    """The values of `VALUE_FIELDS` the step uses, as arrays (the seed as its key's data)."""
    return {
        "steps": np.int32(cfg.steps),
        "learning_rate": np.float32(cfg.learning_rate),
        "warmup_steps": np.int32(cfg.warmup_steps),
        "weight_decay": np.float32(cfg.weight_decay),
        "grad_clip": np.float32(cfg.grad_clip),
        "seed": np.asarray(jax.random.key_data(jax.random.key(cfg.seed))),
    }


def learning_rate(count: ArrayLike, peak: ArrayLike, warmup_steps: ArrayLike, steps: ArrayLike) -> jax.Array:
    """Linear warm-up from 0 to `peak`, then cosine decay to 1% of it at `steps`: optax's
    `warmup_cosine_decay_schedule`, written over arrays so that its values are arguments of
    the compiled step rather than constants in it."""
    warmup = jnp.maximum(warmup_steps, 1)
    decay = jnp.maximum(jnp.maximum(steps, warmup_steps + 1) - warmup, 1)
    rising = peak * jnp.minimum(count, warmup) / warmup
    t = jnp.clip(count - warmup, 0, decay) / decay
    falling = peak * (0.99 * 0.5 * (1 + jnp.cos(jnp.pi * t)) + 0.01)
    return jnp.where(count < warmup, rising, falling)


def make_optimizer(cfg: TrainConfig, values: dict[str, Any] | None = None) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay, after global-norm clipping.

    Args:
        cfg: the run's configuration.
        values: `value_arrays(cfg)`, or the step's traced copy of them (default: from `cfg`).
    """
    v = value_arrays(cfg) if values is None else values
    schedule = functools.partial(
        learning_rate, peak=v["learning_rate"], warmup_steps=v["warmup_steps"], steps=v["steps"]
    )
    return optax.chain(optax.clip_by_global_norm(v["grad_clip"]), optax.adamw(schedule, weight_decay=v["weight_decay"]))


# ----------------------------------------------------------------------------- the step


@flax.struct.dataclass
class Batch:
    """One step's data, already in the model frame.

    images: (B, S, S, 3) uint8 padded; input_hw: (B, 2) int32; targets: (B, P, L, L) bool;
    embeddings: (B, E, E, C) float32, the frozen image encoder's output for these images
    (`EmbeddingCache`), or None to run the encoder in the step; early_features: (B, E, E, D)
    with them, for a SAM-HQ model.
    """

    images: jax.Array
    input_hw: jax.Array
    targets: jax.Array
    embeddings: jax.Array | None = None
    early_features: jax.Array | None = None


def encode_images(
    params: SamParams, images: jax.Array, input_hw: jax.Array, remat: bool = False
) -> tuple[jax.Array, jax.Array | None]:
    """(B, S, S, 3) uint8 padded images and their (B, 2) sizes -> (B, E, E, C) embeddings,
    and a SAM-HQ model's early features (else None)."""
    return encoder_outputs(params, normalize_and_pad(params.config, images, input_hw), remat=remat)


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
    if batch.embeddings is None:
        emb, early = encode_images(params, batch.images, batch.input_hw, cfg.remat)
    else:  # a frozen encoder's, computed once per image (its gradient would be zero)
        emb, early = batch.embeddings, batch.early_features
    b, p, side, _ = batch.targets.shape
    emb = jnp.repeat(emb, p, axis=0)  # (B * P, E, E, C): each prompt sees its image
    early = None if early is None else jnp.repeat(early, p, axis=0)
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
        # SAM-HQ trains its HQ mask, as its paper's recipe (`hq_token_only`).
        logits, iou_pred = mask_decoder_forward(params, emb, pe, sparse, dense, multimask, early, config.hq)
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
    """One optimiser step; gradients flow only to `trainable` (whose buffers, and
    `opt_state`'s, are donated). Compiled once per model, `program_config(cfg)` and prompt kind.

    Returns:
        The new trainable weights, the new optimiser state, and the step's metrics.
    """
    return _step(trainable, frozen, opt_state, batch, step, value_arrays(cfg), config, program_config(cfg), use_box)


@functools.partial(jax.jit, static_argnames=("config", "cfg", "use_box"), donate_argnames=("trainable", "opt_state"))
def _step(
    trainable: dict[str, Any],
    frozen: dict[str, Any],
    opt_state: optax.OptState,
    batch: Batch,
    step: jax.Array,
    values: dict[str, jax.Array],
    config: SamConfig,
    cfg: TrainConfig,
    use_box: bool,
) -> tuple[dict[str, Any], optax.OptState, dict[str, jax.Array]]:
    key = jax.random.fold_in(jax.random.wrap_key_data(values["seed"]), step)

    def loss_fn(tr: dict[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
        return forward_rounds(merge(tr, frozen), config, batch, key, cfg, use_box)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = make_optimizer(cfg, values).update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
    return trainable, opt_state, metrics


def step_uses_box(cfg: TrainConfig, step: int) -> bool:
    """Host-side, deterministic choice of the step's first prompt kind."""
    return bool(np.random.default_rng([cfg.seed, step, 7]).random() < cfg.box_probability)
