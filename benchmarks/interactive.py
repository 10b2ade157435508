"""An interactive session, sam-jax against the reference `SamPredictor`, in one process.

The session (issue 18): vit_b, a 480 x 640 image encoded once, then a first click and the
follow-ups a person makes: clicks 2 to 8, a box alone, a box and two clicks, the 8 clicks
with the last logits fed back, and the 8 clicks with multimask off. Both sides get the same
weights and prompts and their masks are compared at every call. The first session in
this process follows the reference's (ours prepared its programs meanwhile, see
`sam_jax.predictor.prepare_session`); then `--repeats` warm sessions run, the two
libraries in turns, and the median follow-up total is reported too. `--section first`
runs a new process's first session: encode, then every call at once, in turns.

    .venv/bin/python benchmarks/interactive.py                  # session rows
    .venv/bin/python benchmarks/interactive.py --section first  # a new process's first session:
                                                                # empty, filled and no compilation cache
    .venv/bin/python benchmarks/interactive.py --section cache  # first click of a new process,
                                                                # with and without the compilation cache
Rows are printed as bench.py's (section "interact"); `--json PATH` writes them too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZE = (480, 640)


def session_prompts() -> list[tuple[str, dict[str, Any]]]:
    """The calls of the session, in order; "feedback" marks a call that takes the previous
    call's best low-res logits as its mask input."""
    rng = np.random.default_rng(0)
    h, w = SIZE
    points = rng.uniform((0.1 * w, 0.1 * h), (0.9 * w, 0.9 * h), (8, 2)).round()
    labels = np.array([1, 1, 0, 1, 0, 1, 1, 0])
    box = np.array([0.2 * w, 0.15 * h, 0.75 * w, 0.85 * h]).round()
    calls = [(f"click {k}", dict(point_coords=points[:k], point_labels=labels[:k])) for k in range(1, 9)]
    calls += [
        ("box", dict(box=box)),
        ("box + 2 clicks", dict(point_coords=points[:2], point_labels=labels[:2], box=box)),
        ("8 clicks + logits", dict(point_coords=points, point_labels=labels, feedback=True)),
        ("8 clicks, multimask off", dict(point_coords=points, point_labels=labels, multimask_output=False)),
    ]
    return calls


def run_session(
    predict: Callable[..., tuple], calls: list[tuple[str, dict[str, Any]]], last: tuple | None = None
) -> tuple[list[float], list]:
    """Times each call (results on the host, as an application uses them); returns (times,
    (masks, scores, low-res logits) per call). `last`: the previous call's, for feedback."""
    times, masks = [], []
    for _, kwargs in calls:
        kwargs = dict(kwargs)
        feedback = kwargs.pop("feedback", False)
        t0 = time.perf_counter()
        m, scores, low = predict(**kwargs, mask_input=last[2][np.argmax(last[1])][None] if feedback else None)
        m, scores, low = np.asarray(m), np.asarray(scores), np.asarray(low)
        times.append(time.perf_counter() - t0)
        last = (m, scores, low)
        masks.append(last)
    return times, masks


def bench_session(repeats: int) -> None:
    import bench
    from common import make_image, models
    from segment_anything import SamPredictor

    import sam_jax

    with tempfile.TemporaryDirectory() as tmp:
        ref_model, params = models("vit_b", Path(tmp))
    image = make_image(*SIZE, seed=3)
    ref = SamPredictor(ref_model)
    ref.set_image(image)
    emb = sam_jax.encode(params, image)
    sam_jax.predictor.wait_for_preparations()  # its background compilation would slow the reference's session

    def ours(point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True) -> tuple:
        return sam_jax.decode(
            params, emb, point_coords, point_labels, box=box, mask_input=mask_input, multimask_output=multimask_output
        )

    calls = session_prompts()
    ref_times, ref_masks = run_session(ref.predict, calls)
    our_times, our_masks = run_session(ours, calls)
    agreement = min(float((a[0] == b[0]).mean()) for a, b in zip(ref_masks, our_masks, strict=True))
    for (name, _), r, o in zip(calls, ref_times, our_times, strict=True):
        print(f"  {name:26s} ref {r * 1e3:8.1f} ms  ours {o * 1e3:8.1f} ms", flush=True)
    bench.row("interact", "vit_b 480x640 first click (cold)", ref_times[0], our_times[0], unit="ms")
    bench.row(
        "interact",
        f"vit_b 480x640 {len(calls) - 1} follow-ups (cold session)",
        sum(ref_times[1:]),
        sum(our_times[1:]),
        unit="ms",
        min_mask_agreement=round(agreement, 5),
    )
    warm = {"ref": [], "ours": []}
    for _ in range(repeats):
        warm["ref"].append(sum(run_session(ref.predict, calls)[0][1:]))
        warm["ours"].append(sum(run_session(ours, calls)[0][1:]))
    if repeats:
        bench.row(
            "interact",
            f"vit_b 480x640 {len(calls) - 1} follow-ups (warm, median of {repeats})",
            statistics.median(warm["ref"]),
            statistics.median(warm["ours"]),
            unit="ms",
        )


FIRST_SESSION = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from pathlib import Path
import tempfile
from common import make_image, models
from segment_anything import SamPredictor
import jax, sam_jax
from interactive import SIZE, run_session, session_prompts

with tempfile.TemporaryDirectory() as tmp:
    ref_model, params = models("vit_b", Path(tmp))
