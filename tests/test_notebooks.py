"""The reference's example notebooks, run against both packages with only their imports changed.

The code cells of `predictor_example` and `automatic_mask_generator_example` (kept outside the
repository, in NOTEBOOKS) are read at test time and run cell by cell twice: against
`segment_anything` as written, and ported to sam_jax by the replacements of PORT. After every
cell, every value it bound is compared between the two runs.

Both runs take the replacements of BOTH: the checkpoint lines (a randomised small model saved
as an official `.pth`, registered as "small" in both packages' registries), the one image
path that exists only on the notebook author's machine, and plotting / display (neither
matplotlib nor IPython is installed). The reference run also moves "cuda" to "cpu"; the port
keeps "cuda" (`sam.to` is a no-op there). The photos are the notebooks' own, at full size.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import torch
from test_amg import assert_same_records

import sam_jax
from sam_jax.compat import build_sam
from sam_jax.testing import PARITY_LIMITS, SMALL, build_reference

# The reference notebooks' code cells and photos (tests/reference-notebooks/README.md).
NOTEBOOKS = Path(os.environ.get("SAM_JAX_REFERENCE_NOTEBOOKS", Path(__file__).parent / "reference-notebooks"))

Replacements = list[tuple[str, str, int]]  # (regular expression, replacement, matches expected)

CHECKPOINT_LINES: Replacements = [
    (r'^sam_checkpoint = "[^"]*sam_vit_h_4b8939\.pth"$', "sam_checkpoint = CHECKPOINT", 1),
    (r'^model_type = "vit_h"$', 'model_type = "small"', 1),
]
# FakeAx (the cells use it as given) keeps what `show_mask` draws; show_points, show_box and
# show_anns are replaced by no-ops once defined (`run_side_by_side`).
PLOTTING: Replacements = [
    (r"^import matplotlib\.pyplot as plt$", "plt = NoPlot()", 1),
    (r"^from IPython\.display import display, HTML$", "display = HTML = NoPlot()", 1),
]
BOTH: dict[str, Replacements] = {
    "predictor_example": [*CHECKPOINT_LINES, *PLOTTING],
    "automatic_mask_generator_example": [
        *CHECKPOINT_LINES,
        *PLOTTING,
        # The author's own photo; upstream the notebook reads images/dog.jpg.
        (r"'/home/aiuser/Documents/Practice/segment-anything/images/download\.jpeg'", "'images/dog.jpg'", 1),
        # A quarter of the photo's side: the notebook's code unchanged at a sixteenth of the
        # reference's time (it upsamples every candidate to the photo's size, 32 x 32 points per crop).
        (
            r"^image = cv2\.cvtColor\(image, cv2\.COLOR_BGR2RGB\)$",
            r"\g<0>\nimage = cv2.resize(image, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)",
            1,
        ),
        (r"^(\s*)!.*$", r"\1pass", 5),  # IPython shell escapes, inside `if using_colab:`
    ],
}
REFERENCE: Replacements = [(r'^device = "cuda"$', 'device = "cpu"', 1)]  # torch has no GPU here
# The port: the import lines, torch's array constructors to numpy's, `.cpu().numpy()` in plotting.
PORT: dict[str, Replacements] = {
    "predictor_example": [
        (r"^import torch\n", "", 1),
        (r"^from segment_anything import ", "from sam_jax import ", 1),
        (
            r"^from segment_anything\.utils\.transforms import ResizeLongestSide$",
            "from sam_jax import ResizeLongestSide",
            1,
        ),
        (r"torch\.tensor\(", "np.array(", 3),
        (r"\], device=(predictor|sam)\.device\)", "])", 3),
        (r"torch\.as_tensor\(image, device=device\.device\)", "np.asarray(image)", 1),
        (r"\.permute\(2, 0, 1\)\.contiguous\(\)", ".transpose(2, 0, 1)", 1),
        (r"\b(mask|box)\.cpu\(\)\.numpy\(\)", r"np.asarray(\1)", 3),
    ],
    "automatic_mask_generator_example": [
        (r"^import torch\n", "", 1),
        (r"^from segment_anything import ", "from sam_jax import ", 1),
    ],
}


def notebook_source(name: str, replacements: Replacements) -> str:
    """The notebook's cells with `replacements` applied, each matching as often as expected."""
    path = NOTEBOOKS / f"{name}.py"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the reference notebooks' code cells (or set SAM_JAX_REFERENCE_NOTEBOOKS)")
    source = path.read_text()
    for pattern, new, count in replacements:
        source, n = re.subn(pattern, new, source, flags=re.MULTILINE)
        assert n == count, f"{name}: {pattern!r} matched {n} times, not {count}: has the notebook changed?"
    return source


