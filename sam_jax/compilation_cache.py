"""JAX's persistent compilation cache, for library users and the command line.

A process that finds a program in the cache loads it instead of compiling it: the first
click of an interactive session, the first image of a batch job. JAX keys the entries by
the program, the JAX/XLA version and the device, so a cache can be shared by processes and
kept across runs; a stale entry is never used.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SAM_JAX_COMPILATION_CACHE"


def enable_compilation_cache(
    path: str | os.PathLike[str], *, min_compile_time_secs: float = 0.0, min_entry_size_bytes: int = 0
) -> Path:
    """Stores compiled programs in `path` and reuses them in later processes.

    Call it before anything is compiled (JAX decides once per process whether to use the
    cache). It sets JAX's `jax_compilation_cache_dir`,
    `jax_persistent_cache_min_compile_time_secs` and `jax_persistent_cache_min_entry_size_bytes`.

    Args:
        path: a directory (created if missing).
        min_compile_time_secs: store only programs that took at least this long to compile
            (JAX's default, 1 s, would leave out the small mask post-processing programs).
        min_entry_size_bytes: store only programs at least this large.
    Returns:
        The cache directory.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"compilation cache path must be a directory path, got {type(path).__name__}")
    if min_compile_time_secs < 0 or min_entry_size_bytes < 0:
        raise ValueError("min_compile_time_secs and min_entry_size_bytes must be >= 0")
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"compilation cache {str(directory)!r} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    return directory


def enable_from_environment(path: str | None = None) -> Path | None:
    """The command line's switch: `path` (a `--compilation-cache` flag) or else the
    `SAM_JAX_COMPILATION_CACHE` environment variable; neither: no cache."""
    path = path or os.environ.get(ENV_VAR) or None
    return None if path is None else enable_compilation_cache(path)
