"""``facegate demo``: registry photos through the whole pipeline, printed and published."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from broker import Broker, Collector

from edge.demo import run_demo


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_demo_recognizes_the_enrolled_person_and_not_the_strangers(models: Path) -> None:
    out = io.StringIO()
    assert run_demo(out=out) == 0
    events = _events(out.getvalue())
    assert [(e["type"], e["name"]) for e in events] == [
        ("recognized", "Grace Hopper"),
        ("unknown", None),
        ("unknown", None),
    ]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert float(str(events[0]["confidence"])) > 0.9
    assert all(float(str(e["distance"])) > 0.5 for e in events[1:])


@pytest.mark.mqtt
def test_demo_publishes_to_a_broker(models: Path, mqtt_broker: Broker) -> None:
    sub = Collector(mqtt_broker, ["facegate/facegate/event"], persistent=False).start()
    try:
        out = io.StringIO()
        assert run_demo(broker=f"{mqtt_broker.host}:{mqtt_broker.port}", out=out) == 0
        printed = _events(out.getvalue())
        assert sub.wait_for(lambda: len(sub.payloads("facegate/facegate/event")) >= 3, 15)
        got = [json.loads(p) for p in sub.payloads("facegate/facegate/event")]
        assert [e["id"] for e in got] == [e["id"] for e in printed]
    finally:
        sub.stop()
