"""Turn a trained face embedder into a full-integer int8 TFLite model you can trust.

``python -m tools.quantize MODEL --calibration FACES [--out-dir models --name facenet]``

* ``MODEL``: a frozen TF graph (``.pb``), a Keras model (``.h5``/``.keras``;
  an ``.h5`` of bare weights is loaded into :mod:`tools.facenet_keras`'s
  InceptionResNetV1) or a SavedModel folder.
* ``FACES``: a folder of face photos, ``<dir>/<Person>/<image>`` (labelled:
  verification pairs are scored) or flat ``<dir>/<image>``. Every photo goes
  through the device's own detector and alignment
  (:class:`edge.recognizer.FaceCropper`), so the int8 ranges are calibrated on
  the crops the door will see. A share of each person's photos is held aside
  (``--holdout``) to check the int8 model on faces it was not calibrated on.
* Preprocessing: ``--input-size``, ``--mean``/``--std`` (the model sees
  ``(pixel - mean) / std``) and ``--color``, or ``--preprocessing-from`` an
  existing manifest.

Writes ``<name>_float32.tflite`` and ``<name>_int8.tflite`` (int8 input and
output, every op int8: what the Edge TPU compiler requires), a manifest for
each, and ``<name>_int8.report.md``/``.json``: sizes, float-vs-int8 embedding
agreement, verification accuracy and TAR at FAR=1e-2 of both, latency, and
any op that is not int8. Everything is built in a temporary folder beside the
output and renamed into place only when all of it succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import FacegateError, ImageError, ModelError, NoFaceError
from edge.imageio import IMAGE_SUFFIXES, read_image
from edge.manifest import (
    Calibration,
    Manifest,
    Preprocessing,
    TensorSpec,
    load_manifest,
    save_manifest,
    sha256_file,
    write_json_atomic,
)
from edge.types import Image
from tools._common import Stage, progress, run_tool

log = logging.getLogger(__name__)

TOOL_VERSION = "facegate-quantize/1"
DEFAULT_DETECTOR = (
    Path(__file__).resolve().parents[1] / "models" / "face_detection_short_range.tflite"
)
F32 = npt.NDArray[np.float32]

# Suggested open-set parameters written into new manifests: the builtin
# defaults measured on FaceNet 20180408 cosine distances (edge.recognizer);
# `python -m tools.calibrate` replaces them with fitted ones.
SUGGESTED = Calibration(
    threshold=0.40, margin=0.05, conf_midpoint=0.40, conf_scale=0.04, source="quantize-default"
)
FAR_TARGET = 1e-2
# FaceNet's fixed standardisation: (pixel - 127.5) / 128.
FACENET_PREPROCESSING = Preprocessing(size=(160, 160), mean=127.5, std=128.0, color="RGB")

EDGETPU_INSTALL = (
    "edgetpu_compiler is not on PATH; on Debian/Ubuntu (x86-64) install it from Coral's apt "
    "repo: curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg "
    "--dearmor -o /usr/share/keyrings/coral.gpg && echo 'deb [signed-by=/usr/share/keyrings/"
    "coral.gpg] https://packages.cloud.google.com/apt coral-edgetpu-stable main' | sudo tee "
    "/etc/apt/sources.list.d/coral-edgetpu.list && sudo apt-get update && sudo apt-get "
    "install edgetpu-compiler"
)


# --------------------------------------------------------------------------- source models


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


@dataclass
class SourceModel:
    """A loaded source model as one TF concrete function: (1, H, W, 3) float32 -> (1, D)."""

    kind: str  # "frozen-graph" | "keras" | "saved-model"
    path: Path
    sha256: str
    input_shape: tuple[int, int, int, int]
    fn: Any  # tf ConcreteFunction
    keep: Any  # the object that owns the function's variables
    details: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: F32) -> F32:
        """Run the source model on one (1, H, W, 3) float32 batch."""
        tf = _tf()
        out = self.fn(tf.constant(x, dtype=tf.float32))
        if isinstance(out, (list, tuple)):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return np.asarray(out.numpy(), dtype=np.float32).reshape(x.shape[0], -1)


def _hash_path(path: Path) -> str:
    """sha256 of a model file, or of a SavedModel folder's files (sorted, with names)."""
    if path.is_file():
        return sha256_file(path)
    import hashlib

    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def _fixed_shape(
    shape: Sequence[int | None], size: tuple[int, int] | None, where: str
) -> tuple[int, int, int, int]:
    """The model input as (1, H, W, 3); a known H/W must equal ``size`` (width, height)."""
    if len(shape) != 4 or (shape[3] is not None and shape[3] != 3):
        raise ModelError(f"{where}: input shape {tuple(shape)} is not an NHWC RGB image batch")
    h, w = shape[1], shape[2]
    if size is not None:
        if (h is not None and h != size[1]) or (w is not None and w != size[0]):
            raise ModelError(
                f"{where}: wrong input size: the model takes {w}x{h} but {size[0]}x{size[1]} "
                "was given (--input-size)"
            )
        h, w = size[1], size[0]
    if h is None or w is None:
        raise ModelError(f"{where}: the model's input size is not fixed; give --input-size")
    return (1, int(h), int(w), 3)


