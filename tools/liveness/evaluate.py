"""``python -m tools.evaluate --liveness``: APCER per attack type and BPCER of the liveness stage.

    python -m tools.evaluate --liveness --faces ../shared/faces --video ../shared/video/video.mp4
    python -m tools.evaluate --liveness --per-type 20          # registry photos only, no video

Attack clips are rendered by :mod:`tools.liveness.attacks` from the held-out
people's photos (``--split tune`` renders from the tuning people instead:
never report those), ``--per-type`` of each type, ``--seconds`` long (the
door's ``max_wait_s``) at ``--fps``; the real clip's tracks are cut into
windows of the same length and subsampled to about the same frame rate.
Writes ``liveness.md``, ``liveness.json`` and ``liveness_scores.png`` to
``--out`` (default ``reports/liveness/``); evidence is cached per sample in
``--out``/cache, so a second run (other thresholds) renders nothing again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.config import MODELS_DIR, LivenessConfig
from edge.errors import FacegateError
from edge.liveness.decide import LivenessParams
from edge.liveness.mesh import FaceMesh
from edge.vision.detector import FaceDetector
from edge.vision.manifest import write_json_atomic
from tools import plots
from tools._common import progress, run_tool
from tools.liveness import report
from tools.liveness.attacks import registry_backgrounds
from tools.liveness.samples import (
    ATTACK_TYPES,
    TARGET_TYPES,
    Cache,
    Evidence,
    attack_evidence,
    load_photos,
    real_evidence,
    split_people,
)

log = logging.getLogger("tools.liveness")
DEFAULT_OUT = Path("reports/liveness")
DEFAULTS = LivenessConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.evaluate --liveness",
        description="APCER per attack type and BPCER of the liveness stage.",
    )
    p.add_argument("--liveness", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--faces", type=Path, help="<dir>/<Person>/<photo>: attack sources")
    p.add_argument("--split", choices=["heldout", "tune", "all"], default="heldout")
    p.add_argument("--video", type=Path, help="a real clip of live people at a fixed camera")
    p.add_argument("--per-type", type=int, default=300, help="clips per target attack type")
    p.add_argument("--other-per-type", type=int, default=100,
                   help="clips per other attack type (bent print)")  # fmt: skip
    p.add_argument("--types", help="comma-separated attack types (default: all)")
    p.add_argument("--seconds", type=float, default=DEFAULTS.max_wait_s, help="clip length")
    p.add_argument("--fps", type=float, default=12.5, help="attack frame rate")
    p.add_argument("--video-step", type=int, default=2, help="use every N-th video frame")
    p.add_argument("--stride", type=float, default=0.5,
                   help="real windows start every this many seconds of a track")  # fmt: skip
    p.add_argument(
        "--detector", type=Path, default=MODELS_DIR / "face_detection_short_range.tflite"
    )
    p.add_argument("--mesh", type=Path, default=MODELS_DIR / "face_landmark.tflite")
    p.add_argument("--min-turn-deg", type=float, default=DEFAULTS.min_turn_deg)
    p.add_argument("--min-z", type=float, default=DEFAULTS.min_z)
    p.add_argument("--min-prop-points", type=int, default=DEFAULTS.min_prop_points)
    p.add_argument("--no-blinks", action="store_true")
    p.add_argument("--not-mounted", action="store_true", help="camera.mounted = false")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def gather(a: argparse.Namespace) -> tuple[list[Evidence], dict[str, object]]:
    """Every sample's evidence (rendered and measured, or from the cache)."""
    det = FaceDetector.load(a.detector)
    mesh = FaceMesh.load(a.mesh)
    cache = Cache(None if a.no_cache else a.out / "cache")
    meta: dict[str, object] = {"fps": a.fps, "seconds": a.seconds}
    if a.faces is not None:
        if not a.faces.is_dir():
            raise FacegateError(f"--faces {a.faces}: not a folder")
        people = sorted(p.name for p in a.faces.iterdir() if p.is_dir())
        tune, held = split_people(people)
        chosen = {"heldout": held, "tune": tune, "all": people}[a.split]
        meta["attack_people"] = chosen
        meta["tuning_people"] = tune
        photos = load_photos(a.faces, chosen, det)
        meta["attacks"] = (
            f"{len(photos)} photos of {len(chosen)} {a.split} people of {a.faces.name}"
        )
    else:
        photos = load_photos(None, None, det)
        meta["attacks"] = "registry photos (Grace Hopper, Eileen Collins)"
    if not photos:
        raise FacegateError("no attack photo with a detectable face")
    types = [t.strip() for t in a.types.split(",")] if a.types else list(ATTACK_TYPES)
    unknown = [t for t in types if t not in ATTACK_TYPES]
    if unknown:
        raise FacegateError(f"--types: unknown {unknown} (known: {', '.join(ATTACK_TYPES)})")
    backgrounds = registry_backgrounds()
    jobs = [(t, seed) for t in types
            for seed in range(a.per_type if t in TARGET_TYPES else a.other_per_type)]  # fmt: skip
    samples = [
        attack_evidence(
            t, seed, photos[seed % len(photos)], mesh, det, backgrounds, a.fps, a.seconds, cache
        )
        for t, seed in progress(jobs, "attacks", len(jobs), not a.quiet, "clip")
    ]
    if a.video is not None:
        if not a.video.is_file():
            raise FacegateError(f"--video {a.video}: not a file")
        real = real_evidence(a.video, mesh, det, a.video_step, a.seconds, cache, a.stride)
        samples += real
        tracks = len({s.extra.get("track") for s in real})
        meta["bona_fide"] = (
            f"{len(real)} windows of {a.seconds:g} s (starting every {a.stride:g} s) "
            f"of {tracks} face tracks in {a.video.name}"
        )
    else:
        meta["bona_fide"] = "none (no --video)"
    return samples, meta


def params(a: argparse.Namespace) -> LivenessParams:
    return LivenessParams(a.min_turn_deg, a.min_z, a.min_prop_points, not a.no_blinks,
                          not a.not_mounted)  # fmt: skip


def run(a: argparse.Namespace) -> int:
    samples, meta = gather(a)
    p = params(a)
    res = report.measure(samples, p)
    a.out.mkdir(parents=True, exist_ok=True)
    md = report.markdown(res, p, meta)
    (a.out / "liveness.md").write_text(md, encoding="utf-8")
    write_json_atomic(a.out / "liveness.json", report.to_json(res, p, meta))
    files = [a.out / "liveness.md", a.out / "liveness.json"]
    if plots.available():
        files.append(report.plot(res, a.out / "liveness_scores.png"))
    print(md, end="")
    print("report: " + ", ".join(str(f) for f in files))
    return 0


def _main(argv: Sequence[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("evaluate --liveness", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
