"""Images read a window at a time, for images larger than a pixel cap (tiled automatic masks).

A windowed image is anything with `.shape` (H, W) and `.read(y0, y1, x0, x1)` returning the
window's (y1 - y0, x1 - x0, 3) uint8 RGB pixels (`WindowedImage`). Two kinds:

- `TiffWindows`: a tiled or stripped TIFF whose segments this module decodes itself
  (uncompressed or Deflate, with or without the horizontal predictor; 8- or 16-bit gray,
  RGB or RGBA, samples interleaved). A window decodes only the segments it touches, so
  memory grows with the window, not with the image. Pillow cannot do this: it decodes a
  compressed TIFF through libtiff as a whole, whatever region is asked for.
- `ArrayWindows`: an image already in memory; every other file is decoded whole by
  `sam_jax.io.read_image` (as the reference reads it), within the pixel cap the caller gives.

`open_windows(path, max_pixels=...)` picks the kind. `write_tiled_tiff` writes the TIFFs
`TiffWindows` reads (tests, benchmarks, and users preparing large scenes).
"""

from __future__ import annotations

import dataclasses
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from sam_jax.io import DEFAULT_MAX_PIXELS, ImageError, check_max_pixels, default_mode, read_image

# The largest decoded TIFF segment (a tile, or a strip) a window may need: a TIFF stored as
# one huge strip cannot be read in bounded memory, so it is decoded whole, within the cap.
MAX_SEGMENT_BYTES = 64 << 20
# TIFF compressions decoded here: none, Deflate (the registered code and Adobe's).
_COMPRESSIONS = {1: "none", 8: "deflate", 32946: "deflate"}
WINDOWED_FORM = (
    "a tiled or stripped TIFF, uncompressed or Deflate, 8- or 16-bit gray, RGB or RGBA samples interleaved, "
    "no orientation tag"
)

_TAGS = {
    "width": 256,
    "height": 257,
    "bits": 258,
    "compression": 259,
    "photometric": 262,
    "strip_offsets": 273,
    "orientation": 274,
    "samples": 277,
    "rows_per_strip": 278,
    "strip_counts": 279,
    "planar": 284,
    "predictor": 317,
    "tile_width": 322,
    "tile_length": 323,
    "tile_offsets": 324,
    "tile_counts": 325,
    "extra_samples": 338,
    "sample_format": 339,
}


class WindowedImage(Protocol):
    """An image read a window at a time."""

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the whole image."""
        ...

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The pixels of rows y0..y1-1 and columns x0..x1-1: (y1 - y0, x1 - x0, 3) uint8 RGB."""
        ...


