"""Decisions over frames: k of n agreement, unknowns, cooldown, IoU tracking."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge.config import DecisionConfig
from edge.decide.tracker import RECOGNIZED, UNKNOWN, Tracker, crop_snapshot, identity_jump
from edge.types import Box, Decision, Detection, FaceResult, FrameResult, Match

LEFT = Box(100, 100, 80, 80)
RIGHT = Box(400, 120, 90, 90)


def face(name: str | None, box: Box = LEFT, distance: float | None = None) -> FaceResult:
    d = (0.2 if name else 0.8) if distance is None else distance
    return FaceResult(
        Detection(box, 0.9, np.zeros((6, 2), np.float32)),
        Match(name, d, d + 0.3, 1.0 - d),
    )


def feed(
    tracker: Tracker, frames: list[list[FaceResult]], t0: float = 0.0, dt: float = 0.1
) -> list[tuple[int, Decision]]:
    """Feed frames; return (frame number, decision) for every decision."""
    out: list[tuple[int, Decision]] = []
    for i, faces in enumerate(frames):
        res = FrameResult(i, t0 + i * dt, tuple(faces))
        out.extend((i, d) for d in tracker.update(res))
    return out


def test_recognized_needs_k_of_n_and_not_one_frame() -> None:
    tr = Tracker(DecisionConfig(k=3, n=4))
    got = feed(tr, [[face("alice")], [face(None)], [face("alice")], [face("alice")]])
    assert [(i, d.kind, d.name) for i, d in got] == [(3, RECOGNIZED, "alice")]
    d = got[0][1]
    assert d.track_length == 4
    assert d.distance == pytest.approx(0.2)
    assert d.box == LEFT


def test_single_frame_never_decides_by_default() -> None:
    tr = Tracker(DecisionConfig())
    assert feed(tr, [[face("alice")]]) == []


def test_single_frame_when_configured() -> None:
    tr = Tracker(DecisionConfig(single_frame=True))
    got = feed(tr, [[face("alice")]])
    assert [(d.kind, d.name) for _, d in got] == [(RECOGNIZED, "alice")]
    tr2 = Tracker(DecisionConfig(single_frame=True))
    got2 = feed(tr2, [[face(None)]])
    assert [(d.kind, d.name) for _, d in got2] == [(UNKNOWN, None)]


def test_flicker_between_people_decides_nothing() -> None:
    tr = Tracker(DecisionConfig(k=3, n=4))
    frames = [[face(n)] for n in ["alice", "bob", "alice", "bob", "alice", "bob"]]
    assert feed(tr, frames) == []


def test_unknown_after_n_frames_without_match_once_per_track() -> None:
    tr = Tracker(DecisionConfig(k=3, n=4))
    got = feed(tr, [[face(None)]] * 10)
    assert [(i, d.kind, d.name) for i, d in got] == [(3, UNKNOWN, None)]
    assert got[0][1].distance == pytest.approx(0.8)


def test_recognized_face_turning_away_is_not_unknown() -> None:
    tr = Tracker(DecisionConfig(k=3, n=4, cooldown_s=100))
    got = feed(tr, [[face("alice")]] * 3 + [[face(None)]] * 8)
    assert [(d.kind, d.name) for _, d in got] == [(RECOGNIZED, "alice")]


def test_unknown_can_later_be_recognized() -> None:
    # A stranger-looking face that comes closer and is then recognized.
    tr = Tracker(DecisionConfig(k=3, n=4))
    got = feed(tr, [[face(None)]] * 4 + [[face("alice")]] * 3)
    assert [(i, d.kind) for i, d in got] == [(3, UNKNOWN), (6, RECOGNIZED)]
    assert got[0][1].track_id == got[1][1].track_id


def test_cooldown_suppresses_repeats_across_tracks() -> None:
    cfg = DecisionConfig(k=3, n=4, cooldown_s=5.0, max_track_age_s=0.5)
    tr = Tracker(cfg)
    # Alice, then gone for 1 s (track expires), then back: still cooling down.
    frames = [[face("alice")]] * 4 + [[]] * 10 + [[face("alice")]] * 4
    got = feed(tr, frames)
    assert [(i, d.name) for i, d in got] == [(2, "alice")]
    # After the cooldown the same person is announced again.
    later = feed(tr, [[face("alice")]] * 4, t0=10.0)
    assert [(i, d.name) for i, d in later] == [(2, "alice")]
    assert later[0][1].track_id != got[0][1].track_id


def test_cooldown_is_per_person() -> None:
    tr = Tracker(DecisionConfig(k=3, n=4, cooldown_s=100))
    frames = [[face("alice", LEFT), face("bob", RIGHT)]] * 3
    got = feed(tr, frames)
    assert sorted(d.name or "" for _, d in got) == ["alice", "bob"]
    assert len({d.track_id for _, d in got}) == 2


def test_tracks_follow_moving_boxes_and_separate_faces() -> None:
    tr = Tracker(DecisionConfig(k=3, n=4, iou=0.3))
    frames = []
    for i in range(4):
        moved = replace(LEFT, x=LEFT.x + 8 * i)  # IoU with the previous box ~0.82
        frames.append([face(None, moved), face(None, RIGHT)])
    got = feed(tr, frames)
    assert [(i, d.kind) for i, d in got] == [(3, UNKNOWN), (3, UNKNOWN)]
    assert {d.track_length for _, d in got} == {4}
    assert tr.active_tracks == 2


def test_jumping_box_starts_a_new_track() -> None:
    tr = Tracker(DecisionConfig(k=3, n=4))
    # The same name at two far-apart places alternately: two tracks, neither gets 3 of 4.
    frames = [[face("alice", LEFT if i % 2 else RIGHT)] for i in range(4)]
    assert feed(tr, frames) == []
    assert tr.active_tracks == 2


def test_old_tracks_expire_by_frame_time() -> None:
    tr = Tracker(DecisionConfig(k=3, n=4, max_track_age_s=1.0))
    got = feed(tr, [[face("alice")]] * 2, dt=0.1)
    got += feed(tr, [[face("alice")]] * 2, t0=5.0, dt=0.1)
    assert got == []  # 2 + 2 observations on two different tracks
    assert tr.active_tracks == 1


def test_snapshot_is_the_padded_face_crop() -> None:
    img = np.zeros((300, 600, 3), np.uint8)
    img[100:180, 100:180] = 200
    tr = Tracker(DecisionConfig(single_frame=True))
    (d,) = tr.update(FrameResult(0, 0.0, (face("alice"),)), image=img)
    assert d.snapshot is not None
    assert d.snapshot.shape == (112, 112, 3)
    assert int(d.snapshot.max()) == 200
    edge_box = crop_snapshot(img, Box(580, 280, 40, 40))
    assert edge_box.shape[:2] == (28, 28)  # 40 + 2 * 8 px, clipped at the bottom/right


def test_config_rejects_k_above_n() -> None:
    from edge.config import parse_config
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"decision\.k"):
        parse_config({"decision": {"k": 5, "n": 4}})


# -- one identity per track ------------------------------------------------------------


def unit(seed: int, dim: int = 16) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def orthogonal(a: np.ndarray, seed: int) -> np.ndarray:
    """A unit vector at exactly 90 degrees to unit vector ``a`` (cosine distance 1)."""
    b = unit(seed, a.size)
    b = b - (b @ a) * a
    return b / np.linalg.norm(b)


def with_embedding(f: FaceResult, e: np.ndarray) -> FaceResult:
    return replace(f, embedding=e.astype(np.float32))


def test_identity_jump_is_the_cosine_distance_to_the_running_mean() -> None:
    a = unit(1)
    b = orthogonal(a, 2)
    assert not identity_jump(None, a, 0.4) and not identity_jump(a, None, 0.4)
    assert not identity_jump(a * 3.0, a, 0.4)  # the sum's length does not matter
    assert identity_jump(a, b, 0.4)  # cosine distance 1
    # The mean direction of a and b is 1 - cos(45 deg) = 0.29 from each.
    both = a + b
    assert not identity_jump(both, a, 0.4) and identity_jump(both, a, 0.2)


def test_a_newcomer_in_the_old_box_gets_a_track_and_a_decision_of_their_own() -> None:
    alice = unit(1)
    stranger = orthogonal(alice, 2)
    moved = replace(LEFT, x=LEFT.x + 30)  # IoU with LEFT ~0.45: would continue the track
    assert moved.iou(LEFT) > 0.3
    frames = [[with_embedding(face("alice"), alice)]] * 4
    frames += [[with_embedding(face(None, moved), stranger)]] * 4
    tr = Tracker(DecisionConfig(k=3, n=4), identity_threshold=0.4)
    got = feed(tr, frames)
    assert [(i, d.kind, d.name) for i, d in got] == [(2, RECOGNIZED, "alice"), (7, UNKNOWN, None)]
    assert got[0][1].track_id != got[1][1].track_id
    assert got[1][1].track_length == 4 and tr.active_tracks == 1  # Alice's track ended
    # Without the identity check the stranger inherits Alice's recognized track: no unknown.
    blind = feed(Tracker(DecisionConfig(k=3, n=4)), frames)
    assert [(d.kind, d.name) for _, d in blind] == [(RECOGNIZED, "alice")]


def test_the_same_face_drifting_keeps_its_track() -> None:
    # Each frame 0.1 rad further from the first embedding: small steps never jump.
    base = unit(1)
    other = orthogonal(base, 2)
    frames = [
        [with_embedding(face(None), np.cos(0.1 * i) * base + np.sin(0.1 * i) * other)]
        for i in range(6)
    ]
    tr = Tracker(DecisionConfig(k=3, n=4), identity_threshold=0.4)
    got = feed(tr, frames)
    assert [(i, d.kind) for i, d in got] == [(3, UNKNOWN)]
    assert tr.active_tracks == 1


def test_two_faces_swapping_places_keep_their_identities() -> None:
    # Two people side by side whose boxes overlap both tracks: identity decides.
    a = unit(1)
    b = orthogonal(a, 2)
    left, right = Box(100, 100, 80, 80), Box(130, 100, 80, 80)  # IoU 0.45
    frames = [[with_embedding(face("alice", left), a), with_embedding(face("bob", right), b)]]
    frames += [[with_embedding(face("alice", right), a), with_embedding(face("bob", left), b)]]
    frames *= 2
    tr = Tracker(DecisionConfig(k=3, n=4, cooldown_s=100), identity_threshold=0.4)
    got = feed(tr, frames)
    assert sorted((d.name or "", d.track_length) for _, d in got) == [("alice", 3), ("bob", 3)]
    assert tr.active_tracks == 2
