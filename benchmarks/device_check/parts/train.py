"""The train part: fine-tuning steps on synthetic scenes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from common import model_config, timed

from sam_jax import train
from sam_jax.config import SamConfig
from sam_jax.data import SyntheticShapes

from ..harness import Check

TRAIN_CASES = (
    ("image encoder frozen", {"freeze": ("image_encoder",), "compute_dtype": "bfloat16"}),
    ("full, remat", {"remat": True, "compute_dtype": "bfloat16"}),
    ("image encoder frozen", {"freeze": ("image_encoder",), "compute_dtype": "float32"}),
)


def part_train(ck: Check) -> None:
    """`sam_jax.train.train_step` (simulated clicks, losses, AdamW): the image encoder frozen,
    and everything trained with remat. The steps take the attention path "auto" picks:
    `train_step` takes no attention path, so neither `--attention` nor the cuDNN probe's
    fallback reaches them (a failed fused backward pass is an error row)."""
    name = ck.plan.train_model
    b, p, r = ck.plan.train_batch, ck.plan.train_prompts, ck.plan.train_rounds
    data = SyntheticShapes(size=model_config(name).image_size, length=8 * b, seed=0)
    batches: list[train.Batch] = []  # one batch for every case (the data do not depend on the case)
    for label, options in TRAIN_CASES[: ck.plan.train_cases]:
        cfg = train.TrainConfig(batch_size=b, prompts_per_image=p, correction_rounds=r, warmup_steps=5, **options)
        what = f"{name} {label}, {cfg.compute_dtype}: {b} images x {p} prompts, {r + 1} round{'s' if r else ''}"
        ck.measure("train", what, "train", 30.0, lambda cfg=cfg, what=what: train_row(ck, data, batches, cfg, what))


def train_row(ck: Check, data: SyntheticShapes, batches: list[train.Batch], cfg: train.TrainConfig, what: str) -> None:
    config = model_config(ck.plan.train_model)
    if not batches:
        batches.append(jax.device_put(train.BatchStream([data], config, cfg).next_batch()[0]))
    step = training_step(ck.params(ck.plan.train_model).weights, batches[0], config, cfg)
    first, seconds = timed(step, ck.plan.repeats, ck.plan.min_seconds)
    loss = float(step()["loss"])
    ck.rec.row("train", what, "img/s", None, cfg.batch_size / seconds, step_s=seconds, first_s=first, loss=loss)


def training_step(
    weights: dict[str, Any], batch: train.Batch, config: SamConfig, cfg: train.TrainConfig
) -> Callable[[], dict[str, jax.Array]]:
    """One optimiser step a call, from fresh optimiser state, on the same batch."""
    trainable, frozen = train.partition(weights, cfg.freeze)
    trainable = jax.tree.map(jnp.copy, trainable)  # the step donates them
    state = {"trainable": trainable, "opt": train.make_optimizer(cfg).init(trainable), "step": 0}

    def step() -> dict[str, jax.Array]:
        state["trainable"], state["opt"], metrics = train.train_step(
            state["trainable"], frozen, state["opt"], batch, jnp.int32(state["step"]), config, cfg, False
        )
        state["step"] += 1
        return metrics

    return step
