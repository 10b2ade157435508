"""Training: losses, learning, freezing, exact resume after a kill, checkpoints, the CLI."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from conftest import subprocess_env

import sam_jax
from sam_jax import cli, conversion, formats, train, transforms
from sam_jax.config import with_fields
from sam_jax.data import SyntheticShapes
from sam_jax.testing import TINY, build_reference
from sam_jax.train import TrainConfig

# Small enough that a step takes milliseconds: 64x64 images, a 4x4 token grid; no correction
# round (each round adds a decoder pass to trace and compile: the rounds are exercised once,
# by test_upsampled_loss_matches_the_predictor_and_trains).
DATA = SyntheticShapes(size=64, length=400, seed=0, max_objects=3)
CFG = TrainConfig(
    steps=8, batch_size=4, prompts_per_image=2, learning_rate=2e-3, warmup_steps=2, correction_rounds=0, seed=1
)


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_focal_and_dice_match_their_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 5)).astype(np.float32)
    target = rng.random((2, 5, 5)) > 0.5
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    ce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    p_t = np.where(target, p, 1 - p)
    focal = np.mean(np.where(target, 0.25, 0.75) * ce * (1 - p_t) ** 2, axis=(1, 2))
    dice = 1 - (2 * (p * target).sum(axis=(1, 2)) + 1) / (p.sum(axis=(1, 2)) + target.sum(axis=(1, 2)) + 1)
    np.testing.assert_allclose(train.sigmoid_focal_loss(logits, target), focal, rtol=1e-5)
    np.testing.assert_allclose(train.dice_loss(logits, target), dice, rtol=1e-5)


def test_sam_loss_trains_only_the_best_candidate():
    target = np.zeros((1, 8, 8), bool)
    target[0, 2:6, 2:6] = True
    good = np.where(target, 10.0, -10.0)[:, None]
    bad = -good
    logits = np.concatenate([bad, good, bad], axis=1).astype(np.float32)
    iou_pred = np.array([[0.0, 1.0, 0.0]], np.float32)
    loss, m = train.sam_loss(logits, iou_pred, target, CFG)
    assert float(m["iou"]) == 1.0 and float(m["iou_loss"]) == 0.0
    assert float(loss) < 1e-3  # the bad candidates cost nothing
    # With all_candidates_weight the mean over candidates is added: the bad ones now cost.
    w = dataclasses.replace(CFG, all_candidates_weight=0.5)
    loss_w, _ = train.sam_loss(logits, iou_pred, target, w)
    per = np.asarray(CFG.focal_weight * train.sigmoid_focal_loss(logits, target[:, None]))
    per = per + np.asarray(CFG.dice_weight * train.dice_loss(logits, target[:, None]))
    np.testing.assert_allclose(float(loss_w), float(loss) + 0.5 * per.mean(), rtol=1e-5)
    assert float(loss_w) > 0.1


def test_prompt_simulation():
    key = jax.random.key(0)
    target = np.zeros((3, 16, 16), bool)
    target[0, 4:8, 4:8] = True
    target[1, 0:3, 10:16] = True
    pts, found = train.sample_points_from(key, target, 64)
    assert found[:2].all() and not found[2]
    cells = (np.asarray(pts[:2])[:, ::-1] / 4).astype(int)
    assert target[0][tuple(cells[0])] and target[1][tuple(cells[1])]
    boxes = np.asarray(train.noisy_boxes(key, target[:2], 64))
    np.testing.assert_allclose(boxes, [[16, 16, 32, 32], [40, 0, 64, 12]], atol=8)
    pred = np.zeros_like(target)
    pred[0, 4:8, 4:12] = True  # spills right: the click must be background, on the spill
    click, labels = train.correction_click(key, pred, target, 64)
    assert int(labels[0, 0]) == 0 and np.asarray(click)[0, 0, 0] >= 32
    assert int(labels[1, 0]) == 1  # all missed: foreground click
    assert int(labels[2, 0]) == -1  # nothing to correct: a padding point


def test_upsampled_loss_matches_the_predictor_and_trains():
    """`loss_upsample` trains on the logits the predictor would show: the same bilinear
    upsampling, against ground truth at that resolution."""
    rng = np.random.default_rng(0)
    low = rng.normal(0, 2, (2, 3, 16, 16)).astype(np.float32)
    up = np.asarray(train.upsample_logits(low, 4))
    np.testing.assert_allclose(up, np.asarray(transforms.postprocess_masks(low, (64, 64), (64, 64), 64)), atol=1e-5)
    cfg = dataclasses.replace(CFG, loss_upsample=TINY.image_size // TINY.low_res_mask_size, correction_rounds=1)
    batch, _ = train.BatchStream([DATA], TINY, cfg).next_batch()
    assert batch.targets.shape[-2:] == (TINY.image_size, TINY.image_size)
    trainable, frozen = train.partition(sam_jax.init(TINY, 0).weights, cfg.freeze)
    state = train.make_optimizer(cfg).init(trainable)
    # One point, then a correction click sampled from the upsampled prediction's errors.
    _, _, m = train.train_step(trainable, frozen, state, batch, np.int32(3), TINY, cfg, False)
    assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0 and 0 <= float(m["last_iou"]) <= 1
    with pytest.raises(ValueError, match="loss_upsample"):
        TrainConfig(loss_upsample=0)
    with pytest.raises(ValueError, match="loss_upsample"):
        train.train(sam_jax.init(TINY, 0), [DATA], dataclasses.replace(CFG, loss_upsample=3), progress=False)


def test_training_fits_a_batch():
    """Gradients, prompt simulation and loss work together: one fixed batch is learnt.

    (Generalising from scratch is slower: with the paper's 20:1 focal weight every logit
    goes negative within a few dozen steps and dice then has no gradient, so this uses a
    balanced loss. The held-out quality of a trained model is checked on tiny-shapes.)
    """
    cfg = dataclasses.replace(CFG, steps=200, batch_size=8, focal_weight=1.0, learning_rate=1e-3, warmup_steps=10)
    batch, _ = train.BatchStream([DATA], TINY, cfg).next_batch()
    trainable, frozen = train.partition(sam_jax.init(TINY, 0).weights, cfg.freeze)
    opt_state = train.make_optimizer(cfg).init(trainable)
    history = []
    for step in range(cfg.steps):
        trainable, opt_state, m = train.train_step(trainable, frozen, opt_state, batch, np.int32(step), TINY, cfg, True)
        history.append((float(m["loss"]), float(m["iou"])))
    first, last = np.mean(history[:10], axis=0), np.mean(history[-10:], axis=0)
    assert first[1] < 0.1 and last[1] > 0.5, (first, last)
    assert last[0] < 0.5 * first[0], (first, last)


def test_frozen_parameters_stay_bit_identical():
    """On a SAM-HQ model (its decoder also reads the encoder's early features, which the
    frozen encoder's cache keeps too); SAM's own decoder trains in every other test here."""
    tiny_hq = dataclasses.replace(TINY, mask_decoder="hq")
    params = sam_jax.init(tiny_hq, 0)
    # Point prompts only: one step program (what is frozen does not depend on the prompt kind).
    cfg = dataclasses.replace(
        CFG, steps=3, freeze=("image_encoder", "mask_decoder/iou_prediction_head"), box_probability=0.0
    )
    trainable, _ = train.partition(params.weights, cfg.freeze)
    assert "image_encoder" not in trainable and "iou_prediction_head" not in trainable["mask_decoder"]
    state = train.make_optimizer(cfg).init(trainable)
    assert all("image_encoder" not in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state))
    few = SyntheticShapes(size=64, length=5, seed=0, max_objects=3)  # 3 steps of 4 images: over 2 epochs
    lines: list[str] = []
    trained = train.train(params, [few], cfg, progress=False, log=lines.append)
    # The frozen encoder ran once per image, not once per step ...
    counts = [re.fullmatch(r"frozen image encoder: (\d+) embeddings computed, (\d+) kept .*", line) for line in lines]
    computed, kept = next(map(int, m.groups()) for m in counts if m)
    assert 4 <= computed == kept <= 5, lines
    # ... and what it kept is what the step would compute (the step reads them in its place).
    encoder = sam_jax.SamParams(tiny_hq, {"image_encoder": params.weights["image_encoder"]})
    batch, _ = train.BatchStream([few], tiny_hq, cfg, embeddings=train.EmbeddingCache(encoder, 2**20)).next_batch()
    in_step = jax.jit(train.encode_images)(params, batch.images, batch.input_hw)
    for kept, computed in zip((batch.embeddings, batch.early_features), in_step, strict=True):
        np.testing.assert_allclose(kept, computed, rtol=1e-5, atol=1e-5 * float(np.abs(computed).max()))
    assert leaves_equal(trained.weights["image_encoder"], params.weights["image_encoder"])
    assert leaves_equal(
        trained.weights["mask_decoder"]["iou_prediction_head"], params.weights["mask_decoder"]["iou_prediction_head"]
    )
    pe = "positional_encoding_gaussian_matrix"
    assert np.array_equal(
        trained.weights["prompt_encoder"]["pe_layer"][pe], params.weights["prompt_encoder"]["pe_layer"][pe]
    )
    for trains in ("transformer", "hf_mlp", "embedding_maskfeature_0"):  # SAM's part and HQ's
        assert not leaves_equal(trained.weights["mask_decoder"][trains], params.weights["mask_decoder"][trains])


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    params = sam_jax.init(TINY, 0)
    quiet = dict(progress=False, log=lambda s: None)
    straight = train.train(params, [DATA], CFG, str(tmp_path / "a"), save_every=3, **quiet)
    # Killed before step 7 (after the checkpoint at step 6, with step 6 lost)... then resumed.
    train.train(params, [DATA], CFG, str(tmp_path / "b"), save_every=3, stop_after=5, **quiet)
    assert train.CheckpointStore(str(tmp_path / "b"), 3).latest_step() == 3
    resumed = train.train(params, [DATA], CFG, str(tmp_path / "b"), save_every=3, **quiet)
    assert leaves_equal(resumed.weights, straight.weights)
    # The run directory and each step load as checkpoints.
    assert leaves_equal(sam_jax.load(tmp_path / "b").weights, straight.weights)
    assert sam_jax.load(tmp_path / "b" / "3").config == TINY


def test_run_checkpoint_exports_to_the_reference(tmp_path):
    params = sam_jax.init(TINY, 0)
    train.train(params, [DATA], CFG, str(tmp_path / "run"), progress=False, log=lambda s: None)  # the shared step
    sd = conversion.export_torch(tmp_path / "run", tmp_path / "m.pth")
    cfg = formats.infer_config(sd)
    assert cfg == TINY
    build_reference(cfg).load_state_dict(torch.load(tmp_path / "m.pth", weights_only=True), strict=True)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam_jax.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_refuses_bad_data_in_one_line(tmp_path):
    result = run_cli("finetune", "--config", "tiny-shapes", "--data", str(tmp_path / "nowhere"), "--steps", "1")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "nowhere" in result.stderr, result.stderr


def test_cli_finetune_runs_and_resumes(tmp_path, capsys):
    sam_jax.save(tmp_path / "init", sam_jax.init(TINY, 0))
    args = [
        "finetune",
        "--init",
        str(tmp_path / "init"),
        "--data",
        "synthetic:size=64,length=50,max_objects=3",
        "--val-data",
        "synthetic:size=64,length=5,seed=7",
        # CFG's options, so that the command's training step is the one the tests above
        # compiled (the session's compilation cache hands it over).
        *("--steps", "8", "--batch-size", "4", "--prompts-per-image", "2", "--lr", "2e-3", "--warmup", "2"),
        *("--correction-rounds", "0", "--seed", "1"),
        "--checkpoint-dir",
        str(tmp_path / "run"),
        "--save-every",
        "2",
        "--eval-every",
        "4",
        # One image each: every image brings its own prompt count, so its own programs.
        "--eval-images",
        "1",
        "--final-eval-images",
        "1",
        "--export",
        str(tmp_path / "final"),
        "--no-progress",
    ]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "final:" in result.stdout and "point_miou" in result.stdout
    assert result.stdout.index("step 0: point_miou") < result.stdout.index("step 4: point_miou"), result.stdout
    assert sam_jax.load(tmp_path / "final").config == TINY
    # Again, in this process (the entry point is the one above; a new Python only adds seconds).
    capsys.readouterr()
    assert cli.main(args) == 1  # the export is there: replaced only when asked
    assert "already holds a sam_jax checkpoint" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite"]) == 0  # nothing left to do: resumes at step 8 and stops
    out, err = capsys.readouterr()
    assert "resumed from step 8" in out, out + err


def test_remat_and_bf16_steps():
    """Gradient checkpointing changes memory, not values; bf16 compute stays near fp32.
    (No correction rounds: what remat and bf16 touch is the encoder, run once per step.)"""
    batch, _ = train.BatchStream([DATA], TINY, CFG).next_batch()
    weights = sam_jax.init(TINY, 0).weights

    def one_step(**options):
        cfg = dataclasses.replace(CFG, **options)
        trainable, frozen = train.partition(jax.tree.map(np.array, weights), cfg.freeze)
        opt_state = train.make_optimizer(cfg).init(trainable)
        return train.train_step(trainable, frozen, opt_state, batch, np.int32(3), TINY, cfg, False)

    plain, _, m_plain = one_step()
    remat, _, m_remat = one_step(remat=True)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    _, _, m_bf16 = one_step(compute_dtype="bfloat16")
    assert abs(float(m_bf16["loss"]) - float(m_plain["loss"])) < 0.05 * float(m_plain["loss"])
    assert abs(float(m_remat["loss"]) - float(m_plain["loss"])) < 1e-5


# Point prompts only: one step program (what is sharded does not depend on the prompt kind).
POINTS_ONLY = dataclasses.replace(CFG, box_probability=0.0)


def one_step_and_run(batch: train.Batch) -> list[np.ndarray]:
    """The loss and gradients of one step on `batch`, then the weights after an 8-step run."""
    weights = sam_jax.init(TINY, 0).weights
    loss_fn = lambda w: train.forward_rounds(w, TINY, batch, jax.random.key(5), POINTS_ONLY, False)[0]  # noqa: E731
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(weights)
    out = train.train(sam_jax.init(TINY, 0), [DATA], POINTS_ONLY, progress=False, log=lambda s: None)
    return (
        [np.asarray(loss)]
        + [np.asarray(x) for x in jax.tree.leaves(out.weights)]
        + [np.asarray(g) for g in jax.tree.leaves(grads)]
    )


FOUR_DEVICES = """
import sys, jax, numpy as np
sys.path.insert(0, {tests!r})
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from sam_jax import train
from test_train import TINY, DATA, CFG, one_step_and_run
assert len(jax.devices()) == 4, jax.devices()
batch, _ = train.BatchStream([DATA], TINY, CFG).next_batch()
batch = jax.device_put(batch, NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data")))
np.savez({out!r}, *one_step_and_run(batch))
"""


def test_data_parallel_over_devices_matches_one_device(tmp_path):
    """The batch axis is sharded over every local device; the result equals one device's
    (this process's, which has one)."""
    assert len(jax.devices()) == 1
    one_device = one_step_and_run(jax.device_put(train.BatchStream([DATA], TINY, CFG).next_batch()[0]))
    env = subprocess_env(4)
    code = FOUR_DEVICES.format(tests=str(Path(__file__).parent), out=str(tmp_path / "w4.npz"))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600)
    one, four = dict(enumerate(one_device)), np.load(tmp_path / "w4.npz")
    init = [np.asarray(x) for x in jax.tree.leaves(sam_jax.init(TINY, 0).weights)]
    n = len(init)
    assert len(one) == len(four.files) == 1 + 2 * n
    # One step's loss and gradients: sharding changes only the order of the batch reductions.
    np.testing.assert_allclose(four["arr_0"], one[0], rtol=1e-5)
    grads = [(one[1 + n + i], four[f"arr_{1 + n + i}"]) for i in range(n)]
    scale = max(float(np.abs(g).max()) for g, _ in grads)
    assert scale > 0
    for g1, g4 in grads:
        np.testing.assert_allclose(g4, g1, rtol=1e-3, atol=1e-5 * scale)
    # The whole 8-step loop on 4 devices. Adam turns reduction-order noise in near-zero
    # gradients into steps of up to the learning rate, so the runs drift apart elementwise
    # (measured: 0.16 of the distance trained, in L2); they must still train alike.
    trained = [one[1 + i] - w for i, w in enumerate(init)]
    apart = [four[f"arr_{1 + i}"] - one[1 + i] for i in range(n)]
    norm = lambda xs: float(np.sqrt(sum(float((x**2).sum()) for x in xs)))  # noqa: E731
    assert norm(trained) > 0.5 and all(np.isfinite(four[f"arr_{1 + i}"]).all() for i in range(n))
    assert norm(apart) < 0.4 * norm(trained)


def test_resize_patches_recuts_the_grid_and_sees_a_k_times_larger_image():
    params = sam_jax.init(TINY, 3)  # 64 px, patch 8: an 8x8 grid; block 0 windowed (4), block 1 global
    finer = train.resize_patches(params, 4)
    enc, new = params.weights["image_encoder"], finer.weights["image_encoder"]
    assert finer.config == with_fields(TINY, patch_size=4) and finer.config.embedding_size == 16
    # A 4-pixel patch of x embeds as the old 8-pixel kernel did the patch of x enlarged twice.
    x = np.random.default_rng(0).random((4, 4, 3))
    old_view = np.einsum(
        "abc,abcd->d", np.repeat(np.repeat(x, 2, 0), 2, 1), np.asarray(enc["patch_embed"]["proj"]["kernel"])
    )
    new_view = np.einsum("abc,abcd->d", x, np.asarray(new["patch_embed"]["proj"]["kernel"]))
    np.testing.assert_allclose(new_view, old_view, rtol=1e-5)
    # Tables interpolated to the new grid with their ends in place; the window's tables kept.
    assert new["pos_embed"].shape == (1, 16, 16, 32)
    np.testing.assert_allclose(
        new["pos_embed"][0, [0, -1]][:, [0, -1]], np.asarray(enc["pos_embed"])[0, [0, -1]][:, [0, -1]]
    )
    assert new["blocks_1"]["attn"]["rel_pos_h"].shape == (31, 16)
    np.testing.assert_allclose(
        new["blocks_1"]["attn"]["rel_pos_w"][[0, -1]], np.asarray(enc["blocks_1"]["attn"]["rel_pos_w"])[[0, -1]]
    )
    assert leaves_equal(new["blocks_0"], enc["blocks_0"]) and leaves_equal(
        finer.weights["mask_decoder"], params.weights["mask_decoder"]
    )
    masks, _, low = sam_jax.predict(finer, np.zeros((48, 64, 3), np.uint8), [[10, 10]])
    assert masks.shape == (3, 48, 64) and low.shape == (3, 64, 64)  # 4x the 16x16 grid
    with pytest.raises(ValueError, match="image_size 64 is not a multiple of patch_size 3"):
        train.resize_patches(params, 3)


def test_cli_patch_size_needs_init():
    result = run_cli("finetune", "--config", "tiny-shapes", "--patch-size", "8", "--data", "synthetic", "--steps", "1")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--patch-size re-cuts an --init model" in result.stderr
