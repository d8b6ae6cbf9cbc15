"""The threshold that follows the gallery size, on exact synthetic tables.

The functions are :mod:`edge.identity.thresholds`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from edge.decide.recognizer import Recognizer
from edge.identity.gallery import Gallery
from edge.identity.thresholds import (
    far_at_threshold,
    fpir_from_far,
    frr_at_threshold,
    genuine_quantile,
    operating_point,
    per_comparison_far,
    threshold_at_far,
)
from edge.vision.manifest import Calibration, RateTable, calibration_from_dict, from_dict

# n = 10,000 impostor pairs; the last row is the rule-of-three limit 3/n = 3e-4.
FAR = RateTable(
    n=10_000,
    rate=(3e-4, 1e-3, 1e-2, 1e-1),
    threshold=(0.20, 0.30, 0.40, 0.50),
    count=(3, 10, 100, 1000),
)
# n = 100 genuine pairs: FRR falls as the threshold grows.
FRR = RateTable(n=100, rate=(0.3, 0.1, 0.01), threshold=(0.25, 0.35, 0.45), count=(30, 10, 1))


def test_per_comparison_far_exact_values() -> None:
    # f = 1 - (1 - FPIR)^(1/M)
    assert per_comparison_far(0.01, 1) == pytest.approx(0.01, rel=1e-15)
    assert per_comparison_far(0.01, 2) == pytest.approx(1 - math.sqrt(0.99), rel=1e-15)
    assert per_comparison_far(0.01, 120) == pytest.approx(8.37491e-05, rel=1e-5)
    assert fpir_from_far(per_comparison_far(0.05, 37), 37) == pytest.approx(0.05, rel=1e-12)
    for bad in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ValueError):
            per_comparison_far(bad, 10)
    with pytest.raises(ValueError):
        per_comparison_far(0.01, 0)


def test_threshold_at_far_takes_the_stricter_row_between_rows() -> None:
    t = threshold_at_far(FAR, 0.01)  # a row exactly
    assert (t.threshold, t.far, t.clamped) == (0.40, 0.01, False)
    t = threshold_at_far(FAR, 0.005)  # between 1e-3 and 1e-2: never looser than asked
    assert (t.threshold, t.far, t.clamped) == (0.30, 0.001, False)
    t = threshold_at_far(FAR, 0.5)  # beyond the loosest row: the loosest row
    assert (t.threshold, t.far) == (0.50, 0.1)


def test_below_the_tables_resolution_the_threshold_is_clamped_to_the_strictest_row() -> None:
    t = threshold_at_far(FAR, 1e-4)  # below 3/n: the data cannot resolve it
    assert (t.threshold, t.far, t.clamped) == (0.20, 3e-4, True)


def test_operating_point_follows_the_gallery_size() -> None:
    # M = 1: f = FPIR = 0.01 -> the 1e-2 row; expected FPIR = 1 - (1 - 0.01)^1.
    p = operating_point(0.33, FAR, FRR, 1, 0.01)
    assert (p.threshold, p.source, p.far) == (0.40, "table", 0.01)
    assert p.expected_fpir == pytest.approx(0.01)
    assert p.expected_fnir == pytest.approx(0.10)  # FRR <= 10% from the 0.35 row
    # M = 10: f = 1 - 0.99^(1/10) = 1.00453e-3 -> the 1e-3 row.
    p = operating_point(0.33, FAR, FRR, 10, 0.01)
    assert p.target_far == pytest.approx(1.00453e-3, rel=1e-5)
    assert p.threshold == 0.30 and p.far == 0.001
    assert p.expected_fpir == pytest.approx(1 - 0.999**10)  # 0.99551%
    assert p.expected_fnir == pytest.approx(0.30)
    assert not p.looser_than_target
    # M = 100: f = 1.005e-4 < 3/n: clamped, and the expected FPIR says it exceeds the target.
    p = operating_point(0.33, FAR, FRR, 100, 0.01)
    assert p.clamped and p.threshold == 0.20
    assert p.expected_fpir == pytest.approx(1 - (1 - 3e-4) ** 100)  # 2.956%
    assert p.looser_than_target
    assert p.expected_fnir == 1.0  # stricter than every genuine row: the table cannot say
    # An empty gallery is treated as one comparison.
    assert operating_point(0.33, FAR, FRR, 0, 0.01).threshold == 0.40


def test_an_explicit_threshold_wins_and_is_judged_by_the_table() -> None:
    p = operating_point(0.33, FAR, FRR, 10, 0.01, override=0.45)
    assert (p.threshold, p.source) == (0.45, "config")
    # FAR(0.45) <= FAR of the first row at or above it (0.50: 10%): FPIR 1 - 0.9^10.
    assert p.far == pytest.approx(0.1)
    assert p.expected_fpir == pytest.approx(1 - 0.9**10)
    assert p.looser_than_target
    assert operating_point(0.33, FAR, FRR, 10, 0.01, override=0.6).far == 1.0


def test_without_tables_the_manifest_threshold_stays_fixed() -> None:
    for m in (1, 10, 1000):
        p = operating_point(0.33, None, None, m, 0.01)
        assert (p.threshold, p.source, p.expected_fpir, p.expected_fnir) == (
            0.33,
            "fixed",
            None,
            None,
        )
    assert "unknown" in operating_point(0.33, None, None, 5).describe()


def test_table_lookups_in_both_directions() -> None:
    assert far_at_threshold(FAR, 0.25) == 0.001  # first row at or above 0.25 is 0.30
    assert far_at_threshold(FAR, 0.20) == 0.0003
    assert frr_at_threshold(FRR, 0.30) == 0.30  # last row at or below 0.30 is 0.25
    assert frr_at_threshold(FRR, 0.50) == 0.01
    assert frr_at_threshold(FRR, 0.20) == 1.0
    assert genuine_quantile(FRR, 0.01) == 0.45
    assert genuine_quantile(FRR, 0.05) == 0.45
    assert genuine_quantile(FRR, 0.001) is None


def test_rate_table_validation_and_json() -> None:
    assert RateTable.from_json(FAR.to_json()) == FAR
    with pytest.raises(ValueError, match="equal length"):
        RateTable(10, (0.1,), (0.2, 0.3), (1,))
    with pytest.raises(ValueError, match="must not decrease"):
        RateTable(10, (0.1, 0.2), (0.3, 0.2), (1, 2))
    with pytest.raises(ValueError, match="out of range"):
        RateTable(10, (0.1,), (math.nan,), (1,))
    with pytest.raises(ValueError, match="out of range"):
        RateTable(10, (0.1,), (0.3,), (11,))


def _manifest_dict(cal: dict[str, Any] | None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "format": "facegate-manifest/1",
        "kind": "embedder",
        "name": "m",
        "file": "m.tflite",
        "sha256": "0" * 64,
        "input": {"shape": [1, 160, 160, 3], "dtype": "int8", "scale": 0.0078125},
        "output": {"shape": [1, 512], "dtype": "int8", "scale": 0.02},
        "preprocessing": {"size": [160, 160]},
        "quantization": "int8",
    }
    if cal is not None:
        d["calibration"] = cal
    return d


def test_manifest_calibration_with_and_without_tables() -> None:
    old = {"threshold": 0.39, "margin": 0.05, "conf_midpoint": 0.5, "conf_scale": 0.03}
    m = from_dict(_manifest_dict(old))
    assert m.calibration is not None and m.calibration.far_table is None
    new = {**old, "far_table": FAR.to_json(), "frr_table": FRR.to_json()}
    m2 = from_dict(_manifest_dict(new))
    assert m2.calibration is not None and m2.calibration.far_table == FAR
    assert from_dict(m2.to_dict()).calibration == m2.calibration  # round trip
    assert calibration_from_dict(new).frr_table == FRR
    from edge.errors import ModelError

    broken = {**new, "far_table": {**FAR.to_json(), "count": [3, 10]}}
    with pytest.raises(ModelError, match="malformed"):
        from_dict(_manifest_dict(broken))


def _gallery(people: int, photos: int, dim: int = 8) -> Gallery:
    g = Gallery("sha", dim)
    rng = np.random.default_rng(people)
    for i in range(people):
        g.add(f"p{i:03d}", rng.normal(size=(photos, dim)).astype(np.float32))
    return g


def test_recognizer_threshold_follows_the_gallery_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cal = Calibration(0.33, 0.05, 0.5, 0.03, "test", far_table=FAR, frr_table=FRR)
    # No detector or embedder is needed to choose the threshold.
    none = cast(Any, None)
    with caplog.at_level(logging.INFO, logger="edge.decide.recognizer"):
        rec = Recognizer(none, none, _gallery(1, 1), cal, target_fpir=0.01)
    assert rec.threshold == 0.40 and rec.operating_point.comparisons == 1
    assert "threshold 0.40000" in caplog.text and "expected FNIR 10.00%" in caplog.text
    rec.set_gallery(_gallery(5, 2))  # M = 10
    assert rec.threshold == 0.30
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge.decide.recognizer"):
        rec.set_gallery(_gallery(50, 2))  # M = 100: below the table's resolution
    assert rec.threshold == 0.20 and rec.operating_point.clamped
    assert "cannot resolve" in caplog.text
    # An explicit threshold wins and is warned about when looser than the target allows.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge.decide.recognizer"):
        fixed = Recognizer(none, none, _gallery(5, 2), cal, 0.01, threshold_override=0.45)
    assert fixed.threshold == 0.45 and "looser than the calibration allows" in caplog.text
    # A manifest without tables keeps its one threshold whatever the gallery.
    plain = Recognizer(none, none, _gallery(50, 2), replace(cal, far_table=None, frr_table=None))
    assert plain.threshold == 0.33


def test_recognizer_matches_with_the_threshold_it_chose() -> None:
    cal = Calibration(0.33, 0.0, 0.5, 0.03, "test", far_table=FAR, frr_table=FRR)
    g = Gallery("sha", 2)
    g.add("ann", np.array([[1.0, 0.0]], np.float32))
    none = cast(Any, None)
    rec = Recognizer(none, none, g, cal, 0.01)  # M = 1: threshold 0.40
    probe = np.array([[math.cos(0.8), math.sin(0.8)]], np.float32)  # d = 1 - cos 0.8 = 0.3033
    assert rec.match_embeddings(probe)[0].name == "ann"
    g2 = Gallery("sha", 2)
    g2.add("ann", np.array([[1.0, 0.0]], np.float32))
    for i in range(9):  # M = 10: threshold 0.30, the same probe is now unknown
        g2.add(f"x{i}", np.array([[-1.0, 0.01 * i]], np.float32))
    rec.set_gallery(g2)
    assert rec.threshold == 0.30 and rec.match_embeddings(probe)[0].name is None


def test_config_target_fpir_is_validated() -> None:
    from edge.config import parse_config
    from edge.errors import ConfigError

    assert parse_config({}).matching.target_fpir == 0.01
    assert parse_config({"matching": {"target_fpir": 0.001}}).matching.target_fpir == 0.001
    for bad in (0, 0.5, -0.01, math.nan, math.inf):
        with pytest.raises(ConfigError, match=r"matching\.target_fpir"):
            parse_config({"matching": {"target_fpir": bad}})
    with pytest.raises(ConfigError, match=r"matching\.target_fpir: expected a number"):
        parse_config({"matching": {"target_fpir": "1%"}})


@pytest.mark.parametrize("target", [0.001, 0.01, 0.05])
def test_the_device_never_goes_looser_than_the_calibration_supports(target: float) -> None:
    """For every gallery size: the expected FPIR stays within the target, or the table
    cannot resolve it and the strictest row is used (and said so); a larger
    gallery never gets a looser threshold."""
    previous = math.inf
    for m in (1, 2, 3, 5, 10, 20, 37, 50, 100, 300, 1000, 10_000, 1_000_000):
        p = operating_point(0.33, FAR, FRR, m, target)
        if p.clamped:
            assert p.threshold == min(FAR.threshold)
        else:
            assert not p.looser_than_target
            assert p.expected_fpir is not None and p.expected_fpir <= target * (1 + 1e-9)
        assert p.threshold <= previous
        previous = p.threshold
    # Only a config threshold can be looser, and then the recognizer says so loudly.
    loose = operating_point(0.33, FAR, FRR, 10, target, override=0.45)
    assert loose.source == "config" and loose.looser_than_target


def test_a_loose_config_threshold_is_a_warning_from_the_daemons_recognizer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warning is a WARNING on every gallery swap (start-up and each reload)."""
    cal = Calibration(0.33, 0.05, 0.5, 0.03, "test", far_table=FAR, frr_table=FRR)
    none = cast(Any, None)
    with caplog.at_level(logging.WARNING, logger="edge.decide.recognizer"):
        rec = Recognizer(none, none, _gallery(2, 1), cal, 0.01, threshold_override=0.45)
        rec.set_gallery(_gallery(20, 1))
    loud = [r for r in caplog.records if r.levelno == logging.WARNING and "looser" in r.message]
    assert len(loud) == 2 and rec.threshold == 0.45
    # Within what the calibration supports: no warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge.decide.recognizer"):
        Recognizer(none, none, _gallery(2, 1), cal, 0.01, threshold_override=0.25)
    assert not caplog.records


def test_a_loose_config_threshold_is_warned_about_without_tables(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from edge.decide.recognizer import calibration_for

    plain = Calibration(0.33, 0.05, 0.5, 0.03, "test")  # an old manifest: no tables
    emb = cast(Any, SimpleNamespace(manifest=SimpleNamespace(calibration=plain)))
    with caplog.at_level(logging.WARNING, logger="edge.decide.recognizer"):
        assert calibration_for(emb, 0.30).threshold == 0.30  # stricter: no warning
        assert "looser" not in caplog.text
        assert calibration_for(emb, 0.45).threshold == 0.45
    assert "0.45000 is looser than the model's calibrated 0.33000" in caplog.text