def cells(source: str) -> list[tuple[str, str]]:
    """(title, code) of each `# %% title` cell."""
    return [(m[1], m[2]) for m in re.finditer(r"^# %% ([^\n]*)\n(.*?)(?=^# %% |\Z)", source, re.MULTILINE | re.DOTALL)]


class NoPlot:
    """Any attribute, any call: nothing (a drawing library without a screen)."""

    def __getattr__(self, name: str) -> NoPlot:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> NoPlot:
        return self


class FakeAx(NoPlot):
    """An axes that keeps the last image shown on it (the cells print its shape)."""

    def imshow(self, image: Any, *args: Any, **kwargs: Any) -> None:
        self.last = image


def no_op(*args: Any, **kwargs: Any) -> None:
    return None


def comparable(value: Any) -> Any:
    """Arrays of any kind as numpy, containers recursively; None for what is not a result
    (modules, functions, models, predictors, axes; strings: the device and checkpoint lines)."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value)
    if isinstance(value, (bool, int, float, np.generic)):
        return value
    if isinstance(value, (list, tuple)):
        items = [comparable(v) for v in value]
        return None if any(i is None for i in items) else items
    if isinstance(value, dict):
        entries = {k: comparable(v) for k, v in value.items()}
        return None if any(v is None for v in entries.values()) else entries
    return None


def compare(ref: Any, ours: Any, where: str) -> int:
    """Asserts `ours` matches `ref` (shapes, dtypes, values within the project's tolerances).

    Returns:
        How many arrays and automatic-mask records were compared.
    """
    if isinstance(ref, np.ndarray):
        assert isinstance(ours, np.ndarray) and ours.shape == ref.shape, (where, np.shape(ours), ref.shape)
        assert ours.dtype == ref.dtype, (where, ours.dtype, ref.dtype)
        if ref.dtype == bool:
            agreement = float((ours == ref).mean()) if ref.size else 1.0
            assert agreement >= PARITY_LIMITS["mask_agreement"], (where, agreement)
        elif ref.dtype.kind == "f":
            # Logits within 1e-3 of their largest magnitude; scores (about 1 at most) within 1e-3.
            scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
            error = float(np.abs(ours - ref).max(initial=0.0))
            assert error <= PARITY_LIMITS["logit_rel_err"] * scale, (where, error, scale)
        else:
            assert np.array_equal(ours, ref), where
        return 1
    if isinstance(ref, list) and ref and all(isinstance(r, dict) and "segmentation" in r for r in ref):
        assert_same_records(ref, ours, "binary_mask")  # automatic masks, matched by prompt and overlap
        return len(ref)
    if isinstance(ref, list):
        assert isinstance(ours, list) and len(ours) == len(ref), (where, type(ours), len(ref))
        return sum(compare(r, o, f"{where}[{i}]") for i, (r, o) in enumerate(zip(ref, ours, strict=True)))
    if isinstance(ref, dict):
        assert isinstance(ours, dict) and list(ours) == list(ref), (where, list(ours), list(ref))
        return sum(compare(ref[k], ours[k], f"{where}[{k!r}]") for k in ref)
    if isinstance(ref, (float, np.floating)):
        assert abs(ours - ref) <= PARITY_LIMITS["score_abs_err"], (where, ours, ref)
        return 0
    assert ours == ref, (where, ours, ref)
    return 0


def run_side_by_side(name: str, checkpoint: Path) -> dict[str, int]:
    """Runs the reference's and the ported cells in turn; after each cell, compares every
    name the cell bound or rebound.

    Returns:
        Per name, how many arrays and records were compared over the whole notebook.
    """
    ref_cells = cells(notebook_source(name, BOTH[name] + REFERENCE))
    our_cells = cells(notebook_source(name, BOTH[name] + PORT[name]))
    assert len(ref_cells) == len(our_cells) >= 10
    spaces = [{"__name__": "__main__", "CHECKPOINT": str(checkpoint), "NoPlot": NoPlot, "FakeAx": FakeAx} for _ in "ab"]
    compared: dict[str, int] = {}
    for (title, ref_code), (_, our_code) in zip(ref_cells, our_cells, strict=True):
        before = dict(spaces[0])
        for space, code in zip(spaces, (ref_code, our_code), strict=True):
            np.random.seed(0)  # show_mask's random colours: the same on both sides
            exec(compile(code, f"<{name}: {title}>", "exec"), space)
            for helper in ("show_points", "show_box", "show_anns"):
                if helper in space:
                    space[helper] = no_op
        ref_space, our_space = spaces
        for key, value in ref_space.items():
            if key in before and before[key] is value:
                continue
            ref_value = comparable(value)
            if ref_value is None:
                continue
            assert key in our_space, f"{name}, {title}: the port did not bind {key}"
            count = compare(ref_value, comparable(our_space[key]), f"{name}, {title}: {key}")
            compared[key] = compared.get(key, 0) + count
    return compared


def register_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both registries gain "small": the reference's builds the reference classes and loads the
    checkpoint as its `build_sam` does. The cells run in the notebooks' folder (relative paths)."""
    import segment_anything

    if not NOTEBOOKS.is_dir():
        pytest.fail(f"{NOTEBOOKS} is missing: the reference notebooks' code cells (or set SAM_JAX_REFERENCE_NOTEBOOKS)")

    def reference_small(checkpoint: str | None = None) -> torch.nn.Module:
        model = build_reference(SMALL)
        if checkpoint is not None:
            with open(checkpoint, "rb") as f:
                model.load_state_dict(torch.load(f))
        return model

    monkeypatch.setitem(segment_anything.sam_model_registry, "small", reference_small)
    monkeypatch.setitem(sam_jax.sam_model_registry, "small", functools.partial(build_sam, SMALL))
    monkeypatch.chdir(NOTEBOOKS)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cells append ".."


def test_predictor_example(small, monkeypatch):
    register_small(monkeypatch)
    compared = run_side_by_side("predictor_example", small.checkpoint)
    # Arrays compared per name: the masks of the five predict calls and of predict_torch, the
    # first call's scores and logits, the later calls' logits (bound to `_`), the mask inputs,
    # the transformed boxes, the two records of the batched call (image and boxes each) and
    # its three outputs per image.
    expected = {"masks": 6, "scores": 1, "logits": 1, "_": 5, "mask_input": 2, "transformed_boxes": 1}
    expected |= {"batched_input": 4, "batched_output": 6}
    assert {k: compared.get(k) for k in expected} == expected, compared


@pytest.fixture(scope="module")
def sharp_small(small, tmp_path_factory):
    """The small model with masks that pass the notebook's ViT-H thresholds: its random mask
    logits stay within (-1, 1), so every stability score is about 0 (the default filter keeps
    nothing and the notebook's `masks[0]` fails on both sides). The hypernetworks' last layers
    scaled by 100 (logits x 100) and the IoU head's last bias raised by 0.3 leave about 10% of
    the candidates passing both filters (measured on dog.jpg, 32 x 32 points, with the reference)."""
    state_dict = {k: v.clone() for k, v in small.ref.state_dict().items()}
    for key in state_dict:
        if key.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in key:
            state_dict[key] *= 100.0
    state_dict["mask_decoder.iou_prediction_head.layers.2.bias"] += 0.3
    path = tmp_path_factory.mktemp("sharp") / "sharp_small.pth"
    torch.save(state_dict, path)
    return path


@pytest.mark.slow
def test_automatic_mask_generator_example(sharp_small, monkeypatch):
    """Nearly all of its time is the reference's: at 32 x 32 points it upsamples every
    candidate to the photo's size (here a quarter of the photo's side, 134 x 200)."""
    register_small(monkeypatch)
    compared = run_side_by_side("automatic_mask_generator_example", sharp_small)
    # The records of both generators, each matched to a reference record (mask IoU >= 0.95,
    # scores within 1e-3); random masks cover most of the image, so box NMS leaves few.
    assert compared.get("masks", 0) >= 1 and compared.get("masks2", 0) >= 1, compared
