"""The HTTP application of `sam-jax serve` (Starlette, ASGI): a page and a small JSON API.

    GET  /                                  the click-to-segment page
    GET  /healthz                           {"status": "ok", "model": ..., "trained_for": ..., ...}
    POST /api/images                        multipart field `file` -> {"image_id", "width", "height"}
    POST /api/images/{image_id}/predict     {"points", "labels", "box", "multimask", "hq_token_only"}
                                            -> {"masks", "scores"}
    POST /api/images/{image_id}/automatic   AmgOptions fields -> generate_masks records (COCO RLE)
    POST /api/images/{image_id}/automatic/jobs   the same, as a job -> 202 {"job_id", "state", "progress", ...}
    GET  /api/jobs/{job_id}                 {"state", "progress", ...; "records" once done}
    DELETE /api/jobs/{job_id}               cancels it (between two batches of points)

Errors are `{"error": "..."}` with a 4xx status (5xx only for the server's own faults).
Image ids are content hashes made here; nothing the client sends becomes a path. Every
device call runs on one worker thread, so requests never interleave on the device and the
event loop never waits for JAX; decoding uploads and RLE encoding run on a small host pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import re
import secrets
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, TypeVar

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sam_jax.amg import AmgOptions, generate_masks
from sam_jax.config import SamConfig, trained_for
from sam_jax.masks import masks_to_coco_rle
from sam_jax.modeling.sam import SamParams, check_hq_token_only
from sam_jax.predictor import ImageEmbedding, check_params, check_prompts, decode, encode, kept_nbytes
from sam_jax.serve.cache import EmbeddingCache
from sam_jax.serve.images import UploadRejected, decode_upload

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_CACHE_BYTES = 1024 * 2**20
DEFAULT_MAX_POINTS = 32
# Work bounds of one automatic request: prompts over all crops, crop layers, points per batch.
MAX_AUTOMATIC_PROMPTS = 32 * 1024
MAX_CROP_LAYERS = 3
MAX_POINTS_PER_BATCH = 256
# Room for the multipart headers around the file, and the largest JSON body.
MULTIPART_OVERHEAD = 64 * 1024
MAX_JSON_BYTES = 1 * 2**20
# A request body that stalls: no byte for this many seconds (`create_app(body_timeout=...)`),
# or the whole body not in after this factor times it, is answered 408 and its connection closed.
BODY_IDLE_TIMEOUT = 30.0
BODY_TIMEOUT_FACTOR = 10

_JSON_ACCEPTED = f"JSON bodies of at most {MAX_JSON_BYTES} bytes"
PREDICT_FIELDS = ("points", "labels", "box", "multimask", "hq_token_only")
AMG_FIELDS = tuple(f.name for f in dataclasses.fields(AmgOptions))
_IMAGE_ID = re.compile(r"[0-9a-f]{32}")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
# Automatic jobs kept for their clients to read: the oldest finished ones are forgotten beyond
# this, and no more than this many may be unfinished at once (each holds a decoded image).
MAX_JOBS = 16
_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

log = logging.getLogger("sam_jax.serve")
T = TypeVar("T")


class ApiError(Exception):
    """A request the server refuses: answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclasses.dataclass(frozen=True)
class CachedImage:
    """What the server keeps per uploaded image.

    Attributes:
        embedding: the encoder output (on the device).
        data: the uploaded file as received, decoded again for automatic masks (smaller than pixels).
        width, height: of the decoded image, EXIF orientation applied.
        embedding_bytes: what the embedding holds once decoded (`predictor.kept_nbytes`).
    """

    embedding: ImageEmbedding
    data: bytes
    width: int
    height: int
    embedding_bytes: int

    @property
    def nbytes(self) -> int:
        return self.embedding_bytes + len(self.data)


class JobCancelled(Exception):
    """Raised on the device thread, between two batches of points, when a job was cancelled."""