def _load_frozen_graph(
    path: Path, size: tuple[int, int] | None, input_node: str, output_node: str
) -> SourceModel:
    tf = _tf()
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    gd = tf.compat.v1.GraphDef()
    try:
        gd.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise ModelError(
            f"{path}: not a frozen TensorFlow graph (corrupt or wrong file: {e})"
        ) from None
    nodes = {n.name: n for n in gd.node}
    if not nodes:
        raise ModelError(f"{path}: not a frozen TensorFlow graph (no nodes)")
    if input_node not in nodes or output_node not in nodes:
        placeholders = [n.name for n in gd.node if n.op == "Placeholder"]
        missing = input_node if input_node not in nodes else output_node
        raise ModelError(
            f"{path}: no node {missing!r} in the graph (placeholders: "
            f"{', '.join(placeholders) or 'none'}; last node: {gd.node[-1].name!r}); "
            "use --input-node/--output-node"
        )
    shp = nodes[input_node].attr["shape"].shape
    dims: list[int | None] = (
        [None, None, None, None]
        if shp.unknown_rank
        else [None if d.size < 0 else int(d.size) for d in shp.dim]
    )
    shape = _fixed_shape(dims, size, str(path))
    # FaceNet's original exports also carry a `phase_train` bool placeholder:
    # feed it False so batch norm and dropout run in inference mode.
    extra = [n.name for n in gd.node if n.op == "Placeholder" and n.name != input_node]

    def _import() -> None:
        x = tf.compat.v1.placeholder(tf.float32, shape, name="facegate_input")
        mapping = {f"{input_node}:0": x}
        for name in extra:
            if nodes[name].attr["dtype"].type == tf.bool.as_datatype_enum:
                mapping[f"{name}:0"] = tf.constant(False)
        tf.compat.v1.import_graph_def(gd, input_map=mapping, name="src")

    try:
        wrapped = tf.compat.v1.wrap_function(_import, [])
        g = wrapped.graph
        fn = wrapped.prune(
            feeds=g.as_graph_element("facegate_input:0"),
            fetches=g.as_graph_element(f"src/{output_node}:0"),
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ModelError(f"{path}: cannot import the graph ({str(e).splitlines()[0]})") from None
    details = {"input_node": input_node, "output_node": output_node}
    return SourceModel("frozen-graph", path, sha256_file(path), shape, fn, wrapped, details)


def _wrap_callable(call: Callable[[Any], Any], shape: tuple[int, int, int, int]) -> Any:
    tf = _tf()

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])  # type: ignore[untyped-decorator]
    def serve(x: Any) -> Any:
        out = call(x)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out

    # Freeze variables into constants: Keras 3 variables are not found by the
    # converter through the owning object, and would stay READ_VARIABLE ops.
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    return convert_variables_to_constants_v2(serve.get_concrete_function())


def _load_keras(path: Path, size: tuple[int, int] | None) -> SourceModel:
    _tf()
    import keras

    from tools import facenet_keras

    with open(path, "rb") as f:
        head = f.read(8)
    if (path.suffix == ".h5" and head != b"\x89HDF\r\n\x1a\n") or (
        path.suffix == ".keras" and head[:2] != b"PK"
    ):
        raise ModelError(f"{path}: not a Keras {path.suffix} file (corrupt or wrong file)")
    try:
        model = keras.models.load_model(
            path, compile=False, custom_objects=facenet_keras.custom_objects()
        )
    except Exception as e:
        err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        model = None
        if path.suffix == ".h5":
            # An .h5 of bare weights (model.save_weights): load it into our InceptionResNetV1.
            try:
                model = facenet_keras.load_facenet_weights(path)
            except Exception as e2:
                err += f"; as FaceNet weights: {type(e2).__name__}: {str(e2).splitlines()[0]}"
        if model is None:
            raise ModelError(f"{path}: cannot load the Keras model ({err})") from None
    return keras_source(model, path, _hash_path(path), size)


def keras_source(
    model: Any,
    path: Path,
    sha256: str,
    size: tuple[int, int] | None = None,
    details: dict[str, Any] | None = None,
) -> SourceModel:
    """An in-memory Keras model as a conversion source.

    ``path``/``sha256`` name what it was made from (a ``.keras`` file, or the
    file a network was rebuilt from), for the manifest's ``source``.
    """
    shape = _fixed_shape(tuple(model.input_shape), size, str(path))

    def call(x: Any) -> Any:
        return model(x, training=False)

    fn = _wrap_callable(call, shape)
    info = {"layers": len(model.layers), **(details or {})}
    return SourceModel("keras", path, sha256, shape, fn, model, info)


def _load_saved_model(path: Path, size: tuple[int, int] | None, output_node: str) -> SourceModel:
    tf = _tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise ModelError(f"{path}: cannot load the SavedModel ({str(e).splitlines()[0]})") from None
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" not in sigs:
        raise ModelError(f"{path}: the SavedModel has no serving_default signature")
    sig = sigs["serving_default"]
    specs = sig.structured_input_signature[1]
    if len(specs) != 1:
        raise ModelError(f"{path}: the signature must take one image input, not {len(specs)}")
    in_name, spec = next(iter(specs.items()))
    shape = _fixed_shape(tuple(spec.shape.as_list()), size, str(path))
    outs = list(sig.structured_outputs)
    out_name = output_node if output_node in outs else outs[0]

    def call(x: Any) -> Any:
        return sig(**{in_name: x})[out_name]

    fn = _wrap_callable(call, shape)
    return SourceModel(
        "saved-model", path, _hash_path(path), shape, fn, loaded, {"output": out_name}
    )


def load_source(
    path: Path | str,
    input_size: tuple[int, int] | None = None,
    input_node: str = "input",
    output_node: str = "embeddings",
) -> SourceModel:
    """Load a frozen graph, Keras model or SavedModel (format from the path).

    ``input_size`` is (width, height); it must agree with the model's input
    when the model fixes one. ``input_node``/``output_node`` name the frozen
    graph's tensors (or the SavedModel's output).
    """
    kind, p = model_format(path)
    if kind == "saved-model":
        return _load_saved_model(p, input_size, output_node)
    if kind == "frozen-graph":
        return _load_frozen_graph(p, input_size, input_node, output_node)
    return _load_keras(p, input_size)


