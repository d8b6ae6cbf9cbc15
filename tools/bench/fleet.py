"""Many doors, one gallery: push-to-applied latency and the bundle's size.

For each door count (20 and 100 by default) the stage starts a Mosquitto on
a free loopback port and that many lean doors (``python -m tools.fleet_device``:
the daemon's fleet code, no model, one process each), then pushes a gallery
several times with :func:`edge.fleet.admin.push`, each push revoking one
person and adding another. **Push-to-applied** is, per door and push, the
time from the call to ``push`` (connect, read the broker, build, encrypt,
sign, publish) to the moment that door's retained state saying it applied
the new version reaches a subscriber on the broker; p50 and p95 over every
door and push. Everything runs on this machine, doors and broker included,
so the figure is what the broker and the CPU here allow.

The bundle's size is measured for 1,000 people with 3 embeddings each of
the device's embedder (SFace, 128 floats): the bytes of the chunks and of
the manifest, as the broker stores them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench.common import REPO_ROOT, percentile, say

SITE = "bench"
MODEL = ("b" * 64, "c" * 64)
DIMS = 128
PER_PERSON = 3


@dataclass
class FleetRun:
    """One door count: the latency samples and what the pushes were."""

    doors: int
    pushes: int
    people: int
    bundle_bytes: int
    samples_s: list[float] = field(default_factory=list)
    push_s: list[float] = field(default_factory=list)
    missing: int = 0
    """(door, push) pairs whose state never arrived within the wait."""

    @property
    def p50_s(self) -> float:
        return percentile(self.samples_s, 50) if self.samples_s else float("nan")

    @property
    def p95_s(self) -> float:
        if self.missing:
            return float("inf")
        return percentile(self.samples_s, 95) if self.samples_s else float("nan")


@dataclass
class FleetResult:
    """The fleet stage: a run per door count, and the 1,000-people bundle."""

    ran: bool
    note: str = ""
    runs: list[FleetRun] = field(default_factory=list)
    bundle_1000: dict[str, float] = field(default_factory=dict)


def _gallery(people: int, seed: int) -> Any:
    from edge.identity.gallery import Gallery

    rng = np.random.default_rng(seed)
    g = Gallery(MODEL[0], DIMS, manifest_sha256=MODEL[1])
    for i in range(people):
        name = f"Person {seed:03d}-{i:04d} Lastname"
        g.add(name, rng.normal(size=(PER_PERSON, DIMS)).astype(np.float32))
        g.set_groups(name, ["staff"])
    return g


def bundle_size(people: int = 1000) -> dict[str, float]:
    """The bundle of ``people`` (3 SFace embeddings each): bytes of chunks and manifest."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.fleet.bundle import build_bundle
    from edge.fleet.keys import AdminKeys

    keys = AdminKeys(os.urandom(32), Ed25519PrivateKey.generate())
    t0 = time.perf_counter()
    b = build_bundle(_gallery(people, 0), site=SITE, version=1, keys=keys, created=time.time())
    build_s = time.perf_counter() - t0
    return {
        "people": people,
        "embeddings": people * PER_PERSON,
        "dims": DIMS,
        "chunks": len(b.chunks),
        "chunk_bytes": sum(len(c) for c in b.chunks),
        "manifest_bytes": len(b.manifest),
        "total_bytes": b.size,
        "build_ms": build_s * 1000.0,
    }


class _States:
    """Arrival time of each (door, version) state, from a subscriber on the broker."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.seen: dict[tuple[str, int], float] = {}
        self.online: set[str] = set()
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        self.client.on_connect = lambda c, *_: c.subscribe(
            [("facegate/+/state", 1), ("facegate/+/availability", 1)]
        )
        self.client.on_message = self._message
        self.client.connect(host, port)
        self.client.loop_start()

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        t = time.time()
        door = msg.topic.split("/")[1]
        with self._lock:
            if msg.topic.endswith("/availability"):
                if msg.payload == b"online":
                    self.online.add(door)
                return
            try:
                version = int(json.loads(msg.payload)["fleet"]["version"])
            except (ValueError, KeyError, TypeError):
                return
            self.seen.setdefault((door, version), t)

    def count(self, version: int) -> int:
        with self._lock:
            return sum(1 for (_, v) in self.seen if v == version)

    def wait(self, predicate: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.02)
        return bool(predicate())

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _names(people: int, k: int) -> list[str]:
    """Push ``k``'s people: one revoked and one added at each push."""
    return [f"Person {i:04d} Lastname" for i in range(k, k + people)]


def _site_gallery(people: int, k: int) -> Any:
    from edge.identity.gallery import Gallery

    g = Gallery(MODEL[0], DIMS, manifest_sha256=MODEL[1])
    for name in _names(people, k):
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        g.add(name, rng.normal(size=(PER_PERSON, DIMS)).astype(np.float32))
    return g


