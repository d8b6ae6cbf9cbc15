"""The MQTT publisher's two halves, each alone: the delivery loop and the transport.

The delivery loop (:mod:`edge.delivery.drain`) runs here on a real outbox
over a stand-in link (a connected flag, a generation, an ack queue), so the
order, the window, the acks and the rewind after a reconnect are visible
without a broker. The transport (:mod:`edge.delivery.transport`) runs
against a real Mosquitto, with no outbox and no events: connect, publish
with PUBACK, subscribe, receive, and a clean stop that says ``offline``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Broker, Collector, mosquitto_path, mqtt_broker, wait_for

from edge.config import Config, parse_config
from edge.delivery.drain import DeliveryLoop
from edge.delivery.outbox import Outbox, Row
from edge.delivery.transport import WINDOW, Hooks, MqttTransport

__all__ = ["mqtt_broker"]


class StandInLink:
    """What the loop reads of a transport, driven by the test."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.generation = 1
        self.acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()


class Sent:
    """The loop's ``send``: records each row handed over, returns a new mid."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self._lock = threading.Lock()

    def __call__(self, row: Row) -> int:
        with self._lock:
            self.rows.append(row)
            return len(self.rows)  # mids 1, 2, 3, ...

    def seqs(self) -> list[int]:
        with self._lock:
            return [r.seq for r in self.rows]


def fill(box: Outbox, n: int) -> None:
    for i in range(n):
        box.append("t/event", lambda seq, i=i: (f"id{i}", f'{{"n": {i}}}'.encode()))


@pytest.fixture
def loop_rig(tmp_path: Path) -> Iterator[tuple[DeliveryLoop, StandInLink, Sent, Outbox]]:
    box = Outbox(tmp_path / "outbox.sqlite")
    link = StandInLink()
    sent = Sent()
    loop = DeliveryLoop(box, link, rate=10_000, send=sent)
    loop.start()
    yield loop, link, sent, box
    loop.stop(flush_until=0.0, join_until=time.monotonic() + 10.0)  # no flush: end now
    box.close()


def ack(link: StandInLink, mids: range | list[int]) -> None:
    for mid in mids:
        link.acks.put((mid, True))


def test_nothing_goes_out_while_disconnected(
    loop_rig: tuple[DeliveryLoop, StandInLink, Sent, Outbox],
) -> None:
    loop, link, sent, box = loop_rig
    fill(box, 3)
    loop.wake()
    assert not wait_for(lambda: bool(sent.rows), 0.5)
    link.connected.set()
    loop.wake()
    assert wait_for(lambda: sent.seqs() == [1, 2, 3], 5)


def test_in_order_within_the_window_and_gone_once_acked(
    loop_rig: tuple[DeliveryLoop, StandInLink, Sent, Outbox],
) -> None:
    loop, link, sent, box = loop_rig
    fill(box, WINDOW + 5)
    link.connected.set()
    loop.wake()
    assert wait_for(lambda: len(sent.rows) == WINDOW, 5)
    assert sent.seqs() == list(range(1, WINDOW + 1))  # the rest wait for acks
    ack(link, range(1, 6))
    loop.wake()
    assert wait_for(lambda: len(sent.rows) == WINDOW + 5, 5)
    assert sent.seqs() == list(range(1, WINDOW + 6))
    assert wait_for(lambda: len(box) == WINDOW, 5)  # the 5 acknowledged are deleted
    assert box.oldest_seq() == 6 and loop.acked == 5 and loop.published == WINDOW + 5


def test_a_new_connection_sends_again_what_was_in_flight(
    loop_rig: tuple[DeliveryLoop, StandInLink, Sent, Outbox],
) -> None:
    loop, link, sent, box = loop_rig
    fill(box, 4)
    link.connected.set()
    loop.wake()
    assert wait_for(lambda: sent.seqs() == [1, 2, 3, 4], 5)
    ack(link, [1, 2])  # 3 and 4 were lost with the connection
    link.generation += 1
    loop.wake()
    assert wait_for(lambda: sent.seqs() == [1, 2, 3, 4, 3, 4], 5)
    ack(link, [5, 6])
    loop.wake()
    assert wait_for(lambda: len(box) == 0, 5)


def test_stop_flushes_then_ends(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    link = StandInLink()
    link.connected.set()

    def send(row: Row) -> int:
        link.acks.put((row.seq, True))  # a broker that acknowledges at once
        return row.seq

    loop = DeliveryLoop(box, link, rate=10_000, send=send)
    loop.start()
    fill(box, 10)
    now = time.monotonic()
    assert loop.stop(flush_until=now + 30.0, join_until=now + 60.0)
    assert not loop.alive()
    loop.apply_acks()
    assert len(box) == 0
    box.close()


# -- the transport alone -------------------------------------------------------------


def transport_config(tmp: Path, broker: Broker) -> Config:
    return parse_config(
        {
            "device": {"id": "door1"},
            "mqtt": {"enabled": True, "host": broker.host, "port": broker.port, "keepalive": 5},
        },
        base_dir=tmp,
    )


@pytest.mark.mqtt
@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed")
def test_the_transport_alone_connects_publishes_with_acks_and_says_offline(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    col = Collector(mqtt_broker, ["t/#"], persistent=False).start()
    assert col.ready()
    seen: list[tuple[str, bytes, bool]] = []
    granted: list[bool] = []
    connects: list[int] = []
    lock = threading.Lock()
    transport = MqttTransport(
        transport_config(tmp_path, mqtt_broker),
        will=("t/availability", b"offline"),
        hooks=Hooks(
            connected=lambda: connects.append(1),
            message=lambda t, p, r: seen.append((t, p, r)),
            subscribed=lambda mid, ok: granted.append(ok),
        ),
        lock=lock,
    )
    transport.start()
    try:
        assert wait_for(transport.connected.is_set, 10) and connects == [1]
        assert transport.generation == 1 and transport.alive()
        transport.subscribe("t/in")
        assert wait_for(lambda: granted == [True], 10)
        info = transport.publish("t/out", b"hello")
        assert info is not None
        assert wait_for(lambda: not transport.acks.empty(), 10)
        assert transport.acks.get_nowait() == (info.mid, True)
        transport.publish("t/in", b"echo")
        assert wait_for(lambda: seen == [("t/in", b"echo", False)], 10)
        assert col.wait_for(lambda: col.payloads("t/out") == [b"hello"], 10)
    finally:
        transport.stop(time.monotonic() + 5.0)
    assert not transport.alive() and not transport.connected.is_set()
    assert col.wait_for(lambda: col.payloads("t/availability") == [b"offline"], 10)
    assert transport.callback_errors == 0
    col.stop()
