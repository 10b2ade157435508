"""The interface of the portable decoder: the reference `SamOnnxModel`'s inputs, outputs and
options, shared by both artifacts."""

from __future__ import annotations

import dataclasses

import numpy as np

INPUT_NAMES = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
STABILITY_SCORE_OFFSET = 1.0  # the reference `SamOnnxModel.stability_score_offset`
MASK_THRESHOLD = 0.0
# `SamOnnxModel.select_masks`: the single-mask output wins from 3 points on (the padding
# point counts), through a large score added to it rather than control flow.
SINGLE_MASK_REWEIGHT = 1000.0
SINGLE_MASK_POINTS = 2.5
FORMATS = ("onnx", "jax")


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """The reference `SamOnnxModel` options.

    Attributes:
        return_single_mask: return only the best mask (the reference's rule: the single-mask
            output for 3 or more points, else the multimask output with the best score).
        use_stability_score: replace the predicted IoU by the low-res masks' stability score.
        return_extra_metrics: also return the masks' stability scores and areas.
    """

    return_single_mask: bool = False
    use_stability_score: bool = False
    return_extra_metrics: bool = False

    def output_names(self) -> tuple[str, ...]:
        if self.return_extra_metrics:
            return ("masks", "iou_predictions", "stability_scores", "areas", "low_res_masks")
        return ("masks", "iou_predictions", "low_res_masks")


DEFAULT_OPTIONS = ExportOptions()


def reference_inputs(
    embedding: np.ndarray,
    points: np.ndarray,
    labels: np.ndarray,
    mask_input: np.ndarray | None,
    orig_hw: tuple[int, int],
) -> dict[str, np.ndarray]:
    """The ONNX model's inputs as the reference notebook builds them, for tests and demos.

    Args:
        embedding: (E, E, C) our NHWC image embedding.
        points: (N, 2) coordinates already in the model input frame; labels (N,).
        mask_input: (1, 4E, 4E) or None.
        orig_hw: the original image size.
    """
    low = embedding.shape[0] * 4
    return {
        "image_embeddings": np.ascontiguousarray(np.transpose(np.asarray(embedding, np.float32), (2, 0, 1))[None]),
        "point_coords": np.asarray(points, np.float32)[None],
        "point_labels": np.asarray(labels, np.float32)[None],
        "mask_input": np.zeros((1, 1, low, low), np.float32)
        if mask_input is None
        else np.asarray(mask_input, np.float32).reshape(1, 1, low, low),
        "has_mask_input": np.asarray([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.asarray(orig_hw, np.float32),
    }
