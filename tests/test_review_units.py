"""The review's small contracts: its config keys, the signed enrol command (the door's
verification, its own domain and key), the command gate, Home Assistant's entities and
the unknown-visitor notification."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config import parse_config
from edge.delivery.commands import ENROL, CommandGate, parse_command
from edge.delivery.topics import Topics
from edge.door.remote import (
    BAD_SIGNATURE,
    MALFORMED,
    REPLAYED,
    NonceCache,
    sign_enrol,
    sign_unlock,
    verify_enrol,
    verify_unlock,
)
from edge.errors import ConfigError
from edge.homeassistant.discovery import build_ha_discovery, ha_static_topics
from edge.homeassistant.review import UnknownNotifier
from edge.review.ring import Visit

KEY = b"e" * 32


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"review": {"keep_unknown": True}}, "review.keep_unknown: the ring of unknown visitors"),
        ({"review": {"notify": True}}, "review.notify: needs review.keep_unknown"),
        ({"review": {"enrol_command": True}}, "review.enrol_command: needs review.enrol_key"),
        (
            {"review": {"enrol_command": True, "enrol_key_file": "k"}},
            "review.enrol_command: needs mqtt.enabled = true and mqtt.commands = true",
        ),
        ({"review": {"max_visits": 0}}, "review.max_visits: must be in [1, 100000], got 0"),
        ({"review": {"keep": True}}, "review.keep: unknown key"),
        (
            {
                "mqtt": {"enabled": True, "commands": True},
                "review": {"enrol_command": True, "enrol_key_file": "k"},
                "fleet": {"enabled": True, "site": "hq", "site_key_file": "s",
                          "public_key_file": "p"},
            },
            "review.enrol_command: not with fleet.enabled",
        ),
    ],
)  # fmt: skip
def test_review_config_errors_name_the_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(doc)


def test_review_is_off_by_default_and_keeps_its_folder_in_the_state_dir(tmp_path: Path) -> None:
    cfg = parse_config({}, tmp_path)
    r = cfg.review
    assert (r.keep_unknown, r.notify, r.enrol_command) == (False, False, False)
    on = parse_config(
        {
            "review": {"keep_unknown": True, "key_file": "r.key"},
            "service": {"state_dir": "state"},
        },
        tmp_path,
    )
    assert on.review_dir == tmp_path / "state" / "unknowns"
    assert "review.path" in on.files()
    # The gallery key may serve (the ring derives its own key from it).
    parse_config({"review": {"keep_unknown": True}, "gallery": {"key_file": "g.key"}})


def test_enrol_command_is_verified_by_the_doors_code_with_its_own_domain() -> None:
    now = time.time()
    cmd = sign_enrol(KEY, "door", "Alice", ts=int(now))
    assert set(cmd) == {"command", "name", "ts", "nonce", "hmac"}

    def check(doc: dict[str, Any] | bytes, **kw: Any) -> tuple[str | None, str | None]:
        args: dict[str, Any] = {
            "key": KEY, "device_id": "door", "now": now, "mono": 0.0, "synced": True,
            "nonces": NonceCache(),
        }  # fmt: skip
        args.update(kw)
        return verify_enrol(doc, **args)

    assert check(cmd) == (None, "Alice")
    assert check(json.dumps(cmd).encode()) == (None, "Alice")
    assert check({**cmd, "name": "Mallory"}) == (BAD_SIGNATURE, None)  # the name is signed
    assert check(cmd, key=b"x" * 32) == (BAD_SIGNATURE, None)
    assert check(cmd, device_id="other") == (BAD_SIGNATURE, None)
    assert check({k: v for k, v in cmd.items() if k != "hmac"}) == (MALFORMED, None)
    assert check({**cmd, "name": 3}) == (MALFORMED, None)
    assert check({"command": "enrol", "name": "Alice"}) == (MALFORMED, None)
    assert check(cmd, synced=False)[0] == "clock_not_synced"
    assert check(cmd, now=now + 60)[0] == "stale"
    nonces = NonceCache()
    assert check(cmd, nonces=nonces) == (None, "Alice")
    assert check(cmd, nonces=nonces) == (REPLAYED, None)
    # One command's signature is never another's, even with the same key.
    unlock = sign_unlock(KEY, "door", ts=int(now))
    as_enrol = {**unlock, "command": "enrol", "name": ""}
    assert check(as_enrol)[0] == BAD_SIGNATURE
    assert (
        verify_unlock(
            {**{k: v for k, v in cmd.items() if k != "name"}, "command": "unlock"},
            key=KEY,
            device_id="door",
            now=now,
            mono=0.0,
            synced=True,
            nonces=NonceCache(),
        )
        == BAD_SIGNATURE
    )


def test_the_gate_hands_enrol_commands_over_only_when_enrolment_is_on() -> None:
    cmd = json.dumps(sign_enrol(KEY, "door", "Alice")).encode()
    assert parse_command(cmd) == ENROL
    gate = CommandGate()
    assert not gate.handle(cmd) and gate.rejected == 1  # review.enrol_command off
    seen: list[bytes] = []
    gate.on_enrol = seen.append
    assert gate.handle(cmd) and seen == [cmd]
    assert not gate.handle(cmd, retained=True)  # never a retained one
    # The stateless signature check runs first: a forgery spends no token and goes no further.
    from edge.door.remote import authentic_enrol

    gate.verify_enrol = lambda p: authentic_enrol(p, key=KEY, device_id="door")
    forged = json.dumps(sign_enrol(b"x" * 32, "door", "Alice")).encode()
    for _ in range(20):
        assert not gate.handle(forged)
    assert seen == [cmd] and gate.limited == 0
    assert gate.handle(cmd) and seen == [cmd, cmd]  # a real one still gets through


def test_home_assistant_entities_for_the_review() -> None:
    t = Topics.for_device("facegate", "front-door")
    args: dict[str, Any] = {
        "device_id": "front-door", "device_name": "Front door", "ha_prefix": "homeassistant",
        "sw_version": "1",
    }  # fmt: skip
    plain = dict(build_ha_discovery(t, **args))
    assert not any("unknown_visitor" in k or "enrol" in k for k in plain)
    full = dict(build_ha_discovery(t, **args, unknown_visitors=True, enrol=True))
    image = full["homeassistant/image/front-door/unknown_visitor/config"]
    assert (image["image_topic"], image["content_type"]) == (t.unknown_image, "image/jpeg")
    button = full["homeassistant/button/front-door/enrol_next_face/config"]
    text = full["homeassistant/text/front-door/enrol_name/config"]
    # The button and the text publish where the device never listens: the command is signed.
    assert button["command_topic"] == "facegate/front-door/enrol/set"
    assert text["command_topic"] == "facegate/front-door/enrol/name"
    assert t.command not in (button["command_topic"], text["command_topic"])
    assert set(full) <= set(ha_static_topics("homeassistant", "front-door"))


class _Link:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | str, bool]] = []

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> object:
        self.sent.append((topic, payload, retain))
        return None

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> int | None:
        return None


def test_unknown_notifier_sends_the_crop_then_the_entry_not_retained() -> None:
    cfg = parse_config(
        {
            "device": {"id": "d"},
            "mqtt": {"enabled": True},
            "gallery": {"key_file": "g.key"},
            "review": {"keep_unknown": True, "notify": True},
        }
    )
    n = UnknownNotifier(cfg)
    v = Visit(31, 1767323045.0, 12, 0.81234, 4, "m", np.zeros(4, np.float32), b"\xff\xd8jpeg")
    link = _Link()
    n.tick(link, 0.0)
    assert link.sent == []
    for _ in range(20):  # more than the queue holds while the broker is away
        n.push(v, 6)
    n.tick(link, 0.0)
    assert len(link.sent) == 2 * 8
    (t1, jpeg, r1), (t2, entry, r2) = link.sent[:2]
    assert (t1, jpeg, r1) == ("facegate/d/unknown/image", b"\xff\xd8jpeg", False)
    assert t2 == "facegate/d/unknown" and not r2
    assert json.loads(entry) == {
        "id": 12, "visit": 31, "visits": 6, "ts": "2026-01-02T03:04:05Z", "distance": 0.8123,
    }  # fmt: skip
    off = UnknownNotifier(parse_config({}))
    off.push(v, 1)
    off.tick(link, 0.0)
    assert len(link.sent) == 16  # review.notify off: nothing


def test_a_watcher_that_fails_does_not_stop_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    """The daemon hands each frame to every watcher; a failing one is logged, the loop goes on."""
    from _standins import ScriptedRecognizer
    from test_daemon import ScriptedCapture

    from edge.daemon import run
    from edge.delivery.publishers import MemoryPublisher
    from edge.identity.gallery import Gallery
    from edge.types import Frame, FrameResult

    class Broken:
        wants_frames = True
        calls = 0
        snapshots = 0

        def observe(self, frame: Frame, result: FrameResult, decisions: Any) -> None:
            Broken.calls += 1
            Broken.snapshots += sum(d.snapshot is not None for d in decisions)
            raise RuntimeError("boom")

    # Scripted faces on blank frames: one watcher call per frame (no liveness to wait for).
    cfg = parse_config({"decision": {"k": 1, "n": 1}, "liveness": {"mode": "off"}})
    pub = MemoryPublisher(cfg)
    rc = run(
        cfg,
        threading.Event(),
        pub,
        recognizer=ScriptedRecognizer(Gallery("sha-test", manifest_sha256="m" * 64)),
        capture_factory=ScriptedCapture(["Alice", "", "?"]).bind,
        watchers_factory=lambda *a: [Broken()],
    )
    assert rc == 0 and Broken.calls == 3
    # A watcher that wants frames gets decisions with their crops (mqtt.snapshot is off).
    assert Broken.snapshots == len(pub.payloads) >= 1
    assert "Broken failed on frame" in caplog.text


def test_a_fleet_door_does_not_enrol_from_the_review(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With fleet.enabled the gallery comes from the admin: unknowns enroll and the signed
    enrol command refuse, saying where to enrol; the review itself still lists."""
    from edge.cli import main

    for name in ("g.key", "s.key", "e.key"):
        (tmp_path / name).write_bytes(name.encode() * 8)
    (tmp_path / "p.pem").write_text("-----BEGIN PUBLIC KEY-----\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[mqtt]\nenabled = true\n[gallery]\nkey_file = "g.key"\n'
        '[review]\nkeep_unknown = true\nenrol_key_file = "e.key"\n'
        '[fleet]\nenabled = true\nsite = "hq"\nsite_key_file = "s.key"\npublic_key_file = "p.pem"\n'
    )
    assert main(["unknowns", "enroll", "1", "--name", "Bob", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknowns enroll: fleet.enabled = true" in err and "fleet push" in err
    assert main(["enroll", "--config", str(cfg), "--name", "Bob", "--signed-command"]) == 2
    assert "fleet.enabled = true" in capsys.readouterr().err
    assert main(["unknowns", "list", "--config", str(cfg)]) == 0
