"""The hostile inputs of issue 33, each reproduced in a temporary folder, with its outcome.

    python benchmarks/hostile_inputs.py            # every case (a few minutes on a laptop's CPU)
    python benchmarks/hostile_inputs.py fifo tab   # the cases whose names contain a word

Each case prints one line: `ok    <case>: <one-line error | correct result>: <detail>`, or
`FAIL  <case>: <what went wrong>`, or `skip  <case>: <why>`; the exit status is 1 when any
case fails. A case passes when the command or call gives a one-line error naming the
argument or file (no traceback), or the correct result; when the user's files are byte for
byte as before; and when it stays within its time (and, for the device input, memory) bound.
Commands run as `python -m sam_jax.cli` on JAX's default platform (JAX_PLATFORMS=cpu to pin it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CASES: list[tuple[str, Callable[[Path], str]]] = []
MODEL = "tiny-shapes"
BOUND_S = 300  # no command here may run longer


class Fail(Exception):
    """The case's outcome is wrong; the message says how."""


class Skip(Exception):
    """The case cannot be reproduced here; the message says why."""


def case(name: str) -> Callable[[Callable[[Path], str]], Callable[[Path], str]]:
    def register(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        CASES.append((name, fn))
        return fn

    return register


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Fail(message)


# ----------------------------------------------------------------------------- helpers


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str, seconds: float, peak_rss: int) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.seconds, self.peak_rss = seconds, peak_rss


def _peak_rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 if found else 0


def cli(*args: str, timeout: float = BOUND_S, umask: int | None = None) -> Result:
    """`sam-jax ARGS` in a child process, its peak resident memory sampled while it runs."""
    started = time.perf_counter()
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        subprocess.Popen(
            [sys.executable, "-m", "sam_jax.cli", *args], stdout=out, stderr=err, text=True, preexec_fn=preexec
        ) as proc,
    ):
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _peak_rss(proc.pid))
            if time.perf_counter() - started > timeout:
                proc.kill()
                proc.wait()
                raise Fail(f"`sam-jax {' '.join(args[:1])}` ran past its bound of {timeout:.0f} s (killed)")
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return Result(proc.returncode, out.read(), err.read(), time.perf_counter() - started, peak)


def one_line(result: Result, *needles: str) -> str:
    """The single `sam-jax: error:` line of a refused command, checked to name every needle."""
    lines = result.stderr.strip().splitlines()
    check(result.returncode == 1, f"exit status {result.returncode}, not 1; stderr: {result.stderr[-300:]!r}")
    check("Traceback" not in result.stderr, f"a traceback on stderr: {result.stderr[-300:]!r}")
    check(len(lines) == 1 and lines[0].startswith("sam-jax: error:"), f"not one error line: {result.stderr!r:.400}")
    for needle in needles:
        check(needle in lines[0], f"the error does not say {needle!r}: {lines[0]}")
    return lines[0]


def library_error(call: Callable[[], Any], kind: type[BaseException], *needles: str, bound: float = 10) -> str:
    """The one-line message of the error `call` raises, checked to name every needle, within `bound` seconds."""
    started = time.perf_counter()
    try:
        call()
    except kind as e:
        message = str(e)
    else:
        raise Fail(f"no {kind.__name__} raised")
    check(time.perf_counter() - started < bound, f"refused only after {time.perf_counter() - started:.1f} s")
    check("\n" not in message, f"not one line: {message!r}")
    for needle in needles:
        check(needle in message, f"the error does not say {needle!r}: {message}")
    return message


