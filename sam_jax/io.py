"""Files in and out: images read as the reference reads them, outputs written safely.

Reading: `decode_image` / `read_image` decode with OpenCV as the reference's `scripts/amg.py`
does (`cv2.imread`: 16-bit samples scaled to 8 bits, EXIF orientation applied, alpha dropped,
BGR turned to RGB), after checking the size the file's header declares against a pixel cap:
a small file declaring a huge image is refused before any memory is spent on it.
`MemoryBudget` bounds the decoded bytes that a pool of decoding threads holds at once.

Writing: every output appears by renaming a complete temporary sibling into place
(`atomic_write_bytes`, `write_directory`), with the permissions `open()` would have given it
(the umask), and nothing a command did not write is replaced or deleted: `write_directory`
writes a folder only where there is none, an empty one, or one the caller recognises as
its own kind of output.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Decoded-pixel cap of every command that reads images (`--max-pixels`): 100 megapixels is
# above any camera's default output and 300 MB as RGB; a larger image is refused from its header.
DEFAULT_MAX_PIXELS = 100_000_000
# Bytes of decoded images that the decoding threads of a job hold at once (`MemoryBudget`).
DECODE_MEMORY_BUDGET = 2 << 30


class ImageError(ValueError):
    """A file that is not an image this project reads; the message names the file."""


class ImageTooLargeError(ImageError):
    """An image whose header declares more pixels than the cap allows."""


class OutputExistsError(FileExistsError):
    """Something is where an output would go; it was left untouched. `str()` names it."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(errno.EEXIST, reason, str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def check_max_pixels(value: object, name: str = "max_pixels") -> int:
    """`value` as a positive pixel cap; raises naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer (pixels), got {value!r}")
    return int(value)


# EXIF orientations that turn the image by a quarter (transpose, rotate 90, transverse, rotate 270).
_QUARTER_TURNS = (5, 6, 7, 8)


def image_header_size(data: bytes, name: str) -> tuple[int, int]:
    """(height, width) of the image as `decode_image` returns it (EXIF orientation applied),
    read from the file's header without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if _orientation(im) in _QUARTER_TURNS:
                w, h = h, w
    except Image.DecompressionBombError as e:
        declared = re.search(r"\((\d+) pixels\)", str(e))
        count = declared.group(1) if declared else "more"
        raise ImageTooLargeError(f"{name}: declares {count} pixels, more than any cap allows") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (unknown format or damaged header)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(
            f"{name}: not a readable image ({', '.join(map(str, e.args[:1])) or type(e).__name__})"
        ) from None
    return int(h), int(w)


def _orientation(im: Any) -> int | None:
    """The EXIF orientation tag, read without decoding pixels (a PNG's `getexif()` loads the
    image when its EXIF chunk is not in the header: only a header chunk is read here)."""
    from PIL import Image

    if im.format == "PNG":
        raw = im.info.get("exif")
        if not raw:
            return None
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(0x0112)
    return im.getexif().get(0x0112)


