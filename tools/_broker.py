"""A real Mosquitto broker on a free loopback port: the benchmark's and the tests'.

:class:`Broker` writes a config into a scratch folder, starts
``mosquitto -c`` and waits until the port accepts connections. It can be
stopped (SIGTERM), killed (SIGKILL), paused (SIGSTOP) and restarted on the
*same* port; with ``persistent=True`` it keeps its sessions and queued QoS 1
messages in a persistence file saved after every change, so a restarted
broker still holds what persistent subscribers have not received yet (the
chaos tests need that; the benchmark does not).

The config lifts Mosquitto's default limits: ``max_queued_messages 1000``
silently drops messages for a slow or absent subscriber. ``extra_conf`` is
appended after the listener line (TLS files, ``password_file``,
``acl_file``).

The tests wrap it (``tests/broker.py``: the ``mqtt_broker`` fixture and a
recording subscriber); tools must not import the tests, so it lives here.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
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


def port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Broker:
    """One mosquitto process on ``HOST:port`` (also a context manager: start ... stop)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_conf: str = "",
        anonymous: bool = True,
        persistent: bool = False,
    ) -> None:
        binary = mosquitto_path()
        if binary is None:
            raise FacegateError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.host = HOST
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} {HOST}",
            extra_conf,
            f"allow_anonymous {'true' if anonymous else 'false'}",
            # Started as root (CI containers), mosquitto would switch to the
            # "mosquitto" user and could not write its files.
            f"user {getpass.getuser()}",
        ]
        if persistent:
            data = self.workdir / "data"
            data.mkdir(exist_ok=True)
            lines += [
                "persistence true",
                f"persistence_location {data}/",
                # Save after every change: a SIGKILL loses (almost) nothing.
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        lines += [
            # The defaults drop messages for a slow subscriber: lift them.
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ]
        self.conf.write_text("\n".join(lines))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 10.0) -> Broker:
        """Start mosquitto and wait (at most ``timeout`` s) until it accepts connections."""
        if self.running:
            return self
        with self.log.open("ab") as logf:
            proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._proc = proc
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise FacegateError(f"mosquitto exited with {proc.returncode}: {self.log_tail()}")
            if port_open(self.port):
                return self
            time.sleep(0.02)
        self.kill()
        raise FacegateError(f"mosquitto did not open port {self.port}: {self.log_tail()}")

    def pause(self) -> None:
        """SIGSTOP: the broker hangs (connections stay open, nothing is read or answered)."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving or saying goodbye."""
        self._end(signal.SIGKILL)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (saves persistence), then SIGKILL after ``timeout`` s."""
        self._end(signal.SIGTERM, timeout)

    def _end(self, sig: int, timeout: float = 5.0) -> None:
        p = self._proc
        if p is None or p.poll() is not None:
            return
        if sig == signal.SIGTERM:
            p.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
        p.send_signal(sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout)

    def restart(self, kill: bool = True, down_s: float = 0.0) -> None:
        """Kill (or stop) and start again on the same port, ``down_s`` seconds later."""
        if kill:
            self.kill()
        else:
            self.stop()
        if down_s:
            time.sleep(down_s)  # the outage itself
        self.start()
        self.restarts += 1

    def log_tail(self, n: int = 2000) -> str:
        """The last ``n`` characters of the broker's log."""
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


LocalBroker = Broker
"""The benchmark's name for :class:`Broker` (non-persistent, as it wants)."""

__all__ = ["HOST", "Broker", "LocalBroker", "free_port", "mosquitto_path", "port_open"]