def check_window(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> None:
    """Raises ValueError unless 0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W."""
    h, w = shape
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise ValueError(f"window rows {y0}:{y1}, columns {x0}:{x1} is empty or outside a {w}x{h} image")


@dataclasses.dataclass(frozen=True)
class ArrayWindows:
    """A windowed view of an (H, W, 3) uint8 image in memory."""

    image: np.ndarray

    def __post_init__(self) -> None:
        a = self.image
        if not isinstance(a, np.ndarray) or a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            form = f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got a {form}")

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        check_window(self.shape, y0, y1, x0, x1)
        return np.ascontiguousarray(self.image[y0:y1, x0:x1])

    def close(self) -> None:
        """Nothing to release (as `TiffWindows.close`, so both serve in a `with` block)."""

    def __enter__(self) -> ArrayWindows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class _TiffLayout:
    """What `TiffWindows` needs of a TIFF's first image: its segments and sample format."""

    height: int
    width: int
    seg_h: int  # rows per segment (tile length, or rows per strip)
    seg_w: int  # columns per segment (tile width, or the image width for strips)
    tiled: bool
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    samples: int
    bits: int
    deflate: bool
    predictor: bool
    big_endian: bool

    @property
    def segments_across(self) -> int:
        return -(-self.width // self.seg_w)

    def segment_rows(self, row: int) -> int:
        """Rows stored in the segments of segment row `row` (tiles are padded; the last strip is not)."""
        return self.seg_h if self.tiled else min(self.seg_h, self.height - row * self.seg_h)


def _tiff_layout(f: BinaryIO, name: str) -> _TiffLayout | str:
    """The layout of the TIFF open as `f`, or the reason it cannot be read by windows.

    Only the header and the first directory are read (Pillow's parser of directories, used
    directly: `Image.open` would refuse a TIFF above its own pixel limit before any tag is seen).

    Raises:
        ImageError: not a TIFF, or a damaged one.
    """
    from PIL import TiffImagePlugin

    head = f.read(16)
    if head[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise ImageError(f"{name}: not a TIFF file (expected {WINDOWED_FORM})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of damage it then raises for, or works around
            ifd = TiffImagePlugin.ImageFileDirectory_v2(head if head[2] == 0x2B or head[3] == 0x2B else head[:8])
            f.seek(ifd.next)
            ifd.load(f)
    except (OSError, SyntaxError, ValueError, struct.error, KeyError) as e:
        raise ImageError(
            f"{name}: damaged TIFF directory ({e or type(e).__name__}); expected {WINDOWED_FORM}"
        ) from None
    tags: dict[str, Any] = {key: ifd.get(tag) for key, tag in _TAGS.items()}

    def values(key: str) -> tuple[int, ...]:
        v = tags[key]
        return tuple(int(x) for x in (v if isinstance(v, tuple) else (v,))) if v is not None else ()

    if tags["width"] is None or tags["height"] is None:
        raise ImageError(f"{name}: damaged TIFF (no image width or length); expected {WINDOWED_FORM}")
    width, height = int(tags["width"]), int(tags["height"])
    if width < 1 or height < 1:
        raise ImageError(f"{name}: damaged TIFF (an image of {width}x{height} pixels); expected {WINDOWED_FORM}")
    samples = int(tags["samples"] or 1)
    bits = values("bits") or (1,)
    compression = int(tags["compression"] or 1)
    photometric = tags["photometric"]
    if compression not in _COMPRESSIONS:
        return f"compression {compression}"
    if len(set(bits)) != 1 or bits[0] not in (8, 16):
        return f"{'/'.join(map(str, bits))}-bit samples"
    if set(values("sample_format")) - {1}:
        return "samples that are not unsigned integers"
    if samples > 1 and int(tags["planar"] or 1) != 1:
        return "samples stored plane by plane"
    if not ((photometric in (0, 1) and samples in (1, 2)) or (photometric == 2 and samples in (3, 4))):
        return f"photometric interpretation {photometric} with {samples} samples"
    if photometric == 0:
        return "white-is-zero gray"
    if int(tags["orientation"] or 1) != 1:
        return f"orientation {tags['orientation']}"
    predictor = int(tags["predictor"] or 1)
    if predictor not in (1, 2):
        return f"predictor {predictor}"
    tiled = tags["tile_width"] is not None
    if tiled:
        seg_w, seg_h = int(tags["tile_width"]), int(tags["tile_length"] or 0)
        offsets, counts = values("tile_offsets"), values("tile_counts")
    else:
        seg_w, seg_h = width, min(int(tags["rows_per_strip"] or height), height)
        offsets, counts = values("strip_offsets"), values("strip_counts")
    if seg_w < 1 or seg_h < 1:
        raise ImageError(f"{name}: damaged TIFF (segments of {seg_w}x{seg_h} pixels); expected {WINDOWED_FORM}")
    expected = -(-width // seg_w) * -(-height // seg_h)
    if len(offsets) != expected or len(counts) != expected:
        raise ImageError(
            f"{name}: damaged TIFF ({len(offsets)} segment offsets, {expected} needed); expected {WINDOWED_FORM}"
        )
    if seg_w * seg_h * samples * bits[0] // 8 > MAX_SEGMENT_BYTES:
        return f"segments of {seg_w}x{seg_h} pixels, over {MAX_SEGMENT_BYTES >> 20} MiB each"
    return _TiffLayout(
        height,
        width,
        seg_h,
        seg_w,
        tiled,
        offsets,
        counts,
        samples,
        bits[0],
        _COMPRESSIONS[compression] == "deflate",
        predictor == 2,
        head[:2] == b"MM",
    )


class TiffWindows:
    """A tiled or stripped TIFF read a window at a time (see the module docstring).

    The file stays open until `close()` (or the end of a `with` block).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "rb")  # closed by close()
        try:
            layout = _tiff_layout(self._file, str(self.path))
        except BaseException:
            self._file.close()
            raise
        if isinstance(layout, str):
            self._file.close()
            raise ImageError(f"{self.path}: cannot be read by windows ({layout}); expected {WINDOWED_FORM}")
        self.layout = layout

    def __enter__(self) -> TiffWindows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.height, self.layout.width

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        check_window(self.shape, y0, y1, x0, x1)
        lay = self.layout
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for row in range(y0 // lay.seg_h, (y1 - 1) // lay.seg_h + 1):
            for col in range(x0 // lay.seg_w, (x1 - 1) // lay.seg_w + 1):
                seg = self._segment(row, col)
                sy, sx = row * lay.seg_h, col * lay.seg_w
                a0, a1 = max(y0, sy), min(y1, sy + seg.shape[0])
                b0, b1 = max(x0, sx), min(x1, sx + lay.seg_w)
                out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = seg[a0 - sy : a1 - sy, b0 - sx : b1 - sx]
        return out

    def _segment(self, row: int, col: int) -> np.ndarray:
        """Segment (row, col) decoded: (rows, seg_w, 3) uint8 RGB."""
        lay = self.layout
        index = row * lay.segments_across + col
        rows = lay.segment_rows(row)
        sample_bytes = lay.bits // 8
        raw_size = rows * lay.seg_w * lay.samples * sample_bytes
        count = lay.counts[index]
        # Deflate stores incompressible data in slightly more bytes than it holds.
        if count > raw_size + raw_size // 64 + (1 << 16):
            raise ImageError(f"{self.path}: damaged TIFF (segment {index} declares {count} bytes for {raw_size})")
        self._file.seek(lay.offsets[index])
        data = self._file.read(count)
        if len(data) != count:
            raise ImageError(f"{self.path}: truncated TIFF (segment {index} ends past the end of the file)")
        if lay.deflate:
            try:
                inflater = zlib.decompressobj()
                data = inflater.decompress(data, raw_size)  # bounded: a bomb stops at the segment's size
            except zlib.error as e:
                raise ImageError(f"{self.path}: damaged TIFF (segment {index}: {e})") from None
        if len(data) < raw_size:
            raise ImageError(f"{self.path}: damaged TIFF (segment {index} holds {len(data)} of {raw_size} bytes)")
        dtype = np.dtype(np.uint8) if lay.bits == 8 else np.dtype(">u2" if lay.big_endian else "<u2")
        samples = np.frombuffer(data[:raw_size], dtype).reshape(rows, lay.seg_w, lay.samples)
        if lay.predictor:  # horizontal differencing, undone modulo the sample range
            samples = np.cumsum(samples, axis=1, dtype=dtype)
        if lay.bits == 16:  # to 8 bits as cv2.imread does: its gray and colour paths differ
            wide = samples.astype(np.uint32)
            samples = (wide >> 8 if lay.samples <= 2 else (wide * 255 + 32767) // 65535).astype(np.uint8)
        if lay.samples <= 2:  # gray (and alpha): the gray channel thrice, as cv2.imread
            return np.repeat(samples[..., :1], 3, axis=2)
        return np.ascontiguousarray(samples[..., :3])


def windowed_reason(path: str | os.PathLike[str]) -> str | None:
    """None if `path` is a TIFF that `TiffWindows` reads; otherwise why not (not a TIFF, its
    compression, ...).

    Raises:
        ImageError: a damaged TIFF.
        OSError: the file cannot be opened.
    """
    with open(path, "rb") as f:
        if f.read(4) not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return "not a TIFF"
        f.seek(0)
        layout = _tiff_layout(f, str(path))
    return layout if isinstance(layout, str) else None


def open_windows(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> TiffWindows | ArrayWindows:
    """The image at `path`, read by windows where its format allows, whole otherwise.

    Args:
        path: an image file.
        max_pixels: the cap on an image decoded whole (every format but `WINDOWED_FORM`); a
            windowed TIFF holds only the segments a window needs, so it has no cap.
    Returns:
        A `TiffWindows` or an `ArrayWindows` (both close, and serve in a `with` block).
    Raises:
        ImageError: unreadable, damaged, or decoded whole and over the cap (the message
            names the file and the form that is read by windows).
    """
    max_pixels = check_max_pixels(max_pixels)
    try:
        reason = windowed_reason(path)
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from None
    if reason is None:
        return TiffWindows(path)
    try:
        return ArrayWindows(read_image(path, max_pixels=max_pixels))
    except ImageError as e:
        if "over the cap" not in str(e):
            raise
        raise ImageError(
            f"{e}; it is decoded whole ({reason}): only {WINDOWED_FORM} is read window by window"
        ) from None


def write_tiled_tiff(
    path: str | os.PathLike[str], image: np.ndarray, *, tile: int = 256, deflate: bool = True, level: int = 6
) -> None:
    """Writes an (H, W, 3) uint8 RGB image as a tiled TIFF (`TiffWindows` reads it, and so do
    Pillow, libtiff and OpenCV), through a temporary sibling renamed into place.

    Args:
        path: the file to write (replaced if it exists).
        image: (H, W, 3) uint8, or anything with `.shape` (H, W) and `.read` (a `WindowedImage`),
            read one row of tiles at a time.
        tile: tile side in pixels, a multiple of 16 (TIFF's rule).
        deflate: Deflate-compress the tiles (else stored raw).
        level: zlib compression level.
    """
    source: Any = ArrayWindows(image) if isinstance(image, np.ndarray) else image
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    h, w = source.shape
    across, down = -(-w // tile), -(-h // tile)
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"II*\x00" + struct.pack("<I", 0))  # the directory's offset, patched at the end
            offsets, counts = [], []
            for ty in range(down):
                y0, y1 = ty * tile, min((ty + 1) * tile, h)
                band = source.read(y0, y1, 0, w)
                for tx in range(across):
                    block = np.zeros((tile, tile, 3), np.uint8)  # edge tiles are padded, as TIFF stores them
                    part = band[:, tx * tile : (tx + 1) * tile]
                    block[: part.shape[0], : part.shape[1]] = part
                    data = zlib.compress(block.tobytes(), level) if deflate else block.tobytes()
                    offsets.append(f.tell())
                    counts.append(len(data))
                    f.write(data)
            _write_directory(f, w, h, tile, 8 if deflate else 1, offsets, counts)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode(is_dir=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_directory(
    f: BinaryIO, width: int, height: int, tile: int, compression: int, offsets: list[int], counts: list[int]
) -> None:
    """Appends the TIFF directory of an 8-bit RGB tiled image and points the header at it."""
    if f.tell() + 8 * (len(offsets) + 8) >= 1 << 32:
        raise ValueError("a classic TIFF holds at most 4 GiB; write a smaller image or compress it")
    if f.tell() % 2:
        f.write(b"\x00")  # directories start on a word boundary
    extra_at = f.tell()
    bits_at = extra_at
    extra = struct.pack("<3H", 8, 8, 8)
    offsets_at = bits_at + len(extra)
    extra += struct.pack(f"<{len(offsets)}I", *offsets)
    counts_at = offsets_at + 4 * len(offsets)
    extra += struct.pack(f"<{len(counts)}I", *counts)
    f.write(extra)
    if f.tell() % 2:
        f.write(b"\x00")
    ifd_at = f.tell()
    short, long_ = 3, 4
    many = len(offsets) > 1
    entries = [
        (256, long_, 1, width),
        (257, long_, 1, height),
        (258, short, 3, bits_at),
        (259, short, 1, compression),
        (262, short, 1, 2),
        (277, short, 1, 3),
        (284, short, 1, 1),
        (322, long_, 1, tile),
        (323, long_, 1, tile),
        (324, long_, len(offsets), offsets_at if many else offsets[0]),
        (325, long_, len(counts), counts_at if many else counts[0]),
    ]
    f.write(struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HI", value, 0)[:4] if kind == short and count == 1 else struct.pack("<I", value)
        f.write(struct.pack("<HHI", tag, kind, count) + packed)
    f.write(struct.pack("<I", 0))
    f.seek(4)
    f.write(struct.pack("<I", ifd_at))
