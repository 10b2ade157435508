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

Modules: `config` (TrainConfig), `losses`, `prompts` (simulation), `step` (freezing, the
optimiser, the jitted step), `data` (batches), `store` (run checkpoints), `loop` (`train`),
`evaluation` (interactive-segmentation mIoU), `resize` (a model re-cut to other patches).
"""

from sam_jax.train.config import TrainConfig
from sam_jax.train.data import BatchStream, EmbeddingCache, prepare_sample, resize_mask, target_side
from sam_jax.train.evaluation import EvaluationEmbeddings, evaluate, evaluate_automatic, interior_point, tight_box
from sam_jax.train.loop import train
from sam_jax.train.losses import dice_loss, sam_loss, sigmoid_focal_loss
from sam_jax.train.prompts import correction_click, noisy_boxes, sample_points_from, upsample_logits
from sam_jax.train.resize import resize_patches
from sam_jax.train.step import (
    ALWAYS_FROZEN,
    Batch,
    encode_images,
    forward_rounds,
    is_frozen,
    make_optimizer,
    merge,
    partition,
    train_step,
)
from sam_jax.train.store import CheckpointStore, check_run_directory, step_metadata

__all__ = [
    "ALWAYS_FROZEN",
    "Batch",
    "BatchStream",
    "CheckpointStore",
    "EmbeddingCache",
    "EvaluationEmbeddings",
    "TrainConfig",
    "check_run_directory",
    "correction_click",
    "dice_loss",
    "encode_images",
    "evaluate",
    "evaluate_automatic",
    "forward_rounds",
    "interior_point",
    "is_frozen",
    "make_optimizer",
    "merge",
    "noisy_boxes",
    "partition",
    "prepare_sample",
    "resize_mask",
    "resize_patches",
    "sam_loss",
    "sample_points_from",
    "sigmoid_focal_loss",
    "step_metadata",
    "target_side",
    "tight_box",
    "train",
    "train_step",
    "upsample_logits",
]
