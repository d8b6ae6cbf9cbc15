"""Frame sources and the capture thread (edge/sources.py).

Real files where it matters: a video the test writes with ``cv2.VideoWriter``,
images written with ``cv2.imwrite`` and, when present, the shared clip
``../shared/video/video.mp4``. The Pi camera is faked by putting a fake
``picamera2`` module into ``sys.modules``. No assert depends on timing.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import pytest

from edge.config import parse_config
from edge.errors import ConfigError, SourceError
from edge.sources import (
    CaptureThread,
    FakeSource,
    FolderSource,
    FrameSource,
    OpenCVSource,
    Picamera2Source,
    frames,
    open_source,
    redact_uri,
    uri_with_password,
)
from edge.types import Frame

JOIN_S = 5.0  # generous: only a hang would take this long


# ------------------------------------------------------------------ fixtures / helpers


def _solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:] = rgb
    return img


@pytest.fixture(scope="module")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, float]:
    """An MJPG .avi of 12 frames (64x48, 10 fps): frame k is a solid colour, red = 20 k."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    n, fps = 12, 10.0
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    for k in range(n):
        # BGR on disk: blue 30, green 60, red 20 k.
        writer.write(_solid(48, 64, (30, 60, 20 * k)))
    writer.release()
    return path, n, fps


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """Three good PNGs (known colours), one text file posing as a JPEG, one in a sub-folder."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.png", "d.png"]):
        # Written as BGR (10 i, 100, 200): read back as RGB (200, 100, 10 i).
        cv2.imwrite(str(root / name), _solid(20, 30, (10 * i, 100, 200)))
    (root / "c.jpg").write_text("not really a jpeg\n")
    cv2.imwrite(str(root / "sub" / "e.png"), _solid(20, 30, (1, 2, 3)))
    return root


def _drain(src: FrameSource, limit: int = 10_000) -> list[Frame]:
    return list(frames(src, limit=limit, timeout=2.0))


def _check_frames(out: list[Frame]) -> None:
    """Contract every source keeps: RGB uint8 images, indices 0, 1, 2, ..."""
    assert [f.index for f in out] == list(range(len(out)))
    for f in out:
        assert f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3
        assert f.image.flags["C_CONTIGUOUS"]
        assert f.timestamp > 0 and f.source
    stamps = [f.timestamp for f in out]
    assert stamps == sorted(stamps)


# ------------------------------------------------------------------ lazy imports


def test_import_edge_sources_imports_no_camera_library() -> None:
    code = (
        "import sys, edge.sources, edge.types; "
        "print(sorted(m for m in ('picamera2', 'cv2', 'tensorflow', 'paho') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ fake source


def test_fake_source_synthetic_finite() -> None:
    src = FakeSource(count=5, width=40, height=30)
    out = _drain(src)
    _check_frames(out)
    assert len(out) == 5 and src.exhausted and src.closed
    assert out[0].image.shape == (30, 40, 3)
    # The moving square makes consecutive frames differ.
    assert not np.array_equal(out[0].image, out[1].image)


def test_fake_source_from_arrays_and_loop() -> None:
    imgs = [_solid(8, 8, (i, 0, 0)) for i in range(3)]
    out = _drain(FakeSource(imgs))
    assert [int(f.image[0, 0, 0]) for f in out] == [0, 1, 2]
    looped = _drain(FakeSource(imgs, loop=True), limit=7)
    _check_frames(looped)
    assert [int(f.image[0, 0, 0]) for f in looped] == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(SourceError):
        FakeSource([np.zeros((4, 4), dtype=np.uint8)])


# ------------------------------------------------------------------ folder source


def test_folder_source_skips_bad_file_with_reason(
    image_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge.sources")
    src = FolderSource(image_folder)
    out = _drain(src)
    _check_frames(out)
    assert [f.source for f in out] == ["folder:a.png", "folder:b.png", "folder:d.png"]
    assert [tuple(int(v) for v in f.image[0, 0]) for f in out] == [
        (200, 100, 0),
        (200, 100, 10),
        (200, 100, 20),
    ]
    assert src.skipped == 1 and src.exhausted
    skipped = [r.getMessage() for r in caplog.records if "c.jpg" in r.getMessage()]
    assert len(skipped) == 1 and "skipping" in skipped[0]


def test_folder_source_recursive_and_loop(image_folder: Path) -> None:
    names = [f.source for f in _drain(FolderSource(image_folder, recursive=True))]
    assert names == ["folder:a.png", "folder:b.png", "folder:d.png", "folder:sub/e.png"]
    src = FolderSource(image_folder, loop=True)
    out = _drain(src, limit=7)
    _check_frames(out)
    assert [f.source for f in out] == [f"folder:{n}.png" for n in "abdabda"]
    # The bad file was reported once, not once per loop.
    assert src.skipped == 1 and not src.exhausted


def test_folder_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "missing").open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        FolderSource(tmp_path / "empty").open()
    # Only unreadable images: a looping replay ends instead of spinning forever.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    src = FolderSource(bad, loop=True)
    assert _drain(src) == [] and src.exhausted


# ------------------------------------------------------------------ OpenCV source


def test_opencv_source_on_written_video(small_video: tuple[Path, int, float]) -> None:
    path, n, fps = small_video
    src = OpenCVSource(path, realtime=False)
    assert not src.live
    out = _drain(src)
    _check_frames(out)
    assert len(out) == n and src.exhausted
    assert src.file_fps == pytest.approx(fps)
    assert out[0].source == "opencv:clip.avi"
    # MJPG is lossy: colours within a few levels, but the channel order must be RGB.
    reds = [float(f.image[..., 0].mean()) for f in out]
    blues = [float(f.image[..., 2].mean()) for f in out]
    for k, (r, b) in enumerate(zip(reds, blues, strict=True)):
        assert abs(r - 20 * k) < 8 and abs(b - 30) < 8


def test_opencv_source_loops_a_file(small_video: tuple[Path, int, float]) -> None:
    path, n, _ = small_video
    src = OpenCVSource(path, loop=True, realtime=False)
    out = _drain(src, limit=n + 3)
    _check_frames(out)
    assert len(out) == n + 3 and not src.exhausted
    # The 13th frame is the first frame again.
    assert np.array_equal(out[n].image, out[0].image)


def test_opencv_source_open_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        OpenCVSource(tmp_path / "nope.mp4").open()
    not_video = tmp_path / "text.mp4"
    not_video.write_text("hello")
    with pytest.raises(SourceError, match="cannot open"):
        OpenCVSource(not_video).open()


def test_opencv_source_on_shared_clip_via_config(shared_video: Path) -> None:
    cap = cv2.VideoCapture(str(shared_video))
    expected_n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    ok, first_bgr = cap.read()
    cap.release()
    assert ok
    # A relative uri is relative to the config file's folder.
    cfg = parse_config(
        {"camera": {"source": "opencv", "uri": "video/video.mp4", "realtime": False}},
        base_dir=shared_video.parents[1],
    )
    src = open_source(cfg)
    assert isinstance(src, OpenCVSource) and src.is_file
    out = _drain(src)
    _check_frames(out)
    assert len(out) == expected_n
    assert out[0].image.shape == (h, w, 3)
    assert np.array_equal(out[0].image, first_bgr[:, :, ::-1])


class _FlakyCapture:
    """A stand-in ``cv2.VideoCapture`` that delivers ``good`` frames, then fails."""

    def __init__(self, good: int) -> None:
        self.good = good
        self.released = False

    def read(self) -> tuple[bool, Any]:
        if self.good > 0:
            self.good -= 1
            return True, np.zeros((4, 4, 3), dtype=np.uint8)
        return False, None

    def release(self) -> None:
        self.released = True


def test_opencv_live_source_reconnects_with_bounded_backoff(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.sources")
    src = OpenCVSource("rtsp://user:secret@cam.local/stream", max_retries=3, retry_base_s=0.0)
    assert src.live and "secret" not in src.label
    opens: list[_FlakyCapture] = []
    # First connection gives 2 frames; the reconnect gives 1; then the camera is gone.
    plan: list[int | None] = [2, 1, None, None, None, None]

    def connect() -> _FlakyCapture:
        good = plan.pop(0)
        if good is None:
            raise SourceError(f"{src.label}: cannot open camera or stream")
        opens.append(_FlakyCapture(good))
        return opens[-1]

    monkeypatch.setattr(src, "_connect", connect)
    src.open()
    got: list[Frame] = []
    with pytest.raises(SourceError, match="gave up after 3 reconnect attempts"):
        for _ in range(100):  # bounded: the source must give up well before this
            f = src.read(0.01)
            if f is not None:
                got.append(f)
    assert [f.index for f in got] == [0, 1, 2]
    assert all(c.released for c in opens)
    attempts = [r.getMessage() for r in caplog.records if "reconnect attempt" in r.getMessage()]
    # One line per attempt: 1/3 after the first drop (reset by the frame that followed),
    # then 1/3, 2/3, 3/3 while the camera stays away.
    assert [a.split("reconnect attempt ")[1].split(" ")[0] for a in attempts] == [
        "1/3",
        "1/3",
        "2/3",
        "3/3",
    ]
    assert all("secret" not in r.getMessage() for r in caplog.records)


def test_redact_uri() -> None:
    assert redact_uri("rtsp://u:p@h:554/x") == "rtsp://***@h:554/x"
    assert redact_uri("rtsp://h/x") == "rtsp://h/x"


def test_uri_with_password_is_percent_encoded() -> None:
    assert uri_with_password("rtsp://admin@cam:554/s1", "pw") == "rtsp://admin:pw@cam:554/s1"
    # Characters that would move the host or path are encoded, not interpreted.
    got = uri_with_password("rtsp://admin@cam/s1", "a@b:c/d?e#f%")
    assert got == "rtsp://admin:a%40b%3Ac%2Fd%3Fe%23f%25@cam/s1"
    assert urlsplit(got).hostname == "cam" and unquote(urlsplit(got).password or "") == (
        "a@b:c/d?e#f%"
    )
    with pytest.raises(SourceError, match="no user name"):
        uri_with_password("rtsp://cam/s1", "pw")


def test_camera_password_from_file_or_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cam-pw").write_bytes(b"p@ss word\n")
    cfg = parse_config(
        {"camera": {"uri": "rtsp://admin@cam/s1", "password_file": "cam-pw"}}, base_dir=tmp_path
    )
    src = open_source(cfg)
    assert isinstance(src, OpenCVSource)
    assert src.uri == "rtsp://admin:p%40ss%20word@cam/s1"
    assert "ss" not in src.label  # the label (logs, events) never shows it
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "camera-password").write_bytes(b"fromsystemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = parse_config(
        {"camera": {"uri": "rtsp://admin@cam/s1", "password_credential": "camera-password"}}
    )
    src = open_source(cfg)
    assert isinstance(src, OpenCVSource) and src.uri == "rtsp://admin:fromsystemd@cam/s1"
    # A password written into the URI itself still works, with a warning to move it.
    with caplog.at_level(logging.WARNING, logger="edge.sources"):
        open_source(parse_config({"camera": {"uri": "rtsp://admin:inline@cam/s1"}}))
    assert any("camera.password_file" in r.getMessage() for r in caplog.records)
    assert all("inline" not in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ picamera2 (faked)


class _FakePicamera2:
    instances: list[_FakePicamera2] = []  # noqa: RUF012 - test bookkeeping
    fail_after: int | None = None

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.started = self.closed = False
        self.captures = 0
        self.calls: list[tuple[str, Any]] = []
        _FakePicamera2.instances.append(self)

    def create_preview_configuration(self, **kwargs: Any) -> dict[str, Any]:
        return dict(kwargs)

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True

    def capture_array(self, name: str = "main", wait: Any = None) -> np.ndarray:
        self.calls.append((name, wait))
        self.captures += 1
        if _FakePicamera2.fail_after is not None and self.captures > _FakePicamera2.fail_after:
            raise RuntimeError("camera timed out")
        w, h = self.config["main"]["size"]
        img = np.zeros((h, w, 3), dtype=np.uint8)
        img[:] = (10, 20, 30)  # RGB888 is stored B, G, R: this pixel is R=30 G=20 B=10
        return img


@pytest.fixture()
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> type[_FakePicamera2]:
    mod = types.ModuleType("picamera2")
    mod.Picamera2 = _FakePicamera2  # type: ignore[attr-defined]
    _FakePicamera2.instances = []
    _FakePicamera2.fail_after = None
    monkeypatch.setitem(sys.modules, "picamera2", mod)
    return _FakePicamera2


def test_picamera2_source_lazy_import_and_bgr_to_rgb(
    fake_picamera2: type[_FakePicamera2],
) -> None:
    cfg = parse_config({"camera": {"source": "picamera2", "width": 32, "height": 24, "fps": 5}})
    src = open_source(cfg)
    assert isinstance(src, Picamera2Source)
    assert fake_picamera2.instances == []  # nothing touched the camera before open()
    out = _drain(src, limit=3)
    _check_frames(out)
    cam = fake_picamera2.instances[0]
    assert cam.config["main"] == {"size": (32, 24), "format": "RGB888"}
    assert cam.config["controls"] == {"FrameRate": 5.0}
    # Every capture has a timeout (a number), so a stalled camera cannot hang the thread.
    assert all(n == "main" and isinstance(w, float) and w > 0 for n, w in cam.calls)
    assert out[0].image.shape == (24, 32, 3)
    assert tuple(int(v) for v in out[0].image[0, 0]) == (30, 20, 10)
    assert cam.closed and not src.exhausted


def test_picamera2_capture_failure_reopens(fake_picamera2: type[_FakePicamera2]) -> None:
    fake_picamera2.fail_after = 1  # each camera object gives one frame, then fails
    src = Picamera2Source(8, 8, max_retries=2, retry_base_s=0.0)
    out = _drain(src, limit=3)
    assert [f.index for f in out] == [0, 1, 2]
    assert len(fake_picamera2.instances) == 3
    assert all(c.closed for c in fake_picamera2.instances)


def test_picamera2_missing_is_a_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes the import fail
    with pytest.raises(SourceError, match="picamera2 is not available"):
        Picamera2Source().open()


# ------------------------------------------------------------------ open_source


def test_open_source_picks_the_configured_source(tmp_path: Path) -> None:
    def src(**camera: Any) -> FrameSource:
        return open_source(parse_config({"camera": camera}, base_dir=tmp_path))

    fake = src(source="fake", width=16, height=12)
    assert isinstance(fake, FakeSource) and (fake.width, fake.height) == (16, 12)
    folder = src(source="folder", path="imgs", loop=True)
    assert isinstance(folder, FolderSource)
    assert folder.path == tmp_path / "imgs" and folder.loop and folder.recursive
    usb = src(source="opencv", uri="0")
    assert isinstance(usb, OpenCVSource) and usb.device_index == 0 and usb.live
    rtsp = src(source="opencv", uri="rtsp://a:b@cam/x")
    assert isinstance(rtsp, OpenCVSource) and rtsp.live and "a:b" not in rtsp.label
    video = src(source="opencv", uri="clips/v.mp4")
    assert isinstance(video, OpenCVSource) and video.is_file
    assert Path(str(video.uri)) == tmp_path / "clips" / "v.mp4"
    # The missing file is reported when opened, as a SourceError.
    with pytest.raises(SourceError):
        video.open()
    # A blank uri is refused by the config itself, the check run and check-config share.
    with pytest.raises(ConfigError, match=r"camera\.uri"):
        src(source="opencv", uri=" ")
    assert not fake.live and not folder.live and not video.live
    assert isinstance(src(source="picamera2"), Picamera2Source)


# ------------------------------------------------------------------ capture thread


class _Failing(FakeSource):
    """Gives ``n`` frames, then a SourceError (a camera that is gone for good)."""

    def __init__(self, n: int) -> None:
        super().__init__(count=None)
        self.n = n

    def read(self, timeout: float) -> Frame | None:
        if self.n == 0:
            raise SourceError("fake: camera gone")
        self.n -= 1
        return super().read(timeout)


def test_capture_newest_frame_drops_stale_ones() -> None:
    """Deterministic: the consumer waits until the producer is done, then takes all."""
    stop = threading.Event()
    src = FakeSource(count=50)
    cap = CaptureThread(src, stop)
    cap.start()
    cap.join(JOIN_S)
    assert not cap.alive and src.closed
    assert not cap.finished  # the newest frame is still waiting
    f = cap.get(timeout=1.0)
    assert f is not None and f.index == 49
    assert cap.get(timeout=0.01) is None
    assert cap.finished and cap.error is None
    assert (cap.captured, cap.delivered, cap.dropped) == (50, 1, 49)


def test_capture_slow_consumer_invariants() -> None:
    stop = threading.Event()
    cap = CaptureThread(FakeSource(count=300), stop)
    cap.start()
    got: list[int] = []
    for _ in range(100_000):  # bounded loop: ends when the replay is consumed
        f = cap.get(timeout=1.0)
        if f is None:
            if cap.finished or not cap.alive:
                break
            continue
        got.append(f.index)
        stop.wait(0.002)  # a slow consumer (stop is never set: just a sleep)
    cap.join(JOIN_S)
    assert cap.finished and not cap.alive
    assert got == sorted(set(got))  # strictly increasing
    assert got[-1] == 299  # the last frame is never dropped
    assert cap.captured == 300 == len(got) + cap.dropped


def test_capture_keep_all_delivers_every_frame_in_order() -> None:
    stop = threading.Event()
    cap = CaptureThread(FakeSource(count=60), stop, keep_all=True, queue_size=3)
    cap.start()
    got: list[int] = []
    while (f := cap.get(timeout=JOIN_S)) is not None:
        got.append(f.index)
        if len(got) % 10 == 0:
            assert cap.pending <= 3
            stop.wait(0.01)
    assert cap.finished, "keep_all capture stalled"
    cap.join(JOIN_S)
    assert got == list(range(60))
    assert cap.dropped == 0 and cap.captured == 60 and not cap.alive


@pytest.mark.parametrize("keep_all", [False, True])
def test_capture_stops_promptly_on_the_stop_event(keep_all: bool) -> None:
    stop = threading.Event()
    src = FakeSource()  # endless; with keep_all and no consumer the producer blocks
    cap = CaptureThread(src, stop, keep_all=keep_all, queue_size=2)
    cap.start()
    first = cap.get(timeout=JOIN_S)
    assert first is not None
    stop.set()
    cap.join(JOIN_S)
    assert not cap.alive and src.closed and not cap.finished and cap.error is None
    assert cap.captured == cap.delivered + cap.dropped + cap.pending


def test_capture_records_source_errors() -> None:
    stop = threading.Event()
    cap = CaptureThread(_Failing(3), stop, keep_all=True)
    cap.start()
    got = [cap.get(timeout=JOIN_S) for _ in range(3)]
    assert [f.index for f in got if f is not None] == [0, 1, 2]
    cap.join(JOIN_S)
    assert isinstance(cap.error, SourceError) and not cap.alive and not cap.finished
    assert cap.get(timeout=0.01) is None


def test_capture_start_raises_when_source_cannot_open(tmp_path: Path) -> None:
    cap = CaptureThread(FolderSource(tmp_path / "missing"), threading.Event())
    with pytest.raises(SourceError):
        cap.start()
    cap.join(0.1)
    assert not cap.alive


def test_capture_replays_a_paced_folder_through_open_source(image_folder: Path) -> None:
    """The daemon's path: config -> open_source -> CaptureThread, a realtime replay."""
    cfg = parse_config(
        {"camera": {"source": "folder", "path": str(image_folder), "fps": 50.0}},
    )
    stop = threading.Event()
    cap = CaptureThread(open_source(cfg), stop, keep_all=True)
    cap.start()
    got: list[Frame] = []
    while (f := cap.get(timeout=JOIN_S)) is not None:
        got.append(f)
    assert cap.finished, "paced replay stalled"
    cap.join(JOIN_S)
    _check_frames(got)
    assert [f.source for f in got] == [
        "folder:a.png",
        "folder:b.png",
        "folder:d.png",
        "folder:sub/e.png",
    ]