def model_format(path: Path | str) -> tuple[str, Path]:
    """("frozen-graph" | "keras" | "saved-model", path) from the path, without loading it."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such model file")
    if p.is_dir() or p.name == "saved_model.pb":
        d = p if p.is_dir() else p.parent
        if not (d / "saved_model.pb").is_file():
            raise ModelError(
                f"{p}: a folder must be a TF SavedModel (with saved_model.pb); "
                "otherwise give a .pb, .h5 or .keras file"
            )
        return "saved-model", d
    suffix = p.suffix.lower()
    if suffix == ".pb":
        return "frozen-graph", p
    if suffix in (".h5", ".keras"):
        return "keras", p
    raise ModelError(
        f"{p}: unsupported model format {suffix or '(no suffix)'!r}: give a frozen graph (.pb), "
        "a Keras model (.h5, .keras) or a SavedModel folder"
    )


# --------------------------------------------------------------------------- calibration faces


@dataclass(frozen=True)
class FaceCrops:
    """Aligned face crops (N, H, W, 3) uint8 RGB with their labels ("" when unlabelled)."""

    crops: npt.NDArray[np.uint8]
    labels: list[str]
    names: list[str]
    failed: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Sequence[int]) -> FaceCrops:
        ix = list(idx)
        return FaceCrops(
            self.crops[ix] if ix else self.crops[:0],
            [self.labels[i] for i in ix],
            [self.names[i] for i in ix],
        )


def list_images(folder: Path | str) -> list[tuple[str, Path]]:
    """(label, path) of the photos in ``<folder>/<Person>/*`` or flat ``<folder>/*``, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise ImageError(f"{root}: calibration folder does not exist")
    out: list[tuple[str, Path]] = []
    for p in sorted(root.iterdir()):
        if p.is_dir():
            out += [
                (p.name, q)
                for q in sorted(p.iterdir())
                if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
            ]
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            out.append(("", p))
    return out


def collect_faces(
    images: Iterable[tuple[str, str, Image]],
    detector_path: Path | str = DEFAULT_DETECTOR,
    size: tuple[int, int] = (160, 160),
    template: str = "facenet160",
    min_face: int = 40,
    show_progress: bool = True,
    total: int | None = None,
) -> FaceCrops:
    """Detect and align the largest face of each (label, name, rgb) image, as the device does."""
    from edge.detector import FaceDetector
    from edge.recognizer import FaceCropper

    if size[0] != size[1]:
        raise ModelError(f"alignment needs a square input, not {size[0]}x{size[1]}")
    cropper = FaceCropper(FaceDetector.load(detector_path), template, size[0], min_face)
    crops, labels, names = [], [], []
    failed = 0
    for label, name, rgb in progress(images, "detecting faces", total, show_progress, "img"):
        faces = cropper.crops(rgb)
        if not faces:
            failed += 1
            continue
        crops.append(faces[0].crop)
        labels.append(label)
        names.append(name)
    arr = np.stack(crops) if crops else np.zeros((0, size[1], size[0], 3), np.uint8)
    return FaceCrops(arr, labels, names, failed)


def read_folder(folder: Path | str) -> Iterator[tuple[str, str, Image]]:
    """(label, file name, rgb) for each readable photo of a face folder (bad files skipped)."""
    for label, p in list_images(folder):
        try:
            yield label, f"{label}/{p.name}" if label else p.name, read_image(p)
        except ImageError as e:
            log.warning("skipping %s", e)


def _base(name: str) -> str:
    """The photo an (augmented) crop came from: ``a.jpg#aug3`` -> ``a.jpg``."""
    return name.split("#aug", 1)[0]


def holdout_split(
    labels: Sequence[str], fraction: float, names: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """Indices (calibration, held aside): every k-th photo of each person is held aside.

    With ``k = round(1 / fraction)``, a person's photos ``k-1, 2k-1, ...`` go
    aside, so one with fewer than ``k`` photos stays whole in calibration;
    unlabelled photos are one group. Augmented copies follow their photo
    (``names``), so a held-aside face never leaks into calibration.
    Deterministic: no random state.
    """
    if fraction <= 0:
        return list(range(len(labels))), []
    k = max(2, round(1.0 / fraction))
    names = list(names) if names is not None else [str(i) for i in range(len(labels))]
    ordinal: dict[tuple[str, str], int] = {}
    per_label: dict[str, int] = {}
    cal: list[int] = []
    held: list[int] = []
    for i, (lab, name) in enumerate(zip(labels, names, strict=True)):
        key = (lab, _base(name))
        if key not in ordinal:
            ordinal[key] = per_label.get(lab, 0)
            per_label[lab] = ordinal[key] + 1
        (held if ordinal[key] % k == k - 1 else cal).append(i)
    return cal, held


def augment(rgb: Image, rng: np.random.Generator) -> Image:
    """A randomly flipped, rotated (+-12 deg), scaled (0.8-1.15), lit and contrasted copy.

    ``out = clip((x - 128) * contrast + 128 + brightness)`` with contrast in
    [0.75, 1.25] and brightness in [-30, 30]; geometry by one affine warp.
    """
    import cv2

    img = rgb[:, ::-1] if rng.random() < 0.5 else rgb
    h, w = img.shape[:2]
    angle = float(rng.uniform(-12, 12))
    scale = float(rng.uniform(0.8, 1.15))
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    warped = cv2.warpAffine(np.ascontiguousarray(img), M, (w, h), borderMode=cv2.BORDER_REFLECT)
    contrast = float(rng.uniform(0.75, 1.25))
    bright = float(rng.uniform(-30, 30))
    out = (warped.astype(np.float32) - 128.0) * contrast + 128.0 + bright
    return np.asarray(np.clip(out, 0, 255), dtype=np.uint8)


def augmented(
    images: Iterable[tuple[str, str, Image]], copies: int, seed: int = 0
) -> Iterator[tuple[str, str, Image]]:
    """Each image as is, then ``copies`` augmented variants of it (seeded, reproducible)."""
    rng = np.random.default_rng(seed)
    for label, name, rgb in images:
        yield label, name, rgb
        for i in range(copies):
            yield label, f"{name}#aug{i}", augment(rgb, rng)


# --------------------------------------------------------------------------- conversion


def preprocess(crops: npt.NDArray[np.uint8], pre: Preprocessing) -> F32:
    """Crops -> model input: ``(pixel - mean) / std`` in the model's channel order."""
    x = crops[..., ::-1] if pre.color.upper() == "BGR" else crops
    return ((x.astype(np.float32) - np.float32(pre.mean)) / np.float32(pre.std)).astype(np.float32)


def _converter(source: SourceModel) -> Any:
    tf = _tf()
    return tf.lite.TFLiteConverter.from_concrete_functions([source.fn], source.keep)


def _convert(conv: Any, what: str) -> bytes:
    try:
        out = conv.convert()
    except Exception as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ModelError(f"TFLite conversion ({what}) failed: {first}") from None
    return bytes(out)


def convert_float(source: SourceModel) -> bytes:
    """The float32 TFLite model (the reference for the int8 one)."""
    return _convert(_converter(source), "float32")


def convert_int8(
    source: SourceModel, calibration: F32, show_progress: bool = True, snap_steps: int = 0
) -> bytes:
    """Full-integer post-training quantisation: int8 weights, activations, input and output.

    The converter runs ``calibration`` (preprocessed model inputs, one at a
    time) through the float model to choose each tensor's scale/zero-point.
    Only int8 builtin ops are allowed, so conversion fails rather than leave
    a float op behind.

    ``snap_steps`` > 0 calibrates first, widens every calibrated activation
    range to a grid (:func:`snap_ranges`), then quantises: the float kernels
    and crops of another CPU differ in the last bits, which moves ranges by
    about 1e-4 and would change the int8 file; on the grid it almost never does.
    """
    tf = _tf()
    if len(calibration) == 0:
        raise NoFaceError("no calibration faces: int8 quantisation needs representative inputs")
    conv = _converter(source)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative() -> Iterator[list[F32]]:
        for x in progress(calibration, "calibrating int8", len(calibration), show_progress, "face"):
            yield [x[None].astype(np.float32)]

    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    if snap_steps > 0:
        # TF 2.21's own two steps (lite.py `_quantize`), with the ranges snapped between.
        conv._experimental_calibrate_only = True
    with warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the input range comes
        # from the representative dataset, as intended.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        out = _convert(conv, "int8")
        if snap_steps <= 0:
            return out
        from tensorflow.lite.python import lite
        from tensorflow.lite.python.convert import mlir_quantize

        try:
            q = mlir_quantize(
                snap_ranges(out, snap_steps), input_data_type=tf.int8, output_data_type=tf.int8
            )
        except Exception as e:
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise ModelError(f"TFLite conversion (int8, snapped ranges) failed: {first}") from None
        return bytes(lite._deduplicate_readonly_buffers(q))


def snap_up(v: float, steps: int) -> float:
    """The smallest ``2^(j / steps)`` (``j`` an integer) that is >= ``v``; 0 for ``v <= 0``."""
    if v <= 0:
        return 0.0
    return float(2.0 ** (math.ceil(math.log2(v) * steps - 1e-9) / steps))


def snap_ranges(calibrated: bytes, steps: int) -> bytes:
    """Widen each calibrated activation range ``[min, max]`` outward onto a grid.

    ``max -> snap_up(max)``, ``min -> -snap_up(-min)`` with ``steps`` grid
    points per octave (8: ranges up to 9% wider, about 0.12 bit of int8
    resolution). The model's inputs keep their range: it is the
    preprocessing's, and ``(pixel - 127.5) / 128`` should stay ``pixel - 128``.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    for sub in model.subgraphs:
        inputs = {int(i) for i in sub.inputs}
        for i, t in enumerate(sub.tensors):
            q = t.quantization
            if i in inputs or q is None or q.min is None or q.max is None or len(q.max) != 1:
                continue
            q.min = np.array([-snap_up(-float(q.min[0]), steps)], dtype=np.float32)
            q.max = np.array([snap_up(float(q.max[0]), steps)], dtype=np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# --------------------------------------------------------------------------- inspection


@dataclass(frozen=True)
class OpInfo:
    """One operator of a TFLite model and the dtypes of its tensors."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _plain_interpreter(path: Path) -> Any:
    """A runtime interpreter without default delegates, so ops are listed as in the file."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        it = Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    except ImportError:
        tf = _tf()
        it = tf.lite.Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    it.allocate_tensors()
    return it


def model_ops(path: Path | str) -> list[OpInfo]:
    """Every operator of a TFLite model with its operand/result dtypes."""
    it = _plain_interpreter(Path(path))
    out = []
    for op in it._get_ops_details():
        ins = tuple(np.dtype(t).name for t in op.get("operand_types", []))
        outs = tuple(np.dtype(t).name for t in op.get("result_types", []))
        out.append(OpInfo(str(op["op_name"]), ins, outs))
    return out


def non_int8_ops(ops: Sequence[OpInfo]) -> list[str]:
    """Ops that are not integer-only: any float input/output, or a non-int8 result.

    Biases are int32 in an int8 model (the accumulator type), so int32
    operands are fine; results must be int8.
    """
    bad = []
    for op in ops:
        if any(t.startswith("float") for t in op.inputs + op.outputs) or any(
            t != "int8" for t in op.outputs
        ):
            bad.append(f"{op.name}({','.join(op.inputs)}->{','.join(op.outputs)})")
    return bad


def io_specs(path: Path | str) -> tuple[TensorSpec, TensorSpec]:
    """The input and output tensor specs (shape, dtype, scale, zero-point) of a model."""
    it = _plain_interpreter(Path(path))
    specs = []
    for d in (it.get_input_details()[0], it.get_output_details()[0]):
        scale, zp = d.get("quantization", (0.0, 0))
        dtype = np.dtype(d["dtype"]).name
        q = dtype != "float32"
        specs.append(
            TensorSpec(
                tuple(int(s) for s in d["shape"]),
                dtype,
                float(scale) if q else 0.0,
                int(zp) if q else 0,
            )
        )
    return specs[0], specs[1]


# --------------------------------------------------------------------------- validation


def pair_scores(emb: F32, labels: Sequence[str]) -> tuple[F32, F32]:
    """Cosine distances ``1 - a.b`` of all same-person and all different-person pairs."""
    lab = np.asarray(labels)
    keep = lab != ""
    e, lab = emb[keep], lab[keep]
    d = 1.0 - e @ e.T
    iu = np.triu_indices(len(e), k=1)
    same = lab[:, None] == lab[None, :]
    return d[iu][same[iu]].astype(np.float32), d[iu][~same[iu]].astype(np.float32)


def verification(genuine: F32, impostor: F32, far: float = FAR_TARGET) -> dict[str, Any]:
    """Best-threshold accuracy over all pairs, and TAR at a false-accept rate.

    Accuracy: the largest ``(#genuine < t + #impostor >= t) / #pairs`` over
    thresholds ``t`` at every observed distance; balanced accuracy: the
    largest ``(TAR(t) + TRR(t)) / 2`` (not swamped by the many impostor pairs).
    TAR@FAR: with ``t`` the largest threshold accepting at most ``floor(far * #impostor)`` impostors
    (distance < t), the share of genuine pairs below ``t``.
    """
    ng, ni = len(genuine), len(impostor)
    if ng == 0 or ni == 0:
        return {"pairs_genuine": ng, "pairs_impostor": ni, "accuracy": None, "tar_at_far": None}
    g, im = np.sort(genuine), np.sort(impostor)
    cand = np.concatenate([g, im, [np.inf]])
    tar_t = np.searchsorted(g, cand, "left") / ng  # genuine accepted: d < t
    trr_t = 1.0 - np.searchsorted(im, cand, "left") / ni  # impostors rejected: d >= t
    acc = (tar_t * ng + trr_t * ni) / (ng + ni)
    best = int(np.argmax(acc))
    balanced = float(np.max((tar_t + trr_t) / 2))
    allowed = int(np.floor(far * ni))
    t_far = float(im[allowed]) if allowed < ni else float("inf")
    tar = float(np.searchsorted(g, t_far, "left") / ng)
    return {
        "pairs_genuine": ng,
        "pairs_impostor": ni,
        "accuracy": float(acc[best]),
        "accuracy_threshold": float(cand[best]),
        "balanced_accuracy": balanced,
        "far": far,
        "tar_at_far": tar,
        "threshold_at_far": t_far,
    }


def _agreement(a: F32, b: F32) -> dict[str, Any]:
    if len(a) == 0:
        return {"n": 0, "mean_cosine": None, "min_cosine": None}
    c = np.sum(a * b, axis=1)
    return {"n": len(c), "mean_cosine": float(c.mean()), "min_cosine": float(c.min())}


def latency_ms(model_path: Path, runs: int = 10, num_threads: int = 2) -> float:
    """Median wall time of one inference in ms (after one warm-up run), device runtime."""
    from edge.runtime import load_interpreter

    it = load_interpreter(model_path, num_threads=num_threads)
    d = it.input_details[0]
    x = np.zeros(tuple(d["shape"]), dtype=d["dtype"])
    it.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def source_agreement(
    source: SourceModel, float_emb: F32, inputs: F32, limit: int = 32
) -> dict[str, Any]:
    """Cosine of the float TFLite embeddings to the source model's own, on ``limit`` faces.

    The faces are spread evenly over ``inputs`` (calibration, then held aside);
    the source model runs in TensorFlow, so this is the slow part of validation.
    """
    if len(inputs) == 0:
        return _agreement(float_emb[:0], float_emb[:0])
    idx = np.unique(np.linspace(0, len(inputs) - 1, min(limit, len(inputs))).astype(int))
    ref = np.concatenate([source(inputs[i : i + 1]) for i in idx])
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    return _agreement(float_emb[idx], ref.astype(np.float32))


# --------------------------------------------------------------------------- the tool


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything one quantisation run needs (the CLI fills it from flags)."""

    model: Path
    out_dir: Path
    name: str = "facenet"
    calibration: Path | None = None
    images: Sequence[tuple[str, str, Image]] | None = None  # in-memory photos instead of a folder
    validation: Path | None = None
    preprocessing: Preprocessing = FACENET_PREPROCESSING
    input_node: str = "input"
    output_node: str = "embeddings"
    alignment: str = "facenet160"
    detector: Path = DEFAULT_DETECTOR
    holdout: float = 0.25
    augment: int = 0
    max_calibration: int = 400
    min_face: int = 40
    edgetpu: bool = False
    show_progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    source: SourceModel | None = None  # an already loaded model (keras_source) instead of `model`
    snap_steps: int = 0  # > 0: activation ranges snapped to 2^(j/snap_steps) (snap_ranges)


@dataclass(frozen=True)
class QuantizeResult:
    float_model: Path
    int8_model: Path
    report_md: Path
    report_json: Path
    report: dict[str, Any]


def _embed(model: Path, crops: npt.NDArray[np.uint8]) -> F32:
    from edge.embedder import Embedder

    emb = Embedder.load(model)
    return emb.embed(crops) if len(crops) else np.zeros((0, emb.dim), np.float32)


def _manifest(
    cfg: QuantizeConfig, source: SourceModel, model: Path, quant: str, n_cal: int
) -> Manifest:
    inp, out = io_specs(model)
    emb = int(np.prod(out.shape[1:]))
    return Manifest(
        kind="embedder",
        name=f"{cfg.name}-{quant}",
        file=model.name,
        sha256=sha256_file(model),
        input=inp,
        output=out,
        preprocessing=cfg.preprocessing,
        quantization=quant,
        embedding_size=emb,
        alignment=cfg.alignment,
        calibration=SUGGESTED,
        source={
            "file": source.path.name,
            "format": source.kind,
            "sha256": source.sha256,
            **source.details,
        },
        tool_version=TOOL_VERSION,
        extra={"calibration_faces": n_cal, **cfg.extra},
        path=model.with_suffix(".json"),
    )


def edgetpu_compile(model: Path, out_dir: Path) -> dict[str, Any]:
    """Run ``edgetpu_compiler`` when installed; count the ops it mapped to the TPU."""
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        return {"available": False, "message": EDGETPU_INSTALL}
    try:
        proc = subprocess.run(
            [exe, "-s", "-o", str(out_dir), str(model)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"available": True, "ok": False, "message": f"edgetpu_compiler failed: {e}"}
    mapped = total = 0
    for line in proc.stdout.splitlines():
        parts = line.split()
        # Table rows: "<OP> <count> <status words...>"
        if len(parts) >= 3 and parts[1].isdigit() and parts[0].isupper():
            total += int(parts[1])
            if "Mapped to Edge TPU" in line:
                mapped += int(parts[1])
    return {
        "available": True,
        "ok": proc.returncode == 0,
        "ops_mapped": mapped,
        "ops_total": total,
        "message": (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""],
    }


def _r(x: float | None, nd: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def render_report(rep: dict[str, Any]) -> str:
    """The validation report as Markdown."""
    f, q = rep["float32"], rep["int8"]
    lines = [
        f"# Quantisation report: {rep['name']}",
        "",
        f"Source: `{rep['source']['file']}` ({rep['source']['format']}, sha256 "
        f"{rep['source']['sha256'][:16]}...), tool {rep['tool_version']}.",
        f"Faces: {rep['faces']['calibration']} for calibration, {rep['faces']['held_aside']} "
        f"held aside or given for validation (never calibrated on), {rep['faces']['failed']} "
        "photos without a usable face.",
        "",
        "| | float32 | int8 |",
        "|---|---|---|",
        f"| size (MB) | {f['size_bytes'] / 1e6:.1f} | {q['size_bytes'] / 1e6:.1f} |",
        f"| latency per inference (ms) | {f['latency_ms']:.1f} | {q['latency_ms']:.1f} |",
        f"| verification accuracy (all pairs) | {_r(f['verification']['accuracy'])} "
        f"| {_r(q['verification']['accuracy'])} |",
        f"| balanced accuracy | {_r(f['verification'].get('balanced_accuracy'))} "
        f"| {_r(q['verification'].get('balanced_accuracy'))} |",
        f"| TAR at FAR={FAR_TARGET:g} | {_r(f['verification']['tar_at_far'])} "
        f"| {_r(q['verification']['tar_at_far'])} |",
        f"| input dtype / scale / zero-point | {f['input']['dtype']} | {q['input']['dtype']} / "
        f"{q['input']['scale']:.6g} / {q['input']['zero_point']} |",
        f"| output dtype / scale / zero-point | {f['output']['dtype']} | {q['output']['dtype']} / "
        f"{q['output']['scale']:.6g} / {q['output']['zero_point']} |",
        "",
        f"Pairs: {f['verification']['pairs_genuine']} same-person, "
        f"{f['verification']['pairs_impostor']} different-person.",
        "",
        "## Embedding agreement (cosine similarity)",
        "",
        "| faces | n | mean | min |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("float_vs_source", "float32 TFLite vs source model"),
        ("int8_vs_float_calibration", "int8 vs float32, calibration faces"),
        ("int8_vs_float_held_aside", "int8 vs float32, held-aside faces"),
    ):
        a = rep["agreement"][key]
        lines.append(f"| {label} | {a['n']} | {_r(a['mean_cosine'])} | {_r(a['min_cosine'])} |")
    bad = rep["int8"]["non_int8_ops"]
    tpu_bad = rep["int8"]["edgetpu_unsupported_ops"]
    lines += [
        "",
        "## Operators",
        "",
        f"int8 model: {rep['int8']['op_count']} ops; "
        f"not int8: {', '.join(bad) if bad else 'none'}; "
        f"not on the Edge TPU's supported list: {', '.join(tpu_bad) if tpu_bad else 'none'}.",
    ]
    tpu = rep.get("edgetpu")
    if tpu is not None:
        if tpu.get("available") and "ops_mapped" in tpu:
            lines.append(
                f"edgetpu_compiler: {tpu['ops_mapped']} of {tpu['ops_total']} ops "
                "mapped to the Edge TPU."
            )
        else:
            lines.append(str(tpu.get("message")))
    cal = rep["suggested_calibration"]
    lines += [
        "",
        f"Suggested threshold (cosine distance) {cal['threshold']}, margin {cal['margin']} "
        f"({cal['source']}); run `python -m tools.calibrate` on your enrolment photos to fit them.",
        "",
    ]
    return "\n".join(lines)


def quantize(cfg: QuantizeConfig) -> QuantizeResult:
    """Convert, validate and write the float32 and int8 models with manifests and report."""
    pre = cfg.preprocessing
    stage = Stage("quantize", total=6, enabled=cfg.show_progress)
    with stage:
        if cfg.source is None:
            model_format(cfg.model)  # a missing file or unknown format fails before any work
        if cfg.images is not None:
            faces = collect_faces(
                cfg.images,
                cfg.detector,
                pre.size,
                cfg.alignment,
                cfg.min_face,
                cfg.show_progress,
                len(cfg.images),
            )
        elif cfg.calibration is not None:
            n_img = len(list_images(cfg.calibration))
            if n_img == 0:
                raise NoFaceError(f"{cfg.calibration}: no images in the calibration folder")
            images: Iterable[tuple[str, str, Image]] = read_folder(cfg.calibration)
            if cfg.augment:
                images = augmented(images, cfg.augment)
            faces = collect_faces(
                images,
                cfg.detector,
                pre.size,
                cfg.alignment,
                cfg.min_face,
                cfg.show_progress,
                n_img * (1 + cfg.augment),
            )
        else:
            raise NoFaceError("no calibration faces given (--calibration DIR)")
        if len(faces) == 0:
            where = cfg.calibration or "the calibration images"
            raise NoFaceError(f"{where}: no usable face found in any image")
        cal_idx, held_idx = holdout_split(faces.labels, cfg.holdout, faces.names)
        if len(cal_idx) > cfg.max_calibration:
            step = len(cal_idx) / cfg.max_calibration
            cal_idx = [cal_idx[int(i * step)] for i in range(cfg.max_calibration)]
        cal = faces.subset(cal_idx)
        held = faces.subset(held_idx)
        if cfg.validation is not None:
            extra = collect_faces(
                read_folder(cfg.validation),
                cfg.detector,
                pre.size,
                cfg.alignment,
                cfg.min_face,
                cfg.show_progress,
                len(list_images(cfg.validation)),
            )
            held = FaceCrops(
                np.concatenate([held.crops, extra.crops]),
                held.labels + extra.labels,
                held.names + extra.names,
            )
        stage.step("faces aligned")
        source = cfg.source or load_source(cfg.model, pre.size, cfg.input_node, cfg.output_node)
        stage.step("model loaded")

        float_bytes = convert_float(source)
        stage.step("float32 converted")
        int8_bytes = convert_int8(
            source, preprocess(cal.crops, pre), cfg.show_progress, cfg.snap_steps
        )
        stage.step("int8 converted")

        try:
            cfg.out_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.name}-quantize-", dir=cfg.out_dir))
        except OSError as e:
            raise ModelError(f"cannot write into {cfg.out_dir}: {e}") from None
        try:
            paths = {q: tmp / f"{cfg.name}_{q}.tflite" for q in ("float32", "int8")}
            paths["float32"].write_bytes(float_bytes)
            paths["int8"].write_bytes(int8_bytes)
            manifests = {q: _manifest(cfg, source, p, q, len(cal)) for q, p in paths.items()}
            for m in manifests.values():
                save_manifest(m)
            report = _validate(cfg, source, manifests, paths, cal, held, faces.failed)
            stage.step("validated")
            if cfg.edgetpu:
                report["edgetpu"] = edgetpu_compile(paths["int8"], tmp)
            md = render_report(report)
            report_md = tmp / f"{cfg.name}_int8.report.md"
            report_json = tmp / f"{cfg.name}_int8.report.json"
            report_md.write_text(md, encoding="utf-8")
            write_json_atomic(report_json, report)
            # Everything succeeded: move into place, models before manifests so a
            # manifest never points at a model that is not there yet.
            final: dict[str, Path] = {}
            names = sorted(p.name for p in tmp.iterdir())
            order = sorted(names, key=lambda n: (n.endswith(".json"), n))
            for n in order:
                # mkstemp files are 0600; models are read by the door's service user.
                os.chmod(tmp / n, 0o644)
                dst = cfg.out_dir / n
                os.replace(tmp / n, dst)
                final[n] = dst
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        stage.step("written")
    return QuantizeResult(
        final[paths["float32"].name],
        final[paths["int8"].name],
        final[report_md.name],
        final[report_json.name],
        report,
    )


def _validate(
    cfg: QuantizeConfig,
    source: SourceModel,
    manifests: dict[str, Manifest],
    paths: dict[str, Path],
    cal: FaceCrops,
    held: FaceCrops,
    failed: int,
) -> dict[str, Any]:
    from tools.edgetpu_ops import unsupported_ops

    emb = {q: (_embed(p, cal.crops), _embed(p, held.crops)) for q, p in paths.items()}
    # Verification pairs use original photos only: an augmented copy paired with
    # its own photo would be a trivially easy "same person" pair.
    names = cal.names + held.names
    labels = [
        lab if "#aug" not in n else ""
        for lab, n in zip(cal.labels + held.labels, names, strict=True)
    ]
    models: dict[str, Any] = {}
    for q, p in paths.items():
        m = manifests[q]
        all_emb = np.concatenate(emb[q])
        models[q] = {
            "file": p.name,
            "sha256": m.sha256,
            "size_bytes": p.stat().st_size,
            "latency_ms": latency_ms(p),
            "input": {
                "dtype": m.input.dtype,
                "scale": m.input.scale,
                "zero_point": m.input.zero_point,
            },
            "output": {
                "dtype": m.output.dtype,
                "scale": m.output.scale,
                "zero_point": m.output.zero_point,
            },
            "embedding_size": m.embedding_size,
            "verification": verification(*pair_scores(all_emb, labels)),
        }
    ops = model_ops(paths["int8"])
    models["int8"]["op_count"] = len(ops)
    models["int8"]["non_int8_ops"] = non_int8_ops(ops)
    models["int8"]["edgetpu_unsupported_ops"] = unsupported_ops(op.name for op in ops)
    models["int8"]["op_names"] = sorted({op.name for op in ops})
    all_cal_inputs = preprocess(np.concatenate([cal.crops, held.crops]), cfg.preprocessing)
    return {
        "name": cfg.name,
        "tool_version": TOOL_VERSION,
        "source": {"file": source.path.name, "format": source.kind, "sha256": source.sha256},
        "preprocessing": {
            "size": list(cfg.preprocessing.size),
            "mean": cfg.preprocessing.mean,
            "std": cfg.preprocessing.std,
            "color": cfg.preprocessing.color,
        },
        "faces": {"calibration": len(cal), "held_aside": len(held), "failed": failed},
        "float32": models["float32"],
        "int8": models["int8"],
        "agreement": {
            "float_vs_source": source_agreement(
                source, np.concatenate(emb["float32"]), all_cal_inputs
            ),
            "int8_vs_float_calibration": _agreement(emb["int8"][0], emb["float32"][0]),
            "int8_vs_float_held_aside": _agreement(emb["int8"][1], emb["float32"][1]),
        },
        "suggested_calibration": {
            "threshold": SUGGESTED.threshold,
            "margin": SUGGESTED.margin,
            "conf_midpoint": SUGGESTED.conf_midpoint,
            "conf_scale": SUGGESTED.conf_scale,
            "source": SUGGESTED.source,
        },
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.quantize",
        description="Convert a face embedder (frozen .pb, Keras .h5/.keras, SavedModel) to a "
        "full-integer int8 TFLite model plus a float32 one, with manifests and a report.",
    )
    p.add_argument("model", type=Path, help="frozen graph (.pb), Keras (.h5/.keras) or SavedModel")
    p.add_argument("--calibration", type=Path, required=True, help="face photos: <dir>/<Person>/*")
    p.add_argument("--validation", type=Path, help="more labelled faces, only for the report")
    p.add_argument("--out-dir", type=Path, default=Path("models"))
    p.add_argument("--name", default="facenet", help="output base name (default: facenet)")
    p.add_argument("--input-size", type=int, help="square input side in pixels (default 160)")
    p.add_argument("--mean", type=float, help="pixel mean: input = (pixel - mean) / std (127.5)")
    p.add_argument("--std", type=float, help="pixel std (default 128)")
    p.add_argument("--color", choices=("RGB", "BGR"), help="channel order (default RGB)")
    p.add_argument("--preprocessing-from", type=Path, help="read the above from a manifest")
    p.add_argument("--input-node", default="input", help="frozen graph input (default: input)")
    p.add_argument("--output-node", default="embeddings", help="frozen graph output")
    p.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR)
    p.add_argument("--holdout", type=float, default=0.25, help="share of photos held aside")
    p.add_argument("--augment", type=int, default=0, help="augmented copies per photo")
    p.add_argument("--max-calibration", type=int, default=400)
    p.add_argument("--edgetpu", action="store_true", help="also run edgetpu_compiler")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(a: argparse.Namespace) -> QuantizeConfig:
    """Validate flags and build the config (preprocessing: flags over manifest over defaults)."""
    pre = Preprocessing(size=(160, 160), mean=127.5, std=128.0)
    if a.preprocessing_from is not None:
        pre = load_manifest(a.preprocessing_from).preprocessing
    if a.input_size is not None:
        if not 16 <= a.input_size <= 1024:
            raise ModelError(f"--input-size must be in 16..1024, got {a.input_size}")
        pre = replace(pre, size=(a.input_size, a.input_size))
    if a.mean is not None:
        pre = replace(pre, mean=a.mean)
    if a.std is not None:
        if a.std <= 0:
            raise ModelError(f"--std must be positive, got {a.std}")
        pre = replace(pre, std=a.std)
    if a.color is not None:
        pre = replace(pre, color=a.color)
    if not 0 <= a.holdout < 1:
        raise FacegateError(f"--holdout must be in [0, 1), got {a.holdout}")
    if a.augment < 0 or a.max_calibration < 1:
        raise FacegateError("--augment must be >= 0 and --max-calibration >= 1")
    return QuantizeConfig(
        model=a.model,
        out_dir=a.out_dir,
        name=a.name,
        calibration=a.calibration,
        validation=a.validation,
        preprocessing=pre,
        input_node=a.input_node,
        output_node=a.output_node,
        detector=a.detector,
        holdout=a.holdout,
        augment=a.augment,
        max_calibration=a.max_calibration,
        edgetpu=a.edgetpu,
        show_progress=not a.no_progress,
    )


def summary(res: QuantizeResult) -> str:
    """A few lines for the terminal after the full report."""
    rep = res.report
    out = [render_report(rep)]
    out.append(f"wrote {res.float_model}, {res.int8_model} (+ manifests), {res.report_md}")
    return "\n".join(out)


def _main(argv: Sequence[str] | None) -> int:
    res = quantize(config_from_args(build_parser().parse_args(argv)))
    print(summary(res))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("quantize", _main, argv)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
