"""Detection, alignment and the embedder's quantise/dequantise path, on real models and photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DETECTOR, DETECTOR_FULL, EMBEDDER, EMBEDDER_FLOAT, FACENET, FACENET_FLOAT

from edge.errors import ManifestMismatch, ModelError
from edge.imageio import apply_lut, list_images, read_image
from edge.numerics import quantize
from edge.types import Box, Detection
from edge.vision.align import TEMPLATES, align_face, template_points, umeyama_similarity
from edge.vision.detector import ANCHORS, FaceDetector, decode, make_anchors, weighted_nms
from edge.vision.embedder import Embedder, pixel_lut
from edge.vision.manifest import load_manifest


# -- alignment -----------------------------------------------------------------
def test_umeyama_recovers_a_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (4, 2)).astype(np.float32)
    a, s, t = 0.3, 1.7, np.array([12.0, -5.0])
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = (s * (R @ src.T)).T + t
    M = umeyama_similarity(src, dst)
    np.testing.assert_allclose(M[:, :2], s * R, atol=1e-4)
    np.testing.assert_allclose(M[:, 2], t, atol=1e-3)


def _umeyama_svd(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama (1991) by the SVD, as published: the reference for the closed form."""
    n = len(src)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    U, D, Vt = np.linalg.svd(dc.T @ sc / n)
    e = np.array([1.0, 1.0 if np.linalg.det(U) * np.linalg.det(Vt) > 0 else -1.0])
    R = U @ np.diag(e) @ Vt
    s = (D * e).sum() / ((sc**2).sum() / n)
    return np.hstack([s * R, (mu_d - s * R @ mu_s)[:, None]])


def test_umeyama_closed_form_equals_the_svd_form() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):  # noisy points, mirrored ones included (no reflection allowed)
        src = rng.uniform(0, 200, (4, 2))
        dst = rng.uniform(0, 200, (4, 2)) if rng.random() < 0.5 else src[:, ::-1] * 0.7 + 5
        np.testing.assert_allclose(
            umeyama_similarity(src, dst), _umeyama_svd(src, dst), rtol=1e-4, atol=1e-3
        )
    same = np.full((4, 2), 7.0)
    np.testing.assert_allclose(umeyama_similarity(same, same + 1), [[1, 0, 1], [0, 1, 1]])


