"""Side-by-side speed of sam-jax and the reference `segment_anything` on this machine.

Both run in one process on the same randomly initialised (or exported) weights; each row
reports the reference's time, ours, and the ratio reference / ours (higher is better for
us). Times are medians of `--repeats` runs after a warm-up call; the warm-up (which
includes compilation for us) is reported separately. See benchmarks/README.md.

    .venv/bin/python benchmarks/bench.py                 # everything
    .venv/bin/python benchmarks/bench.py --only amg      # one section
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
from common import decode_cases, models, scene, timed, timed_pair
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

import sam_jax
from sam_jax.testing import build_reference

ROWS: list[dict[str, Any]] = []
AMG_CASE_LABELS = {"defaults": "reference defaults", "permissive": "permissive", "crops": "permissive + 1 crop layer"}


@dataclasses.dataclass(frozen=True)
class Run:
    """What every section needs: a scratch folder, repeats, and the command's choices."""

    tmp: Path
    repeats: int
    first_model: str  # sections measured once per run (matmul, compile, memory) run on it
    amg_cases: list[str]  # --amg-case, by the short names of AMG_CASE_LABELS
    all_cases: bool  # --all-cases


def row(section: str, what: str, ref_s: float, ours_s: float, unit: str = "s", **extra: Any) -> None:
    r = {"section": section, "what": what, "reference": ref_s, "ours": ours_s, "ratio": ref_s / ours_s, **extra}
    ROWS.append(r)
    scale = 1000.0 if unit == "ms" else 1.0
    notes = "  ".join(f"{k}={v}" for k, v in extra.items())
    print(
        f"{section:8s} {what:52s} ref {ref_s * scale:9.3f} {unit}  ours {ours_s * scale:9.3f} {unit}  "
        f"x{r['ratio']:5.2f}  {notes}",
        flush=True,
    )


# ----------------------------------------------------------------------------- automatic masks


def bench_amg(model: str, run: Run) -> None:
    """Time per image of `generate`, and of `generate` minus its encoder calls.

    The encoder share is measured by encoding the same crops alone (set_image / encode), so
    "without encoder" is everything else: decoding the point batches, upsampling, scoring,
    filtering, NMS and RLE.
    """
    tmp, repeats = run.tmp, run.repeats
    ref, params = models(model, tmp)
    size = 256 if model == "tiny-shapes" else 1024
    image = scene(size, seed=31, portrait=True)
    # "defaults" keep nothing on these weights (they are tuned for a trained ViT-H), so the
    # reference still upsamples and scores every candidate while we stop at the IoU filter;
    # "permissive" makes every candidate pass (our worst case); crops raise the reference on an
    # empty result, so the crop row is permissive too.
    permissive = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    cases = {
        AMG_CASE_LABELS["defaults"]: {},
        AMG_CASE_LABELS["permissive"]: permissive,
        AMG_CASE_LABELS["crops"]: {**permissive, "crop_n_layers": 1},
    }
    wanted = [AMG_CASE_LABELS[c] for c in run.amg_cases] or list(cases)
    if model != "tiny-shapes":  # 16x16 points at 1024: minutes per row for the reference already
        wanted = wanted if run.amg_cases or run.all_cases else [AMG_CASE_LABELS["defaults"]]
        cases = {k: {**v, "points_per_side": 16} for k, v in cases.items()}
    cases = {k: v for k, v in cases.items() if k in wanted}
    predictor = SamPredictor(ref)
    for label, options in cases.items():
        generator = SamAutomaticMaskGenerator(ref, **options)
        ours = sam_jax.SamAutomaticMaskGenerator(params, **options)
        crops = [image[y0:y1, x0:x1] for (x0, y0, x1, y1) in _crop_boxes(image, options)]
        first, ref_total, our_total = timed_pair(
            lambda g=generator: g.generate(image), lambda g=ours: g.generate(image), repeats
        )
        _, ref_enc, our_enc = timed_pair(
            lambda cs=crops: [predictor.set_image(c) for c in cs],
            lambda cs=crops: [sam_jax.encode(params, c).image_embedding for c in cs],
            repeats,
        )
        n_ref, n_ours = len(generator.generate(image)), len(ours.generate(image))
        row(
            "amg", f"{model} {label}: per image", ref_total, our_total, masks=f"{n_ref}/{n_ours}", first=f"{first:.1f}s"
        )
        row("amg", f"{model} {label}: without encoder", ref_total - ref_enc, our_total - our_enc)


