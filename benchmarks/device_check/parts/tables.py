"""The compile and memory parts: tables gathered from the rows of the other parts."""

from __future__ import annotations

from ..harness import Check


def part_compile(ck: Check) -> None:
    """Compile times gathered from the other parts: the encoders' ahead-of-time compiles, and
    first call minus a later call elsewhere (tracing, compiling and autotuning included)."""
    for r in [r for r in ck.rec.rows if r["part"] in ("encoder", "attention") and "compile_s" in r["notes"]]:
        ck.rec.row("compile", f"{r['part']}: {r['what']}", "s", None, float(r["notes"]["compile_s"]))
    for r in [r for r in ck.rec.rows if r["part"] in ("decode", "amg", "train") and "first_s" in r["notes"]]:
        steady = r["notes"].get("step_s") if r["part"] == "train" else r["ours"]
        if isinstance(steady, float):
            first_minus_steady = max(float(r["notes"]["first_s"]) - steady, 0.0)
            what = f"{r['part']}: {r['what']} (first call - steady call)"
            ck.rec.row("compile", what, "s", None, first_minus_steady)
    if not any(r["part"] == "compile" for r in ck.rec.rows):
        ck.rec.skip("compile", "compile times", "no part that compiles ran")


def part_memory(ck: Check) -> None:
    """Peak device memory: JAX's allocator after each part, XLA's own account of each encoder
    program, and the reference's peak (torch) per encoder row."""
    for part, info in ck.rec.parts.items():
        if info.get("jax_peak_GB") is not None:
            ck.rec.row("memory", f"JAX peak after {part}", "GB", None, float(info["jax_peak_GB"]))
    for r in [r for r in ck.rec.rows if r["part"] == "encoder" and r["status"] == "ok"]:
        notes = r["notes"]
        ours, ref = notes.get("xla_total_GB"), notes.get("ref_peak_GB")
        if ours is not None or ref is not None:
            ck.rec.row("memory", f"encoder {r['what']}: program (XLA) / reference peak (torch)", "GB", ref, ours)
    if not any(r["part"] == "memory" for r in ck.rec.rows):
        ck.rec.row("memory", "no device memory figures on this backend", "", None, None, status="info")