@pytest.mark.parametrize(("template", "size"), [("facenet160", 160), ("arcface112", 112)])
def test_align_face_puts_keypoints_on_the_template(template: str, size: int) -> None:
    # A synthetic image with four dots where a tilted face's eyes/nose/mouth are.
    img = np.zeros((300, 300, 3), np.uint8)
    kps = np.array(
        [[120, 110], [180, 120], [148, 150], [143, 185], [90, 120], [210, 130]], np.float32
    )
    for x, y in kps[:4]:
        img[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = 255
    det = Detection(Box(80, 80, 150, 150), 0.9, kps)
    crop = align_face(img, det, template, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    for tx, ty in template_points(template, size):
        patch = crop[int(ty) - 4 : int(ty) + 5, int(tx) - 4 : int(tx) + 5]
        assert patch.max() > 100, f"no keypoint near template point ({tx:.0f}, {ty:.0f})"
    with pytest.raises(ModelError, match="unknown alignment template"):
        align_face(img, det, "nope", size)
    assert set(TEMPLATES) == {"facenet160", "arcface112"}


def test_arcface112_is_arcface_with_the_mouth_corners_merged() -> None:
    """insightface's 112 px template; BlazeFace's mouth centre is the corners' midpoint."""
    arcface = np.array(
        [
            [38.2946, 51.6963],  # right eye (image left)
            [73.5318, 51.5014],  # left eye
            [56.0252, 71.7366],  # nose tip
            [41.5493, 92.3655],  # mouth corners
            [70.7299, 92.2041],
        ]
    )
    want = np.vstack([arcface[:3], arcface[3:].mean(axis=0)])
    np.testing.assert_allclose(template_points("arcface112", 112), want, atol=1e-4)
    np.testing.assert_allclose(want[3], [56.1396, 92.2848], atol=1e-4)


# -- detector ------------------------------------------------------------------
def test_anchor_counts_match_the_models() -> None:
    assert len(make_anchors(ANCHORS[128])) == 896
    assert len(make_anchors(ANCHORS[192])) == 2304


def test_decode_and_weighted_nms() -> None:
    anchors = make_anchors(ANCHORS[128])
    raw = np.zeros((896, 16), np.float32)
    scores = np.full((896, 1), -10.0, np.float32)
    # Two neighbouring anchors see the same face, a third sees another one.
    for i, dx in ((0, 0.0), (1, 2.0)):
        raw[i, :4] = [dx, 0, 32, 32]
        scores[i] = 3.0
    raw[500, :4] = [0, 0, 20, 20]
    scores[500] = 2.0
    boxes, kps, sc = decode(raw[None], scores[None], anchors, 128, 0.5)
    assert len(sc) == 3 and kps.shape == (3, 6, 2)
    merged = weighted_nms(boxes, kps, sc, 0.3)
    assert len(merged) == 2
    w = merged[0][0][2] - merged[0][0][0]
    assert w == pytest.approx(32 / 128, rel=1e-5)


def test_detector_finds_one_face_per_portrait(models: Path, shared: Path) -> None:
    det = FaceDetector.load(DETECTOR)
    photos = list_images(shared / "faces" / "Angelina_Jolie") + list_images(
        shared / "faces" / "Barack_Obama"
    )
    found = [len(det.detect(read_image(p))) for p in photos]
    assert sum(1 for n in found if n >= 1) == len(photos)
    # Keypoints fall inside their box (eyes above mouth, image y grows downwards).
    d = det.detect(read_image(photos[0]))[0]
    assert d.keypoints[0, 1] < d.keypoints[3, 1] and d.keypoints[1, 1] < d.keypoints[3, 1]
    assert d.box.x <= d.keypoints[2, 0] <= d.box.x + d.box.w


@pytest.mark.parametrize("shape", [(480, 640), (479, 637), (394, 424), (601, 283), (97, 131)])
def test_letterbox_maps_frame_pixels_exactly(models: Path, shape: tuple[int, int]) -> None:
    # A white frame on black padding: the lit input pixels must be exactly the
    # frame's mapped extent, whatever halving and odd-size cropping happened.
    det = FaceDetector.load(DETECTOR)
    h, w = shape
    sx, sy, px, py = det._letterbox(np.full((h, w, 3), 255, np.uint8))
    s = det.size / max(h, w)
    nw, nh = round(w * s), round(h * s)
    # Scales differ from s only by rounding to whole input pixels and dropped odd edges.
    assert sx == pytest.approx(s, rel=0.02) and sy == pytest.approx(s, rel=0.02)
    assert nw <= sx * w < nw + 1 and nh <= sy * h < nh + 1
    lit = np.argwhere(det._canvas[..., 0] > 200)
    (y0, x0), (y1, x1) = lit.min(0), lit.max(0)
    assert (x0, y0) == (px, py)
    assert (x1 + 1, y1 + 1) == (px + nw, py + nh)


def test_detections_follow_the_face_when_the_frame_changes(models: Path, shared: Path) -> None:
    # The same face padded by an odd border and with an odd size lands where it
    # should: keypoints move by the offset, within a pixel or two of the frame.
    det = FaceDetector.load(DETECTOR)
    img = read_image(list_images(shared / "faces" / "Barack_Obama")[0])
    base = det.detect(img)[0].keypoints
    dy, dx = 37, 21
    big = np.full((img.shape[0] + 2 * dy + 1, img.shape[1] + 2 * dx + 1, 3), 90, np.uint8)
    big[dy : dy + img.shape[0], dx : dx + img.shape[1]] = img
    moved = det.detect(big)[0].keypoints
    err = np.abs(moved - base - np.array([dx, dy], np.float32))
    assert err.max() < 0.02 * max(img.shape[:2]), err


def test_full_range_detector_sees_small_group_faces(models: Path, shared: Path) -> None:
    det = FaceDetector.load(DETECTOR_FULL)
    assert len(det.detect(read_image(shared / "group" / "multiface.jpg"))) >= 5
    assert det.detect(np.full((240, 320, 3), 128, np.uint8)) == []


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float32, np.float64])
def test_apply_lut_equals_indexing(dtype: type) -> None:
    rng = np.random.default_rng(1)
    lut = rng.uniform(-100, 100, 256).astype(dtype)
    px = rng.integers(0, 256, (37, 41, 3), dtype=np.uint8)
    for src in (px, px[..., ::-1]):  # contiguous, and a reversed-channel view
        out = np.zeros((1, 37, 41, 3), dtype)
        apply_lut(src, lut, out[0])
        np.testing.assert_array_equal(out[0], lut[src])


