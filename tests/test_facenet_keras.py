"""tools.facenet_keras: FaceNet's InceptionResNetV1 in Keras, and its conversion path.

The conversion test uses RANDOM weights (no trained Keras FaceNet is
available from a registry) and a tiny calibration set: it checks that the
architecture converts to a full-integer int8 model the Edge TPU can map,
not int8 fidelity, which only means something for trained weights (a random
InceptionResNet is chaotic; see test_models_build for fidelity on FaceNet).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edge.errors import FacegateError, ModelError
from tools import edgetpu_ops, models, quantize

keras = pytest.importorskip("keras")
# Keras 3 internals under numpy 2 (not our code); one line per weight otherwise.
pytestmark = [
    pytest.mark.slow,  # TensorFlow builds, saves and converts the network
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
from tools import facenet_keras  # noqa: E402  (needs keras)

DETECTOR = models.MODELS_DIR / "face_detection_short_range.tflite"


@pytest.fixture(scope="module")
def model() -> object:
    return facenet_keras.build_facenet()


def test_shapes_and_layers(model: object) -> None:
    m = model
    assert isinstance(m, keras.Model)
    assert tuple(m.input_shape) == (1, 160, 160, 3)
    assert tuple(m.output_shape) == (1, 512)
    assert all(ly.name for ly in m.layers)
    assert len({ly.name for ly in m.layers}) == len(m.layers)


def test_architecture_matches_trained_facenet_graph(model: object) -> None:
    """The same convolution kernels, in the same multiset of shapes, as FaceNet 20180408."""
    try:
        pb = models.facenet_pb()
    except FacegateError as e:
        pytest.skip(f"FaceNet graph unavailable: {e}")
    import tensorflow as tf

    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(pb.read_bytes())
    consts = {n.name: n for n in gd.node if n.op == "Const"}
    graph_kernels = []
    for n in gd.node:
        if n.op == "Conv2D":
            w = consts[n.input[1].split(":")[0]].attr["value"].tensor.tensor_shape
            graph_kernels.append(tuple(int(d.size) for d in w.dim))
    keras_kernels = [
        tuple(int(s) for s in ly.kernel.shape)
        for ly in model.layers  # type: ignore[attr-defined]
        if isinstance(ly, keras.layers.Conv2D)
    ]
    assert Counter(keras_kernels) == Counter(graph_kernels)


@pytest.fixture(scope="module")
def saved(model: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keras")
    paths = {"keras": d / "fn.keras", "weights": d / "facenet.weights.h5"}
    model.save(paths["keras"])  # type: ignore[attr-defined]
    model.save_weights(paths["weights"])  # type: ignore[attr-defined]
    return paths


def _ref(model: object, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False).numpy())  # type: ignore[operator]


@pytest.mark.parametrize("kind", ["keras", "weights"])
def test_saved_model_and_bare_weights_reload(
    model: object, saved: dict[str, Path], kind: str
) -> None:
    """A full .keras file, and an .h5 of bare weights loaded into the architecture."""
    src = quantize.load_source(saved[kind], (160, 160))
    assert src.kind == "keras"
    x = np.random.default_rng(0).uniform(-1, 1, (1, 160, 160, 3)).astype(np.float32)
    assert np.allclose(src(x), _ref(model, x), atol=1e-4)


def test_wrong_input_size_is_refused(saved: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="wrong input size"):
        quantize.load_source(saved["keras"], (112, 112))


def test_trained_facenet_weights_reproduce_the_graph() -> None:
    """FaceNet 20180408's weights copied into the Keras model give the graph's embeddings."""
    try:
        pb = models.facenet_pb()
    except FacegateError as e:
        pytest.skip(f"FaceNet graph unavailable: {e}")
    m = facenet_keras.load_frozen_graph_weights(facenet_keras.build_facenet(), pb)
    src = quantize.load_source(pb, (160, 160), "input", models.FACENET_OUTPUT)
    rng = np.random.default_rng(2)
    images = [rgb for _, _, rgb in models.default_calibration_images(augment=0)]
    # Face-sized patches of real photos (not aligned: this compares two
    # implementations of one network, pixel for pixel).
    import cv2

    crops = np.stack([cv2.resize(im, (160, 160)) for im in images]).astype(np.uint8)
    x = quantize.preprocess(crops, models.FACENET_PREPROCESSING)
    x = np.concatenate([x, rng.uniform(-1, 1, (1, 160, 160, 3)).astype(np.float32)])
    for i in range(len(x)):
        a, b = src(x[i : i + 1]), _ref(m, x[i : i + 1])
        assert np.allclose(a, b, atol=1e-4 * float(np.abs(a).max())), i


@pytest.mark.slow
def test_keras_conversion_is_full_integer(saved: dict[str, Path], tmp_path: Path) -> None:
    """Random weights, four calibration photos: the conversion path, not fidelity."""
    if not DETECTOR.is_file():
        pytest.skip(
            "models/face_detection_short_range.tflite missing (python -m tools.models build)"
        )
    cfg = quantize.QuantizeConfig(
        model=saved["keras"],
        out_dir=tmp_path / "out",
        name="kfn",
        images=models.default_calibration_images(augment=1),
        detector=DETECTOR,
        holdout=0.0,
        show_progress=False,
    )
    res = quantize.quantize(cfg)
    ops = quantize.model_ops(res.int8_model)
    names = {op.name for op in ops}
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & names
    assert quantize.non_int8_ops(ops) == []
    assert edgetpu_ops.unsupported_ops(names) == []
    rep = json.loads(res.report_json.read_text())
    assert rep["source"]["format"] == "keras"
    assert rep["int8"]["input"]["dtype"] == "int8" and rep["int8"]["output"]["dtype"] == "int8"
    # The float TFLite still reproduces the Keras model (conversion, not quantisation).
    assert rep["agreement"]["float_vs_source"]["min_cosine"] >= 0.9999
