"""A real Mosquitto broker for tests, on a free loopback port.

:class:`Broker` writes a config into a temporary folder, starts
``mosquitto -c`` and waits until the port accepts connections. It can be
killed (SIGKILL) or stopped (SIGTERM) and restarted on the *same* port with
the same persistence file, which is what the chaos test needs.

The config lifts Mosquitto's default limits (``max_queued_messages 1000``
silently drops messages for a slow or absent subscriber) and turns on
persistence saved after every change, so a restarted broker still holds the
sessions and queued QoS 1 messages of persistent subscribers.

Use the ``mqtt_broker`` fixture (import it into a test module or conftest:
``from broker import mqtt_broker``); it skips the test with a clear reason
when ``mosquitto`` is not installed.
"""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# One copy of the helpers: the benchmark's throwaway broker has them too.
from tools._broker import HOST, _port_open, free_port, mosquitto_path


class Broker:
    """One mosquitto process; restartable on the same port with the same state."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_conf: str = "",
        anonymous: bool = True,
    ) -> None:
        """``extra_conf`` is appended after the listener line (TLS, password_file)."""
        binary = mosquitto_path()
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        self.binary = binary
        self.host = HOST
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} {HOST}",
                    extra_conf,
                    f"allow_anonymous {'true' if anonymous else 'false'}",
                    # Run as root (CI containers), mosquitto would switch to the
                    # "mosquitto" user and could not write its persistence file.
                    f"user {getpass.getuser()}",
                    "persistence true",
                    f"persistence_location {data}/",
                    # Save after every change: a SIGKILL loses (almost) nothing.
                    "autosave_on_changes true",
                    "autosave_interval 1",
                    "max_queued_messages 0",
                    "max_queued_bytes 0",
                    "max_inflight_messages 0",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "",
                ]
            )
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until it accepts connections."""
        if self.running:
            return
        logf = self.log.open("ab")
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        logf.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}"
                )
            if _port_open(self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not open port {self.port}: {self.log_tail()}")

    def pause(self) -> None:
        """SIGSTOP: the broker hangs (connections stay open, nothing is read or answered)."""
        if self.running and self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving or saying goodbye."""
        self._end(signal.SIGKILL)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (saves persistence), then SIGKILL after ``timeout``."""
        self._end(signal.SIGTERM, timeout)

    def _end(self, sig: int, timeout: float = 5.0) -> None:
        p = self._proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout)

    def restart(self, kill: bool = True, down_s: float = 0.0) -> None:
        """Kill (or stop) and start again on the same port."""
        self.kill() if kill else self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()
        self.restarts += 1

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class Collector:
    """A subscriber that records every message it gets (thread-safe list).

    ``persistent=True`` uses a fixed client id and ``clean_session=False`` so
    the broker queues QoS 1 messages for it while it is disconnected.
    """

    def __init__(
        self, broker: Broker, topics: list[str], client_id: str = "", persistent: bool = True
    ) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self.arrivals: list[float] = []  # wall-clock time each message arrived
        self.connects = 0
        self._lock = threading.Lock()
        self._topics = topics
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{os.getpid()}-{id(self)}",
            protocol=paho.MQTTv311,
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port, keepalive=10)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            return
        self.connects += 1
        for t in self._topics:
            client.subscribe(t, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.arrivals.append(time.time())

    def start(self) -> Collector:
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def timed(self, topic: str) -> list[tuple[float, bytes]]:
        """(arrival wall-clock time, payload) of every message on ``topic``."""
        with self._lock:
            pairs = zip(self.arrivals, self.messages, strict=True)
            return [(a, p) for a, (t, p, _) in pairs if t == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.snapshot() if t == topic]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    """A running mosquitto on a free loopback port (skips without mosquitto)."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


__all__ = ["HOST", "Broker", "Collector", "free_port", "mosquitto_path", "mqtt_broker"]
