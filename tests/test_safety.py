"""Nothing of the user's is lost, valid images are read as the reference reads them,
resources are bounded, and bad input gets one line: each case of the hostile-user review,
asserting that the user's files survive byte for byte, the refusal line, and that nothing
is left half-written."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
import torch
from conftest import subprocess_env
from PIL import Image
from test_train import CFG, DATA

import sam_jax
from sam_jax import checkpoint, cli, conversion, formats, io, jobs, train
from sam_jax.testing import TINY

QUIET = dict(progress=False, log=lambda s: None)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones too) with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def user_folder(root: Path) -> dict[str, bytes]:
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text("my notes\n")
    (root / "src" / "main.py").write_text("print('mine')\n")
    return snapshot(root)


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def run(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = subprocess_env(devices)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env)


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> subprocess.CompletedProcess:
    """`sam-jax ARGV` in this process, as `run` would give it: what such a test checks is the
    parser and the checks behind it, and starting Python, JAX and torch again only adds
    seconds (each test keeps one run through the real entry point)."""
    try:
        status = cli.main(list(argv))
    except SystemExit as e:  # argparse's refusals
        status = int(e.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), status, out, err)


def one_line(result: subprocess.CompletedProcess, needle: str, prefix: str = "sam-jax: error:") -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout
    assert len(lines) == 1 and lines[0].startswith(prefix) and needle in lines[0], result.stderr


# ----------------------------------------------------------------------------- data loss


def test_writing_a_model_never_replaces_a_users_folder(small, tmp_path):
    work = tmp_path / "work"
    before = user_folder(work)
    ckpt = work / "tiny.pth"
    ckpt.write_bytes(small.checkpoint.read_bytes())
    before = snapshot(work)
    # The converter into the folder holding its own input; the library save; --overwrite too.
    for args in ((str(ckpt), str(work)), (str(ckpt), str(work), "--overwrite")):
        one_line(run("-m", "convert", *args), "is a folder holding other files", prefix="convert: error:")
    with pytest.raises(FileExistsError, match="holding other files"):
        sam_jax.save(work, small.params, overwrite=True)
    assert snapshot(work) == before and no_leftovers(tmp_path)


def test_overwrite_replaces_only_a_checkpoint(small, tmp_path, capsys):
    out = tmp_path / "ck"
    assert in_process(capsys, "convert", str(small.checkpoint), str(out)).returncode == 0
    first = snapshot(out)
    one_line(run("-m", "convert", str(small.checkpoint), str(out)), "--overwrite", prefix="convert: error:")
    assert snapshot(out) == first
    other = sam_jax.init(small.params.config, seed=9)
    sam_jax.save(out, other, overwrite=True)
    assert checkpoint.weights_digest(sam_jax.load(out).weights) == checkpoint.weights_digest(other.weights)
    # --to-torch: an existing file is replaced only with --overwrite.
    target = tmp_path / "sam_vit_b_01ec64.pth"
    target.write_bytes(b"the official download")
    refused = in_process(capsys, "convert", "--to-torch", str(out), str(target))
    one_line(refused, "--overwrite", prefix="convert: error:")
    assert target.read_bytes() == b"the official download"
    assert in_process(capsys, "convert", "--to-torch", str(out), str(target), "--overwrite").returncode == 0
    assert torch.load(target, weights_only=True).keys() == small.ref.state_dict().keys()
    assert no_leftovers(tmp_path)


def test_an_output_written_meanwhile_by_another_process_is_kept(tmp_path):
    """Two commands writing one output at once (two jobs converting `lite-medsam` into the
    cache): the second finds the first's folder, says so, and leaves it and nothing else."""
    target = tmp_path / "model"
    with pytest.raises(io.OutputExistsError, match="written by another process meanwhile"):
        with io.write_directory(target, owns=checkpoint.is_checkpoint_dir, overwrite=False, what="a checkpoint") as tmp:
            (tmp / "mine").write_text("second")
            target.mkdir()
            (target / "theirs").write_text("first")
    assert snapshot(target) == {"theirs": b"first"} and no_leftovers(tmp_path)