@dataclasses.dataclass
class AutomaticJob:
    """One "segment everything" run started with POST .../automatic/jobs.

    Attributes:
        cancel: set by DELETE /api/jobs/{id}; the device thread stops at the next batch.
        state: "queued", "running", "done", "cancelled" or "failed".
        done, total: batches of points decoded, and in all (over every crop).
        records: the result, once done; error: what failed, once failed.
    """

    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    state: str = "queued"
    done: int = 0
    total: int = 0
    records: list[dict[str, Any]] | None = None
    error: str | None = None
    task: asyncio.Future[None] | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cancelled", "failed")

    def progress(self, done: int, total: int) -> None:
        """`generate_masks`'s progress hook, on the device thread: records it, or stops the work."""
        if self.cancel.is_set():
            raise JobCancelled()
        self.state, self.done, self.total = "running", done, total

    def report(self) -> dict[str, Any]:
        """What GET /api/jobs/{id} answers."""
        out: dict[str, Any] = {
            "state": self.state,
            "progress": self.done / self.total if self.total else (1.0 if self.state == "done" else 0.0),
            "batches_done": self.done,
            "batches_total": self.total,
        }
        if self.records is not None:
            out["records"] = self.records
        if self.error is not None:
            out["error"] = self.error
        return out


def create_app(
    params: SamParams,
    *,
    model_name: str = "model",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    max_points: int = DEFAULT_MAX_POINTS,
    host_threads: int = 2,
    automatic_defaults: dict[str, Any] | None = None,
    warm_up: bool = False,
    body_timeout: float = BODY_IDLE_TIMEOUT,
) -> Starlette:
    """The ASGI application serving `params`.

    Args:
        params: the model (`sam_jax.load`).
        model_name: reported by /healthz.
        max_upload_bytes: the largest image file accepted (bytes).
        max_pixels: the largest width * height accepted, checked from the file header.
        cache_bytes: memory budget of the embedding cache (embeddings plus the uploaded files).
        max_points: the most points in one prediction.
        host_threads: threads decoding uploads and encoding masks as RLE.
        automatic_defaults: the page's initial "segment everything" settings (AmgOptions fields);
            the API's defaults stay the reference's.
        warm_up: on start-up, compile the decoder for the page's usual prompt shapes (on the
            device thread, so requests queue behind it).
        body_timeout: seconds a request body may stall (no byte arriving) before it is
            answered 408; the whole body may take `BODY_TIMEOUT_FACTOR` times this.
    Returns:
        A Starlette application (run it with uvicorn; one process: the cache lives in it).
    """
    params = check_params(params)
    for name, value in (
        ("max_upload_bytes", max_upload_bytes),
        ("max_pixels", max_pixels),
        ("max_points", max_points),
        ("host_threads", host_threads),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(body_timeout, bool) or not isinstance(body_timeout, (int, float)) or not 0 < body_timeout < math.inf:
        raise ValueError(f"body_timeout must be a finite number of seconds > 0, got {body_timeout!r}")
    defaults = dict(automatic_defaults or {})
    unknown = sorted(set(defaults) - set(AMG_FIELDS))
    if unknown:
        raise ValueError(f"automatic_defaults has unknown option(s) {', '.join(unknown)}")
    server = Server(params, model_name, max_upload_bytes, max_pixels, cache_bytes, max_points, host_threads, defaults)
    server.body_timeout = float(body_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if warm_up:
            server.device.submit(warm_up_decoder, params).add_done_callback(_log_failure)
        try:
            yield
        finally:
            server.close()

    routes = [
        Route("/", server.page, methods=["GET"]),
        Route("/static/{name}", server.static, methods=["GET"]),
        Route("/healthz", server.healthz, methods=["GET"]),
        Route("/api/images", server.upload, methods=["POST"]),
        Route("/api/images/{image_id}/predict", server.predict, methods=["POST"]),
        Route("/api/images/{image_id}/automatic", server.automatic, methods=["POST"]),
        Route("/api/images/{image_id}/automatic/jobs", server.start_job, methods=["POST"]),
        Route("/api/jobs/{job_id}", server.job, methods=["GET", "DELETE"]),
    ]
    handlers = {ApiError: _api_error, ClientGone: _client_gone, HTTPException: _http_error, Exception: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.server = server
    return app


def warm_up_decoder(params: SamParams) -> None:
    """Compiles the encoder and the decoder for the page's first prompts, one click and then two
    (each prompt shape is its own program; others compile when first asked for)."""
    size = params.config.image_size
    emb = encode(params, np.zeros((size, size, 3), np.uint8))
    point = [size / 2, size / 2]
    np.asarray(decode(params, emb, [point], multimask_output=True)[0])
    np.asarray(decode(params, emb, [point, point], [1, 0], multimask_output=False)[0])


# ----------------------------------------------------------------------------- the server


class Server:
    """The state behind the routes (`app.state.server`): the model, the cache, the worker threads,
    the limits. `encode_image` and `decode_prompt` are what runs on the device thread."""

    def __init__(
        self,
        params: SamParams,
        model_name: str,
        max_upload_bytes: int,
        max_pixels: int,
        cache_bytes: int,
        max_points: int,
        host_threads: int,
        automatic_defaults: dict[str, Any],
    ) -> None:
        self.params = params
        self.model_name = model_name
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.max_points = max_points
        self.automatic_defaults = automatic_defaults
        self.cache: EmbeddingCache[CachedImage] = EmbeddingCache(cache_bytes)
        # One thread owns the device: requests run there one at a time, in arrival order.
        self.device = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-jax-device")
        self.host = ThreadPoolExecutor(max_workers=host_threads, thread_name_prefix="sam-jax-host")
        self.pending: dict[str, asyncio.Future[CachedImage]] = {}
        self.jobs: dict[str, AutomaticJob] = {}  # in the order started
        self.body_timeout = BODY_IDLE_TIMEOUT
        package = resources.files("sam_jax.serve") / "static"
        self.index_html = (package / "index.html").read_bytes()
        self.static_files = {name: (package / name).read_bytes() for name in _STATIC}

    def close(self) -> None:
        for job in self.jobs.values():
            job.cancel.set()
        self.device.shutdown(wait=False, cancel_futures=True)
        self.host.shutdown(wait=False, cancel_futures=True)

    async def _run(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))

    # --- routes

    async def page(self, request: Request) -> Response:
        return Response(self.index_html, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:  # a lookup in a fixed table: the name never reaches the file system
            raise ApiError(404, "no such static file")
        return Response(self.static_files[name], media_type=_STATIC[name], headers=_PAGE_HEADERS)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": self.model_name,
                "trained_for": trained_for(self.params.config),
                "image_size": self.params.config.image_size,
                "max_upload_bytes": self.max_upload_bytes,
                "max_pixels": self.max_pixels,
                "max_points": self.max_points,
                "automatic_defaults": self.automatic_defaults,
            }
        )

    async def upload(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise ApiError(415, "POST /api/images takes multipart/form-data with the image file in field 'file'")
        accepted = f"image files of at most {self.max_upload_bytes} bytes"
        body = await _read_body(request, self.max_upload_bytes + MULTIPART_OVERHEAD, accepted, self.body_timeout)
        data = await _file_field(request.headers, body, "file")
        if len(data) > self.max_upload_bytes:
            raise ApiError(413, f"the file is {len(data)} bytes; the server accepts {accepted}")
        key = await self._run(self.host, content_key, data)
        entry = self.cache.get(key)
        if entry is None:
            entry = await self._ingest_once(key, data)
        return JSONResponse({"image_id": key, "width": entry.width, "height": entry.height})

    async def predict(self, request: Request) -> Response:
        entry = self._entry(request)
        body = _parse_json(await _read_body(request, MAX_JSON_BYTES, _JSON_ACCEPTED, self.body_timeout), required=True)
        points, labels, box, multimask, hq_token_only = _prompt(body, self.max_points, self.params.config)
        prompt = (entry.embedding, points, labels, box, multimask, hq_token_only)
        masks, scores = await self._run(self.device, self.decode_prompt, *prompt)
        rles = await self._run(self.host, masks_to_coco_rle, masks)
        return JSONResponse({"masks": rles, "scores": [float(s) for s in scores]})

    async def automatic(self, request: Request) -> Response:
        entry = self._entry(request)
        body = _parse_json(await _read_body(request, MAX_JSON_BYTES, _JSON_ACCEPTED, self.body_timeout), required=False)
        options = _automatic_options(body)
        try:
            image = await self._run(self.host, functools.partial(decode_upload, max_pixels=self.max_pixels), entry.data)
        except UploadRejected as e:  # only if the limits changed since the upload; say so plainly
            raise ApiError(e.status, str(e)) from None
        records = await self._run(self.device, functools.partial(generate_masks, self.params, image, **options))
        return JSONResponse(records)

    async def start_job(self, request: Request) -> Response:
        entry = self._entry(request)
        body = _parse_json(await _read_body(request, MAX_JSON_BYTES, _JSON_ACCEPTED, self.body_timeout), required=False)
        options = _automatic_options(body)
        finished = [key for key, job in self.jobs.items() if job.finished]
        for key in finished[: max(0, len(self.jobs) - MAX_JOBS + 1)]:
            del self.jobs[key]
        if len(self.jobs) >= MAX_JOBS:
            raise ApiError(429, f"{MAX_JOBS} automatic jobs are unfinished; wait for one or cancel it (DELETE)")
        job_id = secrets.token_hex(16)
        job = AutomaticJob()
        self.jobs[job_id] = job
        job.task = asyncio.ensure_future(self._run_job(job, entry, options))
        return JSONResponse({"job_id": job_id, **job.report()}, status_code=202)

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = self.jobs.get(job_id) if _JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise ApiError(404, "unknown job_id (finished jobs are forgotten after a while; start it again)")
        if request.method == "DELETE" and not job.finished:
            job.cancel.set()
            if job.state == "queued" and job.task is not None and job.task.cancel():
                job.state = "cancelled"  # never reached the device
        return JSONResponse({"job_id": job_id, **job.report()})

    async def _run_job(self, job: AutomaticJob, entry: CachedImage, options: dict[str, Any]) -> None:
        """Runs a job to its end; every outcome is recorded in `job`, none raised."""
        try:
            image = await self._run(self.host, functools.partial(decode_upload, max_pixels=self.max_pixels), entry.data)
            if job.cancel.is_set():  # cancelled while decoding: the device is not asked
                raise JobCancelled()
            run = functools.partial(generate_masks, self.params, image, progress=job.progress, **options)
            job.records = await self._run(self.device, run)
            job.state = "done"
        except (JobCancelled, asyncio.CancelledError):
            job.state = "cancelled"
        except (UploadRejected, ValueError) as e:  # the limits changed, or options the image cannot take
            job.state, job.error = "failed", str(e)
        except Exception:
            log.exception("automatic job failed")
            job.state, job.error = "failed", "internal server error"

    # --- helpers

    def _entry(self, request: Request) -> CachedImage:
        image_id = request.path_params["image_id"]
        entry = self.cache.get(image_id) if _IMAGE_ID.fullmatch(image_id) else None
        if entry is None:
            shown = image_id if len(image_id) <= 64 else image_id[:64] + "..."
            raise ApiError(
                404,
                f"unknown image_id {shown!r}: upload the image (again) with POST /api/images (old ones are evicted)",
            )
        return entry

    async def _ingest_once(self, key: str, data: bytes) -> CachedImage:
        """Decodes and encodes an upload; concurrent uploads of the same content share one run."""
        future = self.pending.get(key)
        if future is None:
            future = asyncio.ensure_future(self._ingest(key, data))
            self.pending[key] = future
            future.add_done_callback(functools.partial(_forget, self.pending, key))
        # shield: one client going away must not cancel the work others wait for.
        return await asyncio.shield(future)

    async def _ingest(self, key: str, data: bytes) -> CachedImage:
        try:
            image = await self._run(self.host, functools.partial(decode_upload, max_pixels=self.max_pixels), data)
        except UploadRejected as e:
            raise ApiError(e.status, str(e)) from None
        embedding = await self._run(self.device, self.encode_image, image)
        kept = kept_nbytes(self.params, embedding)
        entry = CachedImage(embedding, data, int(image.shape[1]), int(image.shape[0]), kept)
        self.cache.put(key, entry, entry.nbytes)
        return entry

    def encode_image(self, image: np.ndarray) -> ImageEmbedding:
        """Runs on the device thread.

        Args:
            image: (H, W, 3) uint8 RGB.
        Returns:
            Its `ImageEmbedding`, computed (not merely dispatched).
        """
        embedding = encode(self.params, image)
        embedding.image_embedding.block_until_ready()  # finish on the device thread, not in a later request
        return embedding

    def decode_prompt(
        self,
        embedding: ImageEmbedding,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        multimask: bool,
        hq_token_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Runs on the device thread: `sam_jax.decode` of one prompt.

        Args:
            embedding: of the image.
            points: (N, 2) pixel (x, y), labels: (N,), box: (4,) XYXY; absent ones None.
            multimask: three candidates, else one.
            hq_token_only: a SAM-HQ model's HQ mask alone (`sam_jax.decode`).
        Returns:
            masks (C, H, W) bool and scores (C,) float32, on the host.
        """
        masks, scores, _ = decode(
            self.params, embedding, points, labels, box=box, multimask_output=multimask, hq_token_only=hq_token_only
        )
        return np.asarray(masks), np.asarray(scores)


def content_key(data: bytes) -> str:
    """The image id of an upload: 128 bits of its SHA-256, in hex."""
    return hashlib.sha256(data).hexdigest()[:32]


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("warm-up failed: %s", future.exception())


def _forget(pending: dict[str, Any], key: str, future: asyncio.Future[Any]) -> None:
    pending.pop(key, None)
    if not future.cancelled():
        future.exception()  # retrieved here, so an upload nobody waits for any more logs nothing


# ----------------------------------------------------------------------------- requests


class ClientGone(Exception):
    """The client closed the connection before its request body arrived: nobody to answer."""


async def _read_body(request: Request, limit: int, accepted: str, idle_timeout: float = BODY_IDLE_TIMEOUT) -> bytes:
    """The request body, refused with 413 (saying `accepted`) as soon as it is known to exceed `limit` bytes,
    and with 408 when no byte of it arrives for `idle_timeout` seconds or the whole of it takes longer
    than `BODY_TIMEOUT_FACTOR` times that (a client that stalls holds no connection for long)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "the Content-Length header must be a byte count")
        if int(length) > limit:
            raise ApiError(413, f"the request body is {int(length)} bytes; the server accepts {accepted}")
    chunks, total = [], 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BODY_TIMEOUT_FACTOR * idle_timeout
    stream = request.stream().__aiter__()
    while True:
        wait = min(idle_timeout, deadline - loop.time())
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(wait, 0.0))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise ApiError(
                408,
                f"the request body stopped arriving ({total} bytes in; the server waits {idle_timeout:g} s for "
                f"more, {BODY_TIMEOUT_FACTOR * idle_timeout:g} s in all)",
                {"Connection": "close"},  # the rest of the body will not be read: nor is the connection kept
            ) from None
        except ClientDisconnect:
            raise ClientGone() from None
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"the request body exceeds {limit} bytes; the server accepts {accepted}")
        chunks.append(chunk)
    return b"".join(chunks)


