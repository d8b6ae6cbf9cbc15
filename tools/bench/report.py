"""The bench's report: the printed tables and verdicts, and ``bench.json``.

The header names the CPU the targets were judged on, with its int8-relevant
features and the XNNPACK build (where the runtime tells), so that a reader can
see why the same command passes on one host and not on another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from tools.bench.common import PEER_TOLERANCE, finite
from tools.bench.cpu import CpuInfo, int8_dot_reason
from tools.bench.daemon import DaemonResult
from tools.bench.face_stages import FACE_STAGES
from tools.bench.fleet import fleet_json, fleet_lines
from tools.bench.identify import IdResult
from tools.bench.results import BenchRun, Variant
from tools.bench.stages import StageResult
from tools.bench.targets import Target, all_pass


def _fmt_num(v: float | None, unit: str = "") -> str:
    if v is None or math.isnan(v):
        return "-"
    if math.isinf(v):
        return "never" if v > 0 else "-inf"
    a = abs(v)
    s = (
        f"{v:.0f}"
        if a >= 100
        else f"{v:.1f}"
        if a >= 10
        else f"{v:.2f}"
        if a >= 0.1
        else f"{v:.3f}"
    )
    return f"{s} {unit}".rstrip()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, a rule under the header.

    The first column is left-aligned, the others right-aligned (numbers).
    """
    cells = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def format_targets(targets: Sequence[Target]) -> str:
    """The targets as a table: what, measured, target, PASS/FAIL/n/a (and why)."""
    rows = []
    for t in targets:
        limit = f"{t.op} {_fmt_num(t.limit, t.unit)}"
        status = t.status.upper() if t.status != "n/a" else "n/a"
        if t.note:
            status += f" ({t.note})"
        rows.append([t.what, _fmt_num(t.value, t.unit), limit, status])
    return format_table(["target", "measured", "limit", "result"], rows)


ID_HEADERS = [
    "system",
    "enrolled",
    "known probes",
    "named right",
    "wrong name",
    "unknown",
    "strangers",
    "rejected",
    "accepted",
    "all correct",
    "fps",
]


def id_row(title: str, r: IdResult, fps: float) -> list[str]:
    """One line of the identification table (columns :data:`ID_HEADERS`)."""
    nums = [
        r.enrolled,
        r.probes,
        r.correct,
        r.wrong_person,
        r.unknown_or_missed,
        r.strangers,
        r.strangers_rejected,
        r.false_accepts,
        r.total_correct,
    ]
    return [title, *map(str, nums), _fmt_num(fps)]


def _extra_rows(stages: Sequence[StageResult], titles: Mapping[str, str]) -> list[list[str]]:
    """A row per extra per-face stage (:data:`~tools.bench.face_stages.FACE_STAGES`)."""
    keys = list(dict.fromkeys(k for s in stages for k in s.extra))
    nan = float("nan")
    return [[titles.get(k, k)] + [_fmt_num(s.extra.get(k, nan)) for s in stages] for k in keys]


def stage_table(
    stages: Sequence[StageResult],
    decode_ms: float,
    match_ms: Mapping[str, Mapping[int, float]],
    titles: Mapping[str, str] | None = None,
) -> str:
    """Per-stage medians, one column per (embedder, runtime, threads).

    ``match_ms``: per embedder label, the matching medians per gallery size
    (they depend only on the embedding size). ``titles``: the row title of
    each extra per-face stage by key (default: those of ``FACE_STAGES``).
    """
    if titles is None:
        titles = {st.key: st.title for st in FACE_STAGES}
    headers = ["stage (median ms)"] + [
        f"{s.embedder} {s.runtime} t={s.threads}".strip() for s in stages
    ]

    def row(title: str, attr: str) -> list[str]:
        return [title] + [_fmt_num(getattr(s, attr)) for s in stages]

    sizes = sorted({n for m in match_ms.values() for n in m})
    nan = float("nan")
    rows = [
        ["decode (640x480 JPEG -> RGB)"] + [_fmt_num(decode_ms)] * len(stages),
        row("detection (letterbox+invoke+NMS)", "detect_ms"),
        row("  detector invoke", "detect_invoke_ms"),
        row("alignment (per face)", "align_ms"),
        row("embedding float32 (per face)", "embed_float_ms"),
        row("  float32 invoke", "embed_float_invoke_ms"),
        row("embedding int8 (per face)", "embed_int8_ms"),
        row("  int8 invoke", "embed_int8_invoke_ms"),
        ["  int8 speed-up over float32"] + [_fmt_num(s.int8_speedup, "x") for s in stages],
        *_extra_rows(stages, titles),
    ]
    rows += [
        [f"matching {n:,} people (1 face)"]
        + [_fmt_num(match_ms.get(s.embedder, {}).get(n, nan)) for s in stages]
        for n in sizes
    ]
    rows += [
        row("whole frame, int8 (median)", "frame_ms"),
        ["whole frame, frames per second"] + [_fmt_num(s.fps) for s in stages],
        ["overhead: frame / model invokes"] + [_fmt_num(s.overhead, "x") for s in stages],
    ]
    return format_table(headers, rows)


