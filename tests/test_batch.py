"""Batch embedding jobs (`sam_jax.jobs`, `sam-jax embed`): 8 devices = 1 device = `encode`,
two `jax.distributed` processes split the inputs, a killed run resumes without redoing
finished work, and a corrupt image is recorded while the rest succeed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from PIL import Image

import sam_jax
from sam_jax import io, jobs
from sam_jax.embedding_files import is_complete_embedding
from sam_jax.jobs import embed as embed_job
from sam_jax.jobs import layout
from sam_jax.testing import TINY

# Sizes of different aspect ratios (the padding differs per image within one batch).
SIZES = [
    (48, 64),
    (64, 48),
    (100, 70),
    (33, 90),
    (64, 64),
    (120, 80),
    (70, 100),
    (50, 50),
    (90, 33),
    (40, 64),
    (64, 30),
]


def _images(root: Path, n: int, seed: int = 0) -> list[Path]:
    """n images (PNG and JPEG, some in sub-folders) under root."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        sub = root / ("" if i % 3 else f"part{i % 2}")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batch") / "small"
    sam_jax.save(path, sam_jax.init(TINY, 3))
    return path


def run_embed(*args: str, devices: int = 1, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    env = subprocess_env(devices)
    cmd = [sys.executable, "-m", "sam_jax.cli", "embed", "--no-progress", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _outputs(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*.npz")}


def test_discover_inputs(tmp_path):
    paths = _images(tmp_path / "in", 5)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    items = jobs.discover_inputs(tmp_path / "in")
    assert [it.key for it in items] == sorted(p.relative_to(tmp_path / "in").as_posix() for p in paths)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two of them\nin/{paths[1].relative_to(tmp_path / 'in').as_posix()}\n\n{paths[0]}\n")
    listed = jobs.discover_inputs(listing)
    assert {it.path.resolve() for it in listed} == {paths[0].resolve(), paths[1].resolve()}
    assert {it.key for it in listed} == {"in/" + paths[1].relative_to(tmp_path / "in").as_posix(), str(paths[0])[1:]}
    assert jobs.discover_inputs(paths[2])[0].key == paths[2].name
    shares = [jobs.process_share(items, i, 2) for i in range(2)]
    assert sorted(it.key for s in shares for it in s) == [it.key for it in items]
    assert not {it.key for it in shares[0]} & {it.key for it in shares[1]}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no images"),
        (lambda d: (d / "x.csv").write_text("a") and d / "x.csv", "must be an image"),
        (lambda d: (d / "l.txt").write_text("../up.png\n") and d / "l.txt", "climbs out"),
    ],
)
def test_discover_inputs_refuses(tmp_path, make, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        jobs.discover_inputs(make(tmp_path))


def test_same_stem_refused(tmp_path):
    _images(tmp_path, 1)
    Image.new("RGB", (8, 8)).save(tmp_path / "part0" / "img000.png")
    with pytest.raises(ValueError, match="same output"):
        jobs.discover_inputs(tmp_path)


def test_eight_devices_equal_one_device_and_encode(tmp_path, model):
    paths = _images(tmp_path / "in", 11)  # not a multiple of 8: the last batch is padded
    one = run_embed("--checkpoint", str(model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    eight = run_embed(
        "--checkpoint", str(model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "eight"),
        "--batch-size", "8", devices=8,
    )  # fmt: skip
    assert eight.returncode == 0, eight.stderr
    assert "8 device(s)" in eight.stdout and "1 device(s)" in one.stdout
    params = sam_jax.load(model)
    outs1, outs8 = _outputs(tmp_path / "one"), _outputs(tmp_path / "eight")
    assert sorted(outs1) == sorted(outs8) and len(outs1) == 11
    for path in paths:
        key = path.relative_to(tmp_path / "in").with_suffix(".npz").as_posix()
        image = np.asarray(Image.open(path).convert("RGB"))
        expected = sam_jax.encode(params, image)
        for outs in (outs1, outs8):
            with np.load(outs[key]) as f:
                np.testing.assert_allclose(f["image_embedding"], np.asarray(expected.image_embedding), atol=1e-4)
                assert tuple(f["original_size"]) == image.shape[:2]
                assert tuple(f["input_size"]) == expected.input_size
    # The documented loader gives what decode takes, with the same result as encode's output.
    loaded = sam_jax.load_embedding(outs8[sorted(outs8)[3]])
    point = np.array([[10.0, 12.0]])
    ours = sam_jax.decode(params, loaded, point)
    key = sorted(outs8)[3]
    src = next(p for p in paths if p.relative_to(tmp_path / "in").with_suffix(".npz").as_posix() == key)
    ref = sam_jax.decode(params, sam_jax.encode(params, np.asarray(Image.open(src).convert("RGB"))), point)
    np.testing.assert_allclose(np.asarray(ours[2]), np.asarray(ref[2]), atol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_cover_disjoint_shares(tmp_path, model):
    _images(tmp_path / "in", 9)
    address = f"localhost:{_free_port()}"
    procs = [
        run_embed(
            "--checkpoint",
            str(model),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / f"p{i}"),
            "--coordinator-address",
            address,
            "--num-processes",
            "2",
            "--process-id",
            str(i),
            wait=False,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    assert "process 0/2" in results[0][0] and "process 1/2" in results[1][0]
    shares = [set(_outputs(tmp_path / f"p{i}")) for i in range(2)]
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    everything = {it.key.rsplit(".", 1)[0] + ".npz" for it in jobs.discover_inputs(tmp_path / "in")}
    assert shares[0] | shares[1] == everything


def test_killed_run_resumes_without_redoing_finished_work(tmp_path):
    vit_t = tmp_path / "vit_t"  # tiny-shapes' architecture at 256 pixels, slow enough per image to be killed half way
    sam_jax.save(vit_t, sam_jax.init(sam_jax.get_config("tiny-shapes", image_size=256, patch_size=16), 0))
    _images(tmp_path / "in", 40)
    args = ("--checkpoint", str(vit_t), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    proc = run_embed(*args, "--batch-size", "1", "--threads", "1", wait=False)
    deadline = time.monotonic() + 300
    while len(_outputs(tmp_path / "out")) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _outputs(tmp_path / "out")
    assert 3 <= len(before) < 40, f"{len(before)} outputs when killed"
    assert all(is_complete_embedding(p) for p in before.values())  # nothing half written
    stamps = {k: (p.stat().st_ino, p.stat().st_mtime_ns) for k, p in before.items()}
    again = run_embed(*args, "--batch-size", "4")
    assert again.returncode == 0, again.stderr
    assert f"{len(before)} already done" in again.stdout
    after = _outputs(tmp_path / "out")
    assert len(after) == 40 and all(is_complete_embedding(p) for p in after.values())
    assert {k: (after[k].stat().st_ino, after[k].stat().st_mtime_ns) for k in before} == stamps


def test_corrupt_image_is_recorded_and_the_rest_succeed(tmp_path, model):
    _images(tmp_path / "in", 4)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = run_embed("--checkpoint", str(model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()  # the log line naming it, then the one-line summary
    assert "broken.png" in lines[0] and "not a readable image" in lines[0], result.stderr
    assert lines[-1].startswith("sam-jax: error: 1 image(s) failed") and "failures.tsv" in lines[-1], result.stderr
    assert len(_outputs(tmp_path / "out")) == 4
    record = layout.read_failures(tmp_path / "out" / "failures.tsv")
    assert len(record) == 1 and record[0][0].endswith("broken.png")
    assert "not a readable image" in record[0][1]


def test_cli_refuses_bad_arguments_in_one_line(tmp_path, model):
    for args in (
        ("--checkpoint", str(model), "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")),
        ("--checkpoint", str(model), "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--batch-size", "0"),
        ("--checkpoint", str(tmp_path / "no-model"), "--input", str(tmp_path), "--output", str(tmp_path / "o")),
        ("--checkpoint", str(model), "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--process-id", "1"),
    ):
        result = run_embed(*args)
        assert result.returncode == 1, args
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("sam-jax: error:"), (
            result.stderr
        )


# ----------------------------------------------------------------------------- hostile inputs (issue 33)


@pytest.fixture(scope="module")
def params() -> sam_jax.SamParams:
    return sam_jax.init(TINY, 3)


BROKEN = b"\x89PNG\r\n\x1a\nnot really"


def test_a_users_failures_file_is_refused_before_the_job_and_never_touched(tmp_path, params):
    _images(tmp_path / "in", 1)
    (tmp_path / "in" / "broken.png").write_bytes(BROKEN)
    out = tmp_path / "out"
    out.mkdir()
    mine = b"name\tscore\nalice\t3\n"  # one tab per line: the shape of ours, without our marker
    (out / "failures.tsv").write_bytes(mine)
    with pytest.raises(FileExistsError, match=r"failures\.tsv: exists and was not written by sam-jax"):
        jobs.embed_images(params, tmp_path / "in", out)
    (tmp_path / "in" / "broken.png").unlink()  # with nothing to fail, it is still not removed
    with pytest.raises(FileExistsError, match=r"failures\.tsv: exists and was not written by sam-jax"):
        jobs.embed_images(params, tmp_path / "in", out)
    assert [p.name for p in out.iterdir()] == ["failures.tsv"] and (out / "failures.tsv").read_bytes() == mine


def test_names_are_escaped_in_the_failures_file_and_reruns_finish(tmp_path, params):
    names = ["tab\tname.png", "new\nline.png", "back\\slash.png"]
    for name in names:
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(BROKEN)
    _images(tmp_path / "in", 1)
    for _ in range(2):  # the second run reads back the file the first wrote, and rewrites it
        report = jobs.embed_images(params, tmp_path / "in", tmp_path / "out")
        assert report.written + report.skipped == 1 and len(report.failures) == 3
        text = (tmp_path / "out" / "failures.tsv").read_text()
        assert text.count("\n") == 4 and all(line.count("\t") == 1 for line in text.splitlines()[1:])
        assert sorted(p for p, _ in layout.read_failures(tmp_path / "out" / "failures.tsv")) == sorted(
            str(tmp_path / "in" / n) for n in names
        )
    for name in names:  # repaired: the job's own failures file goes
        Image.new("RGB", (8, 8)).save(tmp_path / "in" / name, format="PNG")
    assert jobs.embed_images(params, tmp_path / "in", tmp_path / "out").ok
    assert not (tmp_path / "out" / "failures.tsv").exists()


def test_inputs_that_are_not_regular_files_are_refused_unopened(tmp_path, params):
    _images(tmp_path / "in", 1)
    os.mkfifo(tmp_path / "in" / "x.png")  # opened, it would block forever
    (tmp_path / "in" / "z.png").symlink_to("/dev/zero")  # read, it would never end
    done: list[jobs.JobReport] = []
    worker = threading.Thread(target=lambda: done.append(jobs.embed_images(params, tmp_path / "in", tmp_path / "o")))
    worker.start()
    worker.join(120)
    assert done, "the job hung on a FIFO or a device"
    reasons = dict(done[0].failures)
    assert done[0].written == 1 and len(reasons) == 2
    assert reasons[str(tmp_path / "in" / "x.png")].endswith(
        "is a FIFO (named pipe), not a regular file; refused without reading it"
    )
    assert "is a character device, not a regular file" in reasons[str(tmp_path / "in" / "z.png")]
    os.mkfifo(tmp_path / "list.txt")
    with pytest.raises(ValueError, match=r"list\.txt: is a FIFO \(named pipe\), not a regular file"):
        jobs.discover_inputs(tmp_path / "list.txt")


def test_temporary_folders_are_never_inputs_and_those_of_killed_runs_are_removed(tmp_path, params):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "img.png")
    # A write of automatic masks into the input folder, killed half way: its temporary folder
    # (a mask PNG, no metadata.csv yet) is left behind by a process that no longer runs.
    code = (
        "import os, sys\n"
        "from sam_jax.io import write_directory\n"
        "with write_directory(sys.argv[1], owns=lambda p: False, overwrite=False, what='masks') as tmp:\n"
        "    (tmp / '0.png').write_bytes(open(sys.argv[2], 'rb').read())\n"
        "    os._exit(9)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(photos / "img"), str(photos / "img.png")], timeout=300)
    assert killed.returncode == 9
    (left,) = [p for p in photos.iterdir() if ".tmp-" in p.name]
    mine = photos / ".my.tmp-folder"  # a user's folder of that shape, without the writer's marker
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    report = jobs.embed_images(params, photos, photos)
    assert report.ok and report.total == 1  # the mask PNG left inside was not taken for an image
    assert not left.exists() and (mine / "keep.txt").read_text() == "mine"
    # A live writer's temporary folder (this process's) is neither an input nor removed.
    with io.write_directory(photos / "live", owns=lambda p: False, overwrite=False, what="masks") as tmp:
        Image.new("RGB", (8, 8)).save(tmp / "0.png")
        assert [it.key for it in jobs.discover_inputs(photos)] == ["img.png"]
        assert jobs.embed_images(params, photos, photos).skipped == 1 and tmp.exists()


def test_an_output_another_run_wrote_meanwhile_counts_as_done(tmp_path, params, monkeypatch):
    _images(tmp_path / "in", 2)
    real = embed_job.atomic_write_bytes

    def another_run_first(path, data, **kwargs):
        if path.name == "img000.npz":
            real(path, data)  # a second job on the same output finished this image first
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"the user's")  # something else appeared
        real(path, data, **kwargs)

    monkeypatch.setattr(embed_job, "atomic_write_bytes", another_run_first)
    report = jobs.embed_images(params, tmp_path / "in", tmp_path / "out")
    assert report.skipped == 1 and report.written == 0
    assert report.failures == [
        (
            str(tmp_path / "in" / "img001.png"),
            f"output {tmp_path / 'out' / 'img001.npz'} appeared meanwhile; left untouched",
        )
    ]
    assert (tmp_path / "out" / "img001.npz").read_bytes() == b"the user's"
