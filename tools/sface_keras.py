"""SFace (OpenCV Zoo, 2021dec) rebuilt in Keras from its block-int8 ONNX file.

SFace is a MobileFaceNet-style network trained with an ArcFace-like loss
(Zhong et al. 2021, "SFace: Sigmoid-constrained hypersphere loss"): 112 x 112
RGB in, 128-d out. The ONNX file shipped by OpenCV Zoo as
``face_recognition_sface_2021dec_int8bq.onnx`` holds its weights as int8
blocks (``DequantizeLinear`` with ``block_size``); the graph is::

    Sub 127.5, Mul 1/128                                (the manifest's preprocessing)
    27 x (Conv -> BatchNorm eps 1e-3 -> PReLU)          stride 2 at conv_3_dw, conv_5_dw,
                                                        conv_7_dw, conv_13_dw
    BatchNorm eps 2e-5 -> Dropout -> Flatten (7x7x1024) -> Gemm 50176->128 -> BatchNorm eps 2e-5

The rebuild reads the initializers with ``onnx`` (a build-time dependency
only), dequantises the blocks in numpy (``(q - zero_point) * scale`` per
block along the node's axis), folds every batch norm into the convolution or
dense layer before it and permutes the dense rows from ONNX's NCHW flatten
order to Keras' NHWC order. The Sub/Mul pair is not in the Keras graph: the
manifest's preprocessing ``(pixel - 127.5) / 128`` does it (on the device, a
256-entry table).

Two conversion details matter for int8 on small CPUs and the Edge TPU:

* ONNX pads 3x3 convolutions symmetrically; TF's ``same`` padding at stride 2
  pads only bottom/right, so strided layers are ``ZeroPadding2D(1)`` +
  ``valid``.
* ``PReLU`` in int8 is not delegated to XNNPACK (about 10x slower per face
  than the rest of the network), and ``x + (alpha - 1) min(x, 0)`` converts
  but its int8 output is garbage. Each PReLU is written as
  ``Maximum(x, DepthwiseConv2D_1x1(alpha)(x))``, exact for ``alpha <= 1``
  (negative alphas included). A channel with ``alpha > 1`` is handled by
  ``prelu(x) = min(x, a x) = -a max(-x/a, -x)``: the convolution before it is
  scaled by ``-1/a`` on that output channel, the same ``Maximum(x', a x')``
  follows, and the next layer's weights on that input channel are scaled by
  ``-a``. All of it is exact algebra; the result matches onnxruntime to ~3e-5.

The network is built with ``Input(batch_size=1)`` so the TFLite graph has no
SHAPE/STRIDED_SLICE/PACK ops (the Edge TPU cannot run them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import ModelError

F32 = npt.NDArray[np.float32]

INPUT_SIZE = 112
EMBEDDING_SIZE = 128
# The layers whose 3x3 depthwise convolution has stride 2 (112 -> 56 -> 28 -> 14 -> 7).
STRIDE2 = ("conv_3_dw", "conv_5_dw", "conv_7_dw", "conv_13_dw")
CONV_UNITS = 27


def dequantize_blockwise(
    q: npt.NDArray[Any],
    scale: npt.NDArray[Any],
    zero_point: npt.NDArray[Any] | None,
    axis: int = 1,
    block_size: int = 0,
) -> F32:
    """ONNX ``DequantizeLinear``: ``y = (q - zero_point) * scale``.

    With ``block_size`` B > 0 (blocked quantisation), element ``j`` along
    ``axis`` uses ``scale[..., j // B, ...]`` (and the same zero point); with
    B = 0 a 1-D ``scale`` is per ``axis`` and a scalar one per tensor.
    """
    qf = np.asarray(q).astype(np.float32)
    s = np.asarray(scale, dtype=np.float32)
    z = np.zeros_like(s) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if s.ndim == 0 or s.size == 1:
        return ((qf - z.reshape(())) * s.reshape(())).astype(np.float32)
    axis = axis % qf.ndim
    if block_size > 0:
        n = qf.shape[axis]
        s = np.repeat(s, block_size, axis=axis).take(range(n), axis=axis)
        z = np.repeat(z, block_size, axis=axis).take(range(n), axis=axis)
    else:
        shape = [1] * qf.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return ((qf - z) * s).astype(np.float32)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def onnx_constants(path: Path | str) -> tuple[Any, dict[str, F32]]:
    """The ONNX graph and every constant tensor in it, weights dequantised.

    Initializers, ``Constant`` outputs, and the outputs of ``DequantizeLinear``
    and ``Reshape`` nodes whose inputs are all constant (the weight chains),
    as float32 arrays by tensor name.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ModelError(
            f"rebuilding SFace needs the onnx package (pip install 'facegate[tools]'): {e}"
        ) from None
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise ModelError(f"{path}: not a readable ONNX model ({e})") from None
    g = model.graph
    raw: dict[str, npt.NDArray[Any]] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:
        a = _attrs(node)
        ins = list(node.input)
        if node.op_type == "Constant" and "value" in a:
            raw[node.output[0]] = numpy_helper.to_array(a["value"])
        elif node.op_type == "DequantizeLinear" and all(i in raw for i in ins if i):
            zp = raw[ins[2]] if len(ins) > 2 and ins[2] else None
            raw[node.output[0]] = dequantize_blockwise(
                raw[ins[0]], raw[ins[1]], zp, int(a.get("axis", 1)), int(a.get("block_size", 0))
            )
        elif node.op_type == "Reshape" and all(i in raw for i in ins):
            raw[node.output[0]] = np.reshape(raw[ins[0]], raw[ins[1]].astype(np.int64))
    consts = {k: np.asarray(v, dtype=np.float32) for k, v in raw.items() if v.dtype.kind == "f"}
    return g, consts


@dataclass(frozen=True)
class ConvUnit:
    """One conv -> BN -> PReLU unit with the batch norm folded in.

    ``kernel`` is in Keras layout: (kh, kw, in, out) for a convolution,
    (kh, kw, channels, 1) for a depthwise one; ``y = conv(x) + bias``.
    """

    name: str
    depthwise: bool
    kernel: F32
    bias: F32
    stride: int
    alpha: F32  # PReLU slope per output channel


@dataclass(frozen=True)
class SFaceWeights:
    """The folded network: 27 conv units and the dense head (Keras layouts)."""

    units: tuple[ConvUnit, ...]
    dense_kernel: F32  # (7 * 7 * 1024, 128), rows in NHWC flatten order
    dense_bias: F32  # (128,)


def _bn_fold(consts: dict[str, F32], node: Any) -> tuple[F32, F32]:
    """A BatchNormalization node as ``y = s x + b`` per channel: (s, b)."""
    eps = float(_attrs(node).get("epsilon", 1e-5))
    gamma, beta, mean, var = (consts[i] for i in node.input[1:5])
    s = (gamma / np.sqrt(var + np.float32(eps))).astype(np.float32)
    return s, (beta - s * mean).astype(np.float32)


class _Graph:
    """An ONNX graph's nodes by the tensors they read, for walking SFace's chain of layers."""

    def __init__(self, path: Path | str, g: Any, consts: dict[str, F32]) -> None:
        self.path, self.g, self.consts = path, g, consts
        self.consumers: dict[str, list[Any]] = {}
        for node in g.node:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)

    def only_consumer(self, tensor: str, op: str) -> Any:
        nodes = self.consumers.get(tensor, [])
        if len(nodes) != 1 or nodes[0].op_type != op:
            got = [n.op_type for n in nodes]
            raise ModelError(f"{self.path}: {tensor} feeds {got}, expected one {op} (not SFace?)")
        return nodes[0]

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.path}: {what} (not SFace?)")


