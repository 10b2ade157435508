"""The interface of the portable decoder: the reference `SamOnnxModel`'s inputs, outputs and
options, shared by both artifacts; for a SAM-HQ model, `segment_anything_hq`'s
`SamOnnxModel`'s (`HQ_INPUT_NAMES`, `HQExportOptions`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from sam_jax.config import SamConfig

INPUT_NAMES = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
# segment_anything_hq's `SamOnnxModel.forward`: the encoder's intermediate features second.
HQ_INPUT_NAMES = (INPUT_NAMES[0], "interm_embeddings", *INPUT_NAMES[1:])
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


@dataclasses.dataclass(frozen=True)
class HQExportOptions:
    """segment_anything_hq's `SamOnnxModel` options (its keyword arguments, same names), for
    a SAM-HQ model. Its decoder returns one mask: SAM's part plus the HQ mask.

    Attributes:
        hq_token_only: the HQ mask alone, else SAM's mask plus the HQ mask.
        multimask_output: SAM's part is its multimask output with the best score (predicted
            IoU, or stability score), else its single-mask output.
        use_stability_score: replace the predicted IoU by the low-res masks' stability score
            (of SAM's masks, before the HQ mask is added, as the reference).
        return_extra_metrics: also return the mask's stability score and area.
    """

    hq_token_only: bool = False
    multimask_output: bool = False
    use_stability_score: bool = False
    return_extra_metrics: bool = False

    def output_names(self) -> tuple[str, ...]:
        return ExportOptions(return_extra_metrics=self.return_extra_metrics).output_names()


AnyExportOptions = ExportOptions | HQExportOptions
DEFAULT_OPTIONS = ExportOptions()
DEFAULT_HQ_OPTIONS = HQExportOptions()


def resolve_options(config: SamConfig, options: AnyExportOptions | None) -> AnyExportOptions:
    """The options of `config`'s reference `SamOnnxModel`: `ExportOptions` for SAM's decoder,
    `HQExportOptions` for SAM-HQ's. Options of the other class are taken when they only set
    what both references have (`use_stability_score`, `return_extra_metrics`).

    Args:
        config: the model's config.
        options: either class, or None for the defaults.
    Returns:
        Options of the class `config`'s decoder takes.
    Raises:
        ValueError: `options` set one that `config`'s reference does not have.
        TypeError: `options` is not export options.
    """
    if options is None:
        return DEFAULT_HQ_OPTIONS if config.hq else DEFAULT_OPTIONS
    if not isinstance(options, (ExportOptions, HQExportOptions)):
        raise TypeError(f"options must be ExportOptions or HQExportOptions, got {type(options).__name__}")
    shared = {"use_stability_score": options.use_stability_score, "return_extra_metrics": options.return_extra_metrics}
    if config.hq and isinstance(options, ExportOptions):
        if options.return_single_mask:
            raise ValueError(
                "return_single_mask is an option of SAM's decoder; SAM-HQ's returns one mask "
                "(HQExportOptions: multimask_output picks SAM's part among its multimask outputs, "
                "hq_token_only leaves SAM's part out)"
            )
        return HQExportOptions(**shared)
    if not config.hq and isinstance(options, HQExportOptions):
        if options.hq_token_only or options.multimask_output:
            raise ValueError(
                "hq_token_only and multimask_output are options of SAM-HQ's decoder; this model has SAM's "
                "(ExportOptions: return_single_mask)"
            )
        return ExportOptions(**shared)
    return options


def input_names(config: SamConfig) -> tuple[str, ...]:
    """The decoder's input names, in order: `HQ_INPUT_NAMES` for SAM-HQ, else `INPUT_NAMES`."""
    return HQ_INPUT_NAMES if config.hq else INPUT_NAMES


def reference_inputs(
    embedding: np.ndarray,
    points: np.ndarray,
    labels: np.ndarray,
    mask_input: np.ndarray | None,
    orig_hw: tuple[int, int],
    early_features: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The ONNX model's inputs as the reference notebook builds them, for tests and demos.

    Args:
        embedding: (E, E, C) our NHWC image embedding.
        points: (N, 2) coordinates already in the model input frame; labels (N,).
        mask_input: (1, 4E, 4E) or None.
        orig_hw: the original image size.
        early_features: (E, E, D) a SAM-HQ model's early features (`ImageEmbedding.early_features`):
            then `interm_embeddings` is (1, 1, E, E, D), the one of them the decoder reads.
    Returns:
        The inputs by name, in the decoder's order (`INPUT_NAMES`, or `HQ_INPUT_NAMES` with
        early features).
    """
    low = embedding.shape[0] * 4
    interm = {} if early_features is None else {"interm_embeddings": np.asarray(early_features, np.float32)[None, None]}
    return {
        "image_embeddings": np.ascontiguousarray(np.transpose(np.asarray(embedding, np.float32), (2, 0, 1))[None]),
        **interm,
        "point_coords": np.asarray(points, np.float32)[None],
        "point_labels": np.asarray(labels, np.float32)[None],
        "mask_input": np.zeros((1, 1, low, low), np.float32)
        if mask_input is None
        else np.asarray(mask_input, np.float32).reshape(1, 1, low, low),
        "has_mask_input": np.asarray([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.asarray(orig_hw, np.float32),
    }
