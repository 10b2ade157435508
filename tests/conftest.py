"""Shared fixtures: randomised reference models, their official-format checkpoints, and
the same weights converted by our converter."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import sam_jax
from sam_jax import conversion
from sam_jax.testing import PARITY_LIMITS, SMALL, build_reference, parity_figures, randomize_, save_state_dict

torch.set_grad_enabled(False)


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


@pytest.fixture(scope="session")
def vit_b(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    from segment_anything import sam_model_registry

    d = tmp_path_factory.mktemp("vit_b")
    ref = randomize_(sam_model_registry["vit_b"]().eval(), seed=1)
    return Converted(ref, save_state_dict(ref, d / "sam_vit_b_random.pth"), d / "vit_b-jax")


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
