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


def shared_faces_available() -> bool:
    """True when the shared real photos are there (for skipif marks)."""
    return (SHARED / "faces").is_dir()


@pytest.fixture(scope="session")
def shared() -> Path:
    """The real photos beside the checkout (skip, saying why, when they are absent)."""
    if not shared_faces_available():
        pytest.skip(f"{SHARED}/faces is absent: real-photo tests need the shared test data")
    return SHARED


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
