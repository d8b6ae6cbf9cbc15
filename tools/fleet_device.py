"""A lean door for the fleet's tests and benchmark: the daemon's fleet code, no model, no camera.

``python -m tools.fleet_device --config CFG --model SHA:DIGEST:SIZE`` runs
what a door with ``[fleet] enabled = true`` runs of the fleet, and nothing
else: the MQTT publisher (:class:`edge.delivery.mqtt.MqttPublisher`) with
:class:`edge.fleet.device.FleetDevice` as its extension, a retained state
with the ``fleet`` member, ``online``, and a loop that swaps each complete
bundle in the way the daemon's loop does (take it, swap, ``applied``, the
state sent now). No model is loaded: ``--model`` gives the embedder's
identity that bundles must match.

``--probe NAME`` asks, every ``--probe-every`` seconds, whether the door
would grant NAME now (the fleet's gate is open and NAME is in the gallery
in force) and writes a JSON line to ``--log`` whenever the answer, the
connection, the phase or the version changes. The tests read it to show
that after a reconnect nobody revoked is granted before the newest bundle
is in force. ``--apply-delay`` makes the swap slow, as a busy device's is.
SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from edge.config import load_config
from edge.delivery.mqtt import MqttPublisher
from edge.fleet.device import FleetDevice
from edge.identity.gallery import Gallery


def _model(text: str) -> tuple[str, str, int]:
    sha, digest, size = text.split(":")
    return sha, digest, int(size)


class LeanDoor:
    """The fleet, the publisher and a loop that applies bundles and probes the gate."""

    def __init__(self, args: argparse.Namespace) -> None:
        cfg = load_config(args.config, environment=False)
        self.fleet = FleetDevice(cfg, model=_model(args.model))
        self.pub = MqttPublisher(cfg, extensions=[self.fleet])
        self.fleet.events = self.pub
        self.fleet.on_state = self.pub.publish_state_now
        self.pending = threading.Event()
        self.fleet.on_pending = self.pending.set
        self.probes: list[str] = args.probe
        self.every: float = args.probe_every
        self.delay: float = args.apply_delay
        self.gallery: Gallery | None = None
        self._last: dict[str, tuple[Any, ...]] = {}

    def start(self) -> None:
        self.pub.start()
        self.gallery = self.fleet.gallery()
        self._announce()
        self.pub.set_ready()

    def _announce(self) -> None:
        assert self.gallery is not None
        self.pub.set_state(status="running", gallery_size=len(self.gallery))
        self.pub.set_gallery(self.gallery.names)  # the state goes out now (once ready)

    def apply(self) -> None:
        """The daemon's swap: take the bundle, swap it in, then ``applied``, then the state."""
        p = self.fleet.take_pending()
        if p is None:
            return
        self.gallery = p.gallery
        self.fleet.applied(p)
        self._announce()

    def probe(self, log: IO[str] | None) -> None:
        assert self.gallery is not None
        p = self.fleet.probe()
        for name in self.probes:
            grant = p.gate is None and name in self.gallery
            key = (p.connections, p.phase, p.version, grant)
            if log is None or self._last.get(name) == key:
                continue
            self._last[name] = key
            line = {
                "t": round(time.monotonic(), 4),
                "conn": p.connections,
                "phase": p.phase,
                "version": p.version,
                "name": name,
                "grant": grant,
                "why": p.gate[0] if p.gate else (None if grant else "not_enrolled"),
            }
            log.write(json.dumps(line) + "\n")
            log.flush()

    def run(self, stop: threading.Event, log: IO[str] | None) -> None:
        self.start()
        apply_at: float | None = None
        try:
            while not stop.is_set():
                if self.pending.wait(self.every):
                    self.pending.clear()
                    # The swap takes --apply-delay; the probes go on meanwhile.
                    apply_at = time.monotonic() + self.delay
                if apply_at is not None and time.monotonic() >= apply_at:
                    apply_at = None
                    self.apply()
                self.probe(log)
        finally:
            self.pub.stop(timeout=2.0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.fleet_device", description=__doc__)
    ap.add_argument("--config", type=Path, required=True, help="a door's config ([fleet] on)")
    ap.add_argument("--model", required=True, help="SHA256:MANIFEST_DIGEST:EMBEDDING_SIZE")
    ap.add_argument("--probe", action="append", default=[], help="a name to probe (repeatable)")
    ap.add_argument("--probe-every", type=float, default=0.01, help="seconds between probes")
    ap.add_argument("--apply-delay", type=float, default=0.0, help="seconds a swap takes")
    ap.add_argument("--log", type=Path, help="JSON lines of the probes")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    door = LeanDoor(args)
    if args.log is None:
        door.run(stop, None)
        return 0
    with args.log.open("a") as log:
        door.run(stop, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
