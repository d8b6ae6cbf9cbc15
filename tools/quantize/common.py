"""What every stage of :mod:`tools.quantize` shares: its version, defaults and TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import ModelError
from edge.vision.manifest import Calibration, Preprocessing

TOOL_VERSION = "facegate-quantize/1"
DEFAULT_DETECTOR = (
    Path(__file__).resolve().parents[2] / "models" / "face_detection_short_range.tflite"
)
F32 = npt.NDArray[np.float32]

# Suggested open-set parameters written into new manifests: the builtin
# defaults measured on FaceNet 20180408 cosine distances (edge.decide.recognizer);
# `python -m tools.calibrate` replaces them with fitted ones.
SUGGESTED = Calibration(
    threshold=0.40, margin=0.05, conf_midpoint=0.40, conf_scale=0.04, source="quantize-default"
)
FAR_TARGET = 1e-2
# FaceNet's fixed standardisation: (pixel - 127.5) / 128.
FACENET_PREPROCESSING = Preprocessing(size=(160, 160), mean=127.5, std=128.0, color="RGB")
# What `--standardize` may put inside the graph (after the manifest's preprocessing).
STANDARDIZE = ("none", "per-image")

EDGETPU_INSTALL = (
    "edgetpu_compiler is not on PATH; on Debian/Ubuntu (x86-64) install it from Coral's apt "
    "repo: curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg "
    "--dearmor -o /usr/share/keyrings/coral.gpg && echo 'deb [signed-by=/usr/share/keyrings/"
    "coral.gpg] https://packages.cloud.google.com/apt coral-edgetpu-stable main' | sudo tee "
    "/etc/apt/sources.list.d/coral-edgetpu.list && sudo apt-get update && sudo apt-get "
    "install edgetpu-compiler"
)


def _tf() -> Any:
    """Import TensorFlow quietly (only the tools need it, never the device)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ModelError(
            f"TensorFlow is needed to convert models: pip install tensorflow-cpu ({e})"
        ) from None
    return tf
