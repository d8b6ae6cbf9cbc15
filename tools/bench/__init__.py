"""How fast and how lean the device path is, side by side with the usual alternative.

``python -m tools.bench`` measures, on the same frames in the same run:

* per stage, for the device's embedder (SFace, which the targets judge)
  and FaceNet beside it (medians over repeated runs after a warm-up,
  ``num_threads`` 1 and 2, each installed TFLite runtime): JPEG decode,
  detection (and the detector's bare invoke), alignment, embedding (float32
  and int8, bare invoke), matching against galleries of 10, 100 and 1,000
  people, and the whole frame (:meth:`edge.decide.recognizer.Recognizer.process`);
* the peer, ``face_recognition`` (dlib's HOG detector and ResNet embedder,
  its defaults): frames per second on the same frames, and correct
  identifications of the same labelled faces with the same people enrolled
  (ours with each embedder, at the device's threshold for that gallery);
* the overhead: whole-frame time / (detector + embedder invoke time);
* the real daemon as a subprocess (``python -m edge run``) replaying the
  frames to a local mosquitto: peak RSS, RSS and thread count over time,
  startup time to the first event, and frame-to-MQTT-event latency
  (p50, p95) measured at a subscriber on loopback;
* the fleet (issue 20): push-to-applied latency (p50, p95) of a gallery
  push for 20 and 100 lean doors on a local broker, and the bundle's size
  for 1,000 people (``--only fleet`` runs this alone; ``--no-fleet`` skips it).

It names the CPU it ran on with its int8-relevant features (AVX2, AVX-512
VNNI, AVX-VNNI, AMX; asimddp and i8mm on ARM), prints a table with every
target and whether it passes, and writes the numbers to
``reports/bench/bench.json``. The int8 speed-up over float32 is judged only
on a CPU with int8 dot-product instructions (VNNI or AMX on x86, asimddp on
ARM); elsewhere it is measured and reported ``n/a`` with the reason. Timing
lives here, never in the unit tests: ``tests/test_bench.py`` checks the pure
helpers on given numbers.

The stages are modules: :mod:`~tools.bench.frames` (the frames and the
strangers), :mod:`~tools.bench.stages` (per-stage timing),
:mod:`~tools.bench.face_stages` (the per-face stages added to them, such as
liveness), :mod:`~tools.bench.matching`, :mod:`~tools.bench.identify`,
:mod:`~tools.bench.peer` (face_recognition), :mod:`~tools.bench.daemon` (the
service as a subprocess), :mod:`~tools.bench.fleet` (gallery pushes to many
doors), :mod:`~tools.bench.cpu` (the CPU's int8 features),
:mod:`~tools.bench.targets` (the verdicts), :mod:`~tools.bench.report` (text
and JSON) and :mod:`~tools.bench.cli` (the run and its flags). Their public
names are re-exported here.

Frames are the photos in ``../shared/faces`` and ``../shared/group`` and
frames of ``../shared/video/video.mp4`` when that folder exists, else the
sample photos matplotlib and scikit-image ship (so a fresh checkout can run
it). Every frame is scaled to fit the camera's 640x480 (``--camera``), as
the door camera would deliver it; both systems get exactly these arrays.
"""

from __future__ import annotations

from tools.bench.cli import (
    bench_variant,
    build_parser,
    camera_size,
    main,
    measure,
    models_under_test,
)
from tools.bench.common import (
    DEFAULT_OUT,
    GALLERY_SIZES,
    GROWTH_LIMIT_PCT,
    PEER_TOLERANCE,
    REPO_ROOT,
    SHARED,
    STRANGER,
    Models,
    growth_pct,
    median,
    overhead_ratio,
    percentile,
    time_ms,
)
from tools.bench.cpu import CpuInfo, int8_dot_reason, parse_cpuinfo, read_cpuinfo
from tools.bench.daemon import DaemonResult, bench_daemon, summarise_daemon, write_config
from tools.bench.face_stages import FACE_STAGES
from tools.bench.frames import (
    BenchFrame,
    enrolment_names,
    fit,
    load_frames,
    load_strangers,
    maybe_same_person,
)
from tools.bench.identify import IdResult, identify_ours, score
from tools.bench.machine import machine
from tools.bench.matching import bench_matching
from tools.bench.peer import PeerResult, bench_peer
from tools.bench.report import (
    format_table,
    format_targets,
    id_row,
    json_report,
    render_text,
    stage_table,
)
from tools.bench.results import BenchRun, Variant
from tools.bench.stages import (
    FaceSample,
    FaceStage,
    StageContext,
    StageResult,
    bench_decode,
    bench_stages,
)
from tools.bench.targets import (
    TARGETS,
    Target,
    all_pass,
    evaluate_targets,
    not_judged_here,
    target_values,
)

__all__ = [
    "DEFAULT_OUT",
    "FACE_STAGES",
    "GALLERY_SIZES",
    "GROWTH_LIMIT_PCT",
    "PEER_TOLERANCE",
    "REPO_ROOT",
    "SHARED",
    "STRANGER",
    "TARGETS",
    "BenchFrame",
    "BenchRun",
    "CpuInfo",
    "DaemonResult",
    "FaceSample",
    "FaceStage",
    "IdResult",
    "Models",
    "PeerResult",
    "StageContext",
    "StageResult",
    "Target",
    "Variant",
    "all_pass",
    "bench_daemon",
    "bench_decode",
    "bench_matching",
    "bench_peer",
    "bench_stages",
    "bench_variant",
    "build_parser",
    "camera_size",
    "enrolment_names",
    "evaluate_targets",
    "fit",
    "format_table",
    "format_targets",
    "growth_pct",
    "id_row",
    "identify_ours",
    "int8_dot_reason",
    "json_report",
    "load_frames",
    "load_strangers",
    "machine",
    "main",
    "maybe_same_person",
    "measure",
    "median",
    "models_under_test",
    "not_judged_here",
    "overhead_ratio",
    "parse_cpuinfo",
    "percentile",
    "read_cpuinfo",
    "render_text",
    "score",
    "stage_table",
    "summarise_daemon",
    "target_values",
    "time_ms",
    "write_config",
]
