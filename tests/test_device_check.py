"""benchmarks/device_check/: one part through the real command, the harness's deadlines, the
cuDNN probe, the attention paths forced through the params, parity within the project limits.

Each mechanism is checked once, at its smallest size. The whole dry run (every part, ~100 s
on 2 cores) is a command, not a test: `JAX_PLATFORMS=cpu bash benchmarks/device_check.sh
--dry-run` (benchmarks/DEVICE.md); it exits 1 naming what failed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from sam_jax.modeling import attention_kernels
from sam_jax.testing import PARITY_LIMITS

REPO = Path(__file__).resolve().parents[1]
REPO_RESULTS = REPO / "benchmarks" / "results"


@pytest.fixture(scope="module")
def dc():
    """The device check's modules (benchmarks/ goes on sys.path, as device_check.sh puts it)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import device_check.__main__ as cli
        from device_check import harness, plan, results
        from device_check.parts import encoder, environment, parity

        parts = {"encoder": encoder, "environment": environment, "parity": parity}
        yield SimpleNamespace(cli=cli, harness=harness, plan=plan, results=results, **parts)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def _listing(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*")) if folder.exists() else []


def _check(dc, tmp_path, budget: float, plan=None, attention: str = "auto"):
    plan = plan or dc.plan.DRY_PLAN
    rec = dc.results.Recorder(plan, tmp_path, None, ["test"], budget)
    clock = dc.harness.Clock(budget, reserve=0.0)
    clock.begin_part(budget)
    return dc.harness.Check(plan, rec, clock, attention)


# ----------------------------------------------------------------------------- the command


def test_one_part_through_the_command(tmp_path, dc):
    """The wrapper script runs a part (the smallest: peak) on this CPU with the dry run's plan,
    within its budget, and writes the results into the directory given (and $OUT), not into
    the repository."""
    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    repo_results = _listing(REPO_RESULTS)
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    script = str(REPO / "benchmarks" / "device_check.sh")
    proc = subprocess.run(
        ["bash", script, "--dry-run", "--only", "peak", "--budget", "60", "--results-dir", str(results)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _listing(REPO_RESULTS) == repo_results

    (json_file,) = results.glob("*.json")
    assert "-dry-run-" in json_file.name  # <device>-<date>: the dry run names itself
    assert {p.name for p in out.iterdir()} == {json_file.name, json_file.with_suffix(".md").name, "device_check.log"}
    doc = json.loads(json_file.read_text())
    assert json.loads((out / json_file.name).read_text()) == doc
    assert "== device check summary ==" in (out / "device_check.log").read_text()

    assert list(doc["parts"]) == ["peak"] and doc["parts"]["peak"]["status"] == "ok"
    assert "## peak" in json_file.with_suffix(".md").read_text()
    assert doc["meta"]["plan"] == "dry-run" and doc["meta"]["budget_s"] == 60
    rows = doc["rows"]
    assert len(rows) == 3 and all(r["part"] == "peak" and r["status"] == "ok" for r in rows)
    for r in rows:
        assert r["unit"] == "TFLOP/s" and isinstance(r["ours"], float) and 0 < r["ours"] < math.inf, r
        assert r["reference"] is None or 0 < r["reference"] < math.inf, r
    assert dc.results.dry_run_problems(doc) == []


def test_a_run_out_of_time_skips_its_parts_and_fails_the_dry_run(tmp_path, dc, monkeypatch):
    """Parts that no longer fit in the run's budget are skipped, not started; a dry run with a
    skipped part fails; without --results-dir its results go to a temporary directory."""
    monkeypatch.delenv("OUT", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    repo_results = _listing(REPO_RESULTS)
    # 5 s of the budget are held back for writing the results: 0.5 s is left for the parts.
    assert dc.cli.main(["--dry-run", "--only", "parity", "--only", "train", "--budget", "5.5"]) == 1
    assert _listing(REPO_RESULTS) == repo_results
    (json_file,) = tmp_path.glob("device-check-*/*.json")
    doc = json.loads(json_file.read_text())
    assert {p: i["status"] for p, i in doc["parts"].items()} == {p: "skipped: out of time" for p in ("parity", "train")}
    problems = dc.results.dry_run_problems(doc)
    assert "parity: skipped: out of time" in problems and "train: no row" in problems


def test_the_command_line_forces_the_attention_path_on_the_params(tmp_path, dc):
    args = dc.cli.parse_args(["--dry-run", "--attention", "fused-xla", "--results-dir", str(tmp_path)])
    ck = dc.cli.start(args, dc.plan.DRY_PLAN, [])
    assert ck.attention == "fused-xla" and ck.params("micro").attention == "fused-xla"
    with pytest.raises(SystemExit):
        dc.cli.parse_args(["--budget", "0"])


# ----------------------------------------------------------------------------- the harness


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


def test_encoder_flops_match_the_reference_counter(dc):
    """972 GFLOP per vit_b image: the reference's own figure (torch's FLOP counter)."""
    import sam_jax

    flops = dc.encoder.encoder_flops
    assert abs(flops(sam_jax.get_config("vit_b")) / 1e9 - 972) < 0.5
    assert flops(sam_jax.get_config("vit_h")) > 6 * flops(sam_jax.get_config("vit_b"))


# ----------------------------------------------------------------------------- the attention paths


def test_cudnn_probe_falls_back_to_blocked(dc, tmp_path, monkeypatch):
    """Where cuDNN's attention fails, the rest of the run asks for the blocked path (a CPU
    stands in for a GPU whose cuDNN refuses: the cudnn implementation cannot run here)."""
    monkeypatch.setattr(attention_kernels, "cuda_compute_capability", lambda: (9, 0))
    ck = _check(dc, tmp_path, budget=60.0)
    dc.environment.probe_fused_attention(ck, {"tiny": (1, 2, 4, 8)})
    assert ck.attention == "blocked" and ck.params("micro").attention == "blocked"
    assert ck.rec.rows[-1]["status"].startswith("error:") and "blocked" in ck.rec.meta["attention_forced"]


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
    dc.environment.probe_fused_attention(ck, {"tiny": (2, 2, 4, 8)})
    assert [r["what"].split()[-1] for r in ck.rec.rows] == ["forward", "backward"]
    assert all(r["status"] == "pass" and r["ours"] == 0.0 for r in ck.rec.rows)
    assert ck.attention == "auto" and "attention_forced" not in ck.rec.meta


def test_encoder_rows_fall_back_to_blocked_where_fused_fails(dc, tmp_path, monkeypatch):
    """A CPU posing as an NVIDIA GPU picks cuDNN for bfloat16, which cannot run here: the row
    records the error and measures the blocked path instead (forced on that row's params alone)."""
    monkeypatch.setattr(attention_kernels, "cuda_compute_capability", lambda: (9, 0))
    plan = dataclasses.replace(dc.plan.DRY_PLAN, encoder_models=("micro",), dtypes=("bfloat16",), batches=(1,))
    ck = _check(dc, tmp_path, 300.0, plan)
    dc.encoder.part_encoder(ck)
    failed, fallback = ck.rec.rows
    assert failed["what"] == "micro bfloat16 batch 1" and failed["status"].startswith("error: ")
    assert fallback["what"] == "micro bfloat16 batch 1, blocked (fused failed)" and fallback["status"] == "ok"
    assert fallback["notes"]["attention"] == "blocked" and fallback["ours"] > 0
    assert fallback["notes"]["compile_s"] > 0 and fallback["reference"] > 0
    assert ck.attention == "auto"


def test_forced_attention_paths_are_traced(dc, tmp_path):
    """The attention part forces each path through the params, and the path is really traced:
    the fused form's XLA cost differs from the blocked one's."""
    ck = _check(dc, tmp_path, budget=120.0)
    dc.encoder.part_attention(ck)
    attention = {
        r["notes"]["attention"]: r["notes"]["xla_GFLOP_per_img"]
        for r in ck.rec.rows
        if "bfloat16" in r["what"] and r["status"] == "ok"
    }
    assert set(attention) == {"blocked", "fused-xla"} and attention["blocked"] != attention["fused-xla"]
    assert [r["status"] for r in ck.rec.rows if "cudnn" in r["what"]] == ["skipped: cuDNN needs an NVIDIA GPU"] * 2
    assert ck.rec.rows[0]["what"] == "micro bfloat16 batch 1, blocked (default)"


# ----------------------------------------------------------------------------- parity


def test_parity_holds_within_the_project_limits(dc, tmp_path):
    """The parity part's float32 rows on the smallest model and one prompt case (plus the
    mask_input case): every row passes within sam_jax.testing.PARITY_LIMITS. (Its bfloat16
    rows, information only, would cost a second decoder compile here: the dry run has them.)"""
    plan = dataclasses.replace(dc.plan.DRY_PLAN, parity_model="micro", parity_cases=1)
    ck = _check(dc, tmp_path, 300.0, plan)
    dc.parity.float32_rows(ck, dc.parity.ParityScene(ck))
    parity = ck.rec.rows
    assert len(parity) >= 3 and all(r["status"] == "pass" for r in parity)
    for r in parity:
        if "logit_rel_err" in r["notes"]:
            assert r["notes"]["logit_rel_err"] <= PARITY_LIMITS["logit_rel_err"]
            assert r["notes"]["score_abs_err"] <= PARITY_LIMITS["score_abs_err"]
            assert r["notes"]["mask_agreement"] >= PARITY_LIMITS["mask_agreement"]
        else:
            assert r["ours"] <= 1e-3  # the embedding's worst error / max magnitude
    assert ck.rec.meta["parity_holds"] is True
