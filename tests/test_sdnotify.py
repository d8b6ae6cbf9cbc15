"""sd_notify over real AF_UNIX datagram sockets (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.sdnotify import Notifier, socket_address, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2.0)
    yield s, str(path)
    s.close()


def recv(s: socket.socket) -> list[str]:
    return s.recv(4096).decode().split("\n")


def test_ready_watchdog_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    s, path = listener
    n = Notifier(path)
    assert n.enabled
    assert n.ready("serving")
    assert recv(s) == ["READY=1", "STATUS=serving"]
    assert n.watchdog()
    assert recv(s) == ["WATCHDOG=1"]
    assert n.stopping()
    assert recv(s) == ["STOPPING=1"]
    assert n.sent == 3
    n.close()


def test_reads_notify_socket_from_environment(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    assert n.status("42 fps")
    assert recv(s) == ["STATUS=42 fps"]
    n.close()


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX sockets")
def test_abstract_namespace_socket() -> None:
    name = f"facegate-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(b"\0" + name.encode())
    except OSError as e:  # pragma: no cover - non-Linux
        s.close()
        pytest.skip(f"abstract sockets unsupported here: {e}")
    s.settimeout(2.0)
    try:
        n = Notifier("@" + name)
        assert n.ready()
        assert recv(s) == ["READY=1"]
        n.close()
    finally:
        s.close()
    assert socket_address("@x") == b"\0x"
    assert socket_address("/run/x") == "/run/x"


def test_noop_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    assert n.sent == 0


def test_send_failure_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert n.enabled
    assert not n.watchdog()
    assert not n.watchdog()
    assert n.sent == 0


def test_watchdog_interval() -> None:
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": me}) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None
