"""`sam-jax serve`: click-to-segment in the browser, the model running in JAX on the server.

    from sam_jax.serve import create_app, serve_in_thread
    app = create_app(sam_jax.load("tiny-shapes"))     # an ASGI application (Starlette)
    with serve_in_thread(app) as url: ...             # or: uvicorn, or `sam-jax serve`

The HTTP contract is in docs/serve.md. Needs the `serve` extra (starlette, uvicorn,
python-multipart); `import sam_jax` never imports this package.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "create_app": "sam_jax.serve.app",
    "EmbeddingCache": "sam_jax.serve.cache",
    "decode_upload": "sam_jax.serve.images",
    "UploadRejected": "sam_jax.serve.images",
    "serve_in_thread": "sam_jax.serve.server",
    "serve_checkpoint": "sam_jax.serve.server",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the cache or the image decoder does not need the web stack.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sam_jax.serve' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
