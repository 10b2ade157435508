"""Uploaded bytes -> an RGB image, refusing anything that is not an image or is too large.

`decode_upload` is the one entry point; it is meant to be swapped for the project's image
reader (`sam_jax.io`) once that exists, keeping its signature and its errors.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageOps

# Formats accepted, recognised by their leading bytes (never by a file name).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class UploadRejected(ValueError):
    """An upload the server refuses; `status` is the HTTP status to answer with.

    Attributes:
        status: 400 (empty or damaged), 413 (too many pixels) or 415 (not an accepted image type).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes of `data` (one of `ACCEPTED_FORMATS`), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    return None


def decode_upload(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decodes an uploaded image file.

    The pixel count is read from the header and checked before any pixel is decoded, so a
    small file declaring a huge image (a decompression bomb) costs nothing. EXIF orientation
    is applied; 16-bit greyscale keeps its high byte; alpha is dropped; a multi-frame file
    gives its first frame.

    Args:
        data: the file's bytes.
        max_pixels: the largest width * height accepted.
    Returns:
        (H, W, 3) uint8 RGB.
    Raises:
        UploadRejected: empty, not a PNG/JPEG/WebP/BMP/TIFF, more than `max_pixels` pixels,
            or damaged; its `status` says which.
    """
    if not data:
        raise UploadRejected(400, "the uploaded file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UploadRejected(415, f"the upload is not an image of an accepted type ({', '.join(ACCEPTED_FORMATS)})")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise UploadRejected(
                    413, f"the image declares {width}x{height} pixels; the server accepts at most {max_pixels}"
                )
            img = ImageOps.exif_transpose(img)
            if img.mode in _SIXTEEN_BIT_MODES:
                grey = (np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
            return np.asarray(img.convert("RGB"))
    except UploadRejected:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own limit, met in Image.open before ours
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{declared.group(1)} pixels" if declared else "more pixels than PIL decodes"
        raise UploadRejected(413, f"the image declares {count}; the server accepts at most {max_pixels}") from None
    except Exception as exc:  # PIL signals a damaged file with many exception types
        raise UploadRejected(400, f"the {fmt} file could not be decoded ({type(exc).__name__}: {exc})") from None
