"""The pure numerics: quantisation, normalisation, distances, confidence, the open-set rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.numerics import (
    Confidence,
    cosine_distance,
    dequantize,
    l2_normalize,
    open_set_decision,
    person_min_distances,
    quantize,
)


def test_quantize_known_values() -> None:
    # q = clip(round(x / scale) + zp): FaceNet's int8 input, scale 1/128, zp -1.
    x = np.array([-1.0, -0.5, 0.0, 0.5, 0.9921875, 2.0], np.float32)
    q = quantize(x, 1 / 128, -1)
    assert q.dtype == np.int8
    assert q.tolist() == [-128, -65, -1, 63, 126, 127]
    # Halves round away from zero (TFLite's std::round), not to even.
    assert quantize(np.array([0.5, 1.5, -0.5, -2.5]), 1.0, 0).tolist() == [1, 2, -1, -3]


def test_quantize_uint8_and_clipping() -> None:
    q = quantize(np.array([-10.0, 0.0, 1.0, 10.0]), 0.1, 128, np.uint8)
    assert q.tolist() == [28, 128, 138, 228]
    assert quantize(np.array([1e6, -1e6]), 0.1, 0).tolist() == [127, -128]


def test_dequantize_inverts_within_half_a_step() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, 1000).astype(np.float32)
    scale, zp = 6 / 255, 3
    back = dequantize(quantize(x, scale, zp), scale, zp)
    inside = (x > scale * (-128 - zp)) & (x < scale * (127 - zp))
    assert np.max(np.abs(back - x)[inside]) <= scale / 2 + 1e-6
    assert dequantize(np.array([10], np.int8), 0.5, 2).tolist() == [4.0]


def test_quantize_rejects_bad_scale() -> None:
    with pytest.raises(ValueError):
        quantize(np.zeros(3), 0.0, 0)


def test_l2_normalize() -> None:
    v = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert v[0].tolist() == pytest.approx([0.6, 0.8])
    assert v[1].tolist() == [0.0, 0.0]


def test_cosine_distance_shapes_and_values() -> None:
    a = np.array([1.0, 0.0])
    b = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    assert cosine_distance(a, b).tolist() == pytest.approx([0.0, 1.0, 2.0])
    assert cosine_distance(b, b).shape == (3, 3)
    # For unit vectors ||a - b||^2 = 2 d.
    u, w = l2_normalize(np.array([0.3, 0.4, 0.5])), l2_normalize(np.array([0.5, -0.1, 0.2]))
    assert float(np.sum((u - w) ** 2)) == pytest.approx(2 * float(cosine_distance(u, w[None])[0]))


def test_person_min_distances() -> None:
    d = np.array([0.5, 0.2, 0.9, 0.4, 0.8, 0.3])
    starts = np.array([0, 2, 3])  # person 0: rows 0-1, person 1: row 2, person 2: rows 3-5
    assert person_min_distances(d, starts).tolist() == pytest.approx([0.2, 0.9, 0.3])


def test_confidence_formula() -> None:
    c = Confidence(midpoint=0.4, scale=0.05)
    assert c(0.4) == pytest.approx(0.5)
    assert c(0.3) == pytest.approx(1 / (1 + math.exp(-2)))
    assert c(0.5) == pytest.approx(1 / (1 + math.exp(2)))
    assert c(100.0) == pytest.approx(0.0, abs=1e-20)
    assert c(-100.0) == pytest.approx(1.0)


CONF = Confidence(0.4, 0.05)


def test_open_set_names_close_and_clear_winner() -> None:
    m = open_set_decision(["bob", "thomas"], np.array([0.2, 0.7]), 0.4, 0.05, CONF)
    assert (m.name, m.distance) == ("bob", pytest.approx(0.2))
    assert m.second_best_distance == pytest.approx(0.7)
    assert m.confidence == pytest.approx(CONF(0.2))


def test_open_set_stranger_is_unknown_not_nearest() -> None:
    # John: nearest is Thomas, but too far: unknown, never "Thomas".
    m = open_set_decision(["bob", "thomas"], np.array([0.8, 0.55]), 0.4, 0.05, CONF)
    assert m.name is None
    assert m.nearest == "thomas"
    assert m.distance == pytest.approx(0.55)


def test_open_set_margin_rejects_ambiguous() -> None:
    m = open_set_decision(["bob", "thomas"], np.array([0.30, 0.33]), 0.4, 0.05, CONF)
    assert m.name is None
    m = open_set_decision(["bob", "thomas"], np.array([0.30, 0.36]), 0.4, 0.05, CONF)
    assert m.name == "bob"


def test_open_set_single_person_and_empty_gallery() -> None:
    m = open_set_decision(["bob"], np.array([0.1]), 0.4, 0.05, CONF)
    assert m.name == "bob" and m.second_best_distance is None
    assert open_set_decision(["bob"], np.array([0.4]), 0.4, 0.05, CONF).name is None
    empty = open_set_decision([], np.zeros(0), 0.4, 0.05, CONF)
    assert empty.name is None and empty.confidence == 0.0
