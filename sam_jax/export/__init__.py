"""The mask decoder as a portable artifact, with the reference `SamOnnxModel`'s interface.

Inputs (names, shapes and dtypes of the reference's ONNX export):
    image_embeddings (1, C, E, E) float32 NCHW, point_coords (1, N, 2) float32 in the model
    input frame (after `ResizeLongestSide`), point_labels (1, N) float32 (-1 not-a-point,
    0 background, 1 foreground, 2 / 3 box corners; the caller appends the padding point
    when there is no box, as the reference's notebook does), mask_input (1, 1, 4E, 4E)
    float32, has_mask_input (1,) float32 (1: use mask_input), orig_im_size (2,) float32 (H, W).
Outputs:
    masks (1, M, H, W) float32 logits at the original size, iou_predictions (1, M),
    low_res_masks (1, M, 4E, 4E); with `return_extra_metrics`: masks, iou_predictions,
    stability_scores (1, M), areas (1, M) int, low_res_masks. M is 4 (every mask token),
    or 1 with `return_single_mask`.

A SAM-HQ model (`SamConfig.mask_decoder == "hq"`) has segment_anything_hq's `SamOnnxModel`
interface instead (`scripts/export_onnx_model.py` of SAM-HQ): the inputs above with
interm_embeddings (L, 1, E, E, D) float32 second (`HQ_INPUT_NAMES`): the encoder's
features after each global-attention block, of which the decoder reads the first (our
`ImageEmbedding.early_features` as (1, 1, E, E, D) will do; L is dynamic); the same outputs
with M = 1: SAM's single-mask output, or with `multimask_output` its multimask output with
the best score, plus the HQ mask, or the HQ mask alone with `hq_token_only`; the score is
SAM's mask's. Its options are `HQExportOptions` (that `SamOnnxModel`'s keyword arguments).

Two artifacts:
- `export_jax`: a serialized `jax.export` program (StableHLO with the weights inside) that
  any JAX can deserialize and call without this package. JAX arrays cannot take a shape
  from an input's values, so where the ONNX model reads the original size from the values
  of `orig_im_size`, the JAX program reads it from its *shape*: pass any (H, W) array, e.g.
  `np.zeros(image.shape[:2], np.uint8)`. N is symbolic (at most `max_points`).
- `export_onnx`: an ONNX graph (opset 17) written from the weights by `sam_jax.export.onnx_graph`,
  that onnxruntime runs with the reference's inputs as they are.
"""

from __future__ import annotations

from collections.abc import Callable

from sam_jax.export.interface import (
    DEFAULT_OPTIONS,
    FORMATS,
    HQ_INPUT_NAMES,
    INPUT_NAMES,
    AnyExportOptions,
    ExportOptions,
    HQExportOptions,
    input_names,
    reference_inputs,
    resolve_options,
)
from sam_jax.export.jax_program import export_jax
from sam_jax.export.onnx_graph import export_onnx
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import check_params

EXPORTERS: dict[str, Callable[[SamParams, AnyExportOptions | None], bytes]] = {"onnx": export_onnx, "jax": export_jax}


def export_decoder(params: SamParams, fmt: str = "onnx", options: AnyExportOptions | None = None) -> bytes:
    """The decoder artifact's bytes in `fmt` ("onnx" or "jax").

    Args:
        params: the model (SAM's decoder or SAM-HQ's: the interface follows it).
        fmt: "onnx" or "jax".
        options: `ExportOptions` for SAM's decoder, `HQExportOptions` for SAM-HQ's
            (`resolve_options` takes the other class where it only sets options both have);
            None: the defaults.
    Raises:
        ValueError: an unknown format, or options the model's decoder does not have.
    """
    params = check_params(params)
    if fmt not in EXPORTERS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return EXPORTERS[fmt](params, resolve_options(params.config, options))


__all__ = [
    "DEFAULT_OPTIONS",
    "FORMATS",
    "HQ_INPUT_NAMES",
    "INPUT_NAMES",
    "AnyExportOptions",
    "ExportOptions",
    "HQExportOptions",
    "export_decoder",
    "export_jax",
    "export_onnx",
    "input_names",
    "reference_inputs",
    "resolve_options",
]
