"""The operations the Edge TPU compiler can map, as data.

From Coral's "TensorFlow models on the Edge TPU", section "Supported
operations" (https://coral.ai/docs/edgetpu/models-intro/#supported-operations),
keyed by TFLite builtin operator name as ``Interpreter._get_ops_details()``
reports it, with the documented limitation (empty when none). Every op must
also be int8 (uint8) quantised, with static shapes, for the compiler to map
it; an op after the first unsupported one runs on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable

SOURCE_URL = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"

SUPPORTED_OPS: dict[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": (
        "no fused activation function; a constant input must be all zeros "
        "and then there must be only two inputs"
    ),
    "CONV_2D": "",
    "DEPTHWISE_CONV_2D": "dilated convolution is not supported",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "only the default weight format; output is one-dimensional",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "unidirectional only",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction along the batch dimension",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "no packing along the batch dimension",
    "PAD": "no padding along the batch dimension",
    "PRELU": "alpha must be one-dimensional (innermost dimension only)",
    "QUANTIZE": "",
    "REDUCE_MAX": "no reduction along the batch dimension",
    "REDUCE_MIN": "no reduction along the batch dimension",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "some reshapes of large tensors are not mapped",
    "RESIZE_BILINEAR": "input/output is a 3-dimensional tensor; may stay on the CPU",
    "RESIZE_NEAREST_NEIGHBOR": "input/output is a 3-dimensional tensor; may stay on the CPU",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "one-dimensional input only, at most 16,000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "no splitting along the batch dimension",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "all strides must be 1; no batch-dimension slicing",
    "SUB": "",
    "SUM": "no reduction along the batch dimension",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}


def unsupported_ops(op_names: Iterable[str]) -> list[str]:
    """The distinct op names the Edge TPU cannot run, sorted (empty: all supported)."""
    return sorted({op for op in op_names if op not in SUPPORTED_OPS})
