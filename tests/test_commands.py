"""The command topic's gate: rate limit, bursts in the log, duplicate keys; the token bucket."""

from __future__ import annotations

import json
import logging
import time

import pytest

from edge.delivery.codec import DuplicateKeyError, loads_strict
from edge.delivery.commands import (
    COMMAND_BURST,
    COMMAND_LOG_FIRST,
    COMMAND_RATE,
    CommandError,
    CommandGate,
    parse_command,
)
from edge.delivery.ratelimit import BurstLog, TokenBucket
from edge.door.remote import MALFORMED, NonceCache, sign_unlock, verify_unlock

RELOAD = b'{"command": "reload-gallery"}'


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_follows_its_formula() -> None:
    b = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait_s() == pytest.approx(0.5)  # (1 - 0) / 2
    assert not b.take(0.25) and b.take(0.5)  # 0.5 s at 2/s: one token
    assert b.available(100.0) == 3  # capped at the burst
    b.spend(2)
    assert b.available(100.0) == 1
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=1.0, now=0.0)


def test_a_thousand_commands_act_at_the_rate_and_log_a_few_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    gate = CommandGate(clock)
    got: list[str] = []
    gate.on_command = got.append
    with caplog.at_level(logging.INFO, logger="facegate.commands"):
        results = [gate.handle(RELOAD) for _ in range(1000)]
        # Acted on: the burst; the rest dropped and counted, never dispatched.
        assert sum(results) == COMMAND_BURST == len(got) == gate.accepted
        assert gate.limited == 1000 - COMMAND_BURST and gate.rejected == 0
        # Two seconds later the bucket holds two more.
        clock.t += 2.0 / COMMAND_RATE
        assert gate.handle(RELOAD) and gate.handle(RELOAD) and not gate.handle(RELOAD)
        # The burst ends after a quiet spell: its summary is one line.
        clock.t += 60.0
        gate.flush_log()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == COMMAND_LOG_FIRST + 1, lines
    assert "reload-gallery" in lines[0]
    assert "over the rate limit 996" in lines[-1] and "accepted 2" in lines[-1], lines[-1]
    # A new burst is logged line by line again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="facegate.commands"):
        assert gate.handle(RELOAD)
    assert len(caplog.records) == 1


def test_junk_costs_no_token_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    gate = CommandGate(clock)
    got: list[str] = []
    gate.on_command = got.append
    with caplog.at_level(logging.INFO, logger="facegate.commands"):
        for i in range(1000):
            assert not gate.handle(b"junk %d" % i)
        assert not gate.handle(RELOAD, retained=True)
        assert gate.handle(RELOAD) and got == ["reload-gallery"]
        gate.flush_log(force=True)
    assert gate.rejected == 1001 and gate.limited == 0
    assert len(caplog.records) == COMMAND_LOG_FIRST + 1
    assert "rejected 996" in caplog.records[-1].getMessage()


def test_an_unlock_needs_a_door() -> None:
    gate = CommandGate(Clock())
    unlock = json.dumps(sign_unlock(b"k" * 32, "door", ts=int(time.time()))).encode()
    assert not gate.handle(unlock) and gate.rejected == 1
    seen: list[bytes] = []
    gate.on_unlock = seen.append
    assert gate.handle(unlock) and seen == [unlock]


def test_burst_log_summarises_a_long_burst_once_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    blog = BurstLog(logging.getLogger("test.burst"), "thing", first=2, quiet_s=5.0, every_s=10.0)
    with caplog.at_level(logging.INFO, logger="test.burst"):
        for i in range(100):  # one every 0.5 s: a burst that never goes quiet
            blog.note(i * 0.5, "seen", f"#{i}")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:2] == ["thing #0", "thing #1"]
    assert len(messages) == 2 + 4  # one summary per 10 s over 50 s
    assert all("more not logged one by one" in m for m in messages[2:])


