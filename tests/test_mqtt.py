"""The MQTT publisher against a real Mosquitto on a loopback port.

In-process tests drive :class:`edge.daemon.Publisher` directly; the
availability and malformed-command tests run the stand-in daemon
(``tests/_event_pump.py``) as a process so it can be SIGKILLed.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from _event_pump import read_log, start_pump, stop_pump, write_config
from broker import Broker, Collector, mosquitto_path, mqtt_broker, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import Config, parse_config
from edge.daemon import Publisher
from edge.delivery.topics import Topics
from edge.errors import ConfigError
from edge.types import Box, Decision

pytestmark = [
    pytest.mark.mqtt,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed"),
]
__all__ = ["mqtt_broker"]  # the fixture, re-exported for pytest

T = Topics.for_device("test", "door1")


def config(tmp: Path, broker: Broker, **mqtt: Any) -> Config:
    values: dict[str, Any] = {
        "enabled": True,
        "host": broker.host,
        "port": broker.port,
        "prefix": "test",
        "keepalive": 5,
        "state_interval_s": 0.5,
        **mqtt,
    }
    return parse_config({"device": {"id": "door1"}, "mqtt": values}, base_dir=tmp)


def decision(i: int) -> Decision:
    return Decision(
        kind="recognized",
        name="Alice",
        distance=0.2,
        confidence=0.9,
        track_id=i,
        track_length=3,
        timestamp=time.time(),
        box=Box(0, 0, 50, 60),
    )


@pytest.fixture
def publisher_factory() -> Iterator[Any]:
    made: list[Publisher] = []

    def make(cfg: Config) -> Publisher:
        p = Publisher(cfg)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop(timeout=2.0)


def send(broker: Broker, topic: str, payloads: list[bytes], retain: bool = False) -> None:
    """Publish raw payloads at QoS 1 and wait until the broker has them all."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="tester", protocol=paho.MQTTv311)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        infos = [c.publish(topic, p, qos=1, retain=retain) for p in payloads]
        for info in infos:
            info.wait_for_publish(timeout=10)
    finally:
        c.disconnect()
        c.loop_stop()


def events_of(col: Collector) -> list[dict[str, Any]]:
    return [json.loads(p) for p in col.payloads(T.event)]


def test_events_in_order_state_and_discovery(
    tmp_path: Path, mqtt_broker: Broker, publisher_factory: Any
) -> None:
    col = Collector(mqtt_broker, ["test/#", "homeassistant/#"], persistent=False).start()
    assert col.ready()
    pub = publisher_factory(config(tmp_path, mqtt_broker, ha_discovery=True))
    pub.start()
    assert col.wait_for(lambda: pub.connected, 10)
    assert pub.alive()
    # Connected but not ready: "offline", and nothing else about the device yet.
    assert col.wait_for(lambda: col.payloads(T.availability) == [b"offline"], 5)
    assert col.payloads(T.state) == []
    pub.set_state(status="running", gallery_size=3, model_sha256="ab" * 32)
    pub.set_ready()
    sent = [pub.publish_decision(decision(i)) for i in range(30)]
    assert col.wait_for(lambda: len(events_of(col)) >= 30, 10)
    got = events_of(col)
    assert [e["seq"] for e in got] == [e["seq"] for e in sent] == list(range(1, 31))
    assert [e["id"] for e in got] == [e["id"] for e in sent]
    assert col.wait_for(lambda: pub._outbox is not None and len(pub._outbox) == 0, 5)
    assert col.payloads(T.availability)[-1] == b"online"
    state = json.loads(col.payloads(T.state)[-1])
    assert state["gallery_size"] == 3 and state["status"] == "running"
    assert "outbox_pending" in state and state["outbox_dropped"] == 0
    assert state["outbox_lost"] == 0 and state["outbox_error"] is None
    discovery = [t for t, _, _ in col.snapshot() if t.startswith("homeassistant/")]
    assert len(discovery) >= 5 and all(t.endswith("/config") for t in discovery)
    pub.stop(timeout=3.0)
    assert col.wait_for(lambda: col.payloads(T.availability)[-1] == b"offline", 5)
    assert not pub.alive()
    col.stop()


