"""``python -m tools.bench``: the command line, and one run from frames to verdicts.

Each step is a module of this package; this one reads the flags, calls the
stages in order (frames, decode, per embedder: stages, matching,
identification; the peer; the daemon; the fleet's doors), judges the targets
on this CPU and writes the report. ``--only fleet`` runs the fleet stage alone.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge.errors import FacegateError
from tools.bench.common import (
    CMP_FLOAT,
    CMP_INT8,
    DEFAULT_OUT,
    DETECTOR,
    EMB_FLOAT,
    EMB_INT8,
    SHARED,
    Models,
    say,
)
from tools.bench.cpu import read_cpuinfo
from tools.bench.daemon import DaemonResult, bench_daemon
from tools.bench.face_stages import FACE_STAGES
from tools.bench.fleet import FleetResult, bench_fleet, fleet_json, fleet_lines, fleet_values
from tools.bench.frames import BenchFrame, load_frames, load_strangers
from tools.bench.identify import identify_ours
from tools.bench.machine import machine
from tools.bench.matching import bench_matching
from tools.bench.peer import PeerResult, bench_peer
from tools.bench.report import clean, format_targets, json_report, render_text
from tools.bench.results import BenchRun, Variant
from tools.bench.stages import bench_decode, bench_stages
from tools.bench.targets import all_pass, evaluate_targets, not_judged_here, target_values

DESCRIPTION = "How fast and how lean the device path is, side by side with the usual alternative."


def _add_run_args(ap: argparse.ArgumentParser) -> None:
    """Where frames come from and go, how often each thing is timed."""
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="JSON report (default: %(default)s)"
    )
    ap.add_argument(
        "--shared", type=Path, default=SHARED, help="the shared data folder (default: ../shared)"
    )
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed runs per frame (after one warm-up)"
    )
    ap.add_argument("--invokes", type=int, default=50, help="timed bare model invokes")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="num_threads to measure")
    ap.add_argument(
        "--camera", default="640x480", help="frames are scaled to fit WxH (default %(default)s)"
    )
    ap.add_argument("--video-frames", type=int, default=20, help="frames taken from the video clip")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N frames (0: all)")
    ap.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="run the daemon this long, sampling every minute (0: a ~20 s check)",
    )
    ap.add_argument(
        "--daemon-fps", type=float, default=10.0, help="replay rate for the daemon (camera.fps)"
    )


def _add_model_args(ap: argparse.ArgumentParser) -> None:
    """The models under test: the device's embedder (judged) and the one beside it."""
    ap.add_argument("--detector", type=Path, default=DETECTOR, help="detector model")
    ap.add_argument(
        "--int8", type=Path, default=EMB_INT8, help="int8 embedder (the device's; judged)"
    )
    ap.add_argument("--float32", type=Path, default=EMB_FLOAT, help="its float32 model")
    ap.add_argument(
        "--compare-int8",
        type=Path,
        default=CMP_INT8,
        help="int8 embedder measured beside it, not judged (default: FaceNet)",
    )
    ap.add_argument("--compare-float32", type=Path, default=CMP_FLOAT, help="its float32 model")
    ap.add_argument("--no-compare", action="store_true", help="measure only the device's embedder")
    ap.add_argument(
        "--edgetpu",
        action="store_true",
        help="run the int8 embedder on a Coral Edge TPU (give --int8 the compiled model)",
    )


def _add_peer_daemon_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--strangers",
        type=int,
        default=0,
        help="LFW strangers to identify, one photo each (0: every LFW person not enrolled)",
    )
    ap.add_argument("--no-peer", action="store_true", help="skip face_recognition")
    ap.add_argument("--no-daemon", action="store_true", help="skip the daemon subprocess")
    ap.add_argument("--no-fleet", action="store_true", help="skip the fleet's doors")


def _add_fleet_args(ap: argparse.ArgumentParser) -> None:
    """The fleet stage (issue 20): lean doors, pushes, the bundle's size."""
    ap.add_argument(
        "--only", choices=["fleet"], help="run only this stage (its targets, fleet.json)"
    )
    ap.add_argument(
        "--fleet-doors", type=int, nargs="+", default=[20, 100], help="door counts to measure"
    )
    ap.add_argument("--fleet-pushes", type=int, default=5, help="timed pushes per door count")
    ap.add_argument("--fleet-people", type=int, default=50, help="people in the pushed gallery")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=DESCRIPTION)
    _add_run_args(ap)
    _add_model_args(ap)
    _add_peer_daemon_args(ap)
    _add_fleet_args(ap)
    return ap


def camera_size(text: str) -> tuple[int, int]:
    """``WxH`` (e.g. ``640x480``) as integers; FacegateError when it is not that."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise FacegateError(f"--camera: expected WxH like 640x480, got {text!r}") from None
    return w, h


def models_under_test(args: argparse.Namespace) -> list[Models]:
    """The device's embedder (judged) first, then the one shown beside it; all files present."""
    out = [Models(args.detector, args.int8, args.float32, args.edgetpu)]
    if not args.no_compare:
        out.append(Models(args.detector, args.compare_int8, args.compare_float32))
    for m in out:
        for p in (m.detector, m.int8, m.float32):
            if not p.is_file():
                raise FacegateError(
                    f"{p}: missing; build the models first (python -m tools.models build), "
                    "or --no-compare"
                )
    return out


