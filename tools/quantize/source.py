"""Source models for :mod:`tools.quantize`: a frozen graph, a Keras model or a SavedModel.

Each is loaded as one TensorFlow concrete function ``(1, H, W, 3) float32 ->
(1, D)`` with its variables frozen into constants (:class:`SourceModel`),
which is what the TFLite converter takes. :func:`standardized` puts
FaceNet's per-image standardisation in front of any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError
from edge.vision.manifest import sha256_file
from tools.quantize.common import F32, _tf


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


def hash_path(path: Path) -> str:
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


def load_keras_model(path: Path, batch_size: int | None = 1) -> Any:
    """A Keras model from a ``.keras`` or ``.h5`` file (:class:`ModelError` when it cannot be read).

    ``keras.models.load_model`` first (our own custom layers allowed, no
    unsafe deserialisation); an ``.h5`` it cannot read is taken as FaceNet
    weights: a Keras 2 file such as the widely used ``facenet_keras.h5``
    (Lambda layers Keras 3 cannot load) by layer name, or a Keras 3
    ``.weights.h5``, into :func:`tools.facenet_keras.build_facenet`'s
    InceptionResNetV1 with a ``batch_size`` input.
    """
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
        return keras.models.load_model(
            path, compile=False, custom_objects=facenet_keras.custom_objects()
        )
    except Exception as e:
        err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if path.suffix == ".h5":
        try:
            return facenet_keras.load_facenet_weights(path, batch_size=batch_size)
        except Exception as e2:
            err += f"; as FaceNet weights: {type(e2).__name__}: {str(e2).splitlines()[0]}"
    raise ModelError(f"{path}: cannot load the Keras model ({err})")


def _load_keras(path: Path, size: tuple[int, int] | None) -> SourceModel:
    return keras_source(load_keras_model(path), path, hash_path(path), size)


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
        "saved-model", path, hash_path(path), shape, fn, loaded, {"output": out_name}
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


def standardized(source: SourceModel, pixel_std: float) -> SourceModel:
    """``source`` with per-image standardisation in front, inside the graph.

    The new function is ``source(standardize_per_image(x))``
    (:func:`tools.facenet_keras.standardize_per_image`, written with
    ``rsqrt`` so the int8 model stays on the Edge TPU's op list); its input
    is still the manifest's ``(pixel - mean) / pixel_std``.
    """
    tf = _tf()
    from tools.facenet_keras import standardize_per_image

    inner = source.fn

    def call(x: Any) -> Any:
        out = inner(standardize_per_image(x, pixel_std))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return tf.identity(out)

    fn = _wrap_callable(call, source.input_shape)
    details = {**source.details, "standardize": "per-image"}
    return replace(source, fn=fn, details=details)
