"""Starting models for :mod:`tools.train`, their blocks, and the trained model's export.

A starting model is one of:

* ``sface`` (the device default): SFace rebuilt in Keras from its ONNX file
  (:mod:`tools.sface_keras`); blocks ``conv_1`` .. ``conv_14`` (a depthwise
  and a pointwise unit each, from ``conv_2``) and the ``fc1`` head;
* ``facenet``: FaceNet 20180408 in :mod:`tools.facenet_keras`'s
  InceptionResNetV1 with the frozen graph's weights; blocks ``stem``,
  ``Block35_1`` .. ``Block8_6``, ``Mixed_6a``/``Mixed_7a`` and the
  ``Bottleneck``;
* a file: a Keras ``.keras``/``.h5`` (a Keras 2 FaceNet such as
  ``facenet_keras.h5`` is read by layer name) or a SavedModel folder of
  FaceNet (its variables assigned by name). Blocks as for ``facenet`` when
  the layers are named like it, else one block per layer with weights.

``--trainable-blocks N`` leaves the last N blocks trainable and freezes the
rest. Every model runs with ``training=False`` (batch norms keep their
statistics; with small P x K batches re-estimating them would hurt more
than help), so frozen really means frozen.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError
from edge.vision.manifest import Preprocessing

BUILTIN = ("sface", "facenet")


@dataclass
class StartModel:
    """A loaded starting model and what the device must do to feed it."""

    name: str  # "sface", "facenet" or the file's stem
    model: Any  # keras.Model, any batch size
    preprocessing: Preprocessing
    alignment: str
    standardize: str  # "none" | "per-image" (inside the graph, see tools.quantize)
    source: str  # what it was loaded from, for the report
    block_of: Callable[[str], str | None]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.preprocessing.size[0])


def sface_block(layer: str) -> str | None:
    """SFace layer -> block: ``conv_13_dw_alpha`` -> ``conv_13``; ``fc1`` and ``flatten`` -> fc1."""
    m = re.match(r"(conv_\d+)(?:_|$)", layer)
    if m:
        return m.group(1)
    return "fc1" if layer in ("fc1", "flatten") else None


def facenet_block(layer: str) -> str | None:
    """InceptionResNetV1 layer -> block (``Block17_4_Branch_1_...`` -> ``Block17_4``)."""
    m = re.match(r"(Block35_\d+|Block17_\d+|Block8_\d+|Mixed_6a|Mixed_7a)(?:_|$)", layer)
    if m:
        return m.group(1)
    if layer.startswith(("Bottleneck", "AvgPool", "L2Normalize")):
        return "Bottleneck"
    if layer.startswith(("Conv2d_", "MaxPool_3a")):
        return "stem"
    return None


def blocks(start: StartModel) -> list[str]:
    """The model's blocks in order from input to output (first layer of each)."""
    out: list[str] = []
    for layer in start.model.layers:
        b = start.block_of(layer.name)
        if b is not None and b not in out:
            out.append(b)
    return out


def set_trainable(start: StartModel, n_blocks: int) -> list[str]:
    """Freeze all but the last ``n_blocks`` blocks; returns the trainable ones."""
    order = blocks(start)
    if not 1 <= n_blocks <= len(order):
        raise ModelError(
            f"--trainable-blocks must be in 1..{len(order)} for {start.name} "
            f"(its blocks: {order[0]} .. {order[-1]}), got {n_blocks}"
        )
    chosen = set(order[-n_blocks:])
    start.model.trainable = True
    for layer in start.model.layers:
        layer.trainable = start.block_of(layer.name) in chosen
    return order[-n_blocks:]


def rebatch(model: Any, batch_size: int | None) -> Any:
    """The same functional model with another fixed (or free, ``None``) batch size.

    Rebuilt from its config, weights copied: training needs P x K batches,
    conversion wants a batch of 1 (no SHAPE/STRIDED_SLICE/PACK ops).
    """
    import keras

    from tools import facenet_keras

    cfg = model.get_config()
    for layer in cfg.get("layers", []):
        if layer.get("class_name") == "InputLayer":
            c = layer["config"]
            key = "batch_shape" if "batch_shape" in c else "batch_input_shape"
            if key in c:
                c[key] = [batch_size, *list(c[key])[1:]]
    try:
        new = keras.Model.from_config(cfg, custom_objects=facenet_keras.custom_objects())
    except Exception as e:
        raise ModelError(f"cannot rebuild the model with batch {batch_size}: {e}") from None
    new.set_weights(model.get_weights())
    return new


def _builtin(name: str, models_dir: Path) -> StartModel:
    from tools import facenet_keras, models, sface_keras

    if name == "sface":
        onnx = models.sface_onnx(models_dir)
        return StartModel(
            "sface",
            sface_keras.build_sface(onnx, batch_size=None),
            models.SFACE_PREPROCESSING,
            models.SFACE.alignment,
            "none",
            f"{models.SFACE.description} ({onnx.name})",
            sface_block,
        )
    pb = models.facenet_pb(models_dir)
    net = facenet_keras.build_facenet(512, batch_size=None)
    facenet_keras.load_frozen_graph_weights(net, pb)
    return StartModel(
        "facenet",
        net,
        models.FACENET_PREPROCESSING,
        models.FACENET.alignment,
        "none",
        f"{models.FACENET.description} ({pb.name})",
        facenet_block,
    )