def test_events_wait_in_outbox_while_broker_is_down_then_drain_at_bounded_rate(
    tmp_path: Path, publisher_factory: Any
) -> None:
    broker = Broker(tmp_path / "broker", persistent=True)  # not started: the broker is down
    cfg = config(tmp_path, broker, drain_rate=20.0)
    pub = publisher_factory(cfg)
    pub.start()
    sent = [pub.publish_decision(decision(i)) for i in range(60)]
    # The broker is down: the first attempt fails, the publisher lives on.
    assert wait_for(lambda: pub.failed_connections >= 1, 10)
    assert pub._outbox is not None and len(pub._outbox) == 60 and pub.alive()
    broker.start()
    try:
        col = Collector(broker, [T.event], persistent=False).start()
        assert col.ready()
        assert col.wait_for(lambda: len(col.payloads(T.event)) >= 60, 15)
        arrivals = [t for t, _ in col.timed(T.event)]
        got = events_of(col)
        ids = [e["id"] for e in got]
        assert set(ids) == {e["id"] for e in sent}
        # Replayed in sequence order (duplicates only from a reconnect, not here).
        assert [e["seq"] for e in got] == sorted(e["seq"] for e in got)
        # 20/s after a burst of 20: the last 40 events take ~2 s, not 0.
        span = arrivals[-1] - arrivals[0]
        print(f"\nbacklog of 60 drained in {span:.2f} s at drain_rate=20")
        assert span >= 1.5
        assert col.wait_for(lambda: len(pub._outbox) == 0, 5)
        col.stop()
    finally:
        pub.stop(timeout=2.0)
        broker.stop()


def test_sequence_continues_across_restarts(
    tmp_path: Path, mqtt_broker: Broker, publisher_factory: Any
) -> None:
    cfg = config(tmp_path, mqtt_broker)
    first = publisher_factory(cfg)
    first.start()
    a = [first.publish_decision(decision(i))["seq"] for i in range(3)]
    first.stop(timeout=3.0)
    second = publisher_factory(cfg)
    second.start()
    b = [second.publish_decision(decision(i))["seq"] for i in range(2)]
    assert a + b == [1, 2, 3, 4, 5]
    assert (tmp_path / "outbox.sqlite").exists()


def test_outbox_survives_restart_and_overflow_shows_as_seq_gap(
    tmp_path: Path, publisher_factory: Any
) -> None:
    broker = Broker(tmp_path / "broker", persistent=True)  # down while the events happen
    cfg = config(tmp_path, broker, outbox_max=5)
    first = publisher_factory(cfg)
    first.start()
    sent = [first.publish_decision(decision(i)) for i in range(8)]
    first.stop(timeout=1.0)  # nothing delivered: all kept on disk
    broker.start()
    try:
        col = Collector(broker, [T.event, T.state], persistent=False).start()
        assert col.ready()
        second = publisher_factory(cfg)
        second.start()
        assert col.wait_for(lambda: len(col.payloads(T.event)) >= 5, 10)
        got = events_of(col)
        # The 3 oldest were dropped to respect outbox_max; the rest keep their ids.
        assert [e["id"] for e in got] == [e["id"] for e in sent[3:]]
        assert [e["seq"] for e in got] == [4, 5, 6, 7, 8]
        second.set_state(status="running")
        second.set_ready()  # the state goes out with "online"
        assert col.wait_for(
            lambda: any(json.loads(p).get("outbox_dropped") == 3 for p in col.payloads(T.state)),
            5,
        )
        # Dropped for the bound, not lost to a storage failure: no error to report.
        state = json.loads(col.payloads(T.state)[-1])
        assert state["outbox_lost"] == 0 and state["outbox_error"] is None
        col.stop()
    finally:
        broker.stop()


def test_callback_exception_is_logged_not_fatal(
    tmp_path: Path, mqtt_broker: Broker, publisher_factory: Any
) -> None:
    col = Collector(mqtt_broker, [T.event], persistent=False).start()
    pub = publisher_factory(config(tmp_path, mqtt_broker, commands=True))

    def broken(cmd: str) -> None:
        raise RuntimeError("handler bug")

    pub.on_command = broken
    pub.start()
    assert col.ready()
    assert wait_for(pub.listening.is_set, 10)  # the command subscription's SUBACK
    send(mqtt_broker, T.command, [b'{"command": "reload-gallery"}'])
    assert col.wait_for(lambda: pub.callback_errors == 1, 5)
    assert pub.alive()
    pub.publish_decision(decision(0))
    assert col.wait_for(lambda: len(col.payloads(T.event)) == 1, 5)
    col.stop()


