"""Conversion for :mod:`tools.quantize`: the float32 and the full-integer int8 TFLite model.

The int8 ranges come from a representative set of preprocessed face crops;
:func:`snap_ranges` optionally widens them onto a grid so that the last-bit
differences between CPUs rarely change the int8 file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import ModelError, NoFaceError
from edge.vision.manifest import Preprocessing
from tools._common import progress
from tools.quantize.common import F32, _tf
from tools.quantize.source import SourceModel


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
