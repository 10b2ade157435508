"""The device check's records: rows and part statuses, written as markdown and JSON after
every part (to the results directory, and to `$OUT` for the device tool)."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .plan import PARTS, Plan

MEASURED = ("ok", "pass", "info")  # the statuses of a row that measured something
TIME_UNITS = ("s", "ms", "img/s", "TFLOP/s")  # units whose figures are positive when measured


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def fmt(value: Any, unit: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, (int, float)):
        return f"{value} {unit}".strip()
    if unit == "ms":
        return f"{value * 1e3:.2f} ms"
    if unit == "s":
        return f"{value:.3f} s" if value < 100 else f"{value:.0f} s"
    if unit == "img/s":
        return f"{value:.1f} img/s" if value < 1000 else f"{value:.0f} img/s"
    if unit in ("GB", "TFLOP/s"):
        return f"{value:.2f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{value:.3g} {unit}".strip()


def fmt_notes(notes: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in notes.items())


def render_markdown(doc: dict[str, Any]) -> str:
    lines = _markdown_header(doc["meta"]) + _markdown_parts(doc["parts"])
    for part in PARTS:
        lines += _markdown_rows(part, [r for r in doc["rows"] if r["part"] == part])
    return "\n".join(lines) + "\n"


def _markdown_header(meta: dict[str, Any]) -> list[str]:
    return [
        f"# Device check: {meta.get('device_name', 'unknown')}, {meta['date']}",
        "",
        f"Plan `{meta['plan']}`, command `{' '.join(meta['argv'])}`, commit {meta.get('commit', 'unknown')}: "
        f"{meta.get('elapsed_s', 0):.0f} s of a {meta['budget_s']:.0f} s budget; XLA compilation cache "
        f"{meta.get('compile_cache', 'off')}. Written by `benchmarks/device_check/` (benchmarks/DEVICE.md). "
        "Ratio above 1: ours ahead (reference / ours for times, ours / reference for rates). "
        "`of_nominal_bf16_peak` reads our encoder FLOPs (matmuls, 972 GFLOP per vit_b image) against the "
        "datasheet's dense bfloat16 peak, `of_documented_*` against the 790 TFLOP/s the device docs measured, "
        "`of_measured_*` against this run's own `peak` row.",
        "",
    ]


def _markdown_parts(parts: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| part | status | seconds | host CPU seconds | JAX peak device memory after it |",
        "|---|---|---|---|---|",
    ]
    for part, info in parts.items():
        peak = info.get("jax_peak_GB")
        lines.append(
            f"| {part} | {info['status']} | {info.get('seconds', 0):.1f} | {info.get('cpu_s', 0):.1f} | "
            f"{'' if peak is None else f'{peak:.2f} GB'} |"
        )
    return lines


def _markdown_rows(part: str, rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["", f"## {part}", "", "| what | reference | ours | ratio | status | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"x{r['ratio']:.2f}" if r["ratio"] else ""
        notes = fmt_notes(r["notes"]).replace("|", "/")
        lines.append(
            f"| {r['what']} | {fmt(r['reference'], r['unit'])} | {fmt(r['ours'], r['unit'])} | {ratio} | "
            f"{r['status']} | {notes} |"
        )
    return lines


def atomic_write_text(path: Path, text: str) -> None:
    """Writes through a temporary sibling and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for secrets; results are for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Recorder:
    """Rows, part statuses and the log; writes the results after every part."""

    def __init__(self, plan: Plan, results_dir: Path, out_dir: Path | None, argv: list[str], budget: float) -> None:
        self.plan, self.results_dir, self.out_dir = plan, results_dir, out_dir
        self.rows: list[dict[str, Any]] = []
        self.parts: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, Any] = {
            "plan": plan.name,
            "argv": argv,
            "date": datetime.date.today().isoformat(),
            "budget_s": budget,
        }
        self.log: list[str] = []

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.append(text)

    def row(self, part: str, what: str, unit: str, reference: Any, ours: Any, **notes: Any) -> dict[str, Any]:
        """One measurement. unit "s" / "ms": times, ratio reference / ours; "img/s" / "TFLOP/s":
        rates, ratio ours / reference; other units: values, no ratio. Above 1: ours ahead."""
        status = notes.pop("status", "ok")
        ratio = None
        if isinstance(reference, float) and isinstance(ours, float) and reference > 0 and ours > 0:
            if unit in ("s", "ms"):
                ratio = reference / ours
            elif unit in ("img/s", "TFLOP/s"):
                ratio = ours / reference
        r = {"part": part, "what": what, "unit": unit, "reference": reference, "ours": ours, "ratio": ratio}
        r |= {"status": status, "notes": notes}
        self.rows.append(r)
        shown = f"x{ratio:.2f}" if ratio else ""
        self.say(
            f"  {part:11s} {what[:62]:62s} {fmt(reference, unit):>14s} {fmt(ours, unit):>14s} {shown:>6s} "
            f"{'' if status == 'ok' else status}  {fmt_notes(notes)}"
        )
        return r

    def skip(self, part: str, what: str, why: str) -> None:
        self.row(part, what, "", None, None, status=f"skipped: {why}")

    def error(self, part: str, what: str, e: Exception, note: str = "") -> None:
        self.row(part, what, "", None, None, status=f"error: {type(e).__name__}: {str(e)[:300]}{note}")

    def stem(self) -> str:
        tag = f"-{slug(self.meta['tag'])}" if self.meta.get("tag") else ""
        return f"{slug(self.meta.get('device_name', 'device'))}-{self.meta['date']}{tag}"

    def doc(self) -> dict[str, Any]:
        return {"meta": self.meta, "parts": self.parts, "rows": self.rows}

    def write(self) -> list[Path]:
        doc = self.doc()
        files = {f"{self.stem()}.json": json.dumps(doc, indent=1, default=str) + "\n"}
        files[f"{self.stem()}.md"] = render_markdown(doc)
        written = []
        for name, text in files.items():
            atomic_write_text(self.results_dir / name, text)
            written.append(self.results_dir / name)
        if self.out_dir is not None:  # the device tool returns only what lies under $OUT
            for name, text in [*files.items(), ("device_check.log", "\n".join(self.log) + "\n")]:
                atomic_write_text(self.out_dir / name, text)
                written.append(self.out_dir / name)
        return written


def dry_run_problems(doc: dict[str, Any]) -> list[str]:
    """What makes a dry run fail: on a CPU with the small models every part must end "ok"
    with a row that measured something, no row may err or run out of time (only the cuDNN
    rows may be skipped: no NVIDIA GPU), every time or rate must be a positive number, and
    parity must hold where it ran."""
    problems = [f"{part}: {info['status']}" for part, info in doc["parts"].items() if info["status"] != "ok"]
    for part in doc["parts"]:
        if not any(r["part"] == part and r["status"] in MEASURED for r in doc["rows"]):
            problems.append(f"{part}: no row")
    for r in doc["rows"]:
        if r["status"] not in MEASURED and "NVIDIA GPU" not in r["status"]:
            problems.append(f"{r['part']} / {r['what']}: {r['status']}")
        elif r["unit"] in TIME_UNITS and not _positive(r):
            problems.append(f"{r['part']} / {r['what']}: reference {r['reference']}, ours {r['ours']}")
    if doc["meta"].get("parity_holds") is False:
        problems.append("parity: FAILS")
    return problems


def _positive(r: dict[str, Any]) -> bool:
    ours, ref = r["ours"], r["reference"]
    return isinstance(ours, float) and 0 < ours < math.inf and (ref is None or 0 < ref < math.inf)
