"""SAM's losses (paper, section 3 and appendix A): focal + dice on the mask logits (20:1),
MSE of the predicted IoU; with an ambiguous prompt only the best candidate's mask is trained."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from sam_jax.masks import iou
from sam_jax.train.config import TrainConfig

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
    actual_iou = jax.lax.stop_gradient(iou(logits > 0, t))
    iou_loss = jnp.mean((iou_pred - actual_iou) ** 2)
    chosen = jnp.take_along_axis(mask_loss, best[:, None], axis=1)[:, 0]
    loss = jnp.mean(chosen) + cfg.iou_weight * iou_loss
    if cfg.all_candidates_weight and logits.shape[1] > 1:
        loss = loss + cfg.all_candidates_weight * jnp.mean(mask_loss)
    best_iou = jnp.take_along_axis(actual_iou, best[:, None], axis=1)[:, 0]
    return loss, {"mask_loss": jnp.mean(chosen), "iou_loss": iou_loss, "iou": jnp.mean(best_iou)}
