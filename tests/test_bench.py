"""The benchmark's pure helpers on given numbers: statistics, targets, tables, scoring.

No timing is asserted here (speed lives in ``python -m tools.bench``); these
check that the bench judges and prints given measurements correctly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge.config import load_config
from edge.errors import FacegateError
from tools.bench import (
    STRANGER,
    TARGETS,
    BenchFrame,
    DaemonResult,
    IdResult,
    PeerResult,
    StageResult,
    Target,
    all_pass,
    camera_size,
    enrolment_names,
    evaluate_targets,
    fit,
    format_table,
    format_targets,
    growth_pct,
    id_row,
    load_frames,
    maybe_same_person,
    median,
    overhead_ratio,
    percentile,
    score,
    stage_table,
    summarise_daemon,
    target_values,
    write_config,
)

GOOD = {
    "int8_speedup": 3.5,
    "int8_size_ratio": 0.26,
    "fps_vs_peer": 24.0,
    "id_vs_peer": 4.0,
    "overhead": 1.19,
    "match_1000_ms": 0.13,
    "daemon_rss_mb": 134.0,
    "rss_growth_pct": 0.3,
    "thread_growth": 0.0,
    "event_p95_ms": 110.0,
    "fleet_p95_20_s": 0.4,
    "fleet_p95_100_s": 1.1,
    "liveness_ms": 6.0,
}


def test_median_and_percentile_on_known_samples() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(median([]))
    # r = 0.95 * 3 = 2.85: 3 + 0.85 * (4 - 3)
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert math.isnan(percentile([], 50))


def test_growth_pct() -> None:
    assert growth_pct(100.0, 110.0) == pytest.approx(10.0)
    assert growth_pct(200.0, 150.0) == pytest.approx(-25.0)
    assert growth_pct(0.0, 5.0) == 0.0


def test_target_status_at_and_around_the_limit() -> None:
    def t(op: str, value: float | None, limit: float = 1.0) -> str:
        return Target("k", "what", op, limit, "x", value).status

    assert t("<", 0.99) == "pass"
    assert t("<", 1.0) == "fail"  # strictly under
    assert t("<=", 1.0) == "pass"
    assert t("<=", 1.01) == "fail"
    assert t(">=", 1.0) == "pass"
    assert t(">=", 0.99) == "fail"
    assert t(">", 1.0) == "fail"
    assert t("<", None) == "n/a"
    assert t("<", float("nan")) == "n/a"
    assert t("<", math.inf) == "fail"  # never happened


def test_evaluate_targets_all_pass_on_good_numbers() -> None:
    targets = evaluate_targets(dict(GOOD))
    assert [t.key for t in targets] == list(TARGETS)
    assert [t.status for t in targets] == ["pass"] * len(TARGETS)
    assert all_pass(targets)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("int8_speedup", 0.9),  # int8 slower than float: always a failure
        ("int8_speedup", 1.39),
        ("int8_size_ratio", 0.31),
        ("fps_vs_peer", 9.9),
        ("id_vs_peer", -1.0),
        ("overhead", 1.31),
        ("match_1000_ms", 1.0),
        ("daemon_rss_mb", 300.0),
        ("rss_growth_pct", 10.5),
        ("thread_growth", 1.0),
        ("event_p95_ms", 250.0),
        ("fleet_p95_20_s", 2.01),
        ("fleet_p95_100_s", math.inf),  # a door never applied the push
        ("liveness_ms", 10.01),
    ],
)
def test_each_target_fails_just_past_its_limit(key: str, value: float) -> None:
    targets = evaluate_targets({**GOOD, key: value})
    failed = [t.key for t in targets if t.status == "fail"]
    assert failed == [key]
    assert not all_pass(targets)


def test_missing_values_are_na_with_their_note_and_do_not_fail() -> None:
    vals = {k: v for k, v in GOOD.items() if k not in ("fps_vs_peer", "id_vs_peer")}
    notes = {"fps_vs_peer": "peer not installed", "id_vs_peer": "peer not installed"}
    targets = evaluate_targets(vals, notes)
    na = {t.key: t.note for t in targets if t.status == "n/a"}
    assert na == notes
    assert all_pass(targets)
    text = format_targets(targets)
    assert text.count("n/a (peer not installed)") == 2
    assert text.count("PASS") == len(TARGETS) - 2


def test_format_table_pads_columns() -> None:
    text = format_table(["stage", "ms"], [["detect", "2.5"], ["embedding int8", "12"]])
    assert text.splitlines() == [
        "stage            ms",
        "--------------  ---",
        "detect          2.5",
        "embedding int8   12",
    ]


def test_format_targets_prints_measured_limit_and_result() -> None:
    targets = evaluate_targets({**GOOD, "overhead": 1.5})
    lines = format_targets(targets).splitlines()
    row = next(line for line in lines if line.startswith("whole frame / (detector"))
    assert row.endswith("FAIL")
    assert "1.50 x" in row and "<= 1.30 x" in row


def test_overhead_ratio() -> None:
    assert overhead_ratio([12.0, 8.0], [10.0, 5.0]) == pytest.approx(20.0 / 15.0)
    assert math.isnan(overhead_ratio([1.0], [0.0]))


def test_score_counts_known_people_and_strangers() -> None:
    r = IdResult()
    for truth, said in [
        ("Ann", "Ann"),
        ("Ann", None),
        ("Ann", "Bob"),
        (STRANGER, None),
        (STRANGER, None),
        (STRANGER, "Bob"),
    ]:
        score(truth, said, r)
    assert (r.probes, r.correct, r.unknown_or_missed, r.wrong_person) == (3, 1, 1, 1)
    assert (r.strangers, r.strangers_rejected, r.false_accepts) == (3, 2, 1)
    assert r.total_correct == 3
    assert id_row("x", r, 10.0) == ["x", "0", "3", "1", "1", "1", "3", "2", "1", "3", "10.0"]


def test_enrolment_is_the_first_photo_of_each_labelled_person() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    frames = [
        BenchFrame("a1", img, "Ann"),
        BenchFrame("a2", img, "Ann"),
        BenchFrame("g", img, None),
        BenchFrame("s", img, STRANGER),
        BenchFrame("b1", img, "Bob"),
    ]
    assert enrolment_names(frames) == {"a1", "b1"}


def _stage(runtime: str, threads: int, f: float, i: float) -> StageResult:
    s = StageResult(runtime, threads)
    s.embed_float_invoke_ms, s.embed_int8_invoke_ms = f, i
    s.fps, s.overhead = 80.0, 1.2
    s.extra["liveness_ms"] = 5.0
    return s


def test_target_values_judge_the_worst_runtime_and_both_identifications() -> None:
    stages = [
        _stage("ai_edge_litert", 1, 40.0, 10.0),
        _stage("ai_edge_litert", 2, 45.0, 15.0),
        _stage("tflite_runtime", 2, 30.0, 20.0),
    ]
    ours = IdResult(probes=34, correct=33, strangers_rejected=364)
    peer = PeerResult(True, fps=4.0, ident=IdResult(probes=34, correct=34, strangers_rejected=359))
    daemon = DaemonResult(True, events=50, peak_rss_mb=134.0, latency_p95_ms=110.0)
    daemon.rss_growth_pct, daemon.thread_growth = 0.5, 0.0
    vals, notes = target_values(stages, 0.26, {1000: 0.1}, ours, peer, daemon, "ai_edge_litert")
    assert vals["int8_speedup"] == pytest.approx(1.5)  # tflite_runtime's 30/20, the worst at 2
    assert vals["fps_vs_peer"] == pytest.approx(20.0)
    assert vals["id_vs_peer"] == 4.0
    assert vals["overhead"] == 1.2
    assert vals["event_p95_ms"] == 110.0
    assert vals["liveness_ms"] == 5.0  # the preferred runtime's, at 2 threads
    assert notes == {}


def test_target_values_without_peer_or_daemon_say_why() -> None:
    stages = [_stage("ai_edge_litert", 2, 45.0, 15.0)]
    vals, notes = target_values(
        stages,
        0.26,
        {1000: 0.1},
        None,
        PeerResult(False, "peer not installed"),
        DaemonResult(False, "mosquitto not installed"),
        "ai_edge_litert",
    )
    targets = {t.key: t for t in evaluate_targets(vals, notes)}
    assert targets["fps_vs_peer"].status == "n/a"
    assert targets["fps_vs_peer"].note == "peer not installed"
    assert targets["event_p95_ms"].note == "mosquitto not installed"
    assert targets["int8_speedup"].status == "pass"


def test_fit_scales_down_to_the_camera_either_way_round() -> None:
    assert fit(np.zeros((960, 1280, 3), np.uint8), 640, 480).shape == (480, 640, 3)
    assert fit(np.zeros((1280, 960, 3), np.uint8), 640, 480).shape == (640, 480, 3)
    small = np.zeros((100, 200, 3), np.uint8)
    assert fit(small, 640, 480) is small


def test_written_config_is_a_valid_daemon_config(tmp_path: Path) -> None:
    (tmp_path / "replay").mkdir()  # the bench writes the replay before it starts the daemon
    path = write_config(
        tmp_path / "bench.toml",
        {
            "device": {"id": "bench-door"},
            "camera": {"source": "folder", "path": "replay", "fps": 5.0, "loop": True},
            "decision": {"single_frame": True, "cooldown_s": 0.0},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": 1884},
        },
    )
    cfg = load_config(path)
    assert cfg.camera.path == "replay" and cfg.camera.loop
    assert cfg.decision.single_frame and cfg.decision.cooldown_s == 0.0
    assert cfg.mqtt.port == 1884


def test_frames_fall_back_to_registry_photos_without_shared(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    frames, where = load_frames(tmp_path / "no-shared", 640, 480, video_frames=0)
    assert "registry sample photos" in where
    assert frames and all(f.label is None for f in frames)
    assert all(max(f.rgb.shape[:2]) <= 640 and min(f.rgb.shape[:2]) <= 480 for f in frames)


def test_int8_slower_than_float_fails_at_any_thread_count() -> None:
    stages = [
        _stage("ai_edge_litert", 1, 10.0, 12.5),  # int8 slower with one thread
        _stage("ai_edge_litert", 2, 45.0, 15.0),
    ]
    vals, notes = target_values(
        stages,
        0.26,
        {1000: 0.1},
        None,
        PeerResult(False, "peer not installed"),
        DaemonResult(False, "mosquitto not installed"),
        "ai_edge_litert",
    )
    assert vals["int8_speedup"] == pytest.approx(0.8)
    assert notes["int8_speedup"] == "int8 slower than float32 with ai_edge_litert, t=1"
    speedup = next(t for t in evaluate_targets(vals, notes) if t.key == "int8_speedup")
    assert speedup.status == "fail"


def test_a_daemon_that_died_or_sent_nothing_fails() -> None:
    stages = [_stage("ai_edge_litert", 2, 45.0, 15.0)]
    peer = PeerResult(False, "peer not installed")
    quiet = DaemonResult(True, peak_rss_mb=120.0)
    quiet.rss_growth_pct, quiet.thread_growth = 0.0, 0.0
    vals, notes = target_values(stages, 0.26, {1000: 0.1}, None, peer, quiet, "ai_edge_litert")
    status = {t.key: t.status for t in evaluate_targets(vals, notes)}
    assert status["event_p95_ms"] == "fail" and notes["event_p95_ms"] == "no event received"
    assert status["daemon_rss_mb"] == "pass"

    dead = DaemonResult(True, note="daemon exited 1 during the run: boom", failed=True)
    vals, notes = target_values(stages, 0.26, {1000: 0.1}, None, peer, dead, "ai_edge_litert")
    targets = evaluate_targets(vals, notes)
    daemon_keys = ("daemon_rss_mb", "rss_growth_pct", "thread_growth", "event_p95_ms")
    assert [t.status for t in targets if t.key in daemon_keys] == ["fail"] * 4
    assert not all_pass(targets)
    assert "never" in format_targets(targets)


def test_a_stranger_never_shares_a_surname_with_an_enrolled_person() -> None:
    assert maybe_same_person("Joseph_Biden", "Joe_Biden")  # one man, two folder names
    assert maybe_same_person("barack_obama", "Barack_Obama")
    assert maybe_same_person("Kate Siegel", "Kate_Siegel")
    assert not maybe_same_person("Jeff_Bezos", "Jeff_Bridges")
    assert not maybe_same_person("Abdullah", "Abdullah_Gul")


def test_summarise_daemon_from_events_and_samples() -> None:
    res = DaemonResult(True, seconds=90.0)
    res.samples = [
        {"t_s": 2.0, "rss_mb": 90.0, "threads": 7},  # before warm-up (a third of the run)
        {"t_s": 30.0, "rss_mb": 100.0, "threads": 9},  # the base: first sample at 30 s or later
        {"t_s": 90.0, "rss_mb": 105.0, "threads": 9},
    ]
    t0 = 1000.0
    # (receive time, event ts_unix): latencies 10, 20, 30, 40 ms; first event 0.5 s in.
    got = [
        (t0 + 0.5, t0 + 0.49),
        (t0 + 1.0, t0 + 0.98),
        (t0 + 1.5, t0 + 1.47),
        (t0 + 2.0, t0 + 1.96),
    ]
    summarise_daemon(res, got, t0)
    assert res.events == 4
    assert res.startup_to_first_event_s == pytest.approx(0.5)
    assert res.latency_p50_ms == pytest.approx(25.0)
    assert res.latency_p95_ms == pytest.approx(38.5)
    assert res.rss_growth_pct == pytest.approx(5.0) and res.thread_growth == 0
    quiet = DaemonResult(True, seconds=20.0)
    summarise_daemon(quiet, [], t0)
    assert quiet.events == 0 and math.isnan(quiet.latency_p95_ms)


def test_stage_table_has_a_column_per_embedder_runtime_and_threads() -> None:
    stages = [_stage("ai_edge_litert", t, 10.0, 4.0) for t in (1, 2)]
    stages += [_stage("ai_edge_litert", t, 30.0, 8.0) for t in (1, 2)]
    for s, name in zip(stages, ["sface", "sface", "facenet", "facenet"], strict=True):
        s.embedder = name
    text = stage_table(stages, 0.9, {"sface": {1000: 0.07}, "facenet": {1000: 0.14}})
    header = text.splitlines()[0]
    assert "sface ai_edge_litert t=1" in header and "facenet ai_edge_litert t=2" in header
    row = next(line for line in text.splitlines() if line.startswith("matching 1,000"))
    assert row.split()[-4:] == ["0.070", "0.070", "0.14", "0.14"]
    speed = next(line for line in text.splitlines() if "speed-up" in line)
    assert speed.split()[-8:] == ["2.50", "x", "2.50", "x", "3.75", "x", "3.75", "x"]


def test_camera_size() -> None:
    assert camera_size("640x480") == (640, 480)
    assert camera_size("1280X720") == (1280, 720)
    with pytest.raises(FacegateError, match="--camera"):
        camera_size("640")


def test_fleet_values_and_lines_on_given_numbers() -> None:
    from tools.bench.fleet import FleetResult, FleetRun, fleet_lines, fleet_values

    ok = FleetRun(20, 2, 50, 82000, samples_s=[0.2, 0.3, 0.25, 0.4], push_s=[0.3, 0.35])
    lost = FleetRun(100, 2, 50, 82000, samples_s=[0.5] * 199, missing=1)
    result = FleetResult(True, runs=[ok, lost], bundle_1000={
        "people": 1000, "dims": 128, "total_bytes": 1.6e6, "chunks": 25, "manifest_bytes": 3e3,
        "build_ms": 90.0,
    })  # fmt: skip
    vals, notes = fleet_values(result)
    assert vals["fleet_p95_20_s"] == pytest.approx(0.385)
    assert vals["fleet_p95_100_s"] == math.inf  # a door that never applied a push fails
    targets = {t.key: t.status for t in evaluate_targets({**GOOD, **vals}, notes)}
    assert targets["fleet_p95_20_s"] == "pass" and targets["fleet_p95_100_s"] == "fail"
    text = "\n".join(fleet_lines(result))
    assert "20 doors" in text and "1 never applied" in text and "1.60 MB" in text
    vals, notes = fleet_values(FleetResult(False, "mosquitto is not installed"))
    assert vals == {}
    assert notes == dict.fromkeys(
        ["fleet_p95_20_s", "fleet_p95_100_s"], "mosquitto is not installed"
    )
