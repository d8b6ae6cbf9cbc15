"""The optional texture model: a tiny Keras classifier through tools.quantize --antispoof.

The manifest must carry the exact preprocessing (crop scale, colour order,
value range, output and live class), the device must refuse a model that is
not an antispoof one, and the int8 model's live probability must follow the
float model's on the device's own crops.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import DETECTOR

from edge.errors import ModelError
from edge.liveness.texture import TextureModel, crop_box, live_probability
from edge.types import Box
from edge.vision.manifest import Preprocessing, load_manifest, save_manifest


def test_crop_box_grows_the_box_and_stays_in_the_frame() -> None:
    assert crop_box(Box(100, 100, 50, 60), 2.0, 640, 480) == (65, 70, 185, 190)
    # At the frame's edge the crop shifts inside rather than shrinking.
    x0, y0, x1, y1 = crop_box(Box(0, 0, 50, 50), 2.7, 640, 480)
    assert (x0, y0) == (0, 0) and x1 - x0 == y1 - y0 == 135
    # Larger than the frame: as large as the frame allows.
    assert crop_box(Box(10, 10, 400, 400), 4.0, 640, 480) == (0, 0, 480, 480)


def test_live_probability() -> None:
    assert live_probability(np.array([0.0, 0.0, 0.0]), "softmax", 1) == pytest.approx(1 / 3)
    assert live_probability(np.array([0.1, 0.7, 0.2]), "softmax", 1) == pytest.approx(0.7)
    assert live_probability(np.array([2.0, -1.0]), "softmax", 0) > 0.9
    assert live_probability(np.array([0.0]), "sigmoid", 0) == pytest.approx(0.5)
    with pytest.raises(ModelError, match="live_index"):
        live_probability(np.array([1.0, 2.0]), "softmax", 3)


@pytest.mark.slow
def test_antispoof_quantize_and_device_agree(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    if not DETECTOR.exists():
        pytest.skip("detector not built")
    import keras

    from edge.demo import demo_photos
    from edge.imageio import read_image
    from tools.quantize.antispoof import AntispoofConfig, quantize_antispoof

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3), batch_size=1)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    path = tmp_path / "tiny.keras"
    keras.Model(inp, out).save(path)
    photos = [read_image(p) for k, p in demo_photos().items() if k in ("grace_hopper", "astronaut")]
    pre = Preprocessing(size=(32, 32), mean=0.0, std=255.0, color="BGR")
    cfg = AntispoofConfig(path, tmp_path / "out", "tiny", pre, 2.7, 1, "softmax", DETECTOR,
                          images=photos * 4, show_progress=False)  # fmt: skip
    report = quantize_antispoof(cfg)
    m = load_manifest(tmp_path / "out" / "tiny_int8.json")
    assert m.kind == "antispoof" and m.input.dtype == "int8"
    assert m.extra["crop_scale"] == 2.7 and m.extra["live_index"] == 1
    assert m.preprocessing.color == "BGR" and m.preprocessing.std == 255.0
    assert report["live_probability"]["int8"]["max_abs_diff_to_source"] < 0.05
    # The device: same crop, same preprocessing, a probability near the float model's.
    from edge.vision.detector import FaceDetector

    img = photos[0]
    box = FaceDetector.load(DETECTOR).detect(img)[0].box
    p8 = TextureModel.load(tmp_path / "out" / "tiny_int8.tflite").live(img, box)
    p32 = TextureModel.load(tmp_path / "out" / "tiny_float32.tflite").live(img, box)
    assert 0.0 <= p8 <= 1.0 and abs(p8 - p32) < 0.05
    # A manifest of another kind, or one without its crop, is refused.
    save_manifest(replace(m, kind="embedder"))
    with pytest.raises(ModelError, match="not an antispoof manifest"):
        TextureModel.load(tmp_path / "out" / "tiny_int8.tflite")
    save_manifest(replace(m, extra={}))
    with pytest.raises(ModelError, match="crop_scale"):
        TextureModel.load(tmp_path / "out" / "tiny_int8.tflite")
