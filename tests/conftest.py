"""Shared fixtures: the real test data in ../shared, the built models, a real broker.

``FACEGATE_SHARED`` points the tests at another folder of test data (an empty
one runs the suite as on a machine without ../shared: those tests skip).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from broker import mqtt_broker  # noqa: F401  (a real mosquitto per test that asks for it)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEGATE_SHARED") or REPO.parent / "shared").resolve()
MODELS = REPO / "models"
DETECTOR = MODELS / "face_detection_short_range.tflite"
DETECTOR_FULL = MODELS / "face_detection_full_range.tflite"
# The device default (edge.config): SFace; FaceNet is built beside it.
EMBEDDER = MODELS / "sface_int8.tflite"
EMBEDDER_FLOAT = MODELS / "sface_float32.tflite"
FACENET = MODELS / "facenet_int8.tflite"
FACENET_FLOAT = MODELS / "facenet_float32.tflite"


def shared_missing(*parts: str) -> str | None:
    """Why the shared test data at ``SHARED/parts`` cannot be used (None when it can).

    The one gate for ../shared: the ``shared`` fixtures and marker skip with
    this reason, so a run with ``FACEGATE_SHARED`` pointing at an empty folder
    skips every test that needs the data, saying why.
    """
    path = SHARED.joinpath(*parts) if parts else SHARED / "faces"
    if path.exists():
        return None
    return f"{path} is absent: this test needs the shared test data (set FACEGATE_SHARED)"


def _need_shared(*parts: str) -> Path:
    why = shared_missing(*parts)
    if why is not None:
        pytest.skip(why)
    return SHARED.joinpath(*parts)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared test data's folder, with its real photos in ``faces/`` (else skip)."""
    _need_shared("faces")
    return SHARED


@pytest.fixture(scope="session")
def shared_video() -> Path:
    """The shared street clip, ``video/video.mp4`` (else skip)."""
    return _need_shared("video", "video.mp4")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses a ``shared`` fixture is marked ``shared`` (``-m "not shared"``)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "shared" in names or "shared_video" in names:
            item.add_marker(pytest.mark.shared)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``shared`` skips through the same gate as the fixture."""
    if item.get_closest_marker("shared") is not None:
        _need_shared("faces")


@pytest.fixture(scope="session")
def models() -> Path:
    """The built default models (the setup builds them: python -m tools.models build)."""
    missing = [
        p.name
        for p in (DETECTOR, DETECTOR_FULL, EMBEDDER, EMBEDDER_FLOAT, FACENET, FACENET_FLOAT)
        if not p.exists()
    ]
    if missing:
        pytest.fail(
            f"models not built ({', '.join(missing)}): run `python -m tools.models build` "
            "(the README's set-up does)"
        )
    return MODELS
