"""The CLI on hostile file-system input: FIFOs, devices, folders it may not read, secrets.

Every case runs the real ``facegate`` command. Permissions mean nothing to
root, so when the tests run as root those cases run without root's
capabilities (see ``_hostile.unprivileged``), in a folder anyone may enter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _hostile import FACEGATE, ROOT, assert_one_line_error, face_photo, unprivileged, write_config

from edge.identity.gallery import Gallery
from edge.vision.manifest import load_manifest

TIMEOUT = 120  # a hang (FIFO, /dev/zero) fails the test instead of blocking CI


@pytest.fixture
def open_dir(models: Path) -> Iterator[Path]:
    """A folder anyone may enter, holding a plain gallery anyone may read."""
    d = Path(tempfile.mkdtemp(prefix="facegate-cli-", dir="/tmp"))
    d.chmod(0o755)
    m = load_manifest(models / "sface_int8.tflite")
    g = Gallery.for_manifest(m)
    g.add("someone", np.ones((1, m.embedding_size), np.float32))
    g.save(d / "gallery.fgg")
    (d / "gallery.fgg").chmod(0o644)
    try:
        yield d
    finally:
        for p in d.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(d)


def run(args: list[str], prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), *FACEGATE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_fifo_dev_zero_and_unsearchable_folder_as_images(open_dir: Path) -> None:
    fifo = open_dir / "photo.jpg"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    locked = open_dir / "locked"
    locked.mkdir()
    shutil.copy(face_photo(), locked / "face.jpg")
    locked.chmod(0o000)  # not even searchable
    good = open_dir / "good.jpg"
    shutil.copy(face_photo(), good)
    good.chmod(0o644)
    r = run(
        ["identify", "--gallery", str(open_dir / "gallery.fgg"), str(fifo), "/dev/zero",
         str(locked / "face.jpg"), str(good)],
        unprivileged(),
    )  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr  # some skipped, the rest done
    assert f"skipped {fifo}: cannot read image (not a regular file)" in r.stderr
    assert "skipped /dev/zero: cannot read image (not a regular file)" in r.stderr
    assert f"skipped {locked / 'face.jpg'}: cannot read image (Permission denied)" in r.stderr
    assert str(good) in r.stdout


def test_unreadable_folder_is_one_line_and_a_failure(open_dir: Path) -> None:
    folder = open_dir / "photos"
    folder.mkdir()
    shutil.copy(face_photo(), folder / "face.jpg")
    folder.chmod(0o311)  # searchable, not listable
    r = run(["identify", "--gallery", str(open_dir / "gallery.fgg"), str(folder)], unprivileged())
    assert r.returncode == 2, r.stdout + r.stderr
    assert_one_line_error(r.stderr, f"{folder}: cannot list folder (Permission denied)")
    assert r.stdout == ""


def test_fifo_as_the_gallery_is_one_line(open_dir: Path) -> None:
    fifo = open_dir / "fifo.fgg"
    os.mkfifo(fifo)
    for args in (["gallery", "list"], ["identify", str(face_photo())]):
        r = run([*args, "--gallery", str(fifo)])
        assert r.returncode == 2
        assert_one_line_error(r.stderr, "not a regular file")


def test_read_only_gallery_folder_is_one_line(open_dir: Path) -> None:
    ro = open_dir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    r = run(
        ["enroll", "--gallery", str(ro / "g.fgg"), "--name", "Grace", str(face_photo())],
        unprivileged(),
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert_one_line_error(r.stderr, "cannot write gallery (Permission denied)")


def test_rtsp_password_never_reaches_the_output(tmp_path: Path, models: Path) -> None:
    """A password that needs percent-encoding; nothing listens on the port: open fails."""
    password = "Secr3t@pw!%d"
    (tmp_path / "camera-password").write_text(password + "\n")
    (tmp_path / "camera-password").chmod(0o600)
    cfg = write_config(
        tmp_path / "door.toml",
        {
            "camera": {"source": "opencv", "uri": "rtsp://viewer@127.0.0.1:9/stream",
                       "password_file": "camera-password"},
            "gallery": {"path": "gallery.fgg"},
            "service": {"log_level": "DEBUG", "state_dir": str(tmp_path)},
        },
    )  # fmt: skip
    r = subprocess.run(
        [*FACEGATE, "-v", "run", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "OPENCV_LOG_LEVEL": "DEBUG", "OPENCV_VIDEOIO_DEBUG": "1"},
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0  # the stream cannot be opened ...
    assert "cannot open camera or stream" in out  # ... and it says so
    for leak in ("Secr3t", "Secr3t%40pw%21", "%40pw", "pw!"):
        assert leak not in out, out
    assert "rtsp://***@127.0.0.1:9/stream" in out or "127.0.0.1" not in out
