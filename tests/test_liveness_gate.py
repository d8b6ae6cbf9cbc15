"""The liveness gate: decisions wait for their track's verdict, at most ``max_wait_s``."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from edge.decide.gate import LivenessGate
from edge.types import Box, Decision, Detection, Image, Liveness

IMG = np.zeros((8, 8, 3), np.uint8)
DET = Detection(Box(1, 1, 4, 4), 0.9, np.zeros((6, 2), np.float32))
UNDECIDED = Liveness(None, 0.2)
LIVE = Liveness(True, 0.8, ("turn 9deg (texture 8deg, z=6) at 0.5s",), 0.5)
SPOOF = Liveness(False, 0.0, ("prop: 20 points beyond the head move with the face",), 0.5)


class Scripted:
    """A stage whose verdicts the test sets; it records what it was fed."""

    def __init__(self) -> None:
        self.verdicts: dict[int, Liveness] = {}
        self.fed: list[tuple[float, list[int]]] = []

    def update(self, rgb: Image, t: float, faces: Iterable[tuple[int, Detection]]) -> None:
        self.fed.append((t, [tid for tid, _ in faces]))

    def verdict(self, tid: int) -> Liveness:
        return self.verdicts.get(tid, Liveness(None, 0.0))


def decision(tid: int, t: float, name: str | None = "Alice") -> Decision:
    kind = "recognized" if name else "unknown"
    return Decision(kind, name, 0.2, 0.9, tid, 3, t, DET.box)


def test_a_decision_waits_for_its_tracks_verdict_and_leaves_stamped_with_that_frame() -> None:
    stage = Scripted()
    gate = LivenessGate(stage, max_wait_s=3.0)
    assert gate.update(IMG, 10.0, [(1, DET)], []) == []
    assert gate.update(IMG, 10.3, [(1, DET)], [decision(1, 10.3)]) == []
    assert gate.held == 1
    stage.verdicts[1] = LIVE
    (d,) = gate.update(IMG, 10.8, [(1, DET)], [])
    assert d.liveness == LIVE and d.timestamp == 10.8 and d.name == "Alice"
    assert gate.held == 0
    assert stage.fed == [(10.0, [1]), (10.3, [1]), (10.8, [1])]


def test_a_spoof_leaves_at_once_and_no_evidence_leaves_after_max_wait() -> None:
    stage = Scripted()
    gate = LivenessGate(stage, max_wait_s=2.0)
    stage.verdicts[2] = SPOOF
    gate.update(IMG, 0.0, [(1, DET), (2, DET)], [])
    (d,) = gate.update(IMG, 0.4, [(1, DET), (2, DET)], [decision(1, 0.4), decision(2, 0.4)])
    assert d.track_id == 2 and d.liveness is not None and d.liveness.passed is False
    # Track 1 never shows evidence: it leaves 2 s after the face appeared, undecided.
    assert gate.update(IMG, 1.9, [(1, DET)], []) == []
    (d,) = gate.update(IMG, 2.0, [(1, DET)], [])
    assert d.track_id == 1 and d.liveness is not None and d.liveness.passed is None
    assert d.liveness.reason == "no_liveness" and d.timestamp == 2.0


def test_a_newer_decision_of_a_track_replaces_the_held_one_and_flush_empties() -> None:
    stage = Scripted()
    gate = LivenessGate(stage, max_wait_s=3.0)
    gate.update(IMG, 0.0, [(5, DET)], [decision(5, 0.0, None)])
    gate.update(IMG, 0.5, [(5, DET)], [decision(5, 0.5, "Bob")])
    assert gate.held == 1
    (d,) = gate.flush()  # stamped with the last frame's time
    assert (d.kind, d.name, d.timestamp) == ("recognized", "Bob", 0.5)
    assert d.liveness is not None and d.liveness.passed is None
    assert gate.held == 0 and gate.flush() == []


def test_a_gallery_change_drops_what_waits() -> None:
    """Decisions made against the old gallery (a revocation) never leave after it."""
    stage = Scripted()
    gate = LivenessGate(stage, max_wait_s=3.0)
    gate.update(IMG, 0.0, [(1, DET)], [decision(1, 0.0)])
    assert gate.drop() == 1 and gate.held == 0
    stage.verdicts[1] = LIVE
    assert gate.update(IMG, 0.5, [(1, DET)], []) == []


def test_the_verdict_reasons_and_the_event_form() -> None:
    assert (LIVE.reason, SPOOF.reason, UNDECIDED.reason) == ("live", "spoof", "no_liveness")
    assert LIVE.to_json() == {"passed": True, "score": 0.8, "evidence": list(LIVE.evidence)}
