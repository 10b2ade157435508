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
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the reference-model builders shared with the tests

from reference import build_reference, randomize_  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry  # noqa: E402

import convert  # noqa: E402
import sam_jax  # noqa: E402
from sam_jax.data import SyntheticShapes  # noqa: E402

torch.set_grad_enabled(False)
ROWS: list[dict[str, Any]] = []
ALL_CASES = False  # --all-cases


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(first call, median of `repeats` further calls) in seconds; results are blocked on."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


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


def models(name: str, tmp: Path) -> tuple[torch.nn.Module, sam_jax.SamParams]:
    """The same weights on both sides: an exported embedded model or a randomised registry one."""
    if name == "tiny-shapes":
        params = sam_jax.load(name)
        convert.export_torch(name, tmp / "tiny.pth")
        ref = build_reference(params.config)
        ref.load_state_dict(torch.load(tmp / "tiny.pth"), strict=True)
        return ref, params
    ref = randomize_(sam_model_registry[name]().eval(), seed=0)
    torch.save(ref.state_dict(), tmp / f"{name}.pth")
    convert.convert_checkpoint(tmp / f"{name}.pth", tmp / name)
    return ref, sam_jax.load(tmp / name)


# ----------------------------------------------------------------------------- automatic masks


def bench_amg(model: str, tmp: Path, repeats: int) -> None:
    """Time per image of `generate`, and of `generate` minus its encoder calls.

    The encoder share is measured by encoding the same crops alone (set_image / encode), so
    "without encoder" is everything else: decoding the point batches, upsampling, scoring,
    filtering, NMS and RLE.
    """
    ref, params = models(model, tmp)
    size = 256 if model == "tiny-shapes" else 1024
    scenes = SyntheticShapes(size=size, length=2, seed=31)
    image = np.ascontiguousarray(scenes[0].image[:, : size * 3 // 4])  # 4:3, not square
    # "defaults" keep nothing on these weights (they are tuned for a trained ViT-H), so the
    # reference still upsamples and scores every candidate while we stop at the IoU filter;
    # "permissive" makes every candidate pass (our worst case); crops raise the reference on an
    # empty result, so the crop row is permissive too.
    permissive = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    cases = {
        "reference defaults": {},
        "permissive": permissive,
        "permissive + 1 crop layer": {**permissive, "crop_n_layers": 1},
    }
    if model != "tiny-shapes":  # 16x16 points at 1024: minutes per row for the reference already
        cases = {k: {**v, "points_per_side": 16} for k, v in cases.items() if ALL_CASES or k == "reference defaults"}
    predictor = SamPredictor(ref)
    for label, options in cases.items():
        generator = SamAutomaticMaskGenerator(ref, **options)
        ours = sam_jax.SamAutomaticMaskGenerator(params, **options)
        crops = [image[y0:y1, x0:x1] for (x0, y0, x1, y1) in _crop_boxes(image, options)]
        _, ref_total = timed(lambda g=generator: g.generate(image), repeats)
        first, our_total = timed(lambda g=ours: g.generate(image), repeats)
        _, ref_enc = timed(lambda cs=crops: [predictor.set_image(c) for c in cs], repeats)
        _, our_enc = timed(lambda cs=crops: [sam_jax.encode(params, c).image_embedding for c in cs], repeats)
        n_ref, n_ours = len(generator.generate(image)), len(ours.generate(image))
        row(
            "amg", f"{model} {label}: per image", ref_total, our_total, masks=f"{n_ref}/{n_ours}", first=f"{first:.1f}s"
        )
        row("amg", f"{model} {label}: without encoder", ref_total - ref_enc, our_total - our_enc)


def _crop_boxes(image: np.ndarray, options: dict[str, Any]) -> list[list[int]]:
    from sam_jax.amg import generate_crop_boxes

    return generate_crop_boxes(image.shape[:2], options.get("crop_n_layers", 0), 512 / 1500)[0]


SECTIONS = {"amg": bench_amg}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    p.add_argument("--models", default="tiny-shapes,vit_b", help="comma-separated: tiny-shapes, vit_b, vit_l, vit_h")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--all-cases", action="store_true", help="every AMG case for the large models too")
    args = p.parse_args()
    global ALL_CASES
    ALL_CASES = args.all_cases
    print(
        f"# {datetime.date.today()} {platform.processor() or platform.machine()} "
        f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device(s)) "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        flush=True,
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or sorted(SECTIONS):
            for model in args.models.split(","):
                SECTIONS[name](model, Path(tmp), args.repeats)
    if args.json:
        args.json.write_text(json.dumps(ROWS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
