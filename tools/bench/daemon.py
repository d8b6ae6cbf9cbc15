"""The real daemon as a subprocess: ``python -m edge run`` replaying the frames to a broker.

A looping replay at ``camera.fps`` with one event per face frame, publishing to
a mosquitto on a free loopback port. It records peak RSS (the kernel's
``VmHWM``), RSS and thread count over time, startup to the first event, and
frame-to-MQTT-event latency (receive time at a subscriber minus the event's
``ts_unix``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench.common import DEFAULT_MODELS, REPO_ROOT, Models, growth_pct, percentile, say
from tools.bench.frames import BenchFrame
from tools.bench.stages import build_recognizer, enrol_gallery


@dataclass
class DaemonResult:
    """The daemon subprocess under a looping replay with MQTT on a local broker."""

    ran: bool
    note: str = ""
    seconds: float = 0.0
    startup_to_first_event_s: float = float("nan")
    events: int = 0
    latency_p50_ms: float = float("nan")
    latency_p95_ms: float = float("nan")
    peak_rss_mb: float = float("nan")
    samples: list[dict[str, float]] = field(default_factory=list)
    rss_growth_pct: float = float("nan")
    thread_growth: float = float("nan")
    exit_code: int | None = None
    failed: bool = False


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is JSON-compatible for our values
    return repr(v)


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """A TOML config file from sections of plain values."""
    path.write_text(
        "".join(
            f"[{s}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items()) + "\n"
            for s, keys in sections.items()
        )
    )
    return path


def _vm_hwm_mb(pid: int) -> float | None:
    """The kernel's peak resident set (``VmHWM``) of a process in MB, where Linux tells."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _prepare_daemon_files(frames: Sequence[BenchFrame], workdir: Path, models: Models) -> None:
    """The replay folder (the frames as JPEGs) and the enrolled gallery, in ``workdir``."""
    import cv2

    from edge.identity.gallery import Gallery

    replay = workdir / "replay"
    replay.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(replay / f"{i:04d}.jpg"), np.ascontiguousarray(f.rgb[:, :, ::-1]))
    rec = build_recognizer(models, "auto", 2)
    gallery, _ = enrol_gallery(rec, frames)
    if len(gallery) == 0:
        gallery = Gallery.for_manifest(rec.embedder.manifest)
    gallery.save(workdir / "gallery.fgg", None)


def daemon_config(
    workdir: Path, host: str, port: int, fps: float, models: Models, device: str
) -> Path:
    """The daemon's config: a looping replay, one event per face frame, MQTT to the broker."""
    return write_config(
        workdir / "bench.toml",
        {
            "device": {"id": device},
            "camera": {"source": "folder", "path": "replay", "fps": fps, "loop": True},
            "detector": {"model": str(models.detector.resolve())},
            "embedder": {
                "model": str(models.int8.resolve()),
                "num_threads": 2,
                "edgetpu": models.edgetpu,
            },
            "gallery": {"path": "gallery.fgg"},
            "decision": {"single_frame": True, "cooldown_s": 0.0},
            # The event latency measures the pipeline on still photos: a liveness
            # gate would hold every decision for evidence still photos never give.
            # The stage's cost is its own row (liveness_ms); the wait for evidence
            # is the face-to-decision latency of docs/liveness.md.
            "liveness": {"mode": "off"},
            "mqtt": {
                "enabled": True,
                "host": host,
                "port": port,
                "outbox_path": "outbox.sqlite",
            },
            "service": {"log_level": "WARNING", "state_dir": str(workdir)},
        },
    )