def checksums(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def png(path: Path, value: int = 90, size: tuple[int, int] = (40, 56)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path, format="PNG")
    return path


_PARAMS: dict[str, Any] = {}


def params() -> Any:
    import sam_jax

    if not _PARAMS:
        _PARAMS["p"] = sam_jax.load(MODEL)
    return _PARAMS["p"]


# ----------------------------------------------------------------------------- data loss


@case("users-failures-file")
def _(tmp: Path) -> str:
    png(tmp / "imgs" / "a.png")
    (tmp / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp / "out").mkdir()
    (tmp / "out" / "failures.tsv").write_bytes(b"name\tscore\nalice\t3\n")
    before = checksums(tmp)
    line = one_line(
        cli(
            "embed", "--checkpoint", MODEL, "--input", str(tmp / "imgs"), "--output", str(tmp / "out"), "--no-progress"
        ),
        str(tmp / "out" / "failures.tsv"),
        "not written by sam-jax",
    )
    check(checksums(tmp) == before, "a file changed")
    return f"one-line error, the file untouched: {line}"


# ----------------------------------------------------------------------------- hangs and memory


def _embed_with(tmp: Path, make: Callable[[Path], None], name: str, needle: str) -> str:
    png(tmp / "imgs" / "a.png")
    make(tmp / "imgs" / name)
    result = cli("embed", "--checkpoint", MODEL, "--input", str(tmp / "imgs"), "--output", str(tmp / "out"),
                 "--no-progress", timeout=120)  # fmt: skip
    check(result.returncode == 1 and "1 written" in result.stdout, f"{result.stdout!r} {result.stderr[-300:]!r}")
    check(result.peak_rss < 2 << 30, f"peak memory {result.peak_rss / 2**30:.1f} GiB")
    from sam_jax.jobs.layout import read_failures

    (path, reason), *more = read_failures(tmp / "out" / "failures.tsv")
    check(not more and path.endswith(name) and needle in reason, f"failures file: {path} {reason}")
    return f"correct result in {result.seconds:.0f} s, peak {result.peak_rss / 2**20:.0f} MiB, listed: {reason}"


@case("fifo-input")
def _(tmp: Path) -> str:
    return _embed_with(tmp, os.mkfifo, "x.png", "is a FIFO (named pipe), not a regular file")


@case("dev-zero-input")
def _(tmp: Path) -> str:
    return _embed_with(tmp, lambda p: p.symlink_to("/dev/zero"), "z.png", "is a character device")


@case("amg-crop-n-layers-99")
def _(tmp: Path) -> str:
    png(tmp / "a.png")
    result = cli("amg", "--checkpoint", MODEL, "--input", str(tmp / "a.png"), "--output", str(tmp / "o"),
                 "--crop-n-layers", "99", timeout=120)  # fmt: skip
    line = one_line(result, "--crop-n-layers 99")
    check(not (tmp / "o").exists(), "wrote an output")
    return f"one-line error in {result.seconds:.0f} s: {line}"


@case("generate-masks-crop-n-layers-12")
def _(tmp: Path) -> str:
    import sam_jax

    image = np.zeros((64, 64, 3), np.uint8)
    message = library_error(
        lambda: sam_jax.generate_masks(params(), image, crop_n_layers=12), ValueError, "crop_n_layers", bound=5
    )
    return f"one-line error: {message}"


@case("amg-points-per-side-1000000")
def _(tmp: Path) -> str:
    png(tmp / "a.png")
    result = cli("amg", "--checkpoint", MODEL, "--input", str(tmp / "a.png"), "--output", str(tmp / "o"),
                 "--points-per-side", "1000000", timeout=120)  # fmt: skip
    return f"one-line error: {one_line(result, '--points-per-side 1000000')}"


@contextlib.contextmanager
def _server(body_timeout: float) -> Any:
    from sam_jax.serve import create_app, serve_in_thread

    with serve_in_thread(create_app(params(), body_timeout=body_timeout)) as base:
        host, port = base.split("//")[1].rstrip("/").rsplit(":", 1)
        yield host, int(port)


HEAD = (
    b"POST /api/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    b"Content-Length: 1000\r\n\r\n"
)


@case("serve-stalled-body")
def _(tmp: Path) -> str:
    timeout = 3.0  # create_app(body_timeout=...); `sam-jax serve` waits 30 s
    with _server(timeout) as address:
        started = time.perf_counter()
        with socket.create_connection(address, timeout=60) as s:
            s.sendall(HEAD + b"0123456789")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        held = time.perf_counter() - started
    status = reply.split(b"\r\n", 1)[0].decode()
    check(status.startswith("HTTP/1.1 408"), f"answered {status!r}")
    check(held < 3 * timeout, f"the connection was held {held:.0f} s")
    return f"correct result: {status} after {held:.1f} s (body_timeout {timeout:g} s), connection closed"


@case("serve-client-disconnect")
def _(tmp: Path) -> str:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep, ours = Keep(), logging.getLogger("sam_jax.serve")
    with _server(30.0) as address:
        loggers = [logging.getLogger("uvicorn.error"), logging.getLogger("uvicorn"), ours]
        ours.setLevel(logging.INFO)
        for lg in loggers:
            lg.addHandler(keep)
        try:
            with socket.create_connection(address, timeout=60) as s:
                s.sendall(HEAD + b"0123456789")
            deadline = time.monotonic() + 10
            while not records and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1)
        finally:
            for lg in loggers:
                lg.removeHandler(keep)
    lines = [r.getMessage() for r in records]
    check(len(lines) <= 1 and not any(r.exc_info for r in records), f"logged: {lines}")
    return f"correct result: the log holds {lines}"