def _saved_model_facenet(path: Path) -> Any:
    """A FaceNet SavedModel's variables, by ``layer/weight`` name, in InceptionResNetV1."""
    import tensorflow as tf

    from tools import facenet_keras

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise ModelError(f"{path}: cannot load the SavedModel ({str(e).splitlines()[0]})") from None
    arrays = {}
    for v in getattr(loaded, "variables", []):
        parts = v.name.split(":")[0].split("/")
        if len(parts) >= 2:
            arrays[f"{parts[-2]}/{parts[-1]}"] = np.asarray(v.numpy())
    if not arrays:
        raise ModelError(
            f"{path}: the SavedModel has no variables (a frozen export cannot be fine-tuned)"
        )
    try:
        return facenet_keras.facenet_from_arrays(arrays, batch_size=None)
    except ValueError as e:
        raise ModelError(
            f"{path}: only a FaceNet (InceptionResNetV1) SavedModel can be fine-tuned; its "
            f"variables do not fit ({e}); give a Keras .keras/.h5 model instead"
        ) from None


def _from_file(path: Path, pre: Preprocessing, alignment: str, standardize: str) -> StartModel:
    from tools import quantize

    kind, p = quantize.model_format(path)
    if kind == "frozen-graph":
        raise ModelError(
            f"{path}: a frozen graph has no trainable weights; start from sface, facenet, "
            "a Keras model or a SavedModel"
        )
    if kind == "saved-model":
        net = _saved_model_facenet(p)
    else:
        net = rebatch(quantize.load_keras_model(p, batch_size=None), None)
    names = [layer.name for layer in net.layers]
    facenet_like = any(facenet_block(n) == "Bottleneck" for n in names) and any(
        n.startswith("Block35_") for n in names
    )

    def per_layer(layer: str) -> str | None:
        return layer if net.get_layer(layer).weights else None

    return StartModel(
        p.stem if p.is_file() else p.name,
        net,
        pre,
        alignment,
        standardize,
        f"{p.name} ({kind})",
        facenet_block if facenet_like else per_layer,
        {"sha256": quantize.hash_path(p)},
    )


def load_start(
    spec: str,
    models_dir: Path,
    preprocessing: Preprocessing,
    alignment: str,
    standardize: str = "none",
) -> StartModel:
    """``sface``, ``facenet`` or a model file/folder (see the module docstring).

    ``preprocessing``/``alignment``/``standardize`` apply to a file (a
    builtin knows its own). Raises :class:`ModelError` (one line) when the
    model cannot be read or does not output an embedding.
    """
    from tools.quantize.common import _tf

    _tf()
    start = (
        _builtin(spec, models_dir)
        if spec in BUILTIN
        else _from_file(Path(spec), preprocessing, alignment, standardize)
    )
    check_embedding(start)
    return start


def check_embedding(start: StartModel) -> int:
    """The embedding size, after checking that the model maps faces to embeddings.

    The output must be one float vector per image, ``(batch, D)`` with
    ``D >= 2``; two different inputs must give finite, different vectors;
    and they must not look like class probabilities (non-negative, summing
    to 1): a classifier's softmax is not an embedding.
    """
    import tensorflow as tf

    from tools.facenet_keras import standardize_per_image

    model = start.model
    shape = tuple(model.input_shape)
    size = start.size
    if len(shape) != 4 or shape[1:] != (size, size, 3):
        raise ModelError(
            f"{start.source}: input {shape} is not ({size}, {size}, 3) images "
            "(give --input-size for another face size)"
        )
    out_shape = tuple(model.output_shape) if not isinstance(model.output_shape, list) else ()
    if len(out_shape) != 2 or out_shape[-1] is None or out_shape[-1] < 2:
        raise ModelError(
            f"{start.source}: its output {model.output_shape} is not an embedding "
            "(expected one vector per image: (batch, D))"
        )
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    xt = tf.constant(x)
    if start.standardize == "per-image":
        xt = standardize_per_image(xt, start.preprocessing.std)
    y = np.asarray(model(xt, training=False), dtype=np.float64)
    if not np.all(np.isfinite(y)) or np.allclose(y[0], y[1], atol=1e-7):
        raise ModelError(
            f"{start.source}: its output is not an embedding (not finite, or the same for "
            "different faces)"
        )
    if np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-4):
        raise ModelError(
            f"{start.source}: its output sums to 1 like class probabilities (a softmax "
            "classifier?), not an embedding; give the model up to its embedding layer"
        )
    return int(out_shape[-1])


def export_saved_model(model: Any, out: Path) -> Path:
    """The trained network with a batch of 1 as a TF SavedModel folder (``serving_default``)."""
    import shutil

    one = rebatch(model, 1)
    if out.exists():
        shutil.rmtree(out)
    one.export(str(out), verbose=False)
    return out