def _crop_boxes(image: np.ndarray, options: dict[str, Any]) -> list[list[int]]:
    from sam_jax.amg.utils import generate_crop_boxes

    return generate_crop_boxes(image.shape[:2], options.get("crop_n_layers", 0), 512 / 1500)[0]


# ----------------------------------------------------------------------------- encoder, decoder, predict


def bench_matmul(model: str, run: Run) -> None:
    """This machine's fp32 matmul rate at the encoder's MLP shape (4096 x 768 x 3072), for
    reading the encoder rows as a fraction of what the hardware sustains."""
    repeats = run.repeats
    if model != run.first_model:
        return
    a, b = np.random.rand(4096, 768).astype(np.float32), np.random.rand(768, 3072).astype(np.float32)
    flops = 2 * 4096 * 768 * 3072
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    ja, jb = jax.numpy.asarray(a), jax.numpy.asarray(b)
    matmul = jax.jit(jax.numpy.matmul)
    _, ref_s, ours_s = timed_pair(lambda: torch.matmul(ta, tb), lambda: matmul(ja, jb), repeats + 5)
    row(
        "matmul",
        "fp32 4096x768 @ 768x3072",
        ref_s,
        ours_s,
        unit="ms",
        GFLOPs=f"{flops / ref_s / 1e9:.0f}/{flops / ours_s / 1e9:.0f}",
    )
    RATES["matmul_flops"] = max(flops / ref_s, flops / ours_s)


def bench_encoder(model: str, run: Run) -> None:
    """Image encoder alone on preprocessed (B, S, S, 3) input, per batch size; and
    `set_image` vs `encode` from a (768, 1024) uint8 image (preprocessing included)."""
    tmp, repeats = run.tmp, run.repeats
    ref, params = models(model, tmp)
    size = params.config.image_size
    from sam_jax.predictor import encode_padded

    for batch in (1, 2):
        x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
        tx = torch.as_tensor(x)
        images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        hw = np.full((batch, 2), size, np.int32)
        first, ref_s, ours_s = timed_pair(
            lambda tx=tx: ref.image_encoder(tx), lambda i=images, h=hw: encode_padded(params, i, h), repeats
        )
        extra = {"first": f"{first:.1f}s", "img/s": f"{batch / ref_s:.2f}/{batch / ours_s:.2f}"}
        if model in GFLOP_PER_IMAGE and "matmul_flops" in RATES:
            extra["of_matmul_peak"] = f"{GFLOP_PER_IMAGE[model] * 1e9 * batch / ours_s / RATES['matmul_flops']:.0%}"
        row("encoder", f"{model} batch {batch}", ref_s, ours_s, **extra)
        if batch == 1:  # our bfloat16 compute against the reference's float32
            p16 = params.with_compute_dtype("bfloat16")
            first, ours_s = timed(lambda i=images, h=hw, p=p16: encode_padded(p, i, h), repeats)
            row("encoder", f"{model} batch {batch}, ours in bfloat16", ref_s, ours_s, first=f"{first:.1f}s")
    if not hasattr(ref, "preprocess"):  # LiteMedSAM's model class has no SamPredictor path
        return
    image = scene(size)
    predictor = SamPredictor(ref)
    _, ref_s, ours_s = timed_pair(
        lambda: predictor.set_image(image), lambda: sam_jax.encode(params, image).image_embedding, repeats
    )
    row("encoder", f"{model} set_image vs encode ({image.shape[0]}x{image.shape[1]})", ref_s, ours_s)


