"""Interactive decoding on static prompt layouts: parity with the unpadded reference at every
layout boundary, box corners as labelled points, and one compiled decoder per session."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from conftest import assert_parity
from segment_anything import SamPredictor

import sam_jax
from sam_jax import predictor, prompt_layout, transforms
from sam_jax.modeling.sam import predict_low_res_slots
from sam_jax.testing import make_image

SIZE = (300, 410)
OUTPUT_TOKENS = 5


@pytest.fixture(scope="module")
def session(small):
    """(reference predictor, our embedding, image) for one image, encoded once."""
    image = make_image(*SIZE, seed=5)
    ref = SamPredictor(small.ref)
    ref.set_image(image)
    return ref, sam_jax.encode(small.params, image)


def prompt(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = SIZE
    return rng.uniform(0, (w, h), (n, 2)), rng.integers(0, 2, n)


BOX = np.array([40.0, 30.0, 350.0, 260.0])


def test_layout_buckets_and_order():
    # Prompt and output tokens fill 16, 32, 64 ... tokens; 8 clicks and a box fit the first.
    assert [prompt_layout.slot_bucket(n, OUTPUT_TOKENS) for n in (0, 1, 10, 11, 12, 27, 28)] == [
        11,
        11,
        11,
        11,
        27,
        27,
        59,
    ]
    assert prompt_layout.fast_slots(OUTPUT_TOKENS) == (3,)
    pts, lab = np.arange(6.0).reshape(1, 3, 2), np.array([[1, 0, 1]])
    coords, slots = prompt_layout.layout_prompts(pts, lab, None, 1, OUTPUT_TOKENS)
    assert slots.tolist() == [[1, 0, 1, -1] + [-2] * 7]  # the padding point after the points
    coords, slots = prompt_layout.layout_prompts(pts, lab, np.array([[1.0, 2, 3, 4]]), 1, OUTPUT_TOKENS)
    assert slots.tolist() == [[1, 0, 1, 2, 3] + [-2] * 6]
    assert coords[0, 3:5].tolist() == [[1, 2], [3, 4]]
    _, slots = prompt_layout.layout_prompts(None, None, None, 1, OUTPUT_TOKENS)  # mask only: no token
    assert slots.tolist() == [[-2] * 11]


# Points at the layout's boundaries: used slots 2..11 cover the fast branch's (3 slots) and
# the smallest layout's (11 slots) edges with and without a box.
POINT_COUNTS = [1, 2, 3, 4, 5, 8, 9]


@pytest.mark.parametrize("with_box", [False, True], ids=["points", "points+box"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["no-mask", "mask"])
def test_bucket_boundaries_match_reference(small, session, with_box, with_mask):
    ref, emb = session
    mask = np.random.default_rng(1).normal(0, 4, (1, 64, 64)).astype(np.float32) if with_mask else None
    box = BOX if with_box else None
    counts = [*POINT_COUNTS, 10] if not with_box else POINT_COUNTS  # 10 points + padding: 11 slots
    for n in counts:
        pts, lab = prompt(n, seed=n)
        for multimask in (True, False):
            expected = ref.predict(pts, lab, box, mask, multimask_output=multimask)
            got = sam_jax.decode(small.params, emb, pts, lab, box=box, mask_input=mask, multimask_output=multimask)
            assert_parity(expected, got, f"{n} points box={with_box} mask={with_mask} multimask={multimask}")


@pytest.mark.parametrize("n,with_box,with_mask", [(10, True, False), (11, False, True)])
def test_larger_layouts_batched_match_predict_torch(small, session, n, with_box, with_mask):
    """Past the smallest layout (12 slots and more: 32 tokens), in a batch of prompts."""
    ref, emb = session
    rng = np.random.default_rng(n)
    b = 2
    pts = rng.uniform(0, 300, (b, n, 2))
    lab = rng.integers(0, 2, (b, n))
    boxes = np.stack([BOX, BOX + 10]) if with_box else None
    mask_input = rng.normal(0, 4, (b, 1, 64, 64)).astype(np.float32) if with_mask else None
    size, long_side = ref.original_size, small.params.config.image_size
    expected = ref.predict_torch(
        torch.as_tensor(transforms.apply_coords(pts, size, long_side), dtype=torch.float),
        torch.as_tensor(lab, dtype=torch.int),
        None if boxes is None else torch.as_tensor(transforms.apply_boxes(boxes, size, long_side), dtype=torch.float),
        None if mask_input is None else torch.as_tensor(mask_input),
    )
    got = sam_jax.decode(small.params, emb, pts, lab, box=boxes, mask_input=mask_input)
    assert_parity([t.numpy() for t in expected], got, f"batched n={n} box={with_box} mask={with_mask}")


def test_first_layer_with_masks(small, session):
    """Given the image's first layer, one prompt with a mask reads it moved by the mask (its
    flag applied: 0 is no mask), a batch of prompts with masks projects its own: the logits
    and scores are those of the decoder without it."""
    _, emb = session
    params, rng = small.params, np.random.default_rng(7)
    first = predictor.first_layer(params, emb)
    decode = jax.jit(predict_low_res_slots)
    for flags in ([1.0], [0.0], [1.0, 1.0]):
        b, low = len(flags), params.config.low_res_mask_size
        points = rng.uniform(0, 256, (b, 3, 2))
        coords, slots = prompt_layout.layout_prompts(points, np.ones((b, 3), np.int64), None, b, OUTPUT_TOKENS)
        masks, has_mask = rng.normal(0, 4, (b, low, low, 1)).astype(np.float32), np.asarray(flags, np.float32)
        plain = decode(params, emb.image_embedding, coords, slots, masks, has_mask)
        moved = decode(params, emb.image_embedding, coords, slots, masks, has_mask, first_layer=first)
        for ours, expected in zip(moved, plain, strict=True):
            np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-5, atol=1e-5, err_msg=f"{flags}")


def test_box_as_corner_labels(small, session):
    """Labels 2 and 3 are a box's corners (the reference ONNX model's convention): the same
    prompt as `box=`, unbatched and batched."""
    ref, emb = session
    pts, lab = prompt(2, seed=3)
    corners = BOX.reshape(2, 2)
    expected = ref.predict(pts, lab, BOX, multimask_output=False)
    got = sam_jax.decode(
        small.params, emb, np.concatenate([pts, corners]), np.concatenate([lab, [2, 3]]), multimask_output=False
    )
    assert_parity(expected, got, "points + corner labels")
    box_only = sam_jax.decode(small.params, emb, corners[None], np.array([[2, 3]]))
    assert_parity([x[None] for x in ref.predict(box=BOX)], box_only, "batched corners alone")


COMPILED = "/jax/core/compile/backend_compile_duration"
# Every program lowered: compiled, or loaded from the persistent compilation cache (which
# the suite keeps on, so a program another test compiled is loaded, not compiled).
LOWERED = "/jax/core/compile/jaxpr_to_mlir_module_duration"


@contextlib.contextmanager
def count_compiles(which: str = COMPILED):
    """Counts XLA compilations (or lowerings) by function name while the block runs."""
    counts: collections.Counter[str] = collections.Counter()

    def listener(event: str, duration: float, **kwargs: object) -> None:
        if event == which:
            counts[str(kwargs.get("fun_name", "?"))] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_two_decode_programs_per_session(small, session):
    """A cold decoder serves a whole session with two compiled programs, one for prompts
    without a mask and one with: 1 to 8 clicks, a box alone, box and clicks, fed-back
    logits, multimask on and off. Post-processing compiles once per image size and output
    option (here 2: multimask on and off)."""
    _, emb = session
    predictor.wait_for_preparations()  # encode's, which compiles what this test counts
    clicks, labels = prompt(8, seed=11)
    # The embedding's one-time finiteness check, done here as an earlier test would have
    # done it: counted below, it would make the count depend on the tests run before.
    sam_jax.decode(small.params, emb, clicks[:1], labels[:1])
    jax.clear_caches()
    with count_compiles() as counts:
        low = None
        for k in range(1, 9):
            masks, scores, low_res = sam_jax.decode(small.params, emb, clicks[:k], labels[:k], mask_input=low)
            low = np.asarray(low_res)[int(np.argmax(np.asarray(scores)))][None] if k % 2 == 0 else None
        sam_jax.decode(small.params, emb, box=BOX)
        sam_jax.decode(small.params, emb, clicks[:2], labels[:2], box=BOX)
        sam_jax.decode(small.params, emb, clicks[:3], labels[:3], box=BOX, mask_input=low)
        sam_jax.decode(small.params, emb, clicks[:1], labels[:1], multimask_output=False)
        sam_jax.decode(small.params, emb, clicks, labels, box=BOX, multimask_output=False)
        jax.block_until_ready(masks)
    decoders = {k: v for k, v in counts.items() if "_decode_low_res" in k}
    assert sum(decoders.values()) == 2, dict(counts)
    assert predictor.decode_cache_size() == 2
    others = {k: v for k, v in counts.items() if "_decode_low_res" not in k}
    assert others and all("_postprocess" in k for k in others) and sum(others.values()) == 2, dict(counts)


def test_a_prepared_session_compiles_nothing(small):
    """`encode` prepares the session's programs; afterwards 1 to 8 clicks, a box, box and
    clicks, fed-back logits and multimask on and off neither compile nor load a program,
    through `sam_jax.decode` and through `SamPredictor`."""
    image = make_image(77, 101, seed=9)  # a size of its own: its post-processing is new here
    predictor.wait_for_preparations()  # earlier tests' (their compilations would be counted)
    with count_compiles(LOWERED) as prepared:
        emb = sam_jax.encode(small.params, image)
        preparing = predictor.preparation(emb)
        assert preparing is not None
        preparing.result()  # the programs of prompts without a mask, and this image's first_layer
        predictor.prepare_session(small.params, emb).result()  # and the decoder of prompts with one
    assert sum(v for k, v in prepared.items() if "_postprocess" in k) == 2, dict(prepared)
    ported = sam_jax.SamPredictor(sam_jax.compat.Sam(small.params))
    ported.set_image(image)
    clicks, labels = prompt(8, seed=12)
    clicks = clicks * (101 / SIZE[1], 77 / SIZE[0])
    box = np.array([10.0, 5.0, 90.0, 70.0])
    with count_compiles(LOWERED) as counts:
        low = None
        for k in range(1, 9):
            masks, scores, low_res = sam_jax.decode(small.params, emb, clicks[:k], labels[:k], mask_input=low)
            low = np.asarray(low_res)[int(np.argmax(np.asarray(scores)))][None]
        sam_jax.decode(small.params, emb, box=box)
        sam_jax.decode(small.params, emb, clicks[:2], labels[:2], box=box, mask_input=low)
        sam_jax.decode(small.params, emb, clicks, labels, multimask_output=False)
        for k in (1, 5):
            ported.predict(clicks[:k], labels[:k], multimask_output=k == 1)
        masks, _, _ = ported.predict(clicks[:2], labels[:2], box=box, mask_input=low)
        np.asarray(masks)
    assert not counts, dict(counts)


def test_labels_are_checked(small, session):
    _, emb = session
    with pytest.raises(ValueError, match="labels must be 1"):
        sam_jax.decode(small.params, emb, [[1, 2]], [4])
    with pytest.raises(ValueError, match="labels must be 1"):
        sam_jax.decode(small.params, emb, [[1, 2]], [-2])  # the internal empty-slot label


def test_compilation_cache(tmp_path):
    """`enable_compilation_cache` makes a process store its programs (JAX decides once per
    process, so in a fresh one); a path that is a file is refused before JAX is touched."""
    cache = tmp_path / "cache"
    code = (
        "import sys, jax, sam_jax; sam_jax.enable_compilation_cache(sys.argv[1]); "
        "jax.jit(lambda x: x * 2 + 1)(1.0).block_until_ready()"
    )
    subprocess.run([sys.executable, "-c", code, str(cache)], check=True, timeout=300)
    assert any(cache.iterdir())
    # On by default, in the user's cache folder; one switch turns it off.
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if "CACHE" not in k}  # the suite's own folders
    code = "import jax, sam_jax; jax.jit(lambda x: x * 3 + 1)(1.0).block_until_ready()"
    for switch in ({}, {"SAM_JAX_COMPILATION_CACHE": "off"}):
        subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env={**env, "HOME": str(home), **switch})
        assert (home / ".cache" / "sam-jax" / "compilation").is_dir() != bool(switch)
        shutil.rmtree(home, ignore_errors=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        sam_jax.enable_compilation_cache(tmp_path / "file")
    with pytest.raises(TypeError, match="directory path"):
        sam_jax.enable_compilation_cache(3)
