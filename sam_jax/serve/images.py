"""Uploaded bytes -> an RGB image, refusing anything that is not an image or is too large.

The type is recognised by content (never by a name); decoding is the project's image reader
(`sam_jax.io.decode_image`: the header's pixel count checked before any pixel is decoded,
then decoded as the reference reads images).
"""

from __future__ import annotations

import numpy as np

from sam_jax.io import ImageError, ImageTooLargeError, decode_image

# Formats accepted, recognised by their leading bytes (never by a file name).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


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

    Args:
        data: the file's bytes.
        max_pixels: the largest width * height accepted.
    Returns:
        (H, W, 3) uint8 RGB, as `sam_jax.io.decode_image` reads it (EXIF orientation applied,
        16-bit samples scaled to 8 bits, alpha dropped).
    Raises:
        UploadRejected: empty, not a PNG/JPEG/WebP/BMP/TIFF (415), more than `max_pixels`
            pixels (413), or damaged (400); its `status` says which.
    """
    if not data:
        raise UploadRejected(400, "the uploaded file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UploadRejected(415, f"the upload is not an image of an accepted type ({', '.join(ACCEPTED_FORMATS)})")
    try:
        return decode_image(data, name=f"the {fmt} upload", max_pixels=max_pixels)
    except ImageTooLargeError as exc:
        raise UploadRejected(413, f"{exc}; the server accepts at most {max_pixels} pixels") from None
    except ImageError as exc:
        raise UploadRejected(400, str(exc)) from None
