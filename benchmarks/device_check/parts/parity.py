"""The parity part: the parity model end to end against the reference on the same device."""

from __future__ import annotations

from typing import Any

import numpy as np
from common import make_image
from segment_anything import SamPredictor

import sam_jax
from sam_jax.testing import parity_figures, parity_holds

from ..harness import Check, attention_path_of

EMBEDDING_LIMIT = 1e-3  # worst error / max magnitude of the float32 embedding


def part_parity(ck: Check) -> None:
    """Encode + decode (masks at the image size) in float32 against the reference on the same
    device, both with full-precision matmuls; the project's tolerances (sam_jax.testing
    PARITY_LIMITS). Then our bfloat16, for information."""
    scene = ParityScene(ck)
    float32_rows(ck, scene)
    bfloat16_rows(ck, scene)


class ParityScene:
    """The parity model on both sides, an image the reference has encoded, and the prompts."""

    def __init__(self, ck: Check) -> None:
        ref_model, self.params = ck.parity_models()
        self.image = make_image(427, 640, seed=1067)
        self.predictor = SamPredictor(ref_model)
        self.predictor.set_image(self.image)
        self.ref_emb = self.predictor.features[0].permute(1, 2, 0).float().cpu().numpy()
        h, w = self.image.shape[:2]
        pts = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.6 * h], [0.5 * w, 0.2 * h]])
        box = np.array([0.1 * w, 0.15 * h, 0.8 * w, 0.9 * h])
        # label -> (prompts, multimask_output)
        self.cases: dict[str, tuple[dict[str, Any], bool]] = {
            "one point, 3 masks": (dict(point_coords=pts[:1], point_labels=np.array([1])), True),
            "2 points + box, 3 masks": (dict(point_coords=pts[:2], point_labels=np.array([1, 0]), box=box), True),
            "3 points fg/bg, 1 mask": (dict(point_coords=pts, point_labels=np.array([1, 0, 1])), False),
            "box, 1 mask": (dict(box=box), False),
        }
        self.one_point = self.cases["one point, 3 masks"][0]


def float32_rows(ck: Check, scene: ParityScene) -> None:
    """The embedding, the plan's prompt cases, and one point with the best low-res logits fed
    back; `parity_holds` in the results' meta says whether every row passed."""
    params, predictor = scene.params, scene.predictor
    emb = sam_jax.encode(params, scene.image)
    holds = embedding_row(ck, params, emb, scene.ref_emb)
    for label, (case, multimask) in list(scene.cases.items())[: ck.plan.parity_cases]:
        expected = predictor.predict(**case, multimask_output=multimask)
        holds &= decode_row(ck, label, expected, decode(params, emb, case, multimask=multimask))
    first = predictor.predict(**scene.one_point, multimask_output=True)
    mask_input = first[2][np.argmax(first[1])][None]  # fed back, as in interactive use
    expected = predictor.predict(**scene.one_point, mask_input=mask_input, multimask_output=False)
    got = decode(params, emb, scene.one_point, mask_input=mask_input, multimask=False)
    holds &= decode_row(ck, "one point + mask_input, 1 mask", expected, got)
    ck.rec.meta["parity_holds"] = bool(holds)


def decode(params: sam_jax.SamParams, emb: Any, case: dict[str, Any], multimask: bool, mask_input: Any = None) -> tuple:
    return sam_jax.decode(
        params,
        emb,
        case.get("point_coords"),
        case.get("point_labels"),
        box=case.get("box"),
        mask_input=mask_input,
        multimask_output=multimask,
    )


def embedding_error(emb: Any, ref_emb: np.ndarray) -> float:
    return float(np.abs(np.asarray(emb.image_embedding) - ref_emb).max() / np.abs(ref_emb).max())


def embedding_row(ck: Check, params: sam_jax.SamParams, emb: Any, ref_emb: np.ndarray) -> bool:
    err = embedding_error(emb, ref_emb)
    what = f"{ck.plan.parity_model} float32 embedding: worst error / max magnitude"
    attention = attention_path_of(params.config, "float32", params.attention)
    status = "pass" if err <= EMBEDDING_LIMIT else "FAIL"
    ck.rec.row("parity", what, "", None, err, limit=EMBEDDING_LIMIT, status=status, attention=attention)
    return err <= EMBEDDING_LIMIT


def decode_row(ck: Check, label: str, expected: tuple, got: tuple) -> bool:
    figures = parity_figures(expected, got, label)
    holds = parity_holds(figures)
    what = f"{ck.plan.parity_model} float32 {label}"
    ck.rec.row("parity", what, "", None, None, status="pass" if holds else "FAIL", **figures)
    return holds


def bfloat16_rows(ck: Check, scene: ParityScene) -> None:
    """Our bfloat16 against the reference's float32: no project tolerance applies; the figures
    say how far it lies."""
    name, p16 = ck.plan.parity_model, scene.params.with_compute_dtype("bfloat16")
    emb16 = sam_jax.encode(p16, scene.image)
    attention = attention_path_of(p16.config, "bfloat16", p16.attention)
    what = f"{name} bfloat16 embedding vs reference float32"
    ck.rec.row("parity", what, "", None, embedding_error(emb16, scene.ref_emb), status="info", attention=attention)
    expected = scene.predictor.predict(**scene.one_point, multimask_output=True)
    figures = parity_figures(expected, decode(p16, emb16, scene.one_point, multimask=True), "bfloat16")
    ck.rec.row("parity", f"{name} bfloat16 one point vs reference float32", "", None, None, status="info", **figures)