def test_finetune_export_and_keep_are_refused_before_training(tmp_path, capsys):
    work = tmp_path / "work"
    before = user_folder(work)
    common = ("finetune", "--config", "tiny-shapes", "--data", "synthetic:size=64,length=4")
    started = time.perf_counter()
    result = run("-m", "sam_jax.cli", *common, "--export", str(work), "--checkpoint-dir", str(tmp_path / "run"))
    one_line(result, "is a folder holding other files")
    for flag, needle in (
        ("--keep=0", "--keep: must be an integer >= 1, got 0"),
        ("--save-every=0", "--save-every: must be an integer >= 1"),
        ("--lr=nan", "--lr: must be a finite number > 0"),
        ("--lr=-1", "--lr: must be a finite number > 0"),
        ("--box-probability=2", "--box-probability: must be a finite number >= 0 and <= 1"),
    ):
        one_line(in_process(capsys, *common, flag, "--checkpoint-dir", str(tmp_path / "run")), needle)
    assert time.perf_counter() - started < 120  # refused up front, not after training
    assert snapshot(work) == before and not (tmp_path / "run").exists()


def test_a_run_directory_must_hold_only_a_run(tmp_path, tiny_params):
    work = tmp_path / "work"
    before = user_folder(work)
    (work / "100").mkdir()  # a numbered folder of the user's looks like a step to the manager
    before = snapshot(work)
    with pytest.raises(ValueError, match="which is not a step of a sam_jax training run"):
        train.train(tiny_params, [DATA], CFG, str(work), **QUIET)
    assert snapshot(work) == before


def test_freeze_pattern_that_matches_nothing(tiny_params):
    with pytest.raises(ValueError, match="freeze pattern 'image_encodr' matches no parameter"):
        train.partition(tiny_params.weights, ("image_encodr",))


def _png(path: Path, size: tuple[int, int] = (40, 56), value: int = 90) -> None:
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def test_amg_output_never_replaces_a_users_folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _png(photos / "holiday.png")
    _png(photos / "beach.png", value=200)
    (photos / "holiday").mkdir()
    (photos / "holiday" / "itinerary.txt").write_text("day 1: beach\n")
    before = snapshot(photos)
    # Output into the input folder: holiday.png's output would be the user's folder holiday/.
    args = ("-m", "sam_jax.cli", "amg", "--checkpoint", "tiny-shapes", "--input", str(photos), "--output", str(photos))
    result = run(*args, "--points-per-side", "4", "--no-progress")
    assert result.returncode == 1 and "1 written" in result.stdout and "1 failed" in result.stdout, result.stdout
    after = snapshot(photos)
    assert {k: v for k, v in after.items() if k in before} == before  # every file of the user's, byte for byte
    assert (photos / "beach" / "metadata.csv").is_file()
    failures = (photos / "failures.tsv").read_text()
    assert "holiday.png" in failures and "was not written by sam-jax; left untouched" in failures
    # A re-run finds its own output complete, does not take its mask PNGs for new inputs,
    # and still refuses the user's folder.
    again = run(*args, "--points-per-side", "4", "--no-progress")
    assert "0 written" in again.stdout and "1 already done, 1 failed of 2" in again.stdout, again.stdout
    assert {k: v for k, v in snapshot(photos).items() if k in before} == before


def test_embed_output_never_replaces_a_users_file(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _png(photos / "a.png")
    _png(photos / "b.png")
    (photos / "a.npz").write_bytes(b"my own archive")
    args = ("-m", "sam_jax.cli", "embed", "--checkpoint", "tiny-shapes", "--input", str(photos))
    result = run(*args, "--output", str(photos), "--no-progress")
    assert result.returncode == 1 and "1 written" in result.stdout, result.stdout + result.stderr
    assert (photos / "a.npz").read_bytes() == b"my own archive"
    assert sam_jax.load_embedding(photos / "b.npz").original_size == (40, 56)


def test_outputs_follow_the_umask(small, tmp_path):
    old = os.umask(0o027)
    try:
        sam_jax.save(tmp_path / "ck", small.params)
        io.atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "ck").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "ck" / "sam_jax.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o640


def test_demo_output_is_a_folder_it_owns(tmp_path, monkeypatch):
    from sam_jax import demo

    work = tmp_path / "work"
    before = user_folder(work)
    with pytest.raises(FileExistsError, match="holding other files"):
        demo.run(work)
    assert snapshot(work) == before