def decode_image(data: bytes, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes an encoded image (PNG, JPEG, WebP, BMP, TIFF) as the reference does.

    Args:
        data: the file's bytes.
        name: how errors name the image (its path, or "upload").
        max_pixels: refuse images whose header declares more pixels than this.
    Returns:
        (H, W, 3) uint8 RGB, after EXIF orientation; 16-bit samples scaled to 8 bits.
    Raises:
        ImageError: empty, unreadable, over the cap, or of a sample format the reference
            cannot read either (float-valued TIFFs, for example).
    """
    max_pixels = check_max_pixels(max_pixels)
    if not data:
        raise ImageError(f"{name}: empty file, not an image")
    h, w = image_header_size(data, name)
    if h * w > max_pixels:
        raise ImageTooLargeError(
            f"{name}: declares {w}x{h} pixels ({h * w}), over the cap of {max_pixels} (raise it with --max-pixels)"
        )
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ImageError(f"{name}: cannot be read as an 8- or 16-bit image (convert float or exotic formats to 8-bit)")
    return np.ascontiguousarray(bgr[..., ::-1])


def read_image_bytes(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes of an image file, read only if its size is plausible for an image within the
    cap (an uncompressed 16-bit RGBA image of `max_pixels`)."""
    max_pixels = check_max_pixels(max_pixels)
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > 8 * max_pixels + (1 << 20):
            raise ImageError(
                f"{path}: a {size}-byte file is larger than any image within the cap of {max_pixels} pixels"
            )
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from None


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`decode_image` of the file at `path` (see `read_image_bytes`)."""
    data = read_image_bytes(path, max_pixels=max_pixels)
    return decode_image(data, name=str(path), max_pixels=max_pixels)


def decoded_bytes(data: bytes, name: str) -> int:
    """An upper estimate of the memory decoding `data` takes (4 bytes per declared pixel)."""
    h, w = image_header_size(data, name)
    return 4 * h * w


class MemoryBudget:
    """Bounds the bytes held by items acquired in order (tickets 0, 1, 2, ...).

    Tickets are served in order, so the item a consumer waits for next is never blocked by
    later ones; an item larger than the whole budget is served when nothing else is held.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._next = 0
        self._cond = threading.Condition()

    def acquire(self, ticket: int, nbytes: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._next == ticket and (self._held == 0 or self._held + nbytes <= self.limit))
            self._held += nbytes
            self._next += 1
            self._cond.notify_all()

    def skip(self, ticket: int) -> None:
        """Passes a ticket that acquires nothing (its item failed before it knew its size)."""
        self.acquire(ticket, 0)

    def release(self, nbytes: int) -> None:
        with self._cond:
            self._held -= nbytes
            self._cond.notify_all()


# ----------------------------------------------------------------------------- writing


def _current_umask() -> int:
    try:  # Linux reports it without changing it (read each time: a process may change it)
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        with _umask_lock:  # elsewhere it can only be read by setting it
            mask = os.umask(0o022)
            os.umask(mask)
            return mask


_umask_lock = threading.Lock()


def default_mode(is_dir: bool) -> int:
    """The permissions `open()` / `mkdir()` would give a new file or folder (the umask applied)."""
    return (0o777 if is_dir else 0o666) & ~_current_umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Writes a file through a temporary sibling renamed into place.

    Args:
        overwrite: replace an existing file at `path`; when False an existing one raises
            `FileExistsError` and is left as it was.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise OutputExistsError(path, "exists; replace it with --overwrite (overwrite=True)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode(is_dir=False))
        if overwrite:
            os.replace(tmp, path)
        else:  # a link fails if the name appeared meanwhile, where a rename would replace it
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux `renameat2(RENAME_EXCHANGE)`); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def check_directory_target(
    path: str | os.PathLike[str], owns: Callable[[Path], bool], overwrite: bool, what: str
) -> bool:
    """Checks that `write_directory` may write `path`, before any work is done.

    Returns:
        True when `path` holds an earlier output of this kind (it would be replaced).
    Raises:
        OutputExistsError: `path` holds something else (never touched), or an earlier
            output and `overwrite` is False.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_dir() or path.is_symlink():
        raise OutputExistsError(path, f"exists and is not a folder; refusing to replace it with {what}")
    if not any(path.iterdir()):
        return False
    if not owns(path):
        raise OutputExistsError(path, f"is a folder holding other files; refusing to write {what} into it")
    if not overwrite:
        raise OutputExistsError(path, f"already holds {what}; replace it with --overwrite (overwrite=True)")
    return True


@contextlib.contextmanager
def write_directory(
    path: str | os.PathLike[str], *, owns: Callable[[Path], bool], overwrite: bool, what: str
) -> Iterator[Path]:
    """Yields an empty temporary sibling folder that becomes `path` when the block succeeds.

    `path` may be absent or an empty folder; a folder that `owns(path)` recognises as an
    earlier output of this kind is replaced (atomically where the system can swap two
    folders) only with `overwrite`; anything else is refused before the block runs and is
    never touched. On error the temporary folder is removed and `path` is as it was.

    Args:
        owns: whether a non-empty folder is an output of this kind (e.g. a checkpoint).
        overwrite: replace such an output.
        what: the output's name in messages ("a sam_jax checkpoint").
    """
    path = Path(path).absolute()
    replacing = check_directory_target(path, owns, overwrite, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, default_mode(is_dir=True))
        if replacing and check_directory_target(path, owns, overwrite, what):
            if _exchange(tmp, path):
                shutil.rmtree(tmp)
            else:
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old)
        else:
            tmp.rename(path)  # replaces an empty folder; fails if files appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def only_names(path: Path, allowed: Callable[[str], bool]) -> bool:
    """Whether every entry of the folder `path` has a name `allowed` accepts."""
    return all(allowed(entry.name) for entry in path.iterdir())
