"""`TrainConfig`: the hyper-parameters of a training run."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sam_jax.config import config_from_json, config_to_json
from sam_jax.modeling.sam import (
    check_compute_dtype,
)


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