# ----------------------------------------------------------------------------- valid inputs


def test_images_are_read_as_the_reference_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (24, 32, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    gray = rng.integers(0, 65536, (24, 32), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "gray16.png"), gray)
    rotated = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    rotated.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    for name in ("deep.png", "gray16.png", "phone.jpg"):
        ours = io.read_image(tmp_path / name)
        theirs = cv2.cvtColor(cv2.imread(str(tmp_path / name)), cv2.COLOR_BGR2RGB)  # the reference's scripts/amg.py
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
    assert io.read_image(tmp_path / "phone.jpg").shape == (64, 48, 3)
    assert io.read_image(tmp_path / "deep.png").max() > 200  # scaled, not clipped to 255 everywhere
    Image.fromarray(np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)).save(tmp_path / "float.tif")
    with pytest.raises(io.ImageError, match=r"float\.tif: cannot be read as an 8- or 16-bit image"):
        io.read_image(tmp_path / "float.tif")


def test_truncated_jpegs_and_gifs_are_read_as_the_reference_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "whole.jpg"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # a download that stopped half way
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "anim.gif")
    for name in ("cut.jpg", "anim.gif"):
        theirs = cv2.imread(str(tmp_path / name))  # the reference's scripts/amg.py
        assert theirs is not None, name
        np.testing.assert_array_equal(io.read_image(tmp_path / name), cv2.cvtColor(theirs, cv2.COLOR_BGR2RGB))
    assert [it.key for it in jobs.discover_inputs(tmp_path)] == ["anim.gif", "cut.jpg", "whole.jpg"]
    (tmp_path / "header.jpg").write_bytes(data[:200])  # too little for OpenCV too
    assert cv2.imread(str(tmp_path / "header.jpg")) is None
    with pytest.raises(
        io.ImageError,
        match=r"header\.jpg: (cannot be read .*\(damaged or truncated pixel data"
        r"|not a readable image \(Truncated File Read)",
    ):
        io.read_image(tmp_path / "header.jpg")


def test_write_errors_name_the_users_path_not_a_temporary_one(tmp_path, monkeypatch):
    def denied(*args, prefix: str = "", dir: str = "", **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "abc123"))

    monkeypatch.setattr(io.tempfile, "mkstemp", denied)
    monkeypatch.setattr(io.tempfile, "mkdtemp", denied)
    for write in (
        lambda: io.atomic_write_bytes(tmp_path / "out.npz", b"x"),
        lambda: sam_jax.save(tmp_path / "ck", sam_jax.init(TINY, 0)),
    ):
        with pytest.raises(PermissionError) as info:
            write()
        assert ".tmp-" not in str(info.value) and str(info.value).endswith(
            f"Permission denied, cannot write: '{info.value.filename}'"
        )
        assert info.value.filename in (str(tmp_path / "out.npz"), str(tmp_path / "ck"))


def test_extreme_aspect_ratio_works_and_a_job_finishes(tiny_shapes, tmp_path):
    strip = np.full((5, 3000, 3), 120, np.uint8)
    masks, _, _ = sam_jax.predict(tiny_shapes, strip, [[1500, 2]])
    assert masks.shape == (3, 5, 3000)
    photos = tmp_path / "in"
    photos.mkdir()
    Image.fromarray(strip).save(photos / "strip.png")
    _png(photos / "plain.png")
    report = jobs.embed_images(tiny_shapes, photos, tmp_path / "out")
    assert report.ok and report.written == 2
    assert sam_jax.load_embedding(tmp_path / "out" / "strip.npz").input_size == (1, 128)


def test_image_embedding_is_a_sequence(tiny_shapes):
    emb = sam_jax.encode(tiny_shapes, np.zeros((2, 20, 30, 3), np.uint8))
    assert len(emb) == 2 and len(list(emb)) == 2
    np.testing.assert_array_equal(emb[-1].image_embedding, emb[1].image_embedding)
    np.testing.assert_array_equal(emb[-2].image_embedding, emb[0].image_embedding)
    for bad in (2, 5, -3):
        with pytest.raises(IndexError, match="out of range for a batch of 2"):
            emb[bad]
    with pytest.raises(TypeError, match="indices must be integers"):
        emb[0.5]


