"""Reading images safely: magic bytes, header sizes of every accepted format, bombs.

The bombs are real files of a few hundred bytes that decode to 20,000 x
20,000 pixels (1.2 GB); they are fed to the real ``facegate identify`` in a
process whose address space is limited to 1 GiB, so a regression fails the
test instead of eating the machine's memory.
"""

from __future__ import annotations

import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from _hostile import FACEGATE, ROOT, face_photo

from edge.errors import ImageError
from edge.identity.gallery import Gallery
from edge.imageio import (
    check_header,
    decode_image,
    image_format,
    image_size_from_header,
    list_images,
    read_image,
)
from edge.vision.manifest import load_manifest

MEMORY_LIMIT = 1 << 30  # identify itself needs ~0.6 GiB of address space


def bmp_rle_bomb(w: int = 20000, h: int = 20000) -> bytes:
    """An 8-bit RLE BMP whose pixel data is only the end-of-bitmap marker (1,080 bytes)."""
    palette = b"\0\0\0\0" * 256
    data = b"\x00\x01"
    offset = 14 + 40 + len(palette)
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + dib + palette + data


def tiff_bomb(w: int = 20000, h: int = 20000) -> bytes:
    """A deflate TIFF claiming w x h grey pixels with a few bytes of strip data."""
    strip = zlib.compress(b"\0" * 4096, 9)
    entries = [
        (256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 10 * 12 + 4), (277, 3, 1, 1), (278, 4, 1, h),
        (279, 4, 1, len(strip)), (284, 3, 1, 1),
    ]  # fmt: skip
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + strip


def png_header_bomb(w: int = 20000, h: int = 20000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Path:
    m = load_manifest(models / "sface_int8.tflite")
    g = Gallery.for_manifest(m)
    g.add("someone", np.ones((1, m.embedding_size), np.float32))
    p = tmp_path_factory.mktemp("gallery") / "g.fgg"
    g.save(p)
    return p


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def test_bombs_are_refused_by_their_headers_under_a_memory_limit(
    tmp_path: Path, gallery: Path
) -> None:
    bmp = tmp_path / "holiday.png"  # a BMP-RLE named .png
    bmp.write_bytes(bmp_rle_bomb())
    tif = tmp_path / "scan.tiff"
    tif.write_bytes(tiff_bomb())
    assert bmp.stat().st_size == 1080 and tif.stat().st_size < 6000
    r = subprocess.run(
        [*FACEGATE, "identify", "--gallery", str(gallery), str(bmp), str(tif), str(face_photo())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited,
    )
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr  # two images skipped, the real photo identified
    assert f"skipped {bmp}: image too large (20000x20000 pixels" in r.stderr
    assert f"skipped {tif}: image too large (20000x20000 pixels" in r.stderr
    assert '"faces"' in r.stdout  # the good image still went through, in the same process


def test_opencv_limit_is_set_before_cv2_is_imported_and_not_by_import_edge() -> None:
    code = (
        "import os, sys, edge, edge.cli, edge.imageio, edge.config\n"
        "assert 'OPENCV_IO_MAX_IMAGE_PIXELS' not in os.environ, 'set at import time'\n"
        "assert 'cv2' not in sys.modules\n"
        "from edge.imageio import import_cv2\n"
        "import numpy as np\n"
        "cv2 = import_cv2()\n"
        f"data = np.frombuffer({bmp_rle_bomb()!r}, np.uint8)\n"
        "try:\n"
        "    cv2.imdecode(data, cv2.IMREAD_COLOR)\n"
        "except cv2.error as e:\n"
        "    print('refused by opencv' if 'MAX_IMAGE_PIXELS' in str(e) else e)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limited,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert r.stdout.strip() == "refused by opencv", r.stdout + r.stderr


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tiff", ".ppm", ".pgm"])
def test_every_accepted_format_has_its_size_read_from_the_header(ext: str) -> None:
    img = np.zeros((37, 53, 3), np.uint8)
    img[5:20, 10:30] = (10, 200, 30)
    if ext == ".pgm":
        img = img[:, :, 0]
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []  # 101: lossless (VP8L)
    ok, buf = cv2.imencode(ext, img, params)
    assert ok
    data = buf.tobytes()
    assert image_size_from_header(data) == (53, 37)
    assert decode_image(data).shape == (37, 53, 3)
    if ext == ".webp":  # the lossy (VP8) flavour too
        ok, buf = cv2.imencode(ext, img, [cv2.IMWRITE_WEBP_QUALITY, 80])
        assert image_size_from_header(buf.tobytes()) == (53, 37)


def test_netpbm_comments_and_huge_claims() -> None:
    assert image_size_from_header(b"P6\n# made by hand\n640 # width\n480\n255\n") == (640, 480)
    with pytest.raises(ImageError, match="image too large"):
        check_header(b"P5 100000 100000 255\n")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a" + b"\0" * 40, "not a supported image"),
        (b"hello, I am a text file named .jpg", "not a supported image"),
        (b"P7\nWIDTH 99999\nHEIGHT 99999\n", "not a supported image"),  # PAM: not accepted
        (b"\xff\xd8\xff\xe0" + b"\0" * 40, "no JPEG size"),  # a JPEG without a frame header
        (b"BM" + b"\0" * 10, "no BMP size"),
        (png_header_bomb(), "image too large (20000x20000"),
        (png_header_bomb(0, 10), "0x10 pixels"),
        (tiff_bomb(8, 8)[:20], "no TIFF size"),
    ],
)
def test_refused_before_decoding(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message.replace("(", r"\(")):
        decode_image(data, "x")


def test_tiff_with_a_giant_tile_or_many_samples_is_refused() -> None:
    base = bytearray(tiff_bomb(16, 16))
    # Turn SamplesPerPixel (tag 277) into 40000.
    i = base.index(struct.pack("<HHI", 277, 3, 1))
    base[i + 8 : i + 10] = struct.pack("<H", 40000)
    with pytest.raises(ImageError, match="TIFF layout not supported"):
        check_header(bytes(base))


def test_fifo_device_and_folder_are_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    import os

    os.mkfifo(fifo)
    for p, why in ((fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                   (tmp_path, "is a folder")):  # fmt: skip
        with pytest.raises(ImageError, match=why):
            read_image(p)


def test_list_images_reports_an_unlistable_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot list folder"):
        list_images(tmp_path / "missing")
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.PNG").write_bytes(b"x")
    (tmp_path / "loop").symlink_to(tmp_path)  # a link to a folder is not followed
    assert list_images(tmp_path) == [tmp_path / "a.jpg", tmp_path / "sub" / "b.PNG"]
    assert image_format(b"\x89PNG\r\n\x1a\n") == "png"