def _conv_unit(gr: _Graph, node: Any) -> tuple[ConvUnit, str]:
    """One Conv -> BatchNorm -> PRelu chain as a folded :class:`ConvUnit`, and its output."""
    a = _attrs(node)
    w = gr.consts[node.input[1]]  # (out, in / group, kh, kw)
    if len(node.input) > 2 and node.input[2]:
        raise gr.fail(f"{node.output[0]} has a bias")
    group, stride = int(a.get("group", 1)), int(a.get("strides", [1, 1])[0])
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if pads != [w.shape[2] // 2] * 4:
        raise gr.fail(f"{node.output[0]} pads {pads}")
    bn = gr.only_consumer(node.output[0], "BatchNormalization")
    prelu = gr.only_consumer(bn.output[0], "PRelu")
    s, b = _bn_fold(gr.consts, bn)
    depthwise = group > 1
    if depthwise and (group != w.shape[0] or w.shape[1] != 1):
        raise gr.fail(f"{node.output[0]}: grouped, not depthwise")
    order = (2, 3, 0, 1) if depthwise else (2, 3, 1, 0)
    kernel = (w * s[:, None, None, None]).transpose(order)
    name = node.output[0].removesuffix("_conv2d")
    alpha = gr.consts[prelu.input[1]].reshape(-1)
    unit = ConvUnit(name, depthwise, kernel.astype(np.float32), b, stride, alpha)
    return unit, str(prelu.output[0])


def _dense_head(gr: _Graph, last: str, channels: int) -> tuple[F32, F32]:
    """BN -> Dropout (inference: identity) -> Flatten -> Gemm -> BN, folded into one dense
    layer whose rows are in Keras' NHWC flatten order: (kernel, bias)."""
    bn1 = gr.only_consumer(last, "BatchNormalization")
    s1, b1 = _bn_fold(gr.consts, bn1)
    nxt = gr.consumers[bn1.output[0]][0]
    if nxt.op_type == "Dropout":
        nxt = gr.consumers[nxt.output[0]][0]
    if nxt.op_type != "Flatten":
        raise gr.fail(f"expected Flatten after the last batch norm, got {nxt.op_type}")
    gemm = gr.only_consumer(nxt.output[0], "Gemm")
    ga = _attrs(gemm)
    w = gr.consts[gemm.input[1]]
    if int(ga.get("transB", 0)) == 0:
        w = w.T
    w = w * np.float32(ga.get("alpha", 1.0))  # (128, C*H*W), NCHW flatten order
    bias = gr.consts[gemm.input[2]] * np.float32(ga.get("beta", 1.0))
    fc = gr.only_consumer(gemm.output[0], "BatchNormalization")
    s2, b2 = _bn_fold(gr.consts, fc)
    side = round((w.shape[1] // channels) ** 0.5)
    w4 = w.reshape(w.shape[0], channels, side, side)
    # Fold the BN before the flatten (per channel), then the BN after the dense.
    bias = bias + np.einsum("ochw,c->o", w4, b1)
    w4 = w4 * s1[None, :, None, None]
    w4 = w4 * s2[:, None, None, None]
    bias = s2 * bias + b2
    # Keras flattens (H, W, C): row h*W*C + w*C + c.
    dense = w4.transpose(2, 3, 1, 0).reshape(-1, w4.shape[0])
    return dense.astype(np.float32), bias.astype(np.float32)


def read_sface(path: Path | str) -> SFaceWeights:
    """The SFace ONNX file as folded weights: ``(units, dense kernel, dense bias)``."""
    gr = _Graph(path, *onnx_constants(path))
    units: list[ConvUnit] = []
    last = ""
    for node in gr.g.node:
        if node.op_type == "Conv":
            unit, last = _conv_unit(gr, node)
            units.append(unit)
    if len(units) != CONV_UNITS:
        raise ModelError(f"{path}: {len(units)} conv units, SFace has {CONV_UNITS}")
    strided = tuple(u.name for u in units if u.stride == 2)
    if strided != STRIDE2:
        raise ModelError(f"{path}: stride 2 at {strided}, SFace has it at {STRIDE2}")
    dense, bias = _dense_head(gr, last, units[-1].kernel.shape[-1])
    return SFaceWeights(tuple(units), dense, bias)


def fold_large_alphas(weights: SFaceWeights) -> SFaceWeights:
    """Make every PReLU expressible as ``max(x, alpha x)``: rewrite channels with alpha > 1.

    ``prelu_a(y) = min(y, a y) = -a max(-y/a, -y)`` for ``a > 1``. Scaling the
    unit's output channel by ``-1/a`` gives ``x' = -y/a`` and
    ``max(x', a x') = max(-y/a, -y)``; the next layer then takes ``-a`` times
    that channel (its kernel's input channel is scaled by ``-a``).
    """
    units = list(weights.units)
    dense = weights.dense_kernel.copy()
    for i, u in enumerate(units):
        big = np.flatnonzero(u.alpha > 1.0)
        if big.size == 0:
            continue
        a = u.alpha[big]
        kernel, bias = u.kernel.copy(), u.bias.copy()
        if u.depthwise:
            kernel[:, :, big, 0] *= -1.0 / a
        else:
            kernel[:, :, :, big] *= -1.0 / a
        bias[big] *= -1.0 / a
        units[i] = replace(u, kernel=kernel, bias=bias)
        if i + 1 < len(units):
            n = units[i + 1]
            nk = n.kernel.copy()
            nk[:, :, big, :] *= -a[:, None] if n.depthwise else -a[None, None, :, None]
            units[i + 1] = replace(n, kernel=nk)
        else:
            rows = dense.reshape(-1, u.kernel.shape[-1], dense.shape[1])  # (H*W, C, 128)
            rows[:, big, :] *= -a[None, :, None]
            dense = rows.reshape(dense.shape)
    return SFaceWeights(tuple(units), dense, weights.dense_bias)


def build_keras(
    weights: SFaceWeights, input_size: int = INPUT_SIZE, batch_size: int | None = 1
) -> Any:
    """The Keras model: (1, 112, 112, 3) ``(rgb - 127.5) / 128`` -> (1, 128), not normalised.

    ``batch_size=None`` builds the same layers (same names, same weights) for
    any batch, for training (:mod:`tools.train`); conversion wants 1.
    """
    import keras
    from keras import layers

    w = fold_large_alphas(weights)
    inputs = keras.Input(shape=(input_size, input_size, 3), batch_size=batch_size, name="input")
    x = inputs
    for u in w.units:
        k = u.kernel.shape[0]
        pad = "same"
        if u.stride > 1:
            x = layers.ZeroPadding2D(k // 2, name=f"{u.name}_pad")(x)
            pad = "valid"
        if u.depthwise:
            conv = layers.DepthwiseConv2D(k, strides=u.stride, padding=pad, name=u.name)
        else:
            conv = layers.Conv2D(u.kernel.shape[-1], k, strides=u.stride, padding=pad, name=u.name)
        x = conv(x)
        conv.set_weights([u.kernel, u.bias])
        slope = layers.DepthwiseConv2D(1, use_bias=False, name=f"{u.name}_alpha")
        ax = slope(x)
        slope.set_weights([u.alpha.reshape(1, 1, -1, 1).astype(np.float32)])
        x = layers.Maximum(name=f"{u.name}_prelu")([x, ax])
    x = layers.Flatten(name="flatten")(x)
    dense = layers.Dense(w.dense_bias.shape[0], name="fc1")
    x = dense(x)
    dense.set_weights([w.dense_kernel, w.dense_bias])
    return keras.Model(inputs, x, name="sface")


def build_sface(onnx_path: Path | str, batch_size: int | None = 1) -> Any:
    """SFace from its ONNX file as a Keras model (see :func:`build_keras`)."""
    return build_keras(read_sface(onnx_path), batch_size=batch_size)


def onnx_reference(onnx_path: Path | str, crops: npt.NDArray[np.uint8]) -> F32:
    """The ONNX model's own 128-d outputs for RGB uint8 crops (N, 112, 112, 3), onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelError(f"the onnxruntime check needs onnxruntime: {e}") from None
    import onnx

    model = onnx.load(str(onnx_path))
    # The export still declares the float weights it replaced by int8 blocks as
    # graph inputs that no node reads; onnxruntime would ask for them.
    used = {i for n in model.graph.node for i in n.input}
    for inp in [i for i in model.graph.input if i.name not in used]:
        model.graph.input.remove(inp)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = [
        sess.run(None, {name: c.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
        for c in np.asarray(crops)
    ]
    return np.asarray(out, dtype=np.float32).reshape(len(out), -1)
