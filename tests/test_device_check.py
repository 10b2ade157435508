"""benchmarks/device_check.py: the dry run of every part, its deadlines, its cuDNN probe."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sam_jax.modeling import attention_kernels
from sam_jax.testing import PARITY_LIMITS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dc():
    """The script as a module (it is no package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location("device_check", REPO / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def _listing(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.slow
def test_dry_run_runs_every_part(tmp_path, dc):
    """The wrapper script runs every part on this CPU with the small models, writes the
    results into the directory given (and $OUT), not into the repository."""
    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    repo_results = _listing(REPO / "benchmarks" / "results")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    t0 = time.monotonic()
    script = str(REPO / "benchmarks" / "device_check.sh")
    proc = subprocess.run(
        ["bash", script, "--dry-run", "--budget", "900", "--results-dir", str(results)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _listing(REPO / "benchmarks" / "results") == repo_results

    (json_file,) = results.glob("*.json")
    assert "-dry-run-" in json_file.name  # <device>-<date>: the dry run names itself
    assert {p.name for p in out.iterdir()} == {json_file.name, json_file.with_suffix(".md").name, "device_check.log"}
    doc = json.loads(json_file.read_text())
    assert json.loads((out / json_file.name).read_text()) == doc
    markdown = json_file.with_suffix(".md").read_text()

    assert list(doc["parts"]) == list(dc.PARTS)
    for part, info in doc["parts"].items():
        assert info["status"] == "ok", (part, info)
        assert f"## {part}" in markdown
    rows = doc["rows"]
    for part in dc.PARTS:
        measured = [r for r in rows if r["part"] == part and r["status"] in ("ok", "pass", "info")]
        assert measured, f"{part}: no row"
    for r in rows:
        # Only the cuDNN rows may be skipped here (no NVIDIA GPU); nothing errs or runs out of time.
        assert r["status"] in ("ok", "pass", "info") or "NVIDIA GPU" in r["status"], r
        if r["unit"] in ("s", "ms", "img/s", "TFLOP/s"):
            assert isinstance(r["ours"], float) and 0 < r["ours"] < math.inf, r
            assert r["reference"] is None or 0 < r["reference"] < math.inf, r

    parity = [r for r in rows if r["part"] == "parity" and "bfloat16" not in r["what"]]
    assert len(parity) >= 3 and all(r["status"] == "pass" for r in parity)
    for r in parity:
        if "logit_rel_err" in r["notes"]:
            assert r["notes"]["logit_rel_err"] <= PARITY_LIMITS["logit_rel_err"]
            assert r["notes"]["score_abs_err"] <= PARITY_LIMITS["score_abs_err"]
            assert r["notes"]["mask_agreement"] >= PARITY_LIMITS["mask_agreement"]
        else:
            assert r["ours"] <= 1e-3  # the embedding's worst error / max magnitude
    assert doc["meta"]["parity_holds"] is True

    plan = dc.DRY_PLAN
    encoder = {r["what"]: r for r in rows if r["part"] == "encoder"}
    for model in plan.encoder_models:
        for dtype in plan.dtypes:
            for batch in plan.batches:
                r = encoder[f"{model} {dtype} batch {batch}"]
                assert r["notes"]["compile_s"] > 0 and r["reference"] > 0
    # A forced path is really traced: the fused form's XLA cost differs from the blocked one's.
    attention = {
        r["notes"]["attention"]: r["notes"]["xla_GFLOP_per_img"]
        for r in rows
        if r["part"] == "attention" and "bfloat16" in r["what"] and r["status"] == "ok"
    }
    assert set(attention) == {"blocked", "fused-xla"} and attention["blocked"] != attention["fused-xla"]
    (train_row,) = [r for r in rows if r["part"] == "train"]
    assert math.isfinite(train_row["notes"]["loss"])
    print(f"dry run: {seconds:.0f} s wall, parts {sum(i['seconds'] for i in doc['parts'].values()):.0f} s")


def test_encoder_flops_match_the_reference_counter(dc):
    """972 GFLOP per vit_b image: the reference's own figure (torch's FLOP counter)."""
    import sam_jax

    assert abs(dc.encoder_flops(sam_jax.get_config("vit_b")) / 1e9 - 972) < 0.5
    assert dc.encoder_flops(sam_jax.get_config("vit_h")) > 6 * dc.encoder_flops(sam_jax.get_config("vit_b"))


def _check(dc, tmp_path, budget: float, plan=None):
    plan = plan or dc.DRY_PLAN
    rec = dc.Recorder(plan, tmp_path, None, ["test"], budget)
    clock = dc.Clock(budget, reserve=0.0)
    clock.begin_part(budget)
    return dc.Check(plan, rec, clock)


def test_rows_that_do_not_fit_are_skipped_not_run(dc, tmp_path):
    ck = _check(dc, tmp_path, budget=30.0)
    ran = []
    ck.measure("encoder", "too long", "kind", 100.0, lambda: ran.append("long"))
    ck.measure("encoder", "fits", "kind2", 1.0, lambda: ran.append("short"))
    ck.measure("encoder", "fails", "kind3", 1.0, lambda: 1 / 0)
    assert ran == ["short"]
    statuses = [r["status"] for r in ck.rec.rows]
    assert statuses[0].startswith("skipped: out of time") and statuses[1].startswith("error: ZeroDivisionError")
    # The next row of a kind is estimated from the last one's cost.
    assert ck.costs["kind2"] < 1.0 and "kind" not in ck.costs


def test_cudnn_probe_falls_back_to_blocked(dc, tmp_path, monkeypatch):
    """Where cuDNN's attention fails, the run goes on with the blocked path (a CPU stands in
    for a GPU whose cuDNN refuses: the cudnn implementation cannot run here)."""
    monkeypatch.setattr(attention_kernels, "cuda_compute_capability", lambda: (9, 0))
    ck = _check(dc, tmp_path, budget=60.0)
    try:
        dc.probe_fused_attention(ck, {"tiny": (1, 2, 4, 8)})
        assert attention_kernels.forced_path == "blocked"
        assert ck.rec.rows[-1]["status"].startswith("error:") and "blocked" in ck.rec.meta["attention_forced"]
    finally:
        attention_kernels.set_attention_path(None)


def test_cudnn_probe_compares_with_xla(dc, tmp_path, monkeypatch):
    """The probe's comparison itself, with the cuDNN call standing in as XLA's own."""
    monkeypatch.setattr(attention_kernels, "cuda_compute_capability", lambda: (9, 0))
    real = attention_kernels.fused_attention
    monkeypatch.setattr(
        attention_kernels,
        "fused_attention",
        lambda q, k, v, rel, path: real(q, k, v, rel, path.replace("cudnn", "xla")),
    )
    ck = _check(dc, tmp_path, budget=60.0)
    dc.probe_fused_attention(ck, {"tiny": (2, 2, 4, 8)})
    assert [r["what"].split()[-1] for r in ck.rec.rows] == ["forward", "backward"]
    assert all(r["status"] == "pass" and r["ours"] == 0.0 for r in ck.rec.rows)
    assert attention_kernels.forced_path is None


def test_encoder_rows_fall_back_to_blocked_where_fused_fails(dc, tmp_path, monkeypatch):
    """A CPU posing as an NVIDIA GPU picks cuDNN for bfloat16, which cannot run here: the row
    records the error and measures the blocked path instead."""
    monkeypatch.setattr(attention_kernels, "cuda_compute_capability", lambda: (9, 0))
    plan = dataclasses.replace(dc.DRY_PLAN, encoder_models=("micro",), dtypes=("bfloat16",), batches=(1,))
    ck = _check(dc, tmp_path, 300.0, plan)
    dc.part_encoder(ck)
    failed, fallback = ck.rec.rows
    assert failed["what"] == "micro bfloat16 batch 1" and failed["status"].startswith("error: ")
    assert fallback["what"] == "micro bfloat16 batch 1, blocked (fused failed)" and fallback["status"] == "ok"
    assert fallback["notes"]["attention"] == "blocked" and fallback["ours"] > 0
    assert attention_kernels.forced_path is None