async def _file_field(headers: Headers, body: bytes, field: str) -> bytes:
    """The bytes of the multipart file field `field` of `body`."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(headers, stream(), max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ApiError(400, f"malformed multipart/form-data: {e.message}") from None
    try:
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            raise ApiError(400, f"the multipart body has no file in field {field!r}")
        return await upload.read()
    finally:
        await form.close()


def _parse_json(body: bytes, *, required: bool) -> Any:
    if not body.strip():
        if required:
            raise ApiError(400, "the request body must be a JSON object")
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _prompt(
    body: Any, max_points: int, config: SamConfig
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, bool, bool]:
    """Validates a predict body; returns (points (N, 2), labels (N,), box (4,), multimask,
    hq_token_only)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object with fields {', '.join(PREDICT_FIELDS)}")
    unknown = sorted(set(body) - set(PREDICT_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(PREDICT_FIELDS)}")
    points, labels, box = body.get("points"), body.get("labels"), body.get("box")
    multimask = body.get("multimask", True)
    if not isinstance(multimask, bool):
        raise ApiError(400, f"multimask must be true or false, got {multimask!r}")
    hq_token_only = body.get("hq_token_only", False)
    if not isinstance(hq_token_only, bool):  # said in JSON's words, as multimask's
        raise ApiError(400, f"hq_token_only must be true or false, got {hq_token_only!r}")
    try:
        check_hq_token_only(config, hq_token_only)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    if points is not None:
        if not isinstance(points, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_number(c) for c in p) for p in points
        ):
            raise ApiError(400, "points must be a list of [x, y] pixel coordinates (numbers)")
        if len(points) > max_points:
            raise ApiError(400, f"points holds {len(points)} points; the server accepts at most {max_points}")
    if labels is not None and (not isinstance(labels, list) or not all(_is_number(v) for v in labels)):
        raise ApiError(400, "labels must be a list of numbers, 1 (foreground) or 0 (background), one per point")
    if box is not None and (not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box)):
        raise ApiError(400, "box must be [x0, y0, x1, y1] in pixels, or null")
    if points == [] and not labels:  # an empty prompt list means no points
        points = labels = None
    if labels is not None and points is None:
        raise ApiError(400, "labels were given without points")
    if points is None and box is None:
        raise ApiError(400, "no prompt: give points (with labels) or a box")
    try:
        _, pts, lab, bx, _ = check_prompts(points, labels, box, None, config.low_res_mask_size)
    except (ValueError, TypeError) as e:
        raise ApiError(400, str(e)) from None
    return (
        None if pts is None else pts[0],
        None if lab is None else lab[0],
        None if bx is None else bx[0],
        multimask,
        hq_token_only,
    )