def bench_decoder(model: str, run: Run) -> None:
    """The decode benchmark (common.decode_cases): one point and a batch of 64 points against
    a ready embedding, masks post-processed to the image size."""
    ref, params = models(model, run.tmp)
    if not hasattr(ref, "preprocess"):  # LiteMedSAM's model class has no SamPredictor path
        return
    for case in decode_cases(ref, params, scene(params.config.image_size)):
        repeats = run.repeats + 5 if case.quick else run.repeats
        first, ref_s, ours_s = timed_pair(case.reference, case.ours, repeats)
        row("decode", f"{model} {case.what}", ref_s, ours_s, unit="ms" if case.quick else "s", first=f"{first:.1f}s")


def bench_predict(model: str, run: Run) -> None:
    """End to end, image and one point in, masks out: `set_image` + `predict` vs `predict`."""
    tmp, repeats = run.tmp, run.repeats
    ref, params = models(model, tmp)
    image = scene(params.config.image_size)
    predictor = SamPredictor(ref)
    point = np.array([[image.shape[1] * 0.4, image.shape[0] * 0.6]])

    def reference() -> Any:
        predictor.set_image(image)
        return predictor.predict(point, np.array([1]))

    first, ref_s, ours_s = timed_pair(reference, lambda: sam_jax.predict(params, image, point)[0], repeats)
    row("predict", f"{model} image + one point", ref_s, ours_s, first=f"{first:.1f}s")


# SAM-HQ beside the SAM model with its encoder (`--models vit_b` runs sam_hq_vit_b too).
HQ_OF = {"vit_b": "sam_hq_vit_b", "vit_t": "sam_hq_vit_tiny"}


def bench_hq(model: str, run: Run) -> None:
    """SAM-HQ's decoder against SAM's, on both sides: each decode case of `bench_decoder` on
    the plain model and on its HQ model (both randomised), alternating; each row is the HQ
    model's, its `hq_over_sam` the HQ decode's time over the plain one's (reference/ours)."""
    if model not in HQ_OF:
        return
    plain, hq = models(model, run.tmp), models(HQ_OF[model], run.tmp)
    image = scene(hq[1].config.image_size)
    for p_case, h_case in zip(decode_cases(*plain, image), decode_cases(*hq, image), strict=True):
        repeats = run.repeats + 5 if h_case.quick else run.repeats
        _, ref_p, ours_p = timed_pair(p_case.reference, p_case.ours, repeats)
        first, ref_h, ours_h = timed_pair(h_case.reference, h_case.ours, repeats)
        unit = "ms" if h_case.quick else "s"
        extra = {"first": f"{first:.1f}s", "hq_over_sam": f"{ref_h / ref_p:.2f}/{ours_h / ours_p:.2f}"}
        row("hq", f"{HQ_OF[model]} {h_case.what}", ref_h, ours_h, unit=unit, **extra)


# ----------------------------------------------------------------------------- compile time


def bench_compile(model: str, run: Run) -> None:
    """Our first-call cost of the encoder for the official sizes: tracing, lowering and
    compiling `encode`'s program for a (1, 1024, 1024, 3) batch, from abstract weights (no
    weights are built or run). The reference (eager PyTorch) has no such step."""
    from sam_jax.modeling.sam import abstract_params
    from sam_jax.predictor import encode_padded

    if model != run.first_model:
        return
    for name in ("vit_b", "vit_l", "vit_h"):
        params = abstract_params(sam_jax.get_config(name))
        images = jax.ShapeDtypeStruct((1, 1024, 1024, 3), np.uint8)
        hw = jax.ShapeDtypeStruct((1, 2), np.int32)
        jax.clear_caches()
        t0 = time.perf_counter()
        encode_padded.lower(params, images, hw).compile()
        seconds = time.perf_counter() - t0
        ROWS.append({"section": "compile", "what": f"{name} encoder, batch 1", "ours": seconds})
        print(f"compile  {name} encoder at 1024, batch 1: trace + lower + compile {seconds:6.1f} s", flush=True)


# ----------------------------------------------------------------------------- memory

# A vit_h encoder cut to one windowed and one global block: the per-layer activations that
# set the peak are the same as in the 32-block model, whose weights add 2.4 GB (fp32).
MEMORY_CONFIG = "vit_h/encoder_depth=2/encoder_global_attn_indexes=1"
MEMORY_BATCHES = {"reference": (1, 2), "ours": (1, 8, 32)}


