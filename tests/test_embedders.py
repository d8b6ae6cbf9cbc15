"""The two embedders side by side: SFace (the default) rebuilt from ONNX, FaceNet, and galleries.

* SFace's Keras rebuild (:mod:`tools.sface_keras`) against onnxruntime running
  the original ONNX file, on aligned crops of the registry photos (everywhere)
  and of ../shared/faces (when present);
* the blockwise dequantisation on exact values;
* a gallery enrolled with one model is refused by the other, in one line
  that says to re-enrol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DETECTOR, EMBEDDER, FACENET, SHARED

from edge.cli import main
from edge.config import EmbedderConfig
from edge.errors import FacegateError
from edge.vision.manifest import load_manifest
from tools import models, quantize

# Keras 3 internals under numpy 2 (not our code); one line per weight otherwise.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_dequantize_blockwise_exact_values() -> None:
    from tools.sface_keras import dequantize_blockwise

    q = np.array([[1, 2, 3, 4, 5], [-1, -2, -3, -4, -5]], dtype=np.int8)
    scale = np.array([[0.5, 2.0, 10.0], [1.0, 0.25, 4.0]], dtype=np.float32)
    zp = np.array([[1, 0, 5], [0, -2, 0]], dtype=np.int8)
    # Blocks of 2 along axis 1: columns {0, 1}, {2, 3}, {4}.
    want = np.array(
        [
            [(1 - 1) * 0.5, (2 - 1) * 0.5, 3 * 2.0, 4 * 2.0, (5 - 5) * 10.0],
            [-1 * 1.0, -2 * 1.0, (-3 + 2) * 0.25, (-4 + 2) * 0.25, -5 * 4.0],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(dequantize_blockwise(q, scale, zp, axis=1, block_size=2), want)
    # Block along axis 0 (a bias of 4 in blocks of 2), and per-tensor.
    b = np.array([10, 20, 30, 40], dtype=np.int8)
    got = dequantize_blockwise(b, np.array([0.1, 1.0], np.float32), None, axis=0, block_size=2)
    np.testing.assert_allclose(got, [1.0, 2.0, 30.0, 40.0], rtol=1e-6)
    got = dequantize_blockwise(b, np.array(0.5, np.float32), np.array(10, np.int8))
    np.testing.assert_array_equal(got, [0.0, 5.0, 10.0, 15.0])


def test_sface_is_the_default_and_facenet_is_built_beside_it() -> None:
    default = f"{models.EMBEDDERS[0].targets[1]}.tflite"
    assert EmbedderConfig().model == "sface_int8.tflite" == default
    assert {e.name for e in models.EMBEDDERS} == {"sface", "facenet"}
    assert models.SFACE.preprocessing.size == (112, 112) and models.SFACE.alignment == "arcface112"


@pytest.mark.parametrize(
    ("model", "template", "size", "dim"),
    [(EMBEDDER, "arcface112", 112, 128), (FACENET, "facenet160", 160, 512)],
    ids=["sface", "facenet"],
)
def test_manifest_carries_what_the_pipeline_needs(
    models: Path, model: Path, template: str, size: int, dim: int
) -> None:
    """The device takes template, size and preprocessing from the manifest, never a model name."""
    m = load_manifest(model)
    assert (m.alignment, m.preprocessing.size, m.embedding_size) == (template, (size, size), dim)
    assert (m.preprocessing.mean, m.preprocessing.std, m.preprocessing.color) == (
        127.5,
        128.0,
        "RGB",
    )


@pytest.fixture(scope="module")
def sface_onnx() -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    try:
        return models.sface_onnx()
    except FacegateError as e:
        pytest.skip(f"the SFace ONNX file is not cached and cannot be downloaded: {e}")


@pytest.fixture(scope="module")
def sface_keras(sface_onnx: Path) -> object:
    pytest.importorskip("keras")
    from tools import sface_keras

    return sface_keras.build_sface(sface_onnx)


def _crops(images: list[tuple[str, str, np.ndarray]]) -> quantize.FaceCrops:
    return quantize.collect_faces(images, DETECTOR, (112, 112), "arcface112", show_progress=False)


def _assert_matches_onnxruntime(keras_model: object, onnx_path: Path, crops: np.ndarray) -> None:
    from tools import sface_keras

    ref = sface_keras.onnx_reference(onnx_path, crops)
    x = quantize.preprocess(crops, models.SFACE_PREPROCESSING)
    got = np.concatenate([np.asarray(keras_model(x[i : i + 1])) for i in range(len(x))])  # type: ignore[operator]
    assert got.shape == ref.shape == (len(crops), 128)
    # Outputs are O(1) (max |ref| about 4): float32 round-off of a reordered sum.
    assert float(np.abs(got - ref).max()) <= 1e-4, float(np.abs(got - ref).max())


@pytest.mark.slow
def test_sface_keras_matches_onnxruntime_on_registry_faces(
    models: Path, sface_onnx: Path, sface_keras: object
) -> None:
    faces = _crops(models_registry_faces())
    assert len(faces) >= 6
    _assert_matches_onnxruntime(sface_keras, sface_onnx, faces.crops)


def models_registry_faces() -> list[tuple[str, str, np.ndarray]]:
    """The build's registry faces with a few seeded variants (rotations, light, flips)."""
    return models.default_calibration_images(augment=3)


@pytest.mark.slow
@pytest.mark.shared
def test_sface_keras_matches_onnxruntime_on_shared_faces(
    models: Path, shared: Path, sface_onnx: Path, sface_keras: object
) -> None:
    faces = _crops(list(quantize.read_folder(shared / "faces")))
    assert len(faces) >= 30
    _assert_matches_onnxruntime(sface_keras, sface_onnx, faces.crops)


def test_sface_int8_ops_are_on_the_edgetpu_list_and_fast_forms(models: Path) -> None:
    """No PRELU (not delegated in int8), no SHAPE/PACK (fixed batch), every op int8."""
    from tools import edgetpu_ops

    ops = quantize.model_ops(EMBEDDER)
    names = {op.name for op in ops}
    assert quantize.non_int8_ops(ops) == []
    assert edgetpu_ops.unsupported_ops(names) == []
    assert not {"PRELU", "SHAPE", "STRIDED_SLICE", "PACK", "DEQUANTIZE"} & names
    assert {"MAXIMUM", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= names


def _grace_hopper() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.mark.parametrize(
    ("enrol_with", "use_with"), [(EMBEDDER, FACENET), (FACENET, EMBEDDER)], ids=["sface", "facenet"]
)
def test_gallery_of_one_model_is_refused_by_the_other(
    models: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    enrol_with: Path,
    use_with: Path,
) -> None:
    gallery = tmp_path / "gallery.fgg"
    photo = str(_grace_hopper())
    base = ["--gallery", str(gallery)]
    assert main(["enroll", *base, "--embedder", str(enrol_with), "--name", "Grace", photo]) == 0
    capsys.readouterr()
    rc = main(["identify", *base, "--embedder", str(use_with), photo])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("facegate: error:") and "another model" in err[0], err
    assert "re-enroll" in err[0]
    # The model it was made with still reads it.
    assert main(["identify", *base, "--embedder", str(enrol_with), photo]) == 0


def test_conftest_shared_location_is_overridable() -> None:
    """FACEGATE_SHARED (or ../shared) is where the real-photo tests look."""
    import os

    want = os.environ.get("FACEGATE_SHARED")
    if want:
        assert Path(want).resolve() == SHARED
    else:
        assert (Path(__file__).resolve().parents[2] / "shared").resolve() == SHARED