image = make_image(*SIZE, seed=3)
ref = SamPredictor(ref_model)
t0 = time.perf_counter()
ref.set_image(image)
t1 = time.perf_counter()
emb = sam_jax.encode(params, image)
jax.block_until_ready(emb.image_embedding)
t2 = time.perf_counter()
calls = session_prompts()
ours_times, ref_times, agreement = [], [], 1.0
last = {"ours": None, "ref": None}

def ours(point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
    return sam_jax.decode(params, emb, point_coords, point_labels, box=box, mask_input=mask_input,
                          multimask_output=multimask_output)

for name, kwargs in calls:  # the two libraries take turns, ours first (right after encode)
    for side, predict, times in (("ours", ours, ours_times), ("ref", ref.predict, ref_times)):
        t, m = run_session(predict, [(name, kwargs)], last[side])
        times.append(t[0]); last[side] = m[0]
    agreement = min(agreement, float((last["ours"][0] == last["ref"][0]).mean()))
print(json.dumps({"ref_encode": t1 - t0, "our_encode": t2 - t1, "ref": ref_times, "ours": ours_times,
                  "agreement": agreement}))
"""


def first_session_process(cache: str) -> dict[str, Any]:
    """A new process's first session on vit_b: encode, then every call of the session, the
    two libraries in turns. `cache`: the persistent compilation cache's folder, or "off"."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": str(here.parent), "SAM_JAX_COMPILATION_CACHE": cache}
    out = subprocess.run(
        [sys.executable, "-c", FIRST_SESSION, str(here)], capture_output=True, text=True, env=env, check=True
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


def bench_first() -> None:
    """The first session of a fresh process, as a person meets it: an empty cache (the first
    run on a machine), the cache that run filled (every later run: the default), no cache."""
    import bench

    calls = [name for name, _ in session_prompts()]
    with tempfile.TemporaryDirectory() as cache:
        runs = {"empty cache": first_session_process(cache), "filled cache": first_session_process(cache)}
    runs["cache off"] = first_session_process("off")
    for state, r in runs.items():
        print(f"  {state}: encode ref {r['ref_encode']:.2f} s, ours {r['our_encode']:.2f} s")
        for name, a, b in zip(calls, r["ref"], r["ours"], strict=True):
            print(f"    {name:26s} ref {a * 1e3:8.1f} ms  ours {b * 1e3:8.1f} ms", flush=True)
        what = f"vit_b 480x640 new process, {state}"
        bench.row("first", f"{what}: encode", r["ref_encode"], r["our_encode"])
        bench.row("first", f"{what}: first click", r["ref"][0], r["ours"][0], unit="ms")
        bench.row(
            "first",
            f"{what}: {len(calls) - 1} follow-ups",
            sum(r["ref"][1:]),
            sum(r["ours"][1:]),
            unit="ms",
            slowest_ref_ms=round(max(r["ref"][1:]) * 1e3, 1),
            slowest_ours_ms=round(max(r["ours"][1:]) * 1e3, 1),
            min_mask_agreement=round(r["agreement"], 5),
        )


FIRST_CLICK = """
import sys, time, numpy as np
t_start = time.perf_counter()
import jax, sam_jax
from sam_jax.predictor import ImageEmbedding
if sys.argv[1]:
    sam_jax.enable_compilation_cache(sys.argv[1])
params = sam_jax.init("vit_b")
emb = ImageEmbedding(jax.device_put(np.random.default_rng(0).normal(size=(64, 64, 256)).astype(np.float32)),
                     (480, 640), (768, 1024))
jax.block_until_ready(params)
t0 = time.perf_counter()
masks, scores, low = sam_jax.decode(params, emb, [[320, 240]])
np.asarray(masks)
t1 = time.perf_counter()
masks, scores, low = sam_jax.decode(params, emb, [[320, 240], [100, 100]], [1, 0], mask_input=np.asarray(low)[:1])
np.asarray(masks)
print(t1 - t0, time.perf_counter() - t1)
"""


def first_click_process(cache: str) -> tuple[float, float]:
    """(first click, second click) seconds in a new process, vit_b random weights."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env["SAM_JAX_COMPILATION_CACHE"] = "off"  # the default one; `cache` is enabled by the script
    out = subprocess.run(
        [sys.executable, "-c", FIRST_CLICK, cache], capture_output=True, text=True, env=env, check=True
    ).stdout
    first, second = (float(x) for x in out.split()[-2:])
    return first, second


def bench_cache() -> None:
    import bench

    with tempfile.TemporaryDirectory() as cache:
        filling = first_click_process(cache)
        entries = len(os.listdir(cache))
        cached = first_click_process(cache)
    uncached = first_click_process("")
    print(
        f"  first process (fills the cache, {entries} entries): first click {filling[0]:.2f} s, then {filling[1]:.3f} s"
    )
    bench.row(
        "interact",
        "vit_b new process first click: no cache (ref col) / cache",
        uncached[0],
        cached[0],
        second_click_cached=round(cached[1], 4),
        second_click_uncached=round(uncached[1], 4),
    )


def main() -> None:
    import bench

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--section", choices=("session", "first", "cache", "all"), default="session")
    p.add_argument("--repeats", type=int, default=3, help="warm sessions per library after the cold one")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args()
    if args.section in ("session", "all"):
        bench_session(args.repeats)
    if args.section in ("first", "all"):
        bench_first()
    if args.section in ("cache", "all"):
        bench_cache()
    if args.json:
        args.json.write_text(json.dumps(bench.ROWS, indent=1))


if __name__ == "__main__":
    main()
