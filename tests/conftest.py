"""Shared fixtures: the real test data in ../shared, the built models, a real broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from broker import mqtt_broker  # noqa: F401  (a real mosquitto per test that asks for it)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = REPO / "models"
DETECTOR = MODELS / "face_detection_short_range.tflite"
DETECTOR_FULL = MODELS / "face_detection_full_range.tflite"
EMBEDDER = MODELS / "facenet_int8.tflite"
EMBEDDER_FLOAT = MODELS / "facenet_float32.tflite"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The real photos beside the checkout (skip, saying why, when they are absent)."""
    if not (SHARED / "faces").is_dir():
        pytest.skip("../shared/faces is absent: real-photo tests need the shared test data")
    return SHARED


@pytest.fixture(scope="session")
def models() -> Path:
    """The built default models (the setup builds them: python -m tools.models build)."""
    missing = [
        p.name for p in (DETECTOR, DETECTOR_FULL, EMBEDDER, EMBEDDER_FLOAT) if not p.exists()
    ]
    if missing:
        pytest.fail(
            f"models not built ({', '.join(missing)}): run `python -m tools.models build` "
            "(the README's set-up does)"
        )
    return MODELS
