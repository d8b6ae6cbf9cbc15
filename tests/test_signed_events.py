"""Signed events (``events.sign_key_file``): what a consumer with the key can refuse.

The formula and the refusals are checked on exact bytes; the delivery
guarantees on a real Mosquitto: events signed at every send (a restored,
late event is signed with ``delivery: "late"``), door records signed too,
and a forged event written by another broker client refused.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from broker import Broker, Collector, mosquitto_path, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from test_mqtt import decision

from edge.cli import main
from edge.config import Config, parse_config
from edge.daemon import Publisher
from edge.delivery.codec import encode
from edge.delivery.events import LATE, LIVE
from edge.delivery.publishers import StdoutPublisher
from edge.delivery.signing import sign_key, sign_payload, verify_payload, why_not_act
from edge.delivery.topics import Topics
from edge.errors import ConfigError, FacegateError, SignatureError

KEY = b"0123456789abcdef-device-key"
T = Topics.for_device("test", "door1")


def event(**over: Any) -> dict[str, Any]:
    now = time.time()
    doc: dict[str, Any] = {
        "v": 2,
        "id": "e1",
        "seq": 7,
        "device": "door1",
        "ts_unix": round(now, 3),
        "expires_at_unix": round(now + 5, 3),
        "delivery": LIVE,
        "clock_synced": True,
        "type": "recognized",
        "name": "Zoë",
        "distance": 0.31,
        "confidence": 0.98,
    }
    doc.update(over)
    return doc


def key_config(tmp: Path, key: bytes = KEY, **mqtt: Any) -> Config:
    (tmp / "event.key").write_bytes(key + b"\n")
    (tmp / "event.key").chmod(0o600)
    raw: dict[str, Any] = {
        "device": {"id": "door1"},
        "events": {"sign_key_file": "event.key"},
    }
    if mqtt:
        raw["mqtt"] = mqtt
    return parse_config(raw, base_dir=tmp)


# -- the formula and its refusals ---------------------------------------------------


def test_signature_is_hmac_of_the_exact_body_bytes_appended_last() -> None:
    body = encode(event())
    signed = sign_payload(body, KEY)
    want = hmac.new(KEY, b"facegate-event-v1\n" + body, hashlib.sha256).hexdigest()
    assert signed == body[:-1] + b',"sig":"' + want.encode() + b'"}'
    assert len(signed[len(body) - 1 :]) == 74  # the suffix a consumer strips
    # Any JSON parser reads it; the event comes back without its signature.
    assert json.loads(signed)["sig"] == want
    assert verify_payload(signed, KEY) == json.loads(body)
    assert verify_payload(signed + b"\n", KEY) == json.loads(body)  # as a line reader leaves it


def test_tampered_forged_or_unsigned_payloads_are_refused() -> None:
    body = encode(event())
    signed = sign_payload(body, KEY)
    tampered = signed.replace(b'"delivery":"live"', b'"delivery":"late"')
    assert tampered != signed
    renamed = signed.replace(b"Zo\\u00eb", b"Mallory")
    cases = {
        "altered delivery": tampered,
        "altered name": renamed,
        "other key": sign_payload(body, b"another key, 16+ bytes"),
        "sig of another body": body[:-1] + sign_payload(encode(event(name="Eve")), KEY)[-74:],
    }
    for what, payload in cases.items():
        with pytest.raises(SignatureError, match="bad signature"):
            verify_payload(payload, KEY)
            pytest.fail(f"{what} was accepted")
    for payload in (
        body,  # unsigned
        signed[:-2] + b'X"}',  # not 64 hex digits
        signed.upper(),
        signed + b" ",  # something after the signature
        signed + b',"name":"Eve"}',
        b"",
    ):
        with pytest.raises(SignatureError, match="unsigned"):
            verify_payload(payload, KEY)


def test_a_signed_body_holding_sig_or_a_repeated_key_is_refused() -> None:
    # Only a key holder can make these; the verifier still never lets a body
    # that two parsers read differently through.
    with pytest.raises(SignatureError, match="one event object"):
        verify_payload(sign_payload(b'{"sig":"x","seq":1}', KEY), KEY)
    with pytest.raises(SignatureError, match="not JSON"):
        verify_payload(sign_payload(b'{"name":"Bob","name":"Eve"}', KEY), KEY)
    for body in (b"{}", b"[1,2]", b'{"a":\n1}', b"not json"):
        with pytest.raises(FacegateError, match="non-empty JSON object"):
            sign_payload(body, KEY)


def test_why_not_act_names_each_reason() -> None:
    now = time.time()
    ok = event()
    assert why_not_act(ok, now=now, device="door1", last_seq=6) is None
    assert why_not_act(ok, now=now) is None
    refusals = {
        "device": (ok, {"device": "door2"}),
        "no expires_at_unix": ({k: v for k, v in ok.items() if k != "expires_at_unix"}, {}),
        "'late'": (event(delivery=LATE), {}),
        "not synchronised": (event(clock_synced=False), {}),
        "expired": (event(expires_at_unix=now - 1), {}),
        "not newer": (ok, {"last_seq": 7}),
        "integer seq": (event(seq="7"), {}),
    }
    for reason, (doc, kw) in refusals.items():
        got = why_not_act(doc, now=now, **kw)
        assert got is not None and reason in got, (reason, got)


# -- configuration ------------------------------------------------------------------


def test_key_from_file_or_credential_never_both_and_never_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sign_key(key_config(tmp_path)) == KEY
    assert sign_key(parse_config({}, base_dir=tmp_path)) is None
    with pytest.raises(ConfigError, match=r"events\.sign_key_file: give"):
        parse_config(
            {"events": {"sign_key_file": "k", "sign_key_credential": "event-key"}},
            base_dir=tmp_path,
        )
    with pytest.raises(ConfigError, match=r"events.sign_key: too short \(5 bytes"):
        sign_key(key_config(tmp_path, b"short"))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "event-key").write_bytes(KEY)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = parse_config({"events": {"sign_key_credential": "event-key"}}, base_dir=tmp_path)
    assert sign_key(cfg) == KEY


def test_printed_events_are_the_signed_wire_form(tmp_path: Path) -> None:
    out = io.StringIO()
    pub = StdoutPublisher(key_config(tmp_path), out=out)
    pub.start()
    made = pub.publish_decision(decision(1))
    line = out.getvalue().strip().encode()
    assert verify_payload(line, KEY) == made
    plain = io.StringIO()
    StdoutPublisher(parse_config({}, base_dir=tmp_path), out=plain).publish_decision(decision(1))
    assert "sig" not in json.loads(plain.getvalue())


# -- the consumer's command -----------------------------------------------------------


def run_verify(
    args: list[str], data: bytes, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> tuple[int, list[dict[str, Any]], str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    rc = main(["events", "verify", *args])
    cap = capsys.readouterr()
    return rc, [json.loads(ln) for ln in cap.out.splitlines()], cap.err


def test_events_verify_passes_only_what_a_door_may_act_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    key_config(tmp_path)  # writes event.key
    good = sign_payload(encode(event(seq=8)), KEY)
    stream = b"\n".join(
        [
            good,
            good.replace(b"Zo\\u00eb", b"Eve"),  # altered
            encode(event(seq=9)),  # forged: unsigned
            good,  # replayed
            sign_payload(encode(event(seq=10, delivery=LATE)), KEY),
            sign_payload(encode(event(seq=11, device="door2")), KEY),
            b"x" * 70000,  # too long a line
            sign_payload(encode(event(seq=12)), KEY),
            b"",
        ]
    )
    key = ["--key-file", str(tmp_path / "event.key")]
    rc, passed, err = run_verify([*key, "--device", "door1", "--act"], stream, monkeypatch, capsys)
    assert rc == 1
    assert [e["seq"] for e in passed] == [8, 12]
    for reason in ("bad signature", "unsigned", "not newer", "'late'", "door2", "longer than"):
        assert reason in err, reason
    assert err.count("refused line") == 6
    # Without --act only the signature (and the device) is checked: replays and
    # late events are still genuine records.
    rc, passed, _ = run_verify(key, stream, monkeypatch, capsys)
    assert [e["seq"] for e in passed] == [8, 8, 10, 11, 12] and rc == 1
    rc, passed, err = run_verify(key, good + b"\n", monkeypatch, capsys)
    assert (rc, [e["seq"] for e in passed], err) == (0, [8], "")


def test_events_verify_without_a_key_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[device]\nid = "door1"\n')
    rc, passed, err = run_verify(["--config", str(cfg)], b"", monkeypatch, capsys)
    assert rc == 2 and passed == []
    assert err.strip().splitlines() == [
        "facegate: error: events.sign_key_file / sign_key_credential: no key configured"
    ]


# -- on a real broker -------------------------------------------------------------------


@pytest.mark.mqtt
@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed")
def test_broker_events_are_signed_at_every_send_and_forgeries_refused(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", persistent=True)  # down while the first events happen
    mqtt = {"enabled": True, "host": broker.host, "port": broker.port, "prefix": "test"}
    cfg = key_config(tmp_path, keepalive=5, **mqtt)
    first = Publisher(cfg)
    first.start()
    stored = [first.publish_decision(decision(i)) for i in range(2)]
    assert wait_for(lambda: first.failed_connections >= 1, 10)
    first.stop(timeout=1.0)  # kept in the outbox; their age is unknown after a restart
    broker.start()
    second = Publisher(cfg)
    try:
        col = Collector(broker, [T.event], persistent=False).start()
        assert col.ready()
        second.start()
        assert col.wait_for(lambda: len(col.payloads(T.event)) >= 2, 10)
        second.set_ready()
        live = second.publish_decision(decision(3))
        second.publish_event("access_denied", {"reason": "unknown", "name": None})
        assert col.wait_for(lambda: len(col.payloads(T.event)) >= 4, 10)
        # A forger with broker access (no ACL here) writes on the device's topic.
        forger = paho.Client(CallbackAPIVersion.VERSION2, client_id="forger")
        forger.connect(broker.host, broker.port)
        forger.loop_start()
        forged = encode(event(device="door1", seq=99, name="Mallory"))
        forger.publish(T.event, forged, qos=1).wait_for_publish(10)
        forger.publish(T.event, forged[:-1] + b',"sig":"' + b"0" * 64 + b'"}', qos=1)
        assert col.wait_for(lambda: len(col.payloads(T.event)) >= 6, 10)
        forger.disconnect()
        forger.loop_stop()
        got = col.payloads(T.event)
        col.stop()
    finally:
        second.stop(timeout=2.0)
        broker.stop()
    restored = [verify_payload(p, KEY) for p in got[:2]]
    # Restored after a restart: signed, and what the signature covers says late.
    assert [e["id"] for e in restored] == [e["id"] for e in stored]
    assert all(e["delivery"] == LATE for e in restored)
    assert all("not 'live'" in str(why_not_act(e, now=time.time())) for e in restored)
    fresh = verify_payload(got[2], KEY)
    assert fresh["id"] == live["id"] and fresh["delivery"] == LIVE
    door = verify_payload(got[3], KEY)
    assert door["type"] == "access_denied"
    assert why_not_act(door, now=time.time()) == "not a decision (no expires_at_unix)"
    for p in got[4:]:
        with pytest.raises(SignatureError):
            verify_payload(p, KEY)


def test_check_config_refuses_a_short_key_as_the_start_would(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "short.key").write_bytes(b"0123456789\n")
    (tmp_path / "short.key").chmod(0o600)
    for section, key in (("events", "sign_key_file"), ("gallery", "key_file")):
        cfg = tmp_path / f"{section}.toml"
        cfg.write_text(f'[{section}]\n{key} = "short.key"\n')
        assert main(["check-config", str(cfg)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"facegate: error: {section}.{key[:-5]}: too short (10 bytes, need 16+)"], (
            err
        )


def test_mutated_signed_payloads_never_pass_or_crash() -> None:
    # Seeded: byte flips, cuts and insertions anywhere in a signed payload.
    rng = random.Random(20261130)
    signed = sign_payload(encode(event()), KEY)
    passed = 0
    for i in range(3000):
        b = bytearray(signed)
        for _ in range(rng.randint(1, 3)):
            op, at = rng.randrange(3), rng.randrange(len(b))
            if op == 0:
                b[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                del b[at : at + rng.randint(1, 8)]
            else:
                b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        try:
            verify_payload(bytes(b), KEY)
        except SignatureError:
            continue
        # Only a mutation that left the signed bytes as they were may pass.
        assert bytes(b).rstrip(b"\n") == signed, i
        passed += 1
    assert passed <= 3


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_documented_node_verifier_agrees(tmp_path: Path) -> None:
    """docs/examples/verify_event.js: another language checks the bytes, no canonical JSON."""
    key_config(tmp_path)
    payloads = [
        sign_payload(encode(event(seq=1)), KEY),
        sign_payload(encode(event(seq=2, name='Ørjan "the" 😀', distance=1e-07)), KEY),
        sign_payload(encode(event(seq=3)), KEY).replace(b'"live"', b'"late"'),
        encode(event(seq=4)),
        sign_payload(encode(event(seq=5)), b"some other key of 16+ bytes"),
    ]
    script = Path(__file__).resolve().parents[1] / "docs" / "examples" / "verify_event.js"
    p = subprocess.run(
        ["node", str(script), str(tmp_path / "event.key")],
        input=b"\n".join(payloads) + b"\n",
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert [json.loads(ln) for ln in p.stdout.splitlines()] == [
        verify_payload(x, KEY) for x in payloads[:2]
    ]
    assert p.stderr.decode().splitlines() == [
        "refused: bad signature: not signed with this key, or altered",
        'refused: unsigned: no "sig" member at the end of the payload',
        "refused: bad signature: not signed with this key, or altered",
    ]


@pytest.mark.mqtt
@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed")
def test_the_retained_door_status_is_signed_too(tmp_path: Path) -> None:
    """With events.sign_key_*, <prefix>/<id>/door is signed (its own context, not an event's)."""
    from edge.delivery.signing import STATUS_SIG_CONTEXT

    broker = Broker(tmp_path / "broker").start()
    cfg = key_config(tmp_path, enabled=True, host=broker.host, port=broker.port, prefix="test")
    pub = Publisher(cfg)
    try:
        pub.start()
        pub.publish_status("door", {"lock": "locked", "door": "closed", "tamper": False,
                                    "lockout": False})  # fmt: skip
        col = Collector(broker, [f"{T.base}/door"], persistent=False).start()
        assert col.wait_for(lambda: col.payloads(f"{T.base}/door") != [], 10)
        [payload] = col.payloads(f"{T.base}/door")
        col.stop()
    finally:
        pub.stop(timeout=2.0)
        broker.stop()
    status = verify_payload(payload, KEY, context=STATUS_SIG_CONTEXT)
    assert status["lock"] == "locked" and status["device"] == "door1"
    with pytest.raises(SignatureError):  # a status is no event: it cannot pass for one
        verify_payload(payload, KEY)