class EventListener:
    """A subscriber that records (receive time, event ``ts_unix``) of every event."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.host, self.port, self.topic = host, port, topic
        self._got: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._client: Any = None

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        try:
            ts = float(json.loads(msg.payload)["ts_unix"])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self._got.append((now, ts))

    def __enter__(self) -> EventListener:
        from paho.mqtt import client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        c.on_message = self._on_message
        c.connect(self.host, self.port, keepalive=30)
        c.subscribe(self.topic, qos=1)
        c.loop_start()
        self._client = c
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def count(self) -> int:
        with self._lock:
            return len(self._got)

    def received(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._got)


def _start_daemon(config: Path, errlog: Path) -> subprocess.Popen[bytes]:
    """``python -m edge run`` on the config; stderr to a file (a pipe nobody reads during a
    long soak would fill up and block the daemon)."""
    with errlog.open("w") as errf:
        return subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(config)],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=errf,
            stdin=subprocess.DEVNULL,
        )


def _sample_daemon(
    proc: subprocess.Popen[bytes],
    res: DaemonResult,
    t_start: float,
    sample_every: float,
    events: EventListener,
) -> bool:
    """Sample RSS and threads every ``sample_every`` s for ``res.seconds``; True if it died.

    Between samples it waits on the process itself (``wait`` with a timeout),
    so a daemon that exits is noticed at once.
    """
    import psutil

    p = psutil.Process(proc.pid)
    end = time.monotonic() + res.seconds
    next_sample = time.monotonic() + sample_every
    while time.monotonic() < end:
        try:
            proc.wait(timeout=max(0.0, min(next_sample, end) - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() < next_sample:
            continue
        next_sample += sample_every
        try:
            mem, threads = p.memory_info().rss / 2**20, p.num_threads()
        except psutil.Error:
            continue  # it just ended: the next wait says so
        res.samples.append(
            {"t_s": round(time.time() - t_start, 1), "rss_mb": round(mem, 1), "threads": threads}
        )
        say(
            f"  daemon t={res.samples[-1]['t_s']:6.1f}s rss={mem:6.1f} MB "
            f"threads={threads} events={events.count()}"
        )
    return False


def _stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after 15 s; the exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=5)


def summarise_daemon(res: DaemonResult, got: Sequence[tuple[float, float]], t_start: float) -> None:
    """Fill in the event counts, startup, latency and growth from what was recorded.

    Latency is receive time minus the event's ``ts_unix``; growth runs from the
    first sample after warm-up (a third of the run, at most a minute in: models,
    gallery and buffers are all in by then) to the last.
    """
    res.events = len(got)
    if got:
        res.startup_to_first_event_s = min(r for r, _ in got) - t_start
        lat = [(r - ts) * 1e3 for r, ts in got]
        res.latency_p50_ms, res.latency_p95_ms = percentile(lat, 50), percentile(lat, 95)
    if len(res.samples) >= 2:
        warm_t = min(60.0, res.seconds / 3)
        base = next((s for s in res.samples if s["t_s"] >= warm_t), res.samples[0])
        last = res.samples[-1]
        res.rss_growth_pct = growth_pct(base["rss_mb"], last["rss_mb"])
        res.thread_growth = last["threads"] - base["threads"]


def bench_daemon(
    frames: Sequence[BenchFrame],
    seconds: float,
    sample_every: float,
    fps: float,
    workdir: Path,
    models: Models = DEFAULT_MODELS,
) -> DaemonResult:
    """Run ``python -m edge run`` on a looping replay of the frames; sample RSS and threads."""
    try:
        import paho.mqtt.client  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as e:
        return DaemonResult(False, f"{e.name} not installed")
    from edge.delivery.topics import Topics
    from tools._broker import LocalBroker, mosquitto_path

    if mosquitto_path() is None:
        return DaemonResult(False, "mosquitto not installed")
    _prepare_daemon_files(frames, workdir, models)
    device = "bench-door"
    errlog = workdir / "daemon.stderr"
    res = DaemonResult(True, seconds=seconds)
    with LocalBroker(workdir / "broker") as broker:
        config = daemon_config(workdir, broker.host, broker.port, fps, models, device)
        topic = Topics.for_device("facegate", device).event
        with EventListener(broker.host, broker.port, topic) as events:
            t_start = time.time()
            proc = _start_daemon(config, errlog)
            try:
                died = _sample_daemon(proc, res, t_start, sample_every, events)
                res.peak_rss_mb = _vm_hwm_mb(proc.pid) or max(
                    (s["rss_mb"] for s in res.samples), default=float("nan")
                )
            finally:
                res.exit_code = _stop_daemon(proc)
                time.sleep(0.2)  # a grace period for events already on their way
    if died or res.exit_code != 0:
        tail = errlog.read_text(errors="replace").strip()[-300:]
        when = "during the run" if died else "on SIGTERM"
        res.failed = True
        res.note = f"daemon exited {res.exit_code} {when}: {tail}"
    summarise_daemon(res, events.received(), t_start)
    return res
