"""A stand-in daemon for the MQTT tests: publishes synthetic decisions forever.

Run as ``python tests/_event_pump.py CONFIG EVENTS_LOG [--interval S]``. It
starts an :class:`edge.daemon.Publisher` from the config, publishes one
synthetic :class:`~edge.types.Decision` every ``interval`` seconds and appends
``{"seq": .., "id": ..}`` for each event it created to ``EVENTS_LOG`` (one JSON
line, written after the event is in the outbox). Commands received over MQTT
are appended to ``EVENTS_LOG`` as ``{"command": ..}``. SIGTERM/SIGINT stop it
cleanly; SIGKILL is what the chaos test uses to crash it.

It exercises the publisher exactly as ``edge.daemon`` does, without models or
a camera; ``facegate run`` can replace it in the same tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.config import Config, load_config
from edge.daemon import Publisher
from edge.types import Box, Decision

if TYPE_CHECKING:
    from broker import Broker


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("events_log")
    ap.add_argument("--interval", type=float, default=0.02)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Path(args.events_log).open("a", encoding="utf-8") as out:
        pump(cfg, out, stop, args.interval)
    return 0


def pump(cfg: Config, out: TextIO, stop: threading.Event, interval: float) -> None:
    """Publish a synthetic decision every ``interval`` s until ``stop`` is set."""
    lock = threading.Lock()

    def write(record: dict[str, object]) -> None:
        with lock:
            out.write(json.dumps(record) + "\n")
            out.flush()

    pub = Publisher(cfg)
    pub.on_command = lambda cmd: write({"command": cmd})
    pub.start()
    started = time.monotonic()
    pub.set_state(status="running", events=0, uptime_s=0.0)
    pub.set_ready()  # no models or camera to wait for
    for i in itertools.count():
        if stop.wait(interval):
            break
        known = i % 3 != 2
        d = Decision(
            kind="recognized" if known else "unknown",
            name="Alice" if known else None,
            distance=0.2 if known else 0.8,
            confidence=0.9 if known else 0.1,
            track_id=i,
            track_length=4,
            timestamp=time.time(),
            box=Box(10, 20, 100, 120),
        )
        payload = pub.publish_decision(d)
        write({"seq": payload["seq"], "id": payload["id"]})
        if i % 50 == 0:
            pub.set_state(status="running", events=i + 1, uptime_s=time.monotonic() - started)
    pub.stop(timeout=3.0)


# -- helpers for the tests that run this script ---------------------------------

REPO = Path(__file__).resolve().parents[1]


def write_config(path: Path, broker: Broker, **mqtt: object) -> Path:
    """A daemon config for the pump: MQTT on, outbox and state in ``path``'s folder."""
    values = {
        "enabled": True,
        "host": broker.host,
        "port": broker.port,
        "prefix": "test",
        "keepalive": 5,
        "drain_rate": 500.0,
        "state_interval_s": 5.0,
        **mqtt,
    }
    lines = ["[device]", 'id = "door1"', "", "[mqtt]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_pump(config: Path, log: Path, interval: float = 0.02) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            str(config),
            str(log),
            "--interval",
            str(interval),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(log.parent / "pump.err").open("ab"),
    )


def read_log(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by SIGKILL
    return out


def stop_pump(p: subprocess.Popen[bytes], timeout: float = 8.0) -> int:
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=timeout)
        return -9


if __name__ == "__main__":
    sys.exit(main())