# ----------------------------------------------------------------------------- bounded resources


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_pixel_cap_is_checked_from_the_header(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header(13000, 13000))
    with pytest.raises(
        io.ImageError, match=r"bomb\.png: declares 13000x13000 pixels \(169000000\), over the cap of 100000000"
    ):
        io.read_image(tmp_path / "bomb.png")
    (tmp_path / "huge.png").write_bytes(_png_header(100000, 100000))
    with pytest.raises(io.ImageError, match=r"huge\.png"):
        io.read_image(tmp_path / "huge.png")
    photos = tmp_path / "in"
    photos.mkdir()
    _png(photos / "small.png")
    (photos / "bomb.png").write_bytes(_png_header(13000, 13000))
    result = run(
        "-m", "sam_jax.cli", "embed", "--checkpoint", "tiny-shapes", "--input", str(photos), "--output",
        str(tmp_path / "out"), "--max-pixels", "3000", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 1 and "1 written" in result.stdout and "1 failed" in result.stdout
    assert (
        "declares 13000x13000 pixels (169000000), over the cap of 3000"
        in (tmp_path / "out" / "failures.tsv").read_text()
    )


def test_memory_budget_serves_in_order_and_bounds_what_is_held():
    budget = io.MemoryBudget(100)
    held, peak, order = [0], [0], []
    lock = threading.Lock()

    def item(ticket: int, size: int) -> None:
        budget.acquire(ticket, size)
        with lock:
            held[0] += size
            peak[0] = max(peak[0], held[0])
            order.append(ticket)
        time.sleep(0.01)
        with lock:
            held[0] -= size
        budget.release(size)

    sizes = [60, 60, 30, 150, 10, 90]  # 150: larger than the budget, served alone
    threads = [threading.Thread(target=item, args=(t, s)) for t, s in reversed(list(enumerate(sizes)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert order == list(range(len(sizes)))
    assert peak[0] <= 150


@pytest.mark.parametrize(
    "field,value,needle",
    [
        (("image_encoder", "depth"), 1e8, "image_encoder.depth must be an integer in [1, 256], got 100000000.0"),
        (("image_encoder", "embed_dim"), 2**20, "image_encoder.embed_dim must be an integer in [1, 16384]"),
        (("image_encoder", "patch_size"), 0, "image_encoder.patch_size must be an integer in [1, 1024], got 0"),
        (("decoder_num_heads",), 0, "decoder_num_heads must be an integer in [1, 1024], got 0"),
        (("pixel_std",), [58.4, 0, 57.4], "pixel_std must be 3 finite numbers > 0"),
        (("image_encoder", "global_attn_indexes"), None, "image_encoder.global_attn_indexes must be a list"),
        (("image_encoder", "kind"), "resnet", "image_encoder.kind must be one of vit, tiny_vit, got 'resnet'"),
        (("image_encoder",), [1], "image_encoder must be a JSON object of fields, got list"),
        (("normalize",), "zscore", "normalize must be one of mean_std, min_max, got 'zscore'"),
        ((), [1, 2], "a config must be a JSON object of fields, got list"),
        ((), None, "a config must be a JSON object of fields, got NoneType"),
        (("image_encoder", "mlp_ratio"), 0.001, "image_encoder.mlp_ratio 0.001 leaves a hidden layer of width 64"),
        (("a_field_from_the_future",), 1, "unknown field a_field_from_the_future (not a field of SamConfig"),
        (("image_encoder", "window_sise"), 4, "unknown field image_encoder.window_sise (not a field of ViTConfig"),
    ],
)
def test_crafted_configs_are_refused_in_one_line(small, tmp_path, field, value, needle):
    out = tmp_path / "ck"
    sam_jax.save(out, small.params)
    meta = json.loads((out / "sam_jax.json").read_text())
    holder, *path = ["config", *field]
    parent = meta
    for key in [holder, *path][:-1]:
        parent = parent[key]
    parent[[holder, *path][-1]] = value
    (out / "sam_jax.json").write_text(json.dumps(meta))
    started = time.perf_counter()
    with pytest.raises(ValueError) as info:
        sam_jax.load(out)
    assert str(info.value).startswith(f"{out / 'sam_jax.json'}: invalid config:") and needle in str(info.value)
    assert time.perf_counter() - started < 5


def test_a_crafted_legacy_config_is_refused_in_one_line(small, tmp_path):
    """A config of the first format (the ViT's fields at the top level) is checked the same way."""
    out = tmp_path / "ck"
    sam_jax.save(out, small.params)
    meta = json.loads((out / "sam_jax.json").read_text())
    vit = meta["config"].pop("image_encoder")
    meta["config"].update(encoder_embed_dim=vit["embed_dim"], encoder_num_heads=vit["num_heads"], encoder_depth=1e8)
    meta["config"].update(encoder_global_attn_indexes=vit["global_attn_indexes"])
    (out / "sam_jax.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"invalid config: image_encoder.depth must be an integer in \[1, 256\]"):
        sam_jax.load(out)


def test_widths_consistent_in_the_config_but_not_the_weights(small, tmp_path):
    out = tmp_path / "ck"
    sam_jax.save(out, small.params)
    meta = json.loads((out / "sam_jax.json").read_text())
    meta["config"]["image_encoder"]["embed_dim"] = 2048
    (out / "sam_jax.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"parameter 'image_encoder/.*' has shape"):
        sam_jax.load(out)


def test_batch_size_and_coordinator_are_bounded(tmp_path):
    _png(tmp_path / "a.png")
    base = ("-m", "sam_jax.cli", "embed", "--checkpoint", "tiny-shapes", "--input", str(tmp_path / "a.png"))
    result = run(*base, "--output", str(tmp_path / "o"), "--batch-size", "1000000000")
    one_line(result, "--batch-size 1000000000 needs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing answers there
    started = time.perf_counter()
    result = run(
        *base, "--output", str(tmp_path / "o"), "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
        "--process-id", "1", "--coordinator-timeout", "3",
    )  # fmt: skip
    assert result.returncode == 1 and time.perf_counter() - started < 120
    assert "waiting up to 3 s for the coordinator" in result.stderr
    assert f"sam-jax: error: could not reach the coordinator at 127.0.0.1:{port}" in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- one clear line


def test_bad_arguments_are_refused_in_one_line(small, tmp_path):
    one_line(run("-m", "convert", str(small.checkpoint), str(tmp_path / "o"), "--decoder-num-heads", "0"),
             "--decoder-num-heads: must be an integer >= 1, got 0", prefix="convert: error:")  # fmt: skip
    _png(tmp_path / "a.png")
    amg = ("-m", "sam_jax.cli", "amg", "--checkpoint", "tiny-shapes", "--input", str(tmp_path / "a.png"))
    one_line(run(*amg, "--output", str(tmp_path / "o"), "--crop-n-layers", "2", "--crop-n-points-downscale-factor",
                 "8"), "leaves no points in crop layer 2")  # fmt: skip
    one_line(run(*amg, "--output", str(tmp_path / "o"), "--threads", "-1"), "--threads: must be an integer >= 0")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "kwargs,exc,needle",
    [
        (dict(points=np.zeros((0, 1, 2))), ValueError, "B, N >= 1"),
        (dict(points=[[1e300, 2.0]]), ValueError, "points must be finite float32 values"),
        (dict(points=[[1e39, 2.0]]), ValueError, "points must be finite float32 values"),
        (dict(box=[0, 0, 1e39, 5]), ValueError, "box must be finite float32 values"),
        (dict(mask_input=np.full((1, 32, 32), 1e39)), ValueError, "mask_input must be finite float32 values"),
        (dict(points=[[1, 2], [3]]), ValueError, "points must be a rectangular array"),
    ],
)
def test_bad_prompts(tiny_shapes, kwargs, exc, needle):
    with pytest.raises(exc, match=needle):
        sam_jax.predict(tiny_shapes, np.zeros((20, 30, 3), np.uint8), **kwargs)


def test_bad_images_and_options(tiny_shapes):
    with pytest.raises(ValueError, match="images of different sizes cannot form a batch"):
        sam_jax.encode(tiny_shapes, [np.zeros((20, 30, 3), np.uint8), np.zeros((21, 30, 3), np.uint8)])
    with pytest.raises(TypeError, match="point_grids must be a list of"):
        sam_jax.generate_masks(tiny_shapes, np.zeros((20, 30, 3), np.uint8), points_per_side=None, point_grids=5)
    with pytest.raises(ValueError, match="2x2 pixels is too small for crop_n_layers=2"):
        sam_jax.generate_masks(tiny_shapes, np.zeros((2, 2, 3), np.uint8), crop_n_layers=2)


def test_crafted_embedding_files(tmp_path):
    good = dict(image_embedding=np.zeros((4, 4, 8), np.float32), original_size=[5, 6], input_size=[4, 4])
    cases = {
        "zero.npz": {**good, "original_size": [0, 6]},
        "negative.npz": {**good, "input_size": [-4, 4]},
        "pickled.npz": {**good, "image_embedding": np.array([object()], dtype=object)},
        "nan.npz": {**good, "image_embedding": np.full((4, 4, 8), np.nan, np.float32)},
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **{k: np.asarray(v) for k, v in arrays.items()})
    np.save(tmp_path / "plain.npy", good["image_embedding"])
    for name in [*cases, "plain.npy"]:
        with pytest.raises(ValueError, match=rf"^{tmp_path / name}: "):
            sam_jax.load_embedding(tmp_path / name)


def run_with_steps(run_dir: Path, steps: list[int], params: sam_jax.SamParams, cfg: train.TrainConfig) -> list:
    """A run folder holding `steps`, saved directly (no training, nothing compiled); step k
    holds the weights plus k, so each is told apart."""
    store = train.CheckpointStore(str(run_dir), keep=5)
    trainable, _ = train.partition(params.weights, cfg.freeze)
    opt_state = train.make_optimizer(cfg).init(trainable)
    saved = []
    for step in steps:
        weights = jax.tree.map(lambda x, k=step: np.asarray(x) + np.float32(k), params.weights)
        store.save(
            step, weights, opt_state, train.step_metadata(params.config, cfg, step, step * 4, {}, weights, opt_state)
        )
        saved.append(weights)
    store.close()
    return saved


@pytest.fixture(scope="module")
def tiny_params() -> sam_jax.SamParams:
    return sam_jax.init(TINY, 0)


def test_resume_with_another_model_is_one_line(tmp_path, tiny_params):
    run_with_steps(tmp_path / "run", [1, 2], tiny_params, CFG)
    other = sam_jax.init(sam_jax.config.with_fields(TINY, depth=3, global_attn_indexes=(2,)), 0)
    with pytest.raises(ValueError, match=r"the run there trains another model .*depth 2.*not .*depth 3"):
        train.train(other, [DATA], CFG, str(tmp_path / "run"), **QUIET)
    with pytest.raises(ValueError, match=r"holds a run .*latest step 2"):
        train.train(tiny_params, [DATA], CFG, str(tmp_path / "run"), resume=False, **QUIET)


def test_damaged_latest_step_is_set_aside_and_the_resume_saves_its_step_again(tmp_path, tiny_params):
    run_dir = tmp_path / "run"
    _, before = run_with_steps(run_dir, [1, 2], tiny_params, CFG)
    victim = max((run_dir / "2" / "weights").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    victim.write_bytes(bytes(data))
    damaged = snapshot(run_dir / "2")
    lines: list[str] = []
    # Resumed from step 1 with another learning rate: step 2 is trained and saved again.
    cfg = dataclasses.replace(CFG, steps=2, learning_rate=CFG.learning_rate * 2)
    train.train(tiny_params, [DATA], cfg, str(run_dir), save_every=1, progress=False, log=lines.append)
    assert any(f"{run_dir / '2'}" in line and "trying the step before it" in line for line in lines), lines
    assert any("resumed from step 1" in line for line in lines), lines
    assert any(f"learning_rate {CFG.learning_rate!r} -> {cfg.learning_rate!r}" in line for line in lines), lines
    aside = run_dir / "2.damaged"
    assert any(f"damaged step 2 moved aside to {aside} (kept, not deleted)" in line for line in lines), lines
    notes = {k: v for k, v in snapshot(aside).items() if k != train.store.DAMAGED_NOTE}
    assert notes == damaged  # moved, byte for byte
    assert "could not be resumed" in (aside / train.store.DAMAGED_NOTE).read_text()
    resumed = train.CheckpointStore(str(run_dir), keep=5)  # the run folder, set-aside step included, is accepted
    assert resumed.steps() == [2, 1]
    weights, _ = resumed.restore(2, train.make_optimizer(cfg).init(train.partition(tiny_params.weights, cfg.freeze)[0]))
    resumed.close()
    # Step 2 written again from step 1 (the steps saved here carry a fresh optimiser state, whose
    # warm-up starts at a learning rate of 0, so its weights are step 1's, not the damaged step's).
    assert not any(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(before), strict=True))


def test_damaged_optimiser_state_is_named_on_restore(tmp_path, tiny_params):
    run_with_steps(tmp_path / "run", [1], tiny_params, CFG)
    victim = max(
        (tmp_path / "run" / "1" / "opt_state").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0
    )
    data = bytearray(victim.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    victim.write_bytes(bytes(data))
    store = train.CheckpointStore(str(tmp_path / "run"), keep=5)
    template = train.make_optimizer(CFG).init(train.partition(tiny_params.weights, CFG.freeze)[0])
    with pytest.raises(
        ValueError, match=rf"^{tmp_path / 'run' / '1'}/opt_state: |^{tmp_path / 'run' / '1'}: unreadable"
    ):
        store.restore(1, template)
    store.close()


def test_damaged_weights_give_one_line(small, tmp_path):
    out = tmp_path / "ck"
    sam_jax.save(out, small.params)
    files = [p for p in (out / "weights").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:100])
    code = (
        "import sam_jax, time\n"
        "try:\n"
        f"    sam_jax.load({str(out)!r})\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
        "time.sleep(1)\n"
    )
    result = run("-c", code)
    assert result.stdout.startswith("refused:") and "unreadable weights (is 100 bytes" in result.stdout, result.stdout
    assert str(largest) in result.stdout  # the file at fault, found before orbax reads anything
    assert "Event loop is closed" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    largest.unlink()
    with pytest.raises(ValueError, match=r"unreadable weights \(is missing, .*sam_jax\.json records"):
        sam_jax.load(out)
    meta = json.loads((out / "sam_jax.json").read_text())
    for crafted, needle in (("../../etc/passwd", "not a file inside weights/"), (-1, "must map file names to sizes")):
        record = {crafted: 1} if isinstance(crafted, str) else {"x": crafted}
        (out / "sam_jax.json").write_text(json.dumps({**meta, "weights_files": record}))
        with pytest.raises(ValueError, match=needle):
            sam_jax.load(out)


# ----------------------------------------------------------------------------- integrity


def test_altered_or_non_finite_weights_are_refused(small, tmp_path):
    out = tmp_path / "ck"
    sam_jax.save(out, small.params)
    victim = max((p for p in (out / "weights").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8  # NaNs, in the middle of some weight
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"weights: the weights do not match the checksum in .*sam_jax\.json"):
        sam_jax.load(out)
    # A checkpoint of an older version (no checksum) whose weights hold a NaN.
    import orbax.checkpoint as ocp

    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((out / "sam_jax.json").read_text())
    del meta["weights_sha256"], meta["weights_files"]
    (old / "sam_jax.json").write_text(json.dumps(meta))
    weights = jax.tree.map(np.array, small.params.weights)
    weights["mask_decoder"]["iou_token"]["embedding"][0, 0] = np.nan
    ocp.PyTreeCheckpointer().save(str(old / "weights"), weights)
    with pytest.raises(ValueError, match="weight 'mask_decoder/iou_token/embedding' holds NaN or infinite values"):
        sam_jax.load(old)
    nan = {k: v.clone() for k, v in small.ref.state_dict().items()}
    nan["mask_decoder.iou_token.weight"][0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(formats.ConversionError, match=r"nan\.pth: tensor 'mask_decoder.iou_token.weight' holds NaN"):
        conversion.convert_checkpoint(tmp_path / "nan.pth", tmp_path / "nan-out")
    assert not (tmp_path / "nan-out").exists()
