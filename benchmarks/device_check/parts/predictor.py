"""The parts on the parity model's predictor side: decode (common's decode benchmark), an
interactive session, automatic masks."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
from common import DecodeCase, decode_cases, scene, settle, timed
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

import sam_jax

from ..harness import Check


def part_decode(ck: Check) -> None:
    """Prompts against a ready embedding (common.decode_cases), each side timed on its own."""
    ref_model, params = ck.parity_models()
    name = ck.plan.parity_model
    repeats = max(ck.plan.repeats, 3 if ck.plan.name == "gpu" else 1)
    for case in decode_cases(ref_model, params, scene(params.config.image_size)):

        def run(case: DecodeCase = case) -> None:
            _, ref_s = timed(case.reference, repeats, ck.plan.min_seconds)
            first, ours = timed(case.ours, repeats, ck.plan.min_seconds)
            what = f"{name} {case.what}" + (" (on the device)" if case.on_device else "")
            ck.rec.row("decode", what, "ms", ref_s, ours, first_s=first)

        ck.measure("decode", case.name, "decode", 5.0, run)


def part_interactive(ck: Check) -> None:
    """An interactive session: encode, then `plan.clicks` clicks (the first with 3 masks, each
    later one adding a point and feeding back the best low-res logits, 1 mask), the best mask
    to the host after every click. The first session includes our compilations (one decoder
    program per number of points)."""
    ck.measure("interactive", f"{ck.plan.clicks}-click session", "interactive", 10.0, lambda: sessions(ck))


class Session:
    """The session's image and clicks, played by either library; each play returns the
    seconds of the encode and of every click, and the last mask shown."""

    def __init__(self, ck: Check) -> None:
        self.ref_model, self.params = ck.parity_models()
        self.image = scene(self.params.config.image_size, seed=11)
        h, w = self.image.shape[:2]
        n = ck.plan.clicks
        self.clicks = np.random.default_rng(5).uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h], (n, 2))
        self.labels = (np.arange(n) % 2 == 0).astype(np.int64)  # foreground, then background and foreground in turn
        self.predictor = SamPredictor(self.ref_model)

    def ours(self) -> tuple[list[float], np.ndarray]:
        t0 = time.perf_counter()
        emb = sam_jax.encode(self.params, self.image)
        mask_input, times = None, [time.perf_counter() - t0]
        for k in range(len(self.clicks)):
            t0 = time.perf_counter()
            masks, scores, low = sam_jax.decode(
                self.params,
                emb,
                self.clicks[: k + 1],
                self.labels[: k + 1],
                mask_input=mask_input,
                multimask_output=k == 0,
            )
            best = int(np.argmax(np.asarray(scores)))
            shown = np.asarray(masks[best])
            mask_input = low[best][None]
            times.append(time.perf_counter() - t0)
        return times, shown

    def reference(self) -> tuple[list[float], np.ndarray]:
        t0 = time.perf_counter()
        self.predictor.set_image(self.image)
        settle(None)
        mask_input, times = None, [time.perf_counter() - t0]
        for k in range(len(self.clicks)):
            t0 = time.perf_counter()
            masks, scores, low = self.predictor.predict(
                self.clicks[: k + 1], self.labels[: k + 1], mask_input=mask_input, multimask_output=k == 0
            )
            best = int(np.argmax(scores))
            shown, mask_input = masks[best], low[best][None]
            times.append(time.perf_counter() - t0)
        return times, shown


def sessions(ck: Check) -> None:
    """A cold session each (ours compiles), then warm ones, the two libraries in turn."""
    session, name, n = Session(ck), ck.plan.parity_model, ck.plan.clicks
    h, w = session.image.shape[:2]
    ref_cold, _ = session.reference()
    ours_cold, _ = session.ours()
    what = f"{name} session, first: encode + {n} clicks (ours compiles)"
    ck.rec.row("interactive", what, "s", sum(ref_cold), sum(ours_cold))
    warm = [(session.reference(), session.ours()) for _ in range(max(1, ck.plan.repeats // 2))]
    (ref_t, ref_mask), (our_t, our_mask) = warm[-1]
    ref_total = statistics.median(sum(r[0]) for r, _ in warm)
    our_total = statistics.median(sum(o[0]) for _, o in warm)
    agreement = float((ref_mask == our_mask).mean())
    what = f"{name} session, warm: encode + {n} clicks at {h}x{w}"
    ck.rec.row("interactive", what, "s", ref_total, our_total, last_mask_agreement=agreement)
    ck.rec.row("interactive", f"{name} first click (3 masks), warm", "ms", ref_t[1], our_t[1])
    what = f"{name} follow-up click (mask_input, 1 mask), warm median"
    ck.rec.row("interactive", what, "ms", statistics.median(ref_t[2:]), statistics.median(our_t[2:]))


AMG_CASES: dict[str, dict[str, Any]] = {
    "reference defaults": {},
    "every candidate passing": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
}


def part_amg(ck: Check) -> None:
    """Automatic masks per image, the reference's generator against ours, same options: the
    reference defaults (on random weights nothing passes pred_iou_thresh, so we stop at the
    IoU filter while the reference scores every candidate) and every candidate passing."""
    for label, options in AMG_CASES.items():
        options = {"points_per_side": ck.plan.amg_points, **options}
        ck.measure("amg", label, "amg", 20.0, lambda label=label, options=options: amg_row(ck, label, options))


def amg_row(ck: Check, label: str, options: dict[str, Any]) -> None:
    ref_model, params = ck.parity_models()
    image = scene(params.config.image_size, seed=31)
    h, w = image.shape[:2]
    ref_gen = SamAutomaticMaskGenerator(ref_model, **options)
    ours_gen = sam_jax.SamAutomaticMaskGenerator(params, **options)
    found: dict[str, int] = {}

    def ref_call() -> None:
        found["ref"] = len(ref_gen.generate(image))

    def ours_call() -> None:
        found["ours"] = len(ours_gen.generate(image))

    repeats = 2 if ck.plan.name == "gpu" else 1
    _, ref_s = timed(ref_call, repeats)
    first, ours = timed(ours_call, repeats)
    pps = ck.plan.amg_points
    what = f"{ck.plan.parity_model} {label}, {pps}x{pps} points, {h}x{w}: per image"
    ck.rec.row("amg", what, "s", ref_s, ours, first_s=first, masks=f"{found['ref']}/{found['ours']}")
