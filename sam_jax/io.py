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
import socket
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
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


def host_memory() -> int:
    """This machine's physical memory in bytes (16 GiB where it cannot be read): what the
    bounds on options that multiply memory (`--batch-size`, automatic-mask options) derive from."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


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
    h, w, _ = _image_header(data, name)
    return h, w


def _image_header(data: bytes, name: str) -> tuple[int, int, str]:
    """(height, width, PIL mode) from the header (see `image_header_size`)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            mode = im.mode
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
    return int(h), int(w), mode


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
    h, w, mode = _image_header(data, name)
    if h * w > max_pixels:
        raise ImageTooLargeError(
            f"{name}: declares {w}x{h} pixels ({h * w}), over the cap of {max_pixels} (raise it with --max-pixels)"
        )
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None and data[:2] == _JPEG_START and data[-2:] != _JPEG_END:
        # `cv2.imread` decodes a truncated JPEG: libjpeg's file reader ends it with an
        # end-of-image marker (and warns), where the in-memory reader fails. The same here.
        bgr = cv2.imdecode(np.frombuffer(data + _JPEG_END, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        if mode in _FLOAT_MODES:
            raise ImageError(
                f"{name}: cannot be read as an 8- or 16-bit image (it holds {mode!r} samples; convert it to 8-bit)"
            )
        raise ImageError(
            f"{name}: cannot be read as an 8- or 16-bit image (damaged or truncated pixel data, "
            "which OpenCV cannot decode)"
        )
    return np.ascontiguousarray(bgr[..., ::-1])


_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
# PIL modes of samples that are neither 8- nor 16-bit integers.
_FLOAT_MODES = ("F", "I", "I;32", "I;32B", "I;32L", "I;16F", "F;32BF", "F;32F")


def read_image_bytes(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes of an image file, read only if it is a regular file (see `read_regular_file`)
    whose size is plausible for an image within the cap (an uncompressed 16-bit RGBA image of
    `max_pixels`)."""
    max_pixels = check_max_pixels(max_pixels)
    limit = 8 * max_pixels + (1 << 20)
    try:
        return read_regular_file(path, limit, f"any image within the cap of {max_pixels} pixels")
    except ValueError as e:
        raise ImageError(str(e)) from None
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from None


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(path: str | os.PathLike[str], mode: int) -> ValueError:
    kind = next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")
    return ValueError(f"{path}: is {kind}, not a regular file; refused without reading it")


def read_regular_file(path: str | os.PathLike[str], limit: int, within: str = "") -> bytes:
    """The bytes of the regular file at `path` (a link is followed), at most `limit` of them.

    A FIFO, a device (`/dev/zero`), a socket or a folder is refused from its `stat`, before it
    is opened (a FIFO would block the reader, a device never end); the file is then opened
    without blocking and checked again, so nothing swapped in meanwhile is read either.

    Raises:
        ValueError: naming `path`: not a regular file, or over `limit` bytes (`within` says
            what the limit is for).
        OSError: it cannot be read (missing, no permission), naming `path`.
    """
    too_large = f"larger than {within or f'{limit} bytes'}"
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path, info.st_mode)
        if info.st_size > limit:
            raise ValueError(f"{path}: a {info.st_size}-byte file is {too_large}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _not_regular(path, os.fstat(fd).st_mode)
            chunks, total = [], 0
            while chunk := os.read(fd, min(1 << 24, limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise ValueError(f"{path}: the file grew while read, {too_large}")
            return b"".join(chunks)
        finally:
            os.close(fd)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


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
    with _naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_INFIX}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode(is_dir=False))
        with _naming(path):
            if overwrite:
                os.replace(tmp, path)
            else:  # a link fails if the name appeared meanwhile, where a rename would replace it
                os.link(tmp, path)
                os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# Temporary siblings are named `.<name>.tmp-<random>`; a temporary folder also holds
# `TEMP_MARKER` (this process's host and id) until it is renamed into place, which is how a
# later run recognises one a killed run left behind (`remove_abandoned_temporaries`).
TEMP_INFIX = ".tmp-"
TEMP_MARKER = ".sam-jax-partial"


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raises an OS error about a temporary sibling as one about `path`, the name the user
    asked for (a permission error names the folder they can fix, not a name of ours)."""
    try:
        yield
    except OSError as e:
        if isinstance(e, FileExistsError) or TEMP_INFIX not in os.path.basename(str(e.filename or "")):
            raise
        raise type(e)(e.errno, f"{e.strerror or e}, cannot write", str(path)) from None


def _temp_marker() -> bytes:
    return f"{socket.gethostname()}\n{os.getpid()}\n".encode()


def is_abandoned_temporary(folder: Path) -> bool:
    """Whether `folder` is a temporary folder of `write_directory` whose process is gone: its
    marker names this host and a process id that no longer runs. A live writer's, another
    host's, and any folder without the marker are not."""
    if TEMP_INFIX not in folder.name or not folder.name.startswith(".") or folder.is_symlink():
        return False
    try:
        host, pid = (folder / TEMP_MARKER).read_text().split("\n")[:2]
        if host != socket.gethostname() or int(pid) == os.getpid():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def remove_abandoned_temporaries(root: str | os.PathLike[str]) -> list[Path]:
    """Removes the temporary folders that killed runs left under `root` (`is_abandoned_temporary`:
    each holds the marker its writer put there); returns them. Nothing else is touched."""
    removed = []
    for folder, dirs, _ in os.walk(root):
        here = Path(folder)
        for d in list(dirs):
            if TEMP_INFIX in d and is_abandoned_temporary(here / d):
                shutil.rmtree(here / d, ignore_errors=True)
                removed.append(here / d)
                dirs.remove(d)
    return removed


def is_temporary(folder: Path) -> bool:
    """Whether `folder` is a temporary folder of `write_directory` (live or abandoned)."""
    return TEMP_INFIX in folder.name and (folder / TEMP_MARKER).is_file() and not folder.is_symlink()


def _apply_umask(root: Path) -> None:
    """Gives everything under `root` the permissions `open()` / `mkdir()` give under the umask
    (some writers, safetensors for one, create their files with mode 600 whatever it is)."""
    files, folders = default_mode(is_dir=False), default_mode(is_dir=True)
    for folder, dirs, names in os.walk(root):
        for d in dirs:
            if not os.path.islink(os.path.join(folder, d)):
                os.chmod(os.path.join(folder, d), folders)
        for n in names:
            if not os.path.islink(os.path.join(folder, n)):
                os.chmod(os.path.join(folder, n), files)
    os.chmod(root, folders)


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
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMP_INFIX}", dir=path.parent))
    try:
        (tmp / TEMP_MARKER).write_bytes(_temp_marker())
        yield tmp
        (tmp / TEMP_MARKER).unlink()
        _apply_umask(tmp)
        if replacing and check_directory_target(path, owns, overwrite, what):
            if _exchange(tmp, path):
                shutil.rmtree(tmp)
            else:
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old)
        else:
            try:
                tmp.rename(path)  # replaces an empty folder; fails if files appeared meanwhile
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # Another process wrote it meanwhile (two commands converting one model at once).
                raise OutputExistsError(
                    path, f"was written by another process meanwhile; {what} left as it is"
                ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def only_names(path: Path, allowed: Callable[[str], bool]) -> bool:
    """Whether every entry of the folder `path` has a name `allowed` accepts."""
    return all(allowed(entry.name) for entry in path.iterdir())