def _proc_status_bytes(field: str) -> int:
    """A `VmRSS`/`VmHWM` figure of this process from /proc (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_probe(side: str, batch: int) -> None:
    """Runs in a fresh process: one encoder forward at 1024, prints the growth of peak RSS.

    The peak is the kernel's high-water mark, reset (clear_refs 5) after the weights are
    built and the program compiled. (`ru_maxrss` would not do: a child starts with its
    parent's.)"""
    cfg = sam_jax.get_config(MEMORY_CONFIG)
    size = cfg.image_size
    if side == "reference":
        fn = build_reference(cfg).image_encoder
        x = torch.zeros(batch, 3, size, size)
    else:
        from sam_jax.predictor import encode_padded

        params = sam_jax.init(cfg)
        images, hw = np.zeros((batch, size, size, 3), np.uint8), np.full((batch, 2), size, np.int32)
        encode_padded.lower(params, images, hw).compile()  # compile outside the measurement

        def fn(_: Any) -> Any:
            return encode_padded(params, images, hw)

        x = None
    Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current RSS
    base = _proc_status_bytes("VmRSS")
    jax.block_until_ready(fn(x))
    print(json.dumps({"peak_bytes": _proc_status_bytes("VmHWM") - base}))


def bench_memory(model: str, run: Run) -> None:
    """Peak memory of one encoder forward (growth of the process's peak RSS in a fresh
    process, weights excluded) on `MEMORY_CONFIG`; batch sizes as `MEMORY_BATCHES`.
    The reference materialises (B, 16, 4096, 4096) fp32 logits, bias and softmax per global
    block (~3.2 GB per image), so batch 8 does not fit this 24 GB machine."""
    import subprocess

    if model != run.first_model:
        return
    peaks: dict[tuple[str, int], float] = {}
    for side, batches in MEMORY_BATCHES.items():
        for batch in batches:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-probe", side, str(batch)],
                capture_output=True,
                text=True,
                check=True,
            )
            peaks[side, batch] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**30
    for batch in sorted({b for batches in MEMORY_BATCHES.values() for b in batches}):
        ref, ours = (peaks.get((side, batch), float("nan")) for side in ("reference", "ours"))
        what = f"vit_h 2-block encoder batch {batch}"
        ROWS.append({"section": "memory", "what": what, "reference_GB": ref, "ours_GB": ours})
        print(f"memory   {what:52s} peak ref {ref:6.2f} GB  ours {ours:6.2f} GB", flush=True)


# Encoder cost at 1024 (issue figure for vit_b; scaled by the blocks' matmul work for l / h).
GFLOP_PER_IMAGE = {"vit_b": 972.0}
RATES: dict[str, float] = {}

SECTIONS = {
    "matmul": bench_matmul,
    "encoder": bench_encoder,
    "decoder": bench_decoder,
    "predict": bench_predict,
    "hq": bench_hq,
    "amg": bench_amg,
    "compile": bench_compile,
    "memory": bench_memory,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    p.add_argument(
        "--models",
        default="tiny-shapes,vit_b",
        help="comma-separated: tiny-shapes, vit_b, vit_l, vit_h, vit_t (MobileSAM), lite-medsam",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--all-cases", action="store_true", help="every AMG case for the large models too")
    p.add_argument("--amg-case", choices=sorted(AMG_CASE_LABELS), action="append", help="run only these AMG cases")
    p.add_argument("--memory-probe", nargs=2, metavar=("SIDE", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe[0], int(args.memory_probe[1]))
        return 0
    print(
        f"# {datetime.date.today()} {platform.processor() or platform.machine()} "
        f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device(s)) "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        flush=True,
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        names = args.models.split(",")
        run = Run(Path(tmp), args.repeats, names[0], args.amg_case or [], args.all_cases)
        for name in [s for s in SECTIONS if s in (args.only or SECTIONS)]:
            for model in names:
                SECTIONS[name](model, run)
    if args.json:
        args.json.write_text(json.dumps(ROWS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