def test_bad_credentials_config_errors(tmp_path: Path, mqtt_broker: Broker) -> None:
    (tmp_path / "pw").write_text("secret\n")
    with pytest.raises(ConfigError, match="username"):
        Publisher(config(tmp_path, mqtt_broker, password_file="pw")).start()
    with pytest.raises(ConfigError, match="tls"):
        Publisher(config(tmp_path, mqtt_broker, tls=True, tls_ca_file="missing.pem")).start()


# -- the stand-in daemon as a process ------------------------------------------------


def last(col: Collector, topic: str) -> bytes | None:
    p = col.payloads(topic)
    return p[-1] if p else None


def test_availability_follows_kill_and_restart(tmp_path: Path, mqtt_broker: Broker) -> None:
    cfg = write_config(tmp_path / "facegate.toml", mqtt_broker, commands=True)
    log = tmp_path / "events.jsonl"
    col = Collector(mqtt_broker, [T.availability], persistent=False).start()
    pump = start_pump(cfg, log, interval=0.1)
    try:
        assert col.wait_for(lambda: last(col, T.availability) == b"online", 15)
        pump.kill()  # SIGKILL: no goodbye, the Last Will speaks
        pump.wait(timeout=5)
        assert col.wait_for(lambda: last(col, T.availability) == b"offline", 10)
        # Retained: a subscriber arriving later sees "offline" at once.
        late = Collector(mqtt_broker, [T.availability], persistent=False).start()
        assert late.wait_for(lambda: late.snapshot() != [], 5)
        assert late.snapshot()[-1][1:] == (b"offline", True)
        late.stop()
        pump = start_pump(cfg, log, interval=0.1)
        assert col.wait_for(lambda: last(col, T.availability) == b"online", 15)
        assert stop_pump(pump) == 0  # a clean stop says offline itself
        assert col.wait_for(lambda: last(col, T.availability) == b"offline", 5)
    finally:
        if pump.poll() is None:
            pump.kill()
        col.stop()


def malformed_commands(n: int) -> list[bytes]:
    """``n`` payloads that must all be rejected: junk, wrong shapes, wrong commands."""
    shapes = [
        b"",
        b"reload-gallery",
        b"{",
        b"null",
        b"[]",
        b'{"command": "shutdown"}',
        b'{"command": "reload-gallery", "x": 1}',
        b'{"command": ["reload-gallery"]}',
        b"\x00\xff\xfe",
        b"A" * 5000,
    ]
    return [shapes[i % len(shapes)] + (b" %d" % i if i % 2 else b"") for i in range(n)]


