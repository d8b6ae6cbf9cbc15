"""A throwaway Mosquitto broker on a free loopback port, for the benchmark.

Tools must not import the tests, so this is the minimal idea of
``tests/broker.py``: write a config into a scratch folder, start
``mosquitto -c``, wait until the port accepts connections, stop it with
SIGTERM (SIGKILL after a timeout). No persistence: the benchmark only needs
a local broker to measure the frame-to-event time on loopback.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from edge.errors import FacegateError

HOST = "127.0.0.1"


def mosquitto_path() -> str | None:
    """The mosquitto binary: on PATH or in the usual sbin folders (Debian puts it there)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin"):
        p = Path(d) / "mosquitto"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalBroker:
    """One mosquitto process listening on ``HOST:port`` (use as a context manager)."""

    def __init__(self, workdir: Path) -> None:
        binary = mosquitto_path()
        if binary is None:
            raise FacegateError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.host = HOST
        self.port = free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} {HOST}",
                    "allow_anonymous true",
                    # Started as root (CI containers), mosquitto would switch users.
                    f"user {getpass.getuser()}",
                    "persistence false",
                    # The defaults drop messages for a slow subscriber: lift them.
                    "max_queued_messages 0",
                    "max_inflight_messages 0",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 10.0) -> LocalBroker:
        """Start mosquitto and wait (at most ``timeout`` s) until it accepts connections."""
        with self.log.open("ab") as logf:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                raise FacegateError(
                    f"mosquitto exited with {self._proc.returncode}: {self._tail()}"
                )
            if _port_open(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise FacegateError(f"mosquitto did not open port {self.port}: {self._tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s."""
        p = self._proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout)

    def _tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["HOST", "LocalBroker", "free_port", "mosquitto_path"]
