"""Turn a trained face embedder into a full-integer int8 TFLite model you can trust.

``python -m tools.quantize MODEL --calibration FACES [--out-dir models --name facenet]``

* ``MODEL``: a frozen TF graph (``.pb``), a Keras model (``.h5``/``.keras``;
  an ``.h5`` that Keras 3 cannot load, such as the widely used Keras 2
  ``facenet_keras.h5``, is read by layer name into
  :mod:`tools.facenet_keras`'s InceptionResNetV1) or a SavedModel folder.
* ``FACES``: a folder of face photos, ``<dir>/<Person>/<image>`` (labelled:
  verification pairs are scored) or flat ``<dir>/<image>``. Every photo goes
  through the device's own detector and alignment
  (:class:`edge.decide.recognizer.FaceCropper`), so the int8 ranges are calibrated on
  the crops the door will see. A share of each person's photos is held aside
  (``--holdout``) to check the int8 model on faces it was not calibrated on.
* Preprocessing: ``--input-size``, ``--mean``/``--std`` (the model sees
  ``(pixel - mean) / std``), ``--color`` and ``--alignment``, or
  ``--preprocessing-from`` an existing manifest. ``--standardize per-image``
  puts FaceNet's per-image standardisation inside the graph (written with
  ``rsqrt``: it stays on the Edge TPU's op list); the device still feeds
  ``(pixel - mean) / std`` and the manifest says both.

Writes ``<name>_float32.tflite`` and ``<name>_int8.tflite`` (int8 input and
output, every op int8: what the Edge TPU compiler requires), a manifest for
each, and ``<name>_int8.report.md``/``.json``: sizes, float-vs-int8 embedding
agreement, verification accuracy and TAR at FAR=1e-2 (and 1e-3, 1e-4 where
the pairs resolve them) of both, latency, and any op that is not int8.
Everything is built in a temporary folder beside the output and renamed into
place only when all of it succeeded.

The stages are modules: :mod:`~tools.quantize.source` (load the model),
:mod:`~tools.quantize.faces` (calibration crops), :mod:`~tools.quantize.convert`
(float32 and int8 TFLite), :mod:`~tools.quantize.inspect` (ops and tensors),
:mod:`~tools.quantize.validate` (agreement, accuracy, the report) and
:mod:`~tools.quantize.tool` (the run and its CLI). Their public names are
re-exported here.
"""

from __future__ import annotations

from tools.quantize.common import (
    DEFAULT_DETECTOR,
    EDGETPU_INSTALL,
    FACENET_PREPROCESSING,
    FAR_TARGET,
    STANDARDIZE,
    SUGGESTED,
    TOOL_VERSION,
)
from tools.quantize.config import QuantizeConfig
from tools.quantize.convert import (
    convert_float,
    convert_int8,
    preprocess,
    snap_ranges,
    snap_up,
)
from tools.quantize.faces import (
    FaceCrops,
    _base,
    augment,
    augmented,
    collect_faces,
    holdout_split,
    labelled_images,
    read_folder,
)
from tools.quantize.inspect import OpInfo, edgetpu_compile, io_specs, model_ops, non_int8_ops
from tools.quantize.source import (
    SourceModel,
    hash_path,
    keras_source,
    load_keras_model,
    load_source,
    model_format,
    standardized,
)
from tools.quantize.tool import (
    QuantizeResult,
    build_parser,
    config_from_args,
    main,
    quantize,
    summary,
)
from tools.quantize.validate import (
    latency_ms,
    pair_scores,
    render_report,
    source_agreement,
    verification,
)

__all__ = [
    "DEFAULT_DETECTOR",
    "EDGETPU_INSTALL",
    "FACENET_PREPROCESSING",
    "FAR_TARGET",
    "STANDARDIZE",
    "SUGGESTED",
    "TOOL_VERSION",
    "FaceCrops",
    "OpInfo",
    "QuantizeConfig",
    "QuantizeResult",
    "SourceModel",
    "_base",
    "augment",
    "augmented",
    "build_parser",
    "collect_faces",
    "config_from_args",
    "convert_float",
    "convert_int8",
    "edgetpu_compile",
    "hash_path",
    "holdout_split",
    "io_specs",
    "keras_source",
    "labelled_images",
    "latency_ms",
    "load_keras_model",
    "load_source",
    "main",
    "model_format",
    "model_ops",
    "non_int8_ops",
    "pair_scores",
    "preprocess",
    "quantize",
    "read_folder",
    "render_report",
    "snap_ranges",
    "snap_up",
    "source_agreement",
    "standardized",
    "summary",
    "verification",
]