# ----------------------------------------------------------------------------- jobs no rerun could finish


@case("tab-in-a-failing-name")
def _(tmp: Path) -> str:
    png(tmp / "imgs" / "a.png")
    (tmp / "imgs" / "tab\tname.png").write_bytes(b"not an image")
    args = ("embed", "--checkpoint", MODEL, "--input", str(tmp / "imgs"), "--output", str(tmp / "out"), "--no-progress")
    first, second = cli(*args), cli(*args)
    for result, done in ((first, "1 written"), (second, "1 already done")):
        check(result.returncode == 1 and done in result.stdout and "1 failed" in result.stdout,
              f"{result.stdout!r} {result.stderr[-300:]!r}")  # fmt: skip
    from sam_jax.jobs.layout import read_failures

    ((path, _reason),) = read_failures(tmp / "out" / "failures.tsv")
    check(path == str(tmp / "imgs" / "tab\tname.png"), f"failures file names {path!r}")
    return "correct result: both runs finish; the failures file names 'tab\\tname.png' exactly"


@case("finetune-damaged-newest-step")
def _(tmp: Path) -> str:
    run = tmp / "run"
    common = ("finetune", "--config", MODEL, "--data", "synthetic:size=64,length=8", "--batch-size", "2",
              "--save-every", "1", "--eval-images", "1", "--final-eval-images", "1", "--no-progress",
              "--checkpoint-dir", str(run))  # fmt: skip
    first = cli(*common, "--steps", "2")
    check(first.returncode == 0, f"the first run failed: {first.stderr[-400:]!r}")
    victim = max((p for p in (run / "2").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    victim.write_bytes(bytes(data))
    damaged = checksums(run / "2")
    again = cli(*common, "--steps", "3", "--lr", "0.0005")
    check(again.returncode == 0, f"the resume failed: {again.stderr[-400:]!r}")
    check("resumed from step 1" in again.stdout, f"not resumed from step 1: {again.stdout[-400:]!r}")
    check("learning_rate 0.001 -> 0.0005" in again.stdout, "the changed option is not named")
    aside = run / "2.damaged"
    kept = {k: v for k, v in checksums(aside).items() if k != "SAM_JAX_DAMAGED_STEP.txt"}
    check(kept == damaged, "the damaged step was not kept byte for byte")
    third = cli(*common, "--steps", "3")
    check(third.returncode == 0, f"a further rerun failed: {third.stderr[-400:]!r}")
    return f"correct result: resumed from step 1, step 2 saved again, the damaged one kept as {aside.name}/"


# ----------------------------------------------------------------------------- tracebacks


@case("decode-zero-size-embedding")
def _(tmp: Path) -> str:
    import sam_jax

    emb = sam_jax.encode(params(), np.zeros((20, 30, 3), np.uint8)).image_embedding
    bad = sam_jax.ImageEmbedding(emb, (0, 0), (0, 0))
    return "one-line error: " + library_error(
        lambda: sam_jax.decode(params(), bad, [[1, 1]]), ValueError, "embedding.original_size"
    )


@case("decode-nan-embedding")
def _(tmp: Path) -> str:
    import sam_jax

    good = sam_jax.encode(params(), np.zeros((20, 30, 3), np.uint8))
    bad = sam_jax.ImageEmbedding(good.image_embedding * np.nan, good.original_size, good.input_size)
    return "one-line error: " + library_error(
        lambda: sam_jax.decode(params(), bad, [[1, 1]]), ValueError, "NaN or infinite"
    )


# ----------------------------------------------------------------------------- silent wrong


@case("killed-amg-temp-folder")
def _(tmp: Path) -> str:
    photos = tmp / "photos"
    png(photos / "img.png")
    code = (
        "import os, sys\n"
        "from sam_jax.io import write_directory\n"
        "with write_directory(sys.argv[1], owns=lambda p: False, overwrite=False, what='masks') as tmp:\n"
        "    for i in range(3): (tmp / f'{i}.png').write_bytes(open(sys.argv[2], 'rb').read())\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(photos / "img"), str(photos / "img.png")], timeout=BOUND_S)
    check(killed.returncode == -9, f"the writer was not killed ({killed.returncode})")
    left = [p for p in photos.iterdir() if ".tmp-" in p.name]
    check(len(left) == 1, "no temporary folder left to test with")
    result = cli("amg", "--checkpoint", MODEL, "--input", str(photos), "--output", str(photos), "--points-per-side",
                 "4", "--no-progress")  # fmt: skip
    check(result.returncode == 0 and "0 failed of 1 " in result.stdout, f"{result.stdout!r} {result.stderr[-300:]!r}")
    check(not left[0].exists(), "the killed run's temporary folder is still there")
    check((photos / "img" / "metadata.csv").is_file(), "no output for img.png")
    return "correct result: 1 image (the mask PNGs left behind were not taken for images), the leftover removed"


@case("to-hf-umask")
def _(tmp: Path) -> str:
    result = cli("convert", "--to-hf", MODEL, str(tmp / "hf"), umask=0o027)
    check(result.returncode == 0, f"{result.stderr[-300:]!r}")
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp / "hf").iterdir()}
    check(set(modes.values()) == {"0o640"}, f"modes {modes}")
    return f"correct result: every file {modes.popitem()[1]} under umask 027"


@case("config-unknown-field")
def _(tmp: Path) -> str:
    import sam_jax

    sam_jax.save(tmp / "ck", params())
    meta = json.loads((tmp / "ck" / "sam_jax.json").read_text())
    meta["config"]["image_encoder"]["windw_size"] = 8
    (tmp / "ck" / "sam_jax.json").write_text(json.dumps(meta))
    first = library_error(lambda: sam_jax.load(tmp / "ck"), ValueError, "unknown field image_encoder.windw_size")
    del meta["config"]["image_encoder"]["windw_size"]
    meta["version"] = 3
    (tmp / "ck" / "sam_jax.json").write_text(json.dumps(meta))
    second = library_error(lambda: sam_jax.load(tmp / "ck"), ValueError, "format version 3")
    return f"one-line errors: {first} | {second}"


@case("truncated-jpeg-and-gif")
def _(tmp: Path) -> str:
    import cv2
    from PIL import Image

    from sam_jax import io, jobs

    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp / "whole.jpg"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    data = (tmp / "whole.jpg").read_bytes()
    (tmp / "cut.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp / "anim.gif")
    for name in ("cut.jpg", "anim.gif"):
        ours, theirs = io.read_image(tmp / name), cv2.imread(str(tmp / name))
        check(theirs is not None and np.array_equal(ours, theirs[..., ::-1]), f"{name} differs from cv2.imread")
    keys = [it.key for it in jobs.discover_inputs(tmp)]
    check("anim.gif" in keys, f"the GIF is not listed: {keys}")
    return "correct result: both decoded equal to cv2.imread, the GIF listed"


# ----------------------------------------------------------------------------- smaller items


@case("permission-error-names-the-users-path")
def _(tmp: Path) -> str:
    if os.geteuid() == 0:
        raise Skip("running as root, which permissions do not stop (tests/test_safety.py simulates the error)")
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)
    try:
        png(tmp / "a.png")
        result = cli("embed", "--checkpoint", MODEL, "--input", str(tmp / "a.png"), "--output", str(tmp / "ro"))
    finally:
        (tmp / "ro").chmod(0o755)
    line = one_line(result, str(tmp / "ro" / "a.npz"))
    check(".tmp-" not in line, f"names a temporary path: {line}")
    return f"one-line error: {line}"


@case("coco-bad-rle-and-nan-polygon")
def _(tmp: Path) -> str:
    from sam_jax.data import CocoDataset, DataError

    png(tmp / "images" / "one.png", size=(20, 30))
    messages = []
    for segmentation, needle in (
        ({"size": [20, 30], "counts": "!!!!"}, "not a valid compressed RLE string"),
        ([[2, 2, 12, 2, float("nan"), 8, 2, 8]], "finite numbers"),
    ):
        annotation = {"id": 1, "image_id": 1, "iscrowd": 0, "segmentation": segmentation}
        image = {"id": 1, "file_name": "one.png", "height": 20, "width": 30}
        (tmp / "ann.json").write_text(json.dumps({"images": [image], "annotations": [annotation]}))
        messages.append(
            library_error(
                lambda: CocoDataset(tmp / "ann.json", tmp / "images"), DataError, str(tmp / "ann.json"), needle
            )
        )
    return "one-line errors: " + " | ".join(messages)


@case("mlp-ratio-0.001")
def _(tmp: Path) -> str:
    import sam_jax

    sam_jax.save(tmp / "ck", params())
    meta = json.loads((tmp / "ck" / "sam_jax.json").read_text())
    meta["config"]["image_encoder"]["mlp_ratio"] = 0.001
    (tmp / "ck" / "sam_jax.json").write_text(json.dumps(meta))
    return "one-line error: " + library_error(lambda: sam_jax.load(tmp / "ck"), ValueError, "image_encoder.mlp_ratio")


@case("save-none")
def _(tmp: Path) -> str:
    import sam_jax

    return "one-line error: " + library_error(lambda: sam_jax.save(None, params()), TypeError, "path must be")


@case("second-job-on-the-same-output")
def _(tmp: Path) -> str:
    for i in range(12):
        png(tmp / "imgs" / f"{i:02d}.png", value=10 * i)
    args = ("embed", "--checkpoint", MODEL, "--input", str(tmp / "imgs"), "--output", str(tmp / "out"), "--no-progress")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sam_jax.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=BOUND_S) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        check(proc.returncode == 0 and "0 failed" in out, f"{out!r} {err[-300:]!r}")
    check(len(list((tmp / "out").glob("*.npz"))) == 12, "not every image has its output")
    return "correct result: " + " / ".join(out.strip().split(" (")[0] for out, _ in outputs)


# ----------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    chosen = [(n, f) for n, f in CASES if not argv or any(word in n for word in argv)]
    failed = 0
    print(f"hostile inputs of issue 33, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {len(chosen)} cases")
    for name, fn in chosen:
        tmp = Path(tempfile.mkdtemp(prefix=f"sam-jax-hostile-{name}-"))
        try:
            outcome = fn(tmp)
            print(f"ok    {name}: {outcome}", flush=True)
        except Skip as e:
            print(f"skip  {name}: {e}", flush=True)
        except Fail as e:
            failed += 1
            print(f"FAIL  {name}: {e}", flush=True)
        except Exception as e:  # an error the case did not expect is a failure too
            failed += 1
            print(f"FAIL  {name}: unexpected {type(e).__name__}: {str(e)[:300]}", flush=True)
        finally:
            for p in tmp.rglob("*"):  # a read-only folder left by a failed case would stop the removal
                with contextlib.suppress(OSError):
                    if p.is_dir() and not p.is_symlink():
                        p.chmod(0o755)
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(chosen) - failed} of {len(chosen)} cases ok" + (f", {failed} FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
