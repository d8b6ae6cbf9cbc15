"""The daemon in a process of its own, with stand-ins for the camera and the models.

``python tests/_door_child.py CONFIG FRAMES`` runs :func:`edge.daemon.run` (the
real service loop, MQTT publisher, door and audit log) with a
:class:`ScriptedRecognizer` instead of the models and frames named by
``FRAMES`` (comma-separated, ``""`` no face, ``"?"`` a stranger; after them,
empty frames until it is stopped or killed). The door is built on the
config's mock pins (``door.mock_log`` shows its relay to the test) and sees a
synchronised clock.

``FACEGATE_TEST_WALL=base,t0,rate``: the wall clock the door and the frames
read is ``base + (time.time() - t0) * rate``, the same formula in every
process of a test, so the test can sign remote unlocks whose ``ts`` stays
fresh across a restart however long the restart takes (``rate`` < 1), or let
time pass as usual (``rate`` = 1).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _standins import ScriptedRecognizer  # noqa: E402

from edge.config import Config, load_config  # noqa: E402
from edge.identity.gallery import Gallery  # noqa: E402
from edge.types import Frame  # noqa: E402


def test_wall() -> Callable[[], float]:
    spec = os.environ.get("FACEGATE_TEST_WALL")
    if not spec:
        return time.time
    base, t0, rate = (float(x) for x in spec.split(","))
    return lambda: base + (time.time() - t0) * rate


class Capture:
    def __init__(self, names: list[str], wall: Callable[[], float], period: float) -> None:
        self.names = names
        self.wall = wall
        self.period = period
        self.dropped = 0
        self.i = 0
        self.alive = True
        self.finished = False

    def bind(self, _cfg: Config, _stop: threading.Event) -> Capture:
        return self

    def start(self) -> None:
        pass

    def get(self, timeout: float) -> Frame | None:
        time.sleep(self.period)
        name = self.names[self.i] if self.i < len(self.names) else ""
        self.i += 1
        return Frame(np.zeros((48, 64, 3), np.uint8), self.i, self.wall(), source=name)

    def join(self, timeout: float) -> None:
        self.alive = False


def main() -> int:
    from edge.daemon import _configure_logging, run
    from edge.door.controller import DoorController
    from edge.errors import FacegateError

    config, frames = sys.argv[1], sys.argv[2]
    cfg = load_config(config)
    _configure_logging("INFO")
    wall = test_wall()
    gallery = Gallery("sha-test", 4)
    for name in ("Alice", "Bob"):
        gallery.add(name, np.ones((1, 4), np.float32))

    def door(c: Config, pub: object) -> DoorController:
        return DoorController(c, events=pub, wall=wall, synced=lambda: True)  # type: ignore[arg-type]

    stop = threading.Event()
    names = frames.split(",") if frames else []
    try:
        return run(
            cfg,
            stop,
            recognizer=ScriptedRecognizer(gallery, spread=True),
            capture_factory=Capture(names, wall, 0.05).bind,
            door_factory=door,
        )
    except FacegateError as e:
        print(f"facegate: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