def _automatic_options(body: Any) -> dict[str, Any]:
    """Validates an automatic body (AmgOptions fields, output_mode fixed to coco_rle) and bounds its work."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object of automatic-mask options (sam_jax.AmgOptions fields)")
    unknown = sorted(set(body) - set(AMG_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(AMG_FIELDS)}")
    options = dict(body)
    if options.setdefault("output_mode", "coco_rle") != "coco_rle":
        raise ApiError(400, f"output_mode must be 'coco_rle' over HTTP, got {options['output_mode']!r}")
    # Bound the work before building grids: these would otherwise size the allocation.
    side, layers, batch = options.get("points_per_side"), options.get("crop_n_layers"), options.get("points_per_batch")
    if side is not None and _is_number(side) and side > math.isqrt(MAX_AUTOMATIC_PROMPTS):
        raise ApiError(400, f"points_per_side must be at most {math.isqrt(MAX_AUTOMATIC_PROMPTS)}, got {side}")
    if layers is not None and _is_number(layers) and layers > MAX_CROP_LAYERS:
        raise ApiError(400, f"crop_n_layers must be at most {MAX_CROP_LAYERS}, got {layers}")
    if batch is not None and _is_number(batch) and batch > MAX_POINTS_PER_BATCH:
        raise ApiError(400, f"points_per_batch must be at most {MAX_POINTS_PER_BATCH}, got {batch}")
    if options.get("point_grids") is not None:
        if not isinstance(options["point_grids"], list):
            raise ApiError(400, "point_grids must be a list of grids, each a list of [x, y] in [0, 1]")
        try:
            options["point_grids"] = [np.asarray(g, np.float64) for g in options["point_grids"]]
        except (ValueError, TypeError):
            raise ApiError(400, "point_grids must be a list of grids, each a list of [x, y] in [0, 1]") from None
    try:
        opts = AmgOptions(**options)
    except (ValueError, TypeError) as e:
        raise ApiError(400, str(e)) from None
    grids = opts.layer_point_grids()
    prompts = sum(4**layer * len(grids[layer]) for layer in range(opts.crop_n_layers + 1))
    if prompts > MAX_AUTOMATIC_PROMPTS:
        raise ApiError(400, f"these options decode {prompts} point prompts; the server allows {MAX_AUTOMATIC_PROMPTS}")
    return {f: getattr(opts, f) for f in AMG_FIELDS}


# ----------------------------------------------------------------------------- errors


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # One line in the log, no traceback: a client closing its connection is no fault of the server's.
    log.info("%s %s: the client disconnected before its request body arrived", request.method, request.url.path)
    return Response(status_code=400)  # sent to no one: the connection is gone


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer, so the server logs the traceback; the client never sees it.
    return JSONResponse({"error": "internal server error"}, status_code=500)