def _door_config(d: Path, i: int, port: int, files: Any) -> Path:
    state = d / f"door{i:03d}"
    state.mkdir()
    lines = [
        "[device]",
        f'id = "door{i:03d}"',
        "[mqtt]",
        "enabled = true",
        'host = "127.0.0.1"',
        f"port = {port}",
        "[fleet]",
        "enabled = true",
        f'site = "{SITE}"',
        f'site_key_file = "{files.site}"',
        f'public_key_file = "{files.public}"',
        "[service]",
        f'state_dir = "{state}"',
    ]
    path = state / "door.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _spawn(path: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tools.fleet_device", "--config", str(path)]
    cmd += ["--model", f"{MODEL[0]}:{MODEL[1]}:{DIMS}", "--probe-every", "0.2"]
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _timed_pushes(admin: Any, states: _States, run: FleetRun, pushes: int, wait_s: float) -> None:
    """One untimed push (the site's first: there is nothing to read yet), then ``pushes``."""
    from edge.fleet.admin import push
    from edge.fleet.keys import admin_keys

    keys = admin_keys(admin)
    for k in range(pushes + 1):
        t0 = time.time()
        r = push(admin, _site_gallery(run.people, k), keys)
        took = time.time() - t0
        v = r.bundle.info.version
        states.wait(lambda v=v: states.count(v) >= run.doors, wait_s)
        run.bundle_bytes = r.bundle.size
        if k == 0:
            continue
        run.push_s.append(took)
        arrived = [t for (_, ver), t in states.seen.items() if ver == v]
        run.samples_s += [t - t0 for t in arrived]
        run.missing += run.doors - len(arrived)


def bench_doors(doors: int, pushes: int, people: int, workdir: Path) -> FleetRun:
    """Push-to-applied for ``doors`` lean doors (module docstring)."""
    from edge.config import parse_config
    from edge.fleet.keys import generate
    from tools._broker import LocalBroker

    broker = LocalBroker(workdir / "broker").start()
    files = generate(workdir / "keys")
    admin = parse_config(
        {
            "mqtt": {"enabled": True, "host": broker.host, "port": broker.port},
            "fleet": {
                "site": SITE,
                "site_key_file": str(files.site),
                "signing_key_file": str(files.signing),
            },
            "service": {"state_dir": str(workdir)},
        },
        base_dir=workdir,
    )
    states = _States(broker.host, broker.port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(doors):
            procs.append(_spawn(_door_config(workdir, i, broker.port, files)))
        if not states.wait(lambda: len(states.online) >= doors, 60 + doors):
            raise RuntimeError(f"only {len(states.online)} of {doors} doors came online")
        run = FleetRun(doors, pushes, people, 0)
        _timed_pushes(admin, states, run, pushes, wait_s=60.0)
        return run
    finally:
        _stop(procs)
        states.stop()
        broker.stop()


def bench_fleet(
    door_counts: Sequence[int] = (20, 100), pushes: int = 5, people: int = 50
) -> FleetResult:
    """Every door count in turn, then the 1,000-people bundle; ``ran`` False without mosquitto."""
    from tools._broker import mosquitto_path

    if mosquitto_path() is None:
        return FleetResult(False, "mosquitto is not installed")
    result = FleetResult(True)
    for n in door_counts:
        say(f"bench: fleet, {n} doors, {pushes} pushes of {people} people")
        with tempfile.TemporaryDirectory(prefix="facegate-fleet-") as tmp:
            try:
                result.runs.append(bench_doors(n, pushes, people, Path(tmp)))
            except (RuntimeError, OSError) as e:
                result.note = f"{n} doors: {e}"
                result.runs.append(FleetRun(n, pushes, people, 0, missing=n * pushes))
    result.bundle_1000 = bundle_size(1000)
    return result


def fleet_values(
    result: FleetResult | None,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """The fleet's targets (``fleet_p95_<doors>_s``) and notes for what did not run."""
    keys = ("fleet_p95_20_s", "fleet_p95_100_s")
    if result is None or not result.ran:
        why = "fleet skipped" if result is None else result.note
        return {}, dict.fromkeys(keys, why)
    vals: dict[str, float | None] = {}
    for run in result.runs:
        vals[f"fleet_p95_{run.doors}_s"] = run.p95_s
    notes = {k: result.note for k in keys if result.note}
    return vals, notes


def fleet_lines(result: FleetResult | None) -> list[str]:
    """The fleet's part of the printed report."""
    if result is None:
        return []
    if not result.ran:
        return [f"fleet: not run ({result.note})", ""]
    lines = ["fleet: push-to-applied, lean doors on this machine (one process each)"]
    for r in result.runs:
        lost = f", {r.missing} never applied" if r.missing else ""
        push_s = percentile(r.push_s, 50) if r.push_s else float("nan")
        lines.append(
            f"  {r.doors:4d} doors, {r.pushes} pushes of {r.people} people "
            f"({r.bundle_bytes} B): p50 {r.p50_s:.3f} s, p95 {r.p95_s:.3f} s "
            f"(push command {push_s:.2f} s){lost}"
        )
    b = result.bundle_1000
    if b:
        lines.append(
            f"  bundle for {b['people']:.0f} people x {PER_PERSON} x {b['dims']:.0f} floats: "
            f"{b['total_bytes'] / 1e6:.2f} MB ({b['chunks']:.0f} chunks of 64 KiB, "
            f"manifest {b['manifest_bytes'] / 1e3:.1f} kB), built in {b['build_ms']:.0f} ms"
        )
    return [*lines, ""]


def fleet_json(result: FleetResult | None) -> dict[str, Any] | None:
    """The fleet's part of the JSON report (p50/p95 per door count, the bundle's size)."""
    if result is None:
        return None
    runs = [
        {
            "doors": r.doors,
            "pushes": r.pushes,
            "people": r.people,
            "bundle_bytes": r.bundle_bytes,
            "p50_s": r.p50_s,
            "p95_s": r.p95_s,
            "missing": r.missing,
            "push_command_s": r.push_s,
            "samples_s": r.samples_s,
        }
        for r in result.runs
    ]
    return {"ran": result.ran, "note": result.note, "runs": runs, "bundle_1000": result.bundle_1000}


__all__ = [
    "FleetResult",
    "FleetRun",
    "bench_doors",
    "bench_fleet",
    "bundle_size",
    "fleet_json",
    "fleet_lines",
    "fleet_values",
]
