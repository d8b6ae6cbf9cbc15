"""The targets, the numbers they are judged on, and the verdicts.

Every target is judged on every host, except the int8 embedder's speed-up
over float32: it is judged only where the CPU has int8 dot-product
instructions (:func:`tools.bench.cpu.int8_dot_reason`); elsewhere it is
``n/a`` with the reason, and the measured ratio is still printed. A per-face
stage added to :data:`tools.bench.face_stages.FACE_STAGES` that runs inside the
whole frame counts as overhead unless its invoke is added to the bare model
time (see :func:`tools.bench.stages._time_one_frame`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tools.bench.common import GROWTH_LIMIT_PCT, finite
from tools.bench.cpu import CpuInfo, int8_dot_reason
from tools.bench.daemon import DaemonResult
from tools.bench.identify import IdResult
from tools.bench.peer import PeerResult
from tools.bench.stages import StageResult

# The targets of issue 6: key -> (what, comparison, limit, unit).
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "int8_speedup": ("int8 embedder speed-up over float32, 2 threads", ">=", 1.4, "x"),
    "int8_size_ratio": ("int8 embedder file / float32 file", "<=", 0.3, "x"),
    "fps_vs_peer": ("pipeline fps / peer fps, same frames", ">=", 10.0, "x"),
    "id_vs_peer": ("correct identifications, ours - peer", ">=", 0.0, "faces"),
    "overhead": ("whole frame / (detector + embedder invoke)", "<=", 1.3, "x"),
    "match_1000_ms": ("matching 1,000 people, one face", "<", 1.0, "ms"),
    "daemon_rss_mb": ("daemon peak RSS", "<", 300.0, "MB"),
    "rss_growth_pct": ("daemon RSS growth, first sample to end", "<=", GROWTH_LIMIT_PCT, "%"),
    "thread_growth": ("daemon thread count growth", "<=", 0.0, "threads"),
    "event_p95_ms": ("frame to MQTT event p95, local broker", "<", 250.0, "ms"),
    # Issue 20: a gallery push applied by every door (tools.bench.fleet).
    "fleet_p95_20_s": ("fleet push to applied p95, 20 doors", "<=", 2.0, "s"),
    "fleet_p95_100_s": ("fleet push to applied p95, 100 doors", "<=", 2.0, "s"),
    # Issue 24: the liveness stage per face (tools.bench.liveness).
    "liveness_ms": ("liveness stage per face, 2 threads", "<=", 10.0, "ms"),
}


@dataclass(frozen=True)
class Target:
    """One target and its measured value.

    ``value`` None (or NaN) means not measured, ``note`` says why; infinity
    stands for "never happened" (no event arrived, the daemon died) and fails.
    ``judged`` False means measured but not judged on this host (``note``
    says why; the int8 speed-up on a CPU without an int8 dot product).
    """

    key: str
    what: str
    op: str
    limit: float
    unit: str
    value: float | None
    note: str = ""
    judged: bool = True

    @property
    def status(self) -> str:
        """``pass``, ``fail`` or ``n/a``."""
        if not self.judged or self.value is None or math.isnan(self.value):
            return "n/a"
        v, lim = self.value, self.limit
        ok = {"<": v < lim, "<=": v <= lim, ">": v > lim, ">=": v >= lim}[self.op]
        return "pass" if ok else "fail"


def evaluate_targets(
    values: Mapping[str, float | None],
    notes: Mapping[str, str] | None = None,
    not_judged: Mapping[str, str] | None = None,
) -> list[Target]:
    """Every target of :data:`TARGETS` against the measured ``values`` (missing: n/a).

    A special rule: an int8 embedder slower than float32 (speed-up < 1) is a
    failure whatever the limit says, which ``>= 1.4`` already implies.
    ``not_judged`` maps a target to the reason it is not judged on this host:
    it keeps its value and reads ``n/a`` with that reason before any note.
    """
    notes = notes or {}
    not_judged = not_judged or {}
    out = []
    for key, (what, op, limit, unit) in TARGETS.items():
        v = values.get(key)
        why = "; ".join(n for n in (not_judged.get(key, ""), notes.get(key, "")) if n)
        out.append(Target(key, what, op, limit, unit, v, why, key not in not_judged))
    return out


def not_judged_here(cpu: CpuInfo) -> dict[str, str]:
    """The targets this CPU cannot be judged on, with the reason (the int8 speed-up
    without an int8 dot product: its ratio measures the host, not the model)."""
    why = int8_dot_reason(cpu)
    return {} if why is None else {"int8_speedup": why}


def all_pass(targets: Sequence[Target]) -> bool:
    """True when no target fails (n/a ones do not count against)."""
    return all(t.status != "fail" for t in targets)


def _embedder_values(
    stages: Sequence[StageResult], vals: dict[str, float | None], notes: dict[str, str]
) -> None:
    """``int8_speedup``: every installed runtime must meet it at 2 threads, so the worst is
    judged; an int8 model slower than float32 at any thread count fails."""
    two = [s for s in stages if s.threads == 2]
    if two:
        vals["int8_speedup"] = min(s.int8_speedup for s in two)
    slow = [s for s in stages if s.embed_int8_invoke_ms > s.embed_float_invoke_ms]
    if slow:
        worst = min(slow, key=lambda s: s.int8_speedup)
        vals["int8_speedup"] = worst.int8_speedup
        notes["int8_speedup"] = f"int8 slower than float32 with {worst.runtime}, t={worst.threads}"


DAEMON_KEYS = ("daemon_rss_mb", "rss_growth_pct", "thread_growth", "event_p95_ms")


def _daemon_values(
    daemon: DaemonResult, vals: dict[str, float | None], notes: dict[str, str]
) -> None:
    """The daemon's targets; no event at all is an infinite latency, a daemon that died
    fails what it could not show."""
    if not daemon.ran:
        notes.update(dict.fromkeys(DAEMON_KEYS, daemon.note))
        return
    vals["daemon_rss_mb"] = finite(daemon.peak_rss_mb)
    vals["rss_growth_pct"] = finite(daemon.rss_growth_pct)
    vals["thread_growth"] = finite(daemon.thread_growth)
    vals["event_p95_ms"] = finite(daemon.latency_p95_ms)
    if daemon.events == 0:
        vals["event_p95_ms"] = math.inf
        notes["event_p95_ms"] = "no event received"
    if daemon.failed:
        for k in DAEMON_KEYS:
            if vals.get(k) is None:
                vals[k] = math.inf
            notes[k] = daemon.note


def target_values(
    stages: Sequence[StageResult],
    size_ratio: float,
    match_ms: Mapping[int, float],
    ours: IdResult | None,
    peer: PeerResult,
    daemon: DaemonResult,
    preferred_runtime: str,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """The numbers the targets are judged on, and notes for the ones not measured.

    ``stages``, ``size_ratio``, ``match_ms`` and ``ours`` are the device's
    default embedder's; the other embedder is shown beside it, not judged.
    """
    vals: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    two = [s for s in stages if s.threads == 2]
    main = next((s for s in two if s.runtime == preferred_runtime), two[0] if two else None)
    _embedder_values(stages, vals, notes)
    vals["int8_size_ratio"] = size_ratio
    if main is not None:
        vals["overhead"] = main.overhead
        lv = main.extra.get("liveness_ms")
        if lv is not None and math.isfinite(lv):
            vals["liveness_ms"] = lv
        else:
            notes["liveness_ms"] = "face mesh model not built (tools/setup.sh)"
    vals["match_1000_ms"] = match_ms.get(1000)
    if not peer.available:
        notes["fps_vs_peer"] = notes["id_vs_peer"] = peer.note
    elif main is not None:
        vals["fps_vs_peer"] = main.fps / peer.fps
        if ours is None or ours.probes == 0:
            notes["id_vs_peer"] = "no labelled faces (../shared/faces absent)"
        else:
            vals["id_vs_peer"] = float(ours.total_correct - peer.ident.total_correct)
    _daemon_values(daemon, vals, notes)
    return vals, notes
