"""JAX's persistent compilation cache, on by default for library users and the command line.

A process that finds a program in the cache loads it instead of compiling it: the first
click of an interactive session, the first image of a batch job. JAX keys the entries by
the program, the JAX/XLA version and the device, so a cache can be shared by processes and
kept across runs; a stale entry is never used.

`import sam_jax` turns it on (`enable_default`) in the user's cache folder, bounded to
`DEFAULT_MAX_BYTES` (least recently used programs go first), unless JAX already has a cache
folder (the user's own `JAX_COMPILATION_CACHE_DIR` or `jax_compilation_cache_dir`) or
`SAM_JAX_COMPILATION_CACHE` says "off" or names another folder.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SAM_JAX_COMPILATION_CACHE"
OFF_VALUES = ("off", "none", "0")  # what ENV_VAR says to mean "no cache"
# The default cache's bound: JAX drops the least recently used programs beyond it.
DEFAULT_MAX_BYTES = 2 << 30


def enable_compilation_cache(
    path: str | os.PathLike[str],
    *,
    min_compile_time_secs: float = 0.0,
    min_entry_size_bytes: int = 0,
    max_bytes: int = -1,
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
        max_bytes: the cache's size bound (least recently used programs go first); -1: none.
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
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    return directory


def enable_from_environment(path: str | None = None, *, default: bool = True) -> Path | None:
    """The command line's switch: `path` (a `--compilation-cache` flag), else the
    `SAM_JAX_COMPILATION_CACHE` environment variable, else (with `default`) the user's cache
    folder (`user_cache_dir()/compilation`, at most `DEFAULT_MAX_BYTES`); "off" in either
    place, or `default=False` without a path: no cache (the default one turned off again)."""
    path = path or os.environ.get(ENV_VAR) or None
    if path is not None and path.lower() in OFF_VALUES:
        disable_default()
        return None
    if path is None:
        if not default:
            disable_default()
            return None
        return _enable_default_folder()
    return enable_compilation_cache(path)


_DEFAULT: list[Path] = []  # the folder `enable_default` turned on, if it did


def enable_default() -> Path | None:
    """What `import sam_jax` does (see the module docstring). Never raises: a cache folder
    that cannot be made leaves the cache off."""

    if os.environ.get(ENV_VAR) is None and cache_folder():
        return None  # the user's own JAX cache
    try:
        return enable_from_environment()
    except (OSError, ValueError):
        return None


def disable_default() -> None:
    """Turns off the cache that `enable_default` turned on (not one the user set)."""
    if _DEFAULT:
        import jax

        if cache_folder() == str(_DEFAULT[0]):
            jax.config.update("jax_compilation_cache_dir", None)
        _DEFAULT.clear()


def cache_folder() -> str | None:
    """The persistent cache's folder in use, whoever set it; None when it is off."""
    import jax

    folder = jax.config.values.get("jax_compilation_cache_dir")
    return str(folder) if folder else None


def _enable_default_folder() -> Path:
    folder = enable_compilation_cache(user_cache_dir() / "compilation", max_bytes=DEFAULT_MAX_BYTES)
    _DEFAULT[:] = [folder]
    return folder


def user_cache_dir() -> Path:
    """Where sam-jax keeps what it can make again (converted models, compiled programs):
    `$SAM_JAX_CACHE`, else `$XDG_CACHE_HOME/sam-jax`, else `~/.cache/sam-jax`."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sam-jax"


CACHE_ENV_VAR = "SAM_JAX_CACHE"