def test_duplicate_keys_are_refused_everywhere_a_command_is_read() -> None:
    with pytest.raises(DuplicateKeyError):
        loads_strict(b'{"a": 1, "b": {"c": 1, "c": 2}}')
    assert loads_strict(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    for payload in (
        b'{"command": "reload-gallery", "command": "reload-gallery"}',
        b'{"command": "shutdown", "command": "reload-gallery"}',
    ):
        with pytest.raises(CommandError, match="duplicate key 'command'"):
            parse_command(payload)
    key, dev, now = b"k" * 32, "door", int(time.time())
    doc = sign_unlock(key, dev, ts=now)
    good = json.dumps(doc).encode()
    # The same signed fields, "ts" given twice: another parser could read the other one.
    doubled = good[:-1] + b', "ts": ' + str(now - 3600).encode() + b"}"
    args = {"key": key, "device_id": dev, "now": float(now), "mono": 0.0, "synced": True}
    assert verify_unlock(doubled, nonces=NonceCache(), **args) == MALFORMED  # type: ignore[arg-type]
    assert verify_unlock(good, nonces=NonceCache(), **args) is None  # type: ignore[arg-type]


def test_a_wrong_key_flood_costs_no_token(caplog: pytest.LogCaptureFixture) -> None:
    """D1: 10/s wrong-key unlocks for 20 s; every genuine unlock and reload gets through."""
    from edge.door.remote import authentic

    clock = Clock()
    gate = CommandGate(clock)
    key, dev = b"k" * 32, "door"
    unlocks: list[bytes] = []
    reloads: list[str] = []
    gate.on_unlock = unlocks.append
    gate.verify_unlock = lambda p: authentic(p, key=key, device_id=dev)
    gate.on_command = reloads.append
    genuine: list[bool] = []
    with caplog.at_level(logging.INFO, logger="facegate.commands"):
        for step in range(200):
            clock.t += 0.1
            ts = int(clock.t)
            forged = json.dumps(sign_unlock(b"w" * 32, dev, ts=ts)).encode()
            assert not gate.handle(forged)
            if step % 20 == 10:
                genuine.append(gate.handle(json.dumps(sign_unlock(key, dev, ts=ts)).encode()))
            if step % 20 == 15:
                genuine.append(gate.handle(RELOAD))
    assert genuine == [True] * 20
    assert len(reloads) == 10 and gate.limited == 0 and gate.rejected == 200
    # Forged unlocks still reach the door, which records its refusals (within its own budget).
    assert len(unlocks) == 210
    assert len(caplog.records) < 20  # the flood is summed up in the journal


def test_a_genuine_unlock_flood_is_still_rate_limited() -> None:
    """Verified unlocks spend tokens like any command: a key holder cannot flood either."""
    from edge.door.remote import authentic

    clock = Clock()
    gate = CommandGate(clock)
    key, dev = b"k" * 32, "door"
    gate.on_unlock = lambda p: None
    gate.verify_unlock = lambda p: authentic(p, key=key, device_id=dev)
    ok = [gate.handle(json.dumps(sign_unlock(key, dev, ts=1000)).encode()) for _ in range(20)]
    assert sum(ok) == COMMAND_BURST and gate.limited == 20 - COMMAND_BURST


def test_an_oversize_payload_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The device's side of the size limit: the length is checked before any parsing."""
    import edge.delivery.commands as commands

    parsed: list[int] = []

    def counting(payload: bytes) -> object:
        parsed.append(len(payload))
        return loads_strict(payload)

    monkeypatch.setattr(commands, "loads_strict", counting)
    gate = CommandGate(Clock())
    gate.on_unlock = lambda p: None
    big = b'{"command": "unlock", "pad": "' + b"x" * (8 << 20) + b'"}'
    assert not gate.handle(big) and gate.rejected == 1
    assert parsed == []  # never parsed
    gate.handle(RELOAD)  # the gate still parses what fits
    assert parsed == [len(RELOAD)]
