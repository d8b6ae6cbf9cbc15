"""systemd's notify protocol (``sd_notify``), with the standard library only.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: a path, or an
abstract-namespace name written with a leading ``@``. Each message is one
AF_UNIX datagram of newline-separated ``KEY=VALUE`` lines (``READY=1``,
``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``). Outside systemd the variable
is unset and every call is a silent no-op, so the daemon runs the same way
from a shell.

``WatchdogSec=`` reaches us as ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the
process it is meant for); :func:`watchdog_interval` turns it into seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes:
    """The address to send to: ``@name`` is the abstract socket ``\\0name``."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """``$WATCHDOG_USEC / 1e6`` seconds, or None when no watchdog is meant for us.

    None when unset, not a positive integer, or ``$WATCHDOG_PID`` names another
    process.
    """
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Notifier:
    """Sends notify messages to systemd; a no-op when ``$NOTIFY_SOCKET`` is unset.

    Send errors are logged once and never raised: a service must not die
    because its supervisor went away.
    """

    def __init__(self, notify_socket: str | None = None) -> None:
        value = os.environ.get("NOTIFY_SOCKET", "") if notify_socket is None else notify_socket
        self._address: str | bytes | None = socket_address(value) if value else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False
        self.sent: int = 0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True when it was sent."""
        if self._address is None or not lines:
            return False
        msg = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                    # A full socket buffer must not stall the frame loop.
                    self._sock.settimeout(1.0)
                self._sock.sendto(msg, self._address)
            except OSError as e:
                if not self._warned:
                    log.warning("sd_notify to %r failed: %s", self._address, e)
                    self._warned = True
                return False
            self.sent += 1
            return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


__all__ = ["Notifier", "socket_address", "watchdog_interval"]