def bench_variant(
    models: Models,
    frames: Sequence[BenchFrame],
    strangers: Sequence[BenchFrame],
    runtimes: Sequence[str],
    args: argparse.Namespace,
) -> Variant:
    """Every per-embedder measurement of one embedder."""
    from edge.vision.manifest import load_manifest

    stages = []
    for rt in runtimes:
        for th in args.threads:
            say(f"bench: {models.label}: stages, {rt}, {th} thread(s)")
            r = bench_stages(frames, rt, th, args.repeats, args.invokes, models, FACE_STAGES)
            stages.append(r)
    say(f"bench: {models.label}: matching, identification")
    dim = load_manifest(models.int8).embedding_size or 512
    match_ms = bench_matching(dim, max(200, args.invokes))
    size_ratio = models.int8.stat().st_size / models.float32.stat().st_size
    known = any(f.label is not None for f in frames)
    ident = identify_ours([*frames, *strangers], runtimes[0], 2, models) if known else None
    return Variant(models, stages, match_ms, size_ratio, ident)


def run_peer(
    args: argparse.Namespace, frames: Sequence[BenchFrame], strangers: Sequence[BenchFrame]
) -> PeerResult:
    if args.no_peer:
        return PeerResult(False, "peer skipped (--no-peer)")
    say("bench: the peer (face_recognition)")
    return bench_peer(frames, strangers)


def run_daemon(
    args: argparse.Namespace, frames: Sequence[BenchFrame], models: Models
) -> DaemonResult:
    if args.no_daemon:
        return DaemonResult(False, "daemon skipped (--no-daemon)")
    seconds = args.soak * 60 if args.soak > 0 else 20.0
    every = 60.0 if args.soak > 0 else 2.0
    say(f"bench: daemon for {seconds:.0f} s ({models.label})")
    with tempfile.TemporaryDirectory(prefix="facegate-bench-") as tmp:
        return bench_daemon(frames, seconds, every, args.daemon_fps, Path(tmp), models)


def run_fleet(args: argparse.Namespace) -> FleetResult | None:
    if args.no_fleet:
        return None
    if min(args.fleet_doors) < 1 or args.fleet_pushes < 1 or args.fleet_people < 1:
        raise FacegateError("--fleet-doors, --fleet-pushes and --fleet-people must be at least 1")
    return bench_fleet(args.fleet_doors, args.fleet_pushes, args.fleet_people)


def main_fleet(args: argparse.Namespace) -> int:
    """``--only fleet``: the fleet stage alone, its targets, ``fleet.json`` beside bench.json."""
    from edge.vision.manifest import write_json_atomic

    t0 = time.monotonic()
    result = run_fleet(args)
    vals, notes = fleet_values(result)
    targets = [t for t in evaluate_targets(vals, notes) if t.key.startswith("fleet_")]
    print("\n".join([*fleet_lines(result), format_targets(targets)]))
    out = args.out.with_name("fleet.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "fleet": fleet_json(result),
        "targets": [{**asdict(t), "status": t.status} for t in targets],
        "all_pass": all_pass(targets),
        "wall_s": time.monotonic() - t0,
    }
    write_json_atomic(out, clean(doc))
    say(f"bench: wrote {out}")
    return 0 if all_pass(targets) else 1


def check_args(args: argparse.Namespace) -> tuple[int, int]:
    """The camera size; FacegateError for counts below one."""
    size = camera_size(args.camera)
    if args.repeats < 1 or args.invokes < 1 or min(args.threads) < 1:
        raise FacegateError("--repeats, --invokes and --threads must be at least 1")
    return size


def measure(args: argparse.Namespace, camera: tuple[int, int]) -> BenchRun:
    """Every measurement of one run, judged on this machine's CPU."""
    from edge.vision.runtime import RUNTIMES, available_runtimes

    variants = models_under_test(args)
    t0 = time.monotonic()
    frames, where = load_frames(args.shared, *camera, args.video_frames, args.limit)
    say(f"bench: {where}")
    runtimes = available_runtimes()
    if not runtimes:
        raise FacegateError("no TFLite runtime installed: pip install ai-edge-litert")
    say("bench: decode")
    decode = bench_decode(frames, args.repeats)
    known = {f.label for f in frames if f.label is not None}
    strangers = load_strangers(args.shared, known, args.strangers, *camera) if known else []
    measured = [bench_variant(m, frames, strangers, runtimes, args) for m in variants]
    peer = run_peer(args, frames, strangers)
    daemon = run_daemon(args, frames, variants[0])
    fleet = run_fleet(args)
    v0, cpu = measured[0], read_cpuinfo()
    vals, notes = target_values(
        v0.stages, v0.size_ratio, v0.match_ms, v0.ident, peer, daemon, runtimes[0]
    )
    fleet_vals, fleet_notes = fleet_values(fleet)
    vals.update(fleet_vals)
    notes.update(fleet_notes)
    targets = evaluate_targets(vals, notes, not_judged_here(cpu))
    missing = [r for r in RUNTIMES if r not in runtimes]
    run = BenchRun(
        machine(cpu), where, camera, len(frames), runtimes, missing, decode, measured, peer,
        daemon, targets, args.soak > 0, cpu,
    )  # fmt: skip
    run.wall_s = time.monotonic() - t0
    run.fleet = fleet
    return run


def main(argv: Sequence[str] | None = None) -> int:
    from edge.vision.manifest import write_json_atomic

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.only == "fleet":
        return main_fleet(args)
    run = measure(args, check_args(args))
    print(render_text(run))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, clean(json_report(run)))
    say(f"bench: wrote {args.out}")
    return 0 if all_pass(run.targets) else 1
