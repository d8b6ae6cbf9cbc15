"""Chaos: broker killed and restarted 10 times, the daemon SIGKILLed once.

A stand-in daemon (``tests/_event_pump.py``, the real :class:`edge.mqtt.Publisher`
fed synthetic decisions every 20 ms) publishes to a real Mosquitto. A
persistent subscriber checks that every event the daemon created arrives
(duplicates allowed, deduplicated by event id) and that the sequence numbers
have no gaps. Once ``facegate run`` is available the same test can drive it
instead of the pump.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from pathlib import Path

import pytest
from _event_pump import read_log, start_pump, stop_pump, write_config
from broker import Broker, Collector, mosquitto_path

pytestmark = [
    pytest.mark.mqtt,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed"),
]


def test_every_event_survives_broker_and_daemon_crashes(tmp_path: Path) -> None:
    t0 = time.monotonic()
    broker = Broker(tmp_path / "broker")
    broker.start()
    config = write_config(tmp_path / "facegate.toml", broker)
    log = tmp_path / "events.jsonl"
    checker = Collector(broker, ["test/door1/event"], client_id="chaos-checker").start()
    pump: subprocess.Popen[bytes] | None = None
    try:
        assert checker.wait_for(lambda: checker.connects > 0, 10), "subscriber did not connect"
        pump = start_pump(config, log)
        daemon_kills = 0
        for i in range(10):
            time.sleep(1.0)
            # Outages of different lengths: some shorter than paho's first
            # reconnect attempt, some spanning a failed attempt.
            broker.restart(kill=True, down_s=(0.0, 0.4, 1.2)[i % 3])
            if i == 4:
                # The daemon crashes too, with events still in its outbox.
                pump.kill()
                pump.wait(timeout=5)
                daemon_kills += 1
                pump = start_pump(config, log)
        time.sleep(1.0)
        created = read_log(log)
        expected = {str(r["id"]): int(str(r["seq"])) for r in created if "id" in r}

        def delivered() -> list[dict[str, object]]:
            return [json.loads(p) for p in checker.payloads("test/door1/event")]

        complete = checker.wait_for(
            lambda: expected.keys() <= {str(e["id"]) for e in delivered()}, 25
        )
        assert pump.poll() is None, "the daemon died"
        events = delivered()
        ids = [str(e["id"]) for e in events]
        unique = set(ids)
        missing = expected.keys() - unique
        seqs = sorted({int(str(e["seq"])) for e in events})
        gaps = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
        print(
            f"\nchaos: published={len(expected)} delivered={len(ids)} unique={len(unique)} "
            f"duplicates={len(ids) - len(unique)} missing={len(missing)} "
            f"broker_restarts={broker.restarts} daemon_kills={daemon_kills} "
            f"seq=1..{seqs[-1] if seqs else 0} gaps={gaps[:5]} "
            f"time={time.monotonic() - t0:.1f}s"
        )
        assert broker.restarts >= 10 and daemon_kills == 1
        assert len(expected) > 100, "too few events to mean anything"
        assert complete and not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:3]}"
        # Every id keeps its seq on redelivery; seq numbers are dense from 1.
        assert all(expected[str(e["id"])] == e["seq"] for e in events if str(e["id"]) in expected)
        assert seqs[0] == 1 and not gaps
        assert time.monotonic() - t0 < 60
    finally:
        if pump is not None and pump.poll() is None:
            stop_pump(pump)
        checker.stop()
        broker.stop()