def test_interpreter_outputs_survive_the_next_invoke(models: Path) -> None:
    det = FaceDetector.load(DETECTOR)
    rng = np.random.default_rng(2)
    first = det.interpreter.run(rng.uniform(-1, 1, det._input.shape).astype(np.float32))
    kept = [o.copy() for o in first]
    det.interpreter.run(rng.uniform(-1, 1, det._input.shape).astype(np.float32))
    for a, b in zip(first, kept, strict=True):
        np.testing.assert_array_equal(a, b)


# -- embedder: the quantise / dequantise path ---------------------------------------
def test_input_lut_is_the_manifest_quantisation(models: Path) -> None:
    m = load_manifest(EMBEDDER)
    lut = pixel_lut(m)
    px = np.arange(256, dtype=np.float32)
    expected = quantize(
        (px - m.preprocessing.mean) / m.preprocessing.std, m.input.scale, m.input.zero_point
    )
    assert lut.dtype == np.int8
    np.testing.assert_array_equal(lut, expected)
    # Monotone: brighter pixels never map to smaller model inputs.
    assert np.all(np.diff(lut.astype(int)) >= 0)


# The smallest int8-vs-float cosine per face: SFace's int8 model keeps a mean
# cosine of about 0.977 to float (its build requires >= 0.97), FaceNet's 0.999.
@pytest.mark.parametrize(
    ("int8", "float32", "min_cosine"),
    [(EMBEDDER, EMBEDDER_FLOAT, 0.95), (FACENET, FACENET_FLOAT, 0.99)],
    ids=["sface", "facenet"],
)
def test_int8_embedding_agrees_with_float(
    models: Path, shared: Path, int8: Path, float32: Path, min_cosine: float
) -> None:
    det = FaceDetector.load(DETECTOR)
    e8, e32 = Embedder.load(int8), Embedder.load(float32)
    template, size = e8.manifest.alignment, e8.size[0]  # as the manifest says
    crops = []
    for p in list_images(shared / "faces" / "Jennifer_Aniston")[:3]:
        img = read_image(p)
        crops.append(align_face(img, det.detect(img)[0], template, size))
    a, b = e8.embed(crops), e32.embed(crops)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert float(np.min(np.sum(a * b, axis=1))) >= min_cosine
    with pytest.raises(ModelError, match="does not fit"):
        e8.embed_one(np.zeros((100, 100, 3), np.uint8))


def _copy_model(tmp_path: Path, src: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def test_model_disagreeing_with_manifest_is_refused(models: Path, tmp_path: Path) -> None:
    m = _copy_model(tmp_path, EMBEDDER)
    doc = json.loads(m.with_suffix(".json").read_text())

    def write(**changes: object) -> None:
        d = json.loads(json.dumps(doc))
        for path, value in changes.items():
            section, _, key = path.partition("__")
            if key:
                d[section][key] = value
            else:
                d[section] = value
        m.with_suffix(".json").write_text(json.dumps(d))

    write(sha256="0" * 64)
    with pytest.raises(ManifestMismatch, match="sha256"):
        Embedder.load(m)
    _, h, w, c = doc["input"]["shape"]
    write(input__shape=[1, h + 48, w + 48, c])  # a size this model does not take
    with pytest.raises(ManifestMismatch, match="input shape"):
        Embedder.load(m)
    write(input__dtype="uint8")
    with pytest.raises(ManifestMismatch, match="input dtype"):
        Embedder.load(m)
    write(input__zero_point=5)
    with pytest.raises(ManifestMismatch, match="quantisation"):
        Embedder.load(m)
    m.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="no manifest"):
        Embedder.load(m)
    with pytest.raises(ModelError, match="not an embedder"):
        Embedder.load(_copy_model(tmp_path, DETECTOR))
