"""Load test of `sam-jax serve` on loopback.

    python benchmarks/serve_load.py [--clients 50] [--predictions 20] [--images 4] [--url URL]

Starts `sam-jax serve --checkpoint tiny-shapes` on a free loopback port (unless --url names a
running server), then N clients at once each upload one of a few distinct images and make M
predictions in a row. Every answer is checked against `sam_jax.predict` on the same image
(masks equal, scores within 1e-6). Prints the latency percentiles; exits 1 on any error.
Compilation is kept out of the figures: every prompt shape is sent once before the clock starts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

import sam_jax

SAMPLE = Path(sam_jax.__file__).parent / "assets" / "sample.png"
PROMPTS_PER_IMAGE = 8


def load_images(n: int) -> list[np.ndarray]:
    """n distinct images of a few sizes, made from the bundled sample."""
    s = np.asarray(Image.open(SAMPLE).convert("RGB"))
    variants = [s, s[:, ::-1], s[60:460, 20:320], s[::-1, ::-1], s[:300, 100:], s[::2, ::2], s[::-1], s[100:, :400]]
    if not 1 <= n <= len(variants):
        raise ValueError(f"--images must be in 1..{len(variants)}, got {n}")
    return [np.ascontiguousarray(v) for v in variants[:n]]


def prompts_for(image: np.ndarray, rng: np.random.Generator, kinds: int = 4) -> list[dict[str, Any]]:
    """Prompts of up to four shapes, as the page sends them: a click, two clicks, a box, a box and a click."""
    h, w = image.shape[:2]

    def point() -> list[float]:
        return [float(rng.uniform(0, w)), float(rng.uniform(0, h))]

    def box() -> list[float]:
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        return [float(x0), float(y0), float(x1), float(y1)]

    makers = [
        lambda: {"points": [point()], "labels": [1], "box": None, "multimask": True},
        lambda: {"points": [point(), point()], "labels": [1, 0], "box": None, "multimask": False},
        lambda: {"points": None, "labels": None, "box": box(), "multimask": False},
        lambda: {"points": [point()], "labels": [1], "box": box(), "multimask": False},
    ][:kinds]
    return [makers[i % len(makers)]() for i in range(PROMPTS_PER_IMAGE)]


def expected(params: sam_jax.SamParams, image: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    masks, scores, _ = sam_jax.predict(
        params, image, p["points"], p["labels"], box=p["box"], multimask_output=p["multimask"]
    )
    return np.asarray(masks), np.asarray(scores)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def cli_server(checkpoint: str, timeout: float = 300.0) -> Iterator[str]:
    """`sam-jax serve` in a subprocess on a free loopback port; yields its URL once /healthz answers."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        cmd = [sys.executable, "-m", "sam_jax.cli", "serve", "--checkpoint", checkpoint, "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"sam-jax serve exited with {proc.returncode}:\n{log.read()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=2).json().get("status") == "ok":
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sam-jax serve did not answer within {timeout:.0f} s")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()  # uvicorn stops cleanly on SIGTERM
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 1), "p99": round(float(np.percentile(a, 99)), 1)}


def run(url: str, clients: int, predictions: int, n_images: int, kinds: int = 4, seed: int = 0) -> dict[str, Any]:
    """The load: `clients` threads, each one upload then `predictions` predictions, all checked."""
    params = sam_jax.load("tiny-shapes")
    images = load_images(n_images)
    files = [png(im) for im in images]
    rng = np.random.default_rng(seed)
    pool = [prompts_for(im, rng, kinds) for im in images]
    want = [[expected(params, im, p) for p in prompts] for im, prompts in zip(images, pool, strict=True)]

    with httpx.Client(base_url=url, timeout=600) as c:  # warm-up: compile every prompt shape and image size
        for k, data in enumerate(files):
            image_id = c.post("/api/images", files={"file": ("x.png", data)}).json()["image_id"]
            for p in pool[k][:4]:
                c.post(f"/api/images/{image_id}/predict", json=p).raise_for_status()

    errors: list[str] = []
    mismatches = 0
    upload_s: list[float] = []
    predict_s: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        nonlocal mismatches
        k = i % len(images)
        mine_up, mine_pred, mine_err, mine_bad = [], [], [], 0
        with httpx.Client(base_url=url, timeout=600) as c:
            barrier.wait()
            t0 = time.perf_counter()
            r = c.post("/api/images", files={"file": (f"client{i}.png", files[k])})
            mine_up.append(time.perf_counter() - t0)
            if r.status_code != 200:
                mine_err.append(f"client {i} upload: {r.status_code} {r.text[:200]}")
            else:
                image_id = r.json()["image_id"]
                for j in range(predictions):
                    p = (i + j) % PROMPTS_PER_IMAGE
                    t0 = time.perf_counter()
                    r = c.post(f"/api/images/{image_id}/predict", json=pool[k][p])
                    mine_pred.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        mine_err.append(f"client {i} predict {j}: {r.status_code} {r.text[:200]}")
                        continue
                    got = r.json()
                    rles = [{"size": m["size"], "counts": m["counts"].encode()} for m in got["masks"]]
                    masks = np.stack([mask_utils.decode(m) for m in rles]).astype(bool)
                    want_masks, want_scores = want[k][p]
                    same = masks.shape == want_masks.shape and np.array_equal(masks, want_masks)
                    if not same or np.abs(np.asarray(got["scores"]) - want_scores).max() > 1e-6:
                        mine_bad += 1
        with lock:
            upload_s.extend(mine_up)
            predict_s.extend(mine_pred)
            errors.extend(mine_err)
            mismatches += mine_bad

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        for f in [ex.submit(client, i) for i in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "images": n_images,
        "prompt_kinds": kinds,
        "uploads": len(upload_s),
        "predictions": len(predict_s),
        "errors": errors,
        "mismatches": mismatches,
        "upload_ms": percentiles(upload_s),
        "predict_ms": percentiles(predict_s),
        "predictions_per_s": round(len(predict_s) / wall, 1),
        "wall_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--predictions", type=int, default=20, help="predictions per client")
    parser.add_argument("--images", type=int, default=4, help="distinct images (1..8; the first two share a size)")
    parser.add_argument("--prompt-kinds", type=int, default=4, choices=(1, 2, 3, 4), help="prompt shapes used")
    parser.add_argument("--url", help="a running server (default: start `sam-jax serve` on tiny-shapes)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.predictions < 1:
        parser.error("--clients and --predictions must be >= 1")
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(cli_server("tiny-shapes"))
        report = run(url.rstrip("/"), args.clients, args.predictions, args.images, args.prompt_kinds)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(1 if (r := main()) and (r["errors"] or r["mismatches"]) else 0)