def test_thousand_malformed_commands_leave_daemon_running(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    cfg = write_config(tmp_path / "facegate.toml", mqtt_broker, commands=True)
    log = tmp_path / "events.jsonl"
    err_file = tmp_path / "pump.err"
    col = Collector(mqtt_broker, [T.availability, T.event], persistent=False).start()
    # A retained command is refused: it would fire again on every reconnect.
    send(mqtt_broker, T.command, [b'{"command": "reload-gallery"}'], retain=True)
    pump = start_pump(cfg, log, interval=0.05)
    try:
        assert col.wait_for(lambda: last(col, T.availability) == b"online", 15)
        # The pump says when the broker acknowledged its command subscription.
        assert wait_for(lambda: "listening for commands" in err_file.read_text(), 10)
        send(mqtt_broker, T.command, [b""], retain=True)  # clears the retained one
        send(mqtt_broker, T.command, malformed_commands(1000))
        before = len(col.payloads(T.event))
        send(mqtt_broker, T.command, [b'{"command": "reload-gallery"}'])

        def commands() -> list[object]:
            return [r["command"] for r in read_log(log) if "command" in r]

        # Junk costs no token: the real command after the flood still gets through.
        assert col.wait_for(lambda: commands() == ["reload-gallery"], 10)
        # Still responsive: events keep flowing after the flood.
        assert col.wait_for(lambda: len(col.payloads(T.event)) > before + 5, 10)
        assert pump.poll() is None
        assert stop_pump(pump) == 0
        err = err_file.read_text()
        assert "Traceback" not in err
        assert "command rejected: retained command ignored" in err
        # 1,002 commands: a few lines one by one, the rest summed up (not 1,002 lines).
        lines = [ln for ln in err.splitlines() if "facegate.commands" in ln]
        assert len(lines) <= 10, "\n".join(lines)
        summed = [ln for ln in lines if "more not logged one by one" in ln]
        assert summed and "rejected" in summed[-1], "\n".join(lines)
    finally:
        if pump.poll() is None:
            pump.kill()
        col.stop()


# -- TLS and a password from a file -------------------------------------------------


def make_certs(d: Path) -> dict[str, Path]:
    """PEM files: a CA (``ca``), a server certificate for 127.0.0.1 (``server``,
    ``server_key``) and a client certificate (``client``, ``client_key``)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    pem = serialization.Encoding.PEM

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject: str, issuer: str, public_key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("facegate test CA", "facegate test CA", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    files = {"ca": d / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(pem))
    for role, cn, ext in (
        (
            "server",
            "127.0.0.1",
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ),
        ("client", "door1", x509.BasicConstraints(ca=False, path_length=None)),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(cn, "facegate test CA", key.public_key())
            .add_extension(ext, critical=False)
            .add_extension(aki, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        files[role] = d / f"{role}.pem"
        files[f"{role}_key"] = d / f"{role}.key"
        files[role].write_bytes(cert.public_bytes(pem))
        files[f"{role}_key"].write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return files


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_tls_client_certificate_and_password_from_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, publisher_factory: Any
) -> None:
    certs = make_certs(tmp_path)
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "door1", "s3cret"],
        check=True,
        capture_output=True,
    )
    broker = Broker(
        tmp_path / "broker",
        extra_conf="\n".join(
            [
                f"cafile {certs['ca']}",
                f"certfile {certs['server']}",
                f"keyfile {certs['server_key']}",
                "require_certificate true",  # the device must show its client certificate
                f"password_file {passwd}",
            ]
        ),
        anonymous=False,
    )
    broker.start()
    try:
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "mqtt-password").write_text("s3cret\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        cfg = config(
            tmp_path,
            broker,
            tls=True,
            tls_ca_file="ca.pem",
            tls_cert_file="client.pem",
            tls_key_file="client.key",
            username="door1",
            password_credential="mqtt-password",
        )
        pub = publisher_factory(cfg)
        pub.start()
        pub.publish_decision(decision(0))
        assert wait_for(lambda: pub.connected, 10), broker.log_tail()
        assert wait_for(lambda: pub._outbox is not None and len(pub._outbox) == 0, 5)
        # The wrong password is refused; the publisher keeps running and retrying.
        (creds / "mqtt-password").write_text("wrong\n")
        bad = publisher_factory(
            config(
                tmp_path / "other",
                broker,
                tls=True,
                tls_ca_file=str(certs["ca"]),
                tls_cert_file=str(certs["client"]),
                tls_key_file=str(certs["client_key"]),
                username="door1",
                password_credential="mqtt-password",
                client_id="bad",
            )
        )
        bad.start()
        # Without a client certificate the TLS handshake itself fails.
        (creds / "mqtt-password").write_text("s3cret\n")
        nocert = publisher_factory(
            config(
                tmp_path / "nocert",
                broker,
                tls=True,
                tls_ca_file=str(certs["ca"]),
                username="door1",
                password_credential="mqtt-password",
                client_id="nocert",
            )
        )
        nocert.start()
        # Observed, not assumed after a sleep: the broker refused the password
        # (CONNACK), and the handshake without a certificate failed.
        assert wait_for(lambda: bad.refused_connections >= 1, 10), broker.log_tail()
        assert wait_for(lambda: nocert.failed_connections >= 1, 10), broker.log_tail()
        assert not bad.connected and bad.alive()
        assert not nocert.connected and nocert.alive()
        assert pub.connected
    finally:
        broker.stop()
