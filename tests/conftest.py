"""Shared fixtures: randomised reference models, their official-format checkpoints, and
the same weights converted by our converter."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

# One cache folder for the whole session, set before JAX is imported so that this process and
# every command the tests start share it: compiled programs (a test that compiles what another
# already compiled loads it instead: the suite's largest cost on a CPU) and models converted on
# first use (`lite-medsam`). Never the user's cache; removed at the end.
# pytest-xdist workers inherit the folder from the controller through SAM_JAX_TEST_CACHE.
SESSION_CACHE = Path(os.environ.get("SAM_JAX_TEST_CACHE") or tempfile.mkdtemp(prefix="sam-jax-tests-"))
# The suite's programs are small and most run a few times: compiling them is most of its time,
# and LLVM's optimisations would double that for nothing (docs/architecture.md, "Test suite").
# Values move by float rounding only; parity bounds and bit-for-bit comparisons within the
# suite hold, since every process of it (commands the tests start too) compiles the same way.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
# As many workers as cores (`make test`: two on two): one thread each. torch's OpenMP and
# XLA's Eigen pools size themselves to the machine, and two such pools per core spin-wait
# on each other: a third of the suite's time on the reference side (docs/architecture.md).
ONE_THREAD = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1)
if ONE_THREAD:
    TEST_XLA_FLAGS += " --xla_cpu_multi_thread_eigen=false"
    os.environ["OMP_NUM_THREADS"] = "1"
_flags = os.environ.get("XLA_FLAGS", "")  # kept: a command a test starts may set its device count
os.environ.update(
    {
        "XLA_FLAGS": _flags if TEST_XLA_FLAGS in _flags else f"{_flags} {TEST_XLA_FLAGS}".strip(),
        "JAX_COMPILATION_CACHE_DIR": str(SESSION_CACHE / "compilation"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "SAM_JAX_COMPILATION_CACHE": str(SESSION_CACHE / "compilation"),
        "SAM_JAX_CACHE": str(SESSION_CACHE / "models"),
        "SAM_JAX_TEST_CACHE": str(SESSION_CACHE),
    }
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

import sam_jax  # noqa: E402
from sam_jax import conversion  # noqa: E402
from sam_jax.testing import (  # noqa: E402
    PARITY_LIMITS,
    SMALL,
    build_reference,
    parity_figures,
    randomize_,
    save_state_dict,
)

torch.set_grad_enabled(False)
if ONE_THREAD:
    torch.set_num_threads(1)


def subprocess_env(devices: int = 1) -> dict[str, str]:
    """The environment of a command a test starts: the CPU, this suite's XLA flags, and
    `devices` host devices."""
    flags = TEST_XLA_FLAGS + (f" --xla_force_host_platform_device_count={devices}" if devices > 1 else "")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    predictor = sys.modules.get("sam_jax.predictor")
    if predictor is not None:  # sessions still preparing in the background write to the cache
        predictor.wait_for_preparations()
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without workers)
        shutil.rmtree(SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Where models converted on first use go in this session (`$SAM_JAX_CACHE`)."""
    return SESSION_CACHE / "models"


class Converted:
    """A reference model and the same weights loaded through `python -m convert` + `sam_jax.load`."""

    def __init__(self, ref: torch.nn.Module, checkpoint: Path, directory: Path) -> None:
        self.ref = ref
        self.checkpoint = checkpoint
        self.directory = directory
        conversion.convert_checkpoint(checkpoint, directory)
        self.params = sam_jax.load(directory)


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    d = tmp_path_factory.mktemp("small")
    ref = randomize_(build_reference(SMALL), seed=0)
    return Converted(ref, save_state_dict(ref, d / "small.pth"), d / "small-jax")


@pytest.fixture(scope="session")
def tiny_shapes() -> sam_jax.SamParams:
    """The embedded model, loaded once."""
    return sam_jax.load("tiny-shapes")


def assert_parity(ref: tuple, ours: tuple, what: str = "") -> dict[str, float]:
    """The project's fp32 tolerances, applied to a (masks, scores, low_res_logits) triple.

    Low-res logits within 1e-3 of their largest magnitude, IoU predictions within 1e-3
    absolute, binary masks equal on at least 99.9% of pixels (`reference.PARITY_LIMITS`).
    """
    figures = parity_figures(ref, ours, what)
    assert figures["logit_rel_err"] <= PARITY_LIMITS["logit_rel_err"], (what, figures)
    assert figures["score_abs_err"] <= PARITY_LIMITS["score_abs_err"], (what, figures)
    assert figures["mask_agreement"] >= PARITY_LIMITS["mask_agreement"], (what, figures)
    return figures


def rel_err(ours: object, ref: object) -> float:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if ref.size == 0:
        return 0.0
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))
