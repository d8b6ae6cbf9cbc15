"""A TCP forwarder in front of the broker that a test can cut: a door's network going away.

:class:`Proxy` listens on a free loopback port and forwards every connection
to the broker. :meth:`Proxy.cut` closes every forwarded connection (the
broker sees the socket close and publishes the client's Last Will; the
client sees its connection lost) and closes new ones at once until
:meth:`Proxy.restore`. No process is stopped: the door itself goes on.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from tools._broker import HOST, free_port


class Proxy:
    """host:port -> the broker's port, with a switch (see the module)."""

    def __init__(self, target_port: int, host: str = HOST) -> None:
        self.host = host
        self.port = free_port()
        self.target = (host, target_port)
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._server = socket.create_server((host, self.port))
        self._server.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)

    def start(self) -> Proxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        """Close every forwarded connection; refuse new ones until :meth:`restore`."""
        self._up.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        self._up.set()

    def stop(self) -> None:
        self._stop.set()
        self.cut()
        self._thread.join(timeout=2)
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up.is_set():
                client.close()  # the network is down: the door's attempt fails
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        with contextlib.suppress(OSError, ValueError):
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        raise OSError("closed")
                    key.data.sendall(data)
        sel.close()
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()


__all__ = ["Proxy"]
