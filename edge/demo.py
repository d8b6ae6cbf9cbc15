"""``facegate demo``: the whole device pipeline on photos that ship with registry packages.

No camera, no data set, no network: matplotlib ships a photo of Grace Hopper
(``mpl-data/sample_data/grace_hopper.jpg``) and scikit-image ships photos of
astronaut Eileen Collins (``astronaut.png``) and of a cameraman
(``camera.png``), plus pictures without faces (``coffee.png``,
``rocket.jpg``). The demo enrolls Grace Hopper from her photo, then replays a
scene through the real pipeline (capture thread, BlazeFace, alignment, the
default int8 embedder (``[embedder] model``: SFace), open-set matching,
decisions over frames): an empty doorway, Grace Hopper walking up, the
doorway again, Eileen Collins, the cameraman. It prints
each event as the JSON the daemon publishes: Grace Hopper is *recognized*, the
two strangers are *unknown*. The frames of Grace Hopper are shifted, scaled and
re-lit versions of the enrolment photo (the packages hold only one photo of
her), so her distances are small; the strangers show how far other people are.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from edge.config import (
    MODELS_DIR,
    CameraConfig,
    Config,
    DecisionConfig,
    DetectorConfig,
    EmbedderConfig,
    MqttConfig,
    ServiceConfig,
)
from edge.errors import FacegateError
from edge.types import Frame, Image

if TYPE_CHECKING:
    from edge.sources import CaptureThread

CANVAS = (480, 640)  # height, width of the demo "camera"
FPS = 10.0


def _package_file(module: str, *parts: str) -> Path:
    try:
        mod = __import__(module)
    except ImportError:
        raise FacegateError(
            f"the demo's photos come from the {module!r} package: pip install 'facegate[demo]'"
        ) from None
    path = Path(str(mod.__file__)).resolve().parent.joinpath(*parts)
    if not path.is_file():
        raise FacegateError(f"{path}: demo photo missing from the installed {module!r} package")
    return path


def demo_photos() -> dict[str, Path]:
    """The registry photos the demo uses, by role."""
    return {
        "grace_hopper": _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
        "astronaut": _package_file("skimage", "data", "astronaut.png"),
        "cameraman": _package_file("skimage", "data", "camera.png"),
        "coffee": _package_file("skimage", "data", "coffee.png"),
        "rocket": _package_file("skimage", "data", "rocket.jpg"),
    }


def place(photo: Image, scale: float, dx: int, dy: int, gain: float = 1.0) -> Image:
    """Put a photo on the demo canvas: scaled, shifted, brightness times ``gain``."""
    import cv2

    h, w = CANVAS
    s = scale * min(h / photo.shape[0], w / photo.shape[1])
    img = cv2.resize(photo, (max(1, int(photo.shape[1] * s)), max(1, int(photo.shape[0] * s))))
    canvas = np.full((h, w, 3), 90, dtype=np.uint8)
    y0 = (h - img.shape[0]) // 2 + dy
    x0 = (w - img.shape[1]) // 2 + dx
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + img.shape[0]), min(w, x0 + img.shape[1])
    canvas[ys:ye, xs:xe] = img[ys - y0 : ye - y0, xs - x0 : xe - x0]
    lit: Image = np.clip(canvas.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return lit


def scene(photos: dict[str, Image]) -> list[Image]:
    """The replayed frames: empty doorway, person, empty, person, empty, person, empty."""
    frames: list[Image] = []

    def empty(n: int) -> None:
        for i in range(n):
            frames.append(place(photos["coffee" if i % 2 else "rocket"], 1.0, 0, 0))

    def walk_up(name: str, zoom: float = 1.0, n: int = 6) -> None:
        # A person approaching: a little larger and brighter each frame.
        for i in range(n):
            s = zoom * (0.85 + 0.03 * i)
            frames.append(place(photos[name], s, 8 * i - 20, 4 - 2 * i, 0.9 + 0.03 * i))

    empty(3)
    walk_up("grace_hopper")
    empty(8)
    walk_up("astronaut")
    empty(8)
    # The cameraman's face is small in his photo: come closer.
    walk_up("cameraman", zoom=1.5)
    empty(3)
    return frames


def scene_capture(frames: list[Image], stop: threading.Event) -> CaptureThread:
    """A capture thread replaying the scene, stamped on its own schedule ``t0 + index / fps``.

    The capture thread keeps every frame of a replay and waits while the
    pipeline catches up, so on a CPU slower than 10 fps (emulated arm64, a
    small board) frames stamped as they are read would lie seconds apart:
    the tracker (which ages tracks by frame time) would end each visitor's
    track before k of n frames agree. Stamped as a camera would have taken
    them, the decisions are the same on any CPU; only the events come
    ``late`` on a slow one.
    """
    from edge.sources import CaptureThread, FakeSource

    class SceneSource(FakeSource):
        t0: float | None = None

        def read(self, timeout: float) -> Frame | None:
            frame = super().read(timeout)
            if frame is None:
                return None
            if self.t0 is None:
                self.t0 = frame.timestamp
            return replace(frame, timestamp=self.t0 + frame.index / FPS)

    return CaptureThread(SceneSource(frames, fps=FPS, label="demo"), stop, keep_all=True)


def _default_models(models: Path | None) -> tuple[Path, Path]:
    """The config's default detector and embedder in ``models`` (default: the checkout's)."""
    folder = MODELS_DIR if models is None else models
    detector = folder / DetectorConfig().model
    embedder = folder / EmbedderConfig().model
    for m in (detector, embedder):
        if not m.exists():
            raise FacegateError(
                f"{m} is missing: build the models with `python -m tools.models build` "
                "(on a Pi: copy them from a workstation and give `--models DIR`)"
            )
    return detector, embedder


def run_demo(
    broker: str | None = None, out: IO[str] | None = None, models: Path | None = None
) -> int:
    """Enroll, replay, print the events; publish them too when ``broker`` is given.

    ``models``: the folder holding the config's default models (default: the
    checkout's ``models/``, which an installed package, as on a Pi, does not have).
    """
    from edge.daemon import Publisher, run
    from edge.decide.recognizer import Recognizer
    from edge.delivery.publishers import StdoutPublisher
    from edge.identity.gallery import Gallery
    from edge.imageio import read_image

    out = out or sys.stdout
    photos = {k: read_image(p) for k, p in demo_photos().items()}
    # The config's defaults: the demo runs what a fresh install runs.
    detector, embedder = _default_models(models)
    rec = Recognizer.from_models(detector, embedder)
    gallery = Gallery(rec.model_sha256)
    gallery.add("Grace Hopper", rec.embed_single_face(photos["grace_hopper"])[None, :])
    rec.set_gallery(gallery)
    frames = scene(photos)
    print(
        f"demo: enrolled 'Grace Hopper'; replaying {len(frames)} frames at {FPS:g} fps "
        f"(threshold {rec.threshold:.3f}, margin {rec.margin:.3f}, "
        f"calibration: {rec.calibration.source})",
        file=sys.stderr,
    )

    with tempfile.TemporaryDirectory(prefix="facegate-demo-") as state:
        cfg = Config(
            camera=CameraConfig(source="fake", fps=FPS),
            detector=DetectorConfig(model=str(detector)),
            # Tracks end 0.5 s after a face was last seen, so each visitor is one track.
            decision=DecisionConfig(k=3, n=4, cooldown_s=30.0, max_track_age_s=0.5),
            service=ServiceConfig(state_dir=state, log_level="WARNING"),
        )
        publisher: StdoutPublisher
        if broker:
            host, _, port = broker.partition(":")
            mqtt = MqttConfig(enabled=True, host=host, port=int(port or 1883), state_interval_s=5)
            cfg = replace(cfg, mqtt=mqtt)
            publisher = StdoutPublisher(cfg, out, inner=Publisher(cfg))
        else:
            publisher = StdoutPublisher(cfg, out)

        def capture(c: Config, stop: threading.Event) -> CaptureThread:
            return scene_capture(frames, stop)

        return run(cfg, threading.Event(), publisher, recognizer=rec, capture_factory=capture)
