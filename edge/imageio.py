"""Reading images safely: size limits before decoding, RGB out.

A door device and the offline tools read user-supplied files; a truncated
JPEG, a text file named ``.jpg`` or a 20,000 x 20,000 PNG (a few KB on disk,
1.2 GB decoded) must give a one-line :class:`~edge.errors.ImageError`, not
a crash or an out-of-memory kill. So the header is read first and the
pixel count checked before OpenCV decodes anything.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import ImageError
from edge.types import Image

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 40_000_000  # 40 MP: larger than any camera a door device would use
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first SOFn marker of a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + length
    return None


def image_size_from_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None if unknown."""
    return _png_size(data[:32]) or _jpeg_size(data)


def decode_image(data: bytes, name: str = "image") -> Image:
    """Decode encoded image bytes to RGB uint8 (H, W, 3), with the size checks."""
    import cv2

    if len(data) == 0:
        raise ImageError(f"{name}: empty file")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{name}: file too large ({len(data) // 1_000_000} MB)")
    size = image_size_from_header(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageError(
            f"{name}: image too large ({size[0]}x{size[1]} pixels, "
            f"limit {MAX_PIXELS // 1_000_000} MP)"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.size == 0:
        raise ImageError(f"{name}: not a readable image")
    if bgr.shape[0] * bgr.shape[1] > MAX_PIXELS:
        raise ImageError(f"{name}: image too large ({bgr.shape[1]}x{bgr.shape[0]} pixels)")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def read_image(path: Path | str) -> Image:
    """Read an image file as RGB uint8 (H, W, 3); ImageError on any problem."""
    p = Path(path)
    try:
        if p.is_dir():
            raise ImageError(f"{p}: is a folder, not an image")
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ImageError(f"{p}: file too large ({p.stat().st_size // 1_000_000} MB)")
        data = p.read_bytes()
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({e.strerror or e})") from None
    return decode_image(data, str(p))


def list_images(folder: Path | str, recursive: bool = True) -> list[Path]:
    """Image files in a folder (by suffix), sorted for a stable order."""
    root = Path(folder)
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def apply_lut(pixels: Image, lut: npt.NDArray[Any], out: npt.NDArray[Any]) -> None:
    """``out[...] = lut[pixels]`` for uint8 pixels and a 256-entry table, in place.

    OpenCV's table lookup is 2-3x faster than ``np.take`` here (0.03 against
    0.09 ms for a 160x160 crop), which matters once per frame and once per
    face; ``np.take`` remains the fallback when OpenCV declines the layout.
    """
    import cv2

    src = np.ascontiguousarray(pixels)
    if out.flags.c_contiguous and lut.dtype in (np.int8, np.uint8, np.float32):
        got = cv2.LUT(src, lut, dst=out)
        if got is out or np.shares_memory(got, out):
            return
        out[...] = got
        return
    np.take(lut, src, out=out)
