"""The device check's command line (`bash benchmarks/device_check.sh [options]` runs
`python -m device_check` with benchmarks/ on the path; benchmarks/DEVICE.md)."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import jax

from sam_jax.modeling import attention_kernels

from .harness import REPO, Check, Clock, jax_peak_gb, release_torch_memory
from .parts import PART_FUNCTIONS
from .parts.environment import device_name
from .plan import DRY_PLAN, GPU_PLAN, PARTS, Plan
from .results import Recorder, dry_run_problems

COMPILE_CACHE = Path(tempfile.gettempdir()) / "sam-jax-xla-cache"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="device_check", description="One device check: parity and speed of sam-jax against the reference."
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="every part with small models (CPU), results in a temp dir"
    )
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default: the plan's, 360 on a GPU)")
    parser.add_argument("--results-dir", type=Path, help="default: benchmarks/results (a temp dir with --dry-run)")
    parser.add_argument("--attention", choices=attention_kernels.PATHS, help="force the encoder's attention path")
    parser.add_argument("--tag", default="", help="appended to the results' file names (e.g. rerun)")
    args = parser.parse_args(argv)
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    ck = start(args, plan, sys.argv[1:] if argv is None else argv)
    for part in PARTS:
        if part in (args.only or PARTS):
            run_part(ck, part)
    for line in summary(ck):
        ck.rec.say(line)
    failed = args.dry_run and dry_run_failed(ck.rec)
    ck.rec.write()
    return 1 if failed else 0


def start(args: argparse.Namespace, plan: Plan, argv: list[str]) -> Check:
    """The run's records and clock, from the command line."""
    budget = args.budget if args.budget is not None else plan.budget
    results_dir = args.results_dir or (
        Path(tempfile.mkdtemp(prefix="device-check-")) if args.dry_run else REPO / "benchmarks" / "results"
    )
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    rec = Recorder(plan, results_dir, out_dir, ["device_check", *argv], budget)
    ck = Check(plan, rec, Clock(budget), attention=args.attention or "auto")
    rec.meta["tag"] = args.tag
    if not args.dry_run:  # a rerun on the same (warm) machine reuses the compiled programs
        cached = len(list(COMPILE_CACHE.glob("*"))) if COMPILE_CACHE.is_dir() else 0
        jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
        rec.meta["compile_cache"] = f"{COMPILE_CACHE} ({cached} entries at start)"
    rec.meta["device_name"] = device_name(plan)
    with contextlib.suppress(OSError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        rec.meta["commit"] = commit.stdout.strip() or "unknown (no git checkout)"
    where = f"{results_dir}" + (f" and {out_dir}" if out_dir else "")
    rec.say(f"device check ({plan.name}): budget {budget:.0f} s, results in {where}")
    return ck


def run_part(ck: Check, part: str) -> None:
    """One part within its share of the budget (skipped when the run's time is up); an
    exception ends the part, not the run. The results are rewritten after it."""
    rec, clock = ck.rec, ck.clock
    if clock.run_left() < 1:
        rec.parts[part] = {"status": "skipped: out of time", "seconds": 0.0}
        rec.skip(part, part, "out of time")
        return
    rec.say(f"-- {part} ({clock.elapsed():.0f} s elapsed)")
    clock.begin_part(ck.plan.shares.get(part, 10.0))
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        PART_FUNCTIONS[part](ck)
        status = "ok"
    except Exception as e:
        traceback.print_exc()
        status = f"error: {type(e).__name__}: {str(e)[:300]}"
        release_torch_memory()
    rec.parts[part] = {
        "status": status,
        "seconds": time.perf_counter() - t0,
        "cpu_s": time.process_time() - cpu0,
        "jax_peak_GB": jax_peak_gb(),
    }
    rec.meta["elapsed_s"] = clock.elapsed()
    rec.write()


def dry_run_failed(rec: Recorder) -> bool:
    """Whether the dry run found a problem (results.dry_run_problems), each one said."""
    problems = dry_run_problems(rec.doc())
    for problem in problems:
        rec.say(f"dry run problem: {problem}")
    return bool(problems)


# ----------------------------------------------------------------------------- summary


def summary(ck: Check) -> list[str]:
    """The lines to read first: part statuses, parity, the attention paths, the encoder's best rates."""
    rec = ck.rec
    lines = ["", "== device check summary =="]
    lines.append("parts: " + ", ".join(f"{p} {i['status']}" for p, i in rec.parts.items()))
    if "parity_holds" in rec.meta:
        lines.append(f"parity (float32, project tolerances): {'HOLDS' if rec.meta['parity_holds'] else 'FAILS'}")
    lines += [f"{r['what']}: {r['status']}" for r in rec.rows if r["what"].startswith("cuDNN fused attention probe")]
    if rec.meta.get("attention_forced"):
        lines.append(f"attention forced: {rec.meta['attention_forced']}")
    lines += attention_lines(rec.rows) + encoder_lines(rec.rows)
    lines.append(f"elapsed {ck.clock.elapsed():.0f} s; results: {rec.results_dir / rec.stem()}.md")
    return lines


def attention_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The fastest attention path per dtype, with every path's rate."""
    lines = []
    for dtype in ("bfloat16", "float32"):
        paths = [r for r in rows if r["part"] == "attention" and dtype in r["what"] and r["ours"]]
        if paths:
            fastest = max(paths, key=lambda r: r["ours"])
            lines.append(
                f"attention {dtype}: fastest {fastest['notes']['attention']} ({fastest['ours']:.1f} img/s; "
                + ", ".join(f"{r['notes']['attention']} {r['ours']:.1f}" for r in paths)
                + ")"
            )
    return lines


def encoder_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The encoder's best rate per model and dtype, with the reference's and the target."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r["part"] == "encoder" and isinstance(r["ours"], float):
            model, dtype = r["what"].split()[:2]
            if (model, dtype) not in best or r["ours"] > best[(model, dtype)]["ours"]:
                best[(model, dtype)] = r
    lines = []
    for (model, dtype), r in sorted(best.items()):
        ref = f", reference {r['reference']:.1f}" if r["reference"] else ""
        target = f"  target {r['notes']['target']}" if "target" in r["notes"] else ""
        lines.append(f"encoder {model} {dtype}: best {r['ours']:.1f} img/s ({r['what'].split(' ', 2)[2]}{ref}){target}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