def identification_lines(run: BenchRun) -> list[str]:
    """The identification table: each embedder of ours, then the peer, and the rules used."""
    peer = run.peer
    peer_name = f"face_recognition {peer.version} (HOG+ResNet)"
    fps = {
        v.label: next((s.fps for s in v.stages if s.threads == 2), v.stages[-1].fps)
        for v in run.variants
    }
    ours = [v for v in run.variants if v.ident is not None]
    if not ours:
        peer_line = f"{peer_name} {_fmt_num(peer.fps)} fps" if peer.available else peer.note
        return [
            f"identification: n/a (no labelled faces); facegate "
            f"{_fmt_num(fps[run.variants[0].label])} fps, peer: {peer_line}",
            "",
        ]
    rows = [
        id_row(f"facegate {v.label} int8, 2 threads", v.ident, fps[v.label])
        for v in ours
        if v.ident
    ]
    if peer.available:
        rows.append(id_row(peer_name, peer.ident, peer.fps))
    else:
        rows.append([f"face_recognition: {peer.note}"] + ["-"] * (len(ID_HEADERS) - 1))
    lines = [format_table(ID_HEADERS, rows)]
    lines += [f"{v.label}: {v.ident.rule}" for v in ours if v.ident]
    lines += [f"peer: nearest encoding within tolerance {PEER_TOLERANCE}", ""]
    return lines


def daemon_lines(d: DaemonResult, soak: bool) -> list[str]:
    if not d.ran:
        return [f"daemon: {d.note}"]
    lines = [
        f"daemon: {d.seconds:.0f} s, {d.events} events, startup to first event "
        f"{_fmt_num(d.startup_to_first_event_s, 's')}, frame->event p50 "
        f"{_fmt_num(d.latency_p50_ms, 'ms')} p95 {_fmt_num(d.latency_p95_ms, 'ms')}, "
        f"peak RSS {_fmt_num(d.peak_rss_mb, 'MB')}"
    ]
    if soak and d.samples:
        lines.append(
            "daemon over time (s: RSS MB / threads): "
            + ", ".join(f"{s['t_s']:.0f}: {s['rss_mb']:.0f}/{s['threads']:.0f}" for s in d.samples)
        )
    return lines


def cpu_lines(cpu: CpuInfo, xnnpack: str) -> list[str]:
    """The CPU's int8-relevant features and whether the int8 speed-up is judged on it."""
    judged = "judged" if int8_dot_reason(cpu) is None else "measured, not judged"
    return [
        f"cpu: {cpu.arch}: {cpu.describe()} -> the int8 speed-up is {judged}",
        f"XNNPACK build: {xnnpack}",
    ]


def render_text(run: BenchRun) -> str:
    """The printed report: machine, stage table, identification, daemon, targets, verdict."""
    m, v0 = run.machine, run.variants[0]
    stages = [s for v in run.variants for s in v.stages]
    lines = [
        f"facegate bench: {m['cpu']}, {m['cores']} cores, Python {m['python']}",
        *cpu_lines(run.cpu, str(m.get("xnnpack", "unknown"))),
        f"frames: {run.where}; scaled to fit {run.camera[0]}x{run.camera[1]}; "
        f"{v0.stages[0].faces if v0.stages else 0} faces",
        "runtimes: "
        + ", ".join(run.runtimes)
        + (f" (not installed: {', '.join(run.missing)})" if run.missing else ""),
        f"embedders: {', '.join(v.label for v in run.variants)} (the targets judge "
        f"{v0.label}, the device's)",
        "",
        stage_table(stages, run.decode_ms, {v.label: v.match_ms for v in run.variants}),
        "",
        *identification_lines(run),
        *daemon_lines(run.daemon, run.soak),
        "",
        *fleet_lines(run.fleet),
        format_targets(run.targets),
        "",
    ]
    ok = all_pass(run.targets)
    lines.append(f"{'ALL TARGETS PASS' if ok else 'SOME TARGETS FAIL'} ({run.wall_s:.0f} s)")
    return "\n".join(lines)


def json_report(run: BenchRun) -> dict[str, Any]:
    """``bench.json``: every number, the default embedder's first."""

    def variant(v: Variant) -> dict[str, Any]:
        ident = v.ident
        return {
            "embedder": v.label,
            "int8": v.models.int8.name,
            "float32": v.models.float32.name,
            "stages": [
                {k: x for k, x in asdict(s).items() if k != "per_frame_ms"} for s in v.stages
            ],
            "matching_ms": {str(k): x for k, x in v.match_ms.items()},
            "int8_size_ratio": v.size_ratio,
            "identification": {**asdict(ident), "total_correct": ident.total_correct}
            if ident
            else None,
        }

    return {
        "machine": run.machine,
        "frames": {"source": run.where, "count": run.frames, "camera": list(run.camera)},
        "runtimes": run.runtimes,
        "runtimes_missing": run.missing,
        "decode_ms": run.decode_ms,
        "embedders": [variant(v) for v in run.variants],
        "peer": {
            **asdict(run.peer),
            "total_correct": run.peer.ident.total_correct,
            "tolerance": PEER_TOLERANCE,
        },
        "daemon": asdict(run.daemon),
        "fleet": fleet_json(run.fleet),
        "targets": [{**asdict(t), "status": t.status} for t in run.targets],
        "all_pass": all_pass(run.targets),
        "wall_s": run.wall_s,
    }


def clean(o: Any) -> Any:
    """JSON-safe: NaN -> null, dataclasses -> dicts."""
    if isinstance(o, float):
        return finite(o)
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [clean(v) for v in o]
    return o
