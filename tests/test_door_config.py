"""The door's config footguns (issue 19): refused or warned about by check-config and at start.

* D6: an allow or schedule entry that matches nobody in the gallery;
* D7: one secret for event signing and remote unlock;
* D12: ``decision.single_frame`` with the door on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config import load_config, parse_config
from edge.errors import ConfigError
from edge.identity.gallery import Gallery

KEY = b"remote-unlock-key-0123456789abcdef"


def _write(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "door.toml"
    cfg.write_text(f'[service]\nstate_dir = "{tmp_path}"\n' + text)
    return cfg


# -- D12 ------------------------------------------------------------------------------------


def test_single_frame_is_refused_with_the_door_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """D12: one frame must never open a door: check-config and start refuse it."""
    from edge.cli import main

    doc = {"door": {"enabled": True, "pin_factory": "mock"}, "decision": {"single_frame": True}}
    with pytest.raises(ConfigError, match=r"^decision\.single_frame: .*door"):
        parse_config(doc)
    parse_config({"decision": {"single_frame": True}})  # a demo without a door: fine
    parse_config({"door": {"enabled": False}, "decision": {"single_frame": True}})
    cfg = _write(tmp_path, '[door]\nenabled = true\npin_factory = "mock"\n'
                 "[decision]\nsingle_frame = true\n")  # fmt: skip
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facegate: error: decision.single_frame") and err.count("\n") == 1
    assert main(["run", "--config", str(cfg)]) == 2
    assert "decision.single_frame" in capsys.readouterr().err


# -- D7 -------------------------------------------------------------------------------------


def _keys_config(tmp_path: Path, unlock: bytes, sign: bytes) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "unlock.key").write_bytes(unlock)
    (tmp_path / "event.key").write_bytes(sign)
    for p in ("unlock.key", "event.key"):
        (tmp_path / p).chmod(0o600)
    return _write(
        tmp_path,
        '[door]\nenabled = true\npin_factory = "mock"\nremote_unlock = true\n'
        'remote_key_file = "unlock.key"\n[mqtt]\nenabled = true\ncommands = true\n'
        '[events]\nsign_key_file = "event.key"\n',
    )


def test_one_key_for_signing_and_unlocking_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """D7: two files with the same bytes (a trailing newline aside) are one secret."""
    from edge.cli import main

    cfg = _keys_config(tmp_path, KEY, KEY + b"\n")
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facegate: error: door.remote_key") and "events.sign_key" in err
    with pytest.raises(ConfigError, match="same key"):
        load_config(cfg)
    ok = _keys_config(tmp_path / "ok", KEY, b"another-event-signing-key-0123")
    load_config(ok)  # different keys: fine


def test_one_credential_for_both_keys_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D7: the same credential name, checked without reading it (outside systemd too)."""
    doc: dict[str, Any] = {
        "door": {"enabled": True, "remote_unlock": True, "remote_key_credential": "k"},
        "mqtt": {"enabled": True, "commands": True},
        "events": {"sign_key_credential": "k"},
    }
    with pytest.raises(ConfigError, match=r"events\.sign_key_credential.*door\.remote_key"):
        parse_config(doc)
    # Two credential names whose files hold the same bytes: refused where they can be read.
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "unlock").write_bytes(KEY)
    (creds / "event").write_bytes(KEY)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    doc["door"]["remote_key_credential"] = "unlock"
    doc["events"]["sign_key_credential"] = "event"
    cfg = parse_config(doc, base_dir=tmp_path)
    from edge.config import check_environment

    with pytest.raises(ConfigError, match="same key"):
        check_environment(cfg)


def test_the_door_refuses_one_key_at_start(tmp_path: Path) -> None:
    """D7 at start, for a config that never went through check-config (built in code)."""
    pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")
    from edge.door.controller import DoorController

    (tmp_path / "a.key").write_bytes(KEY)
    (tmp_path / "b.key").write_bytes(KEY)
    cfg = parse_config(
        {
            "door": {"enabled": True, "pin_factory": "mock", "remote_unlock": True,
                     "remote_key_file": "a.key"},
            "mqtt": {"enabled": True, "commands": True},
            "events": {"sign_key_file": "b.key"},
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="same key"):
        DoorController(cfg)


# -- D6 -------------------------------------------------------------------------------------


def _gallery() -> Gallery:
    g = Gallery("sha-test", 4, manifest_sha256="manifest-test")
    rng = np.random.default_rng(0)
    for name in ("Alice", "Bob", "Carol", "Dave"):
        g.add(name, rng.normal(size=(1, 4)).astype(np.float32))
    g.set_groups("Carol", ["staff"])
    g.set_groups("Dave", ["night"])
    return g


@pytest.mark.parametrize(
    ("where", "entry", "level"),
    [
        ("schedule", "group:Staff", "error"),  # a case variant of an existing group
        ("schedule", "group:staf", "error"),  # one edit away from an existing group
        ("schedule", "alice", "error"),  # a case variant of an enrolled name
        ("schedule", "Alice ", "error"),  # whitespace
        ("schedule", "Alcie", "error"),  # two letters swapped
        ("allow", "Dav", "error"),  # one letter from Dave
        ("allow", "Bobby", "warning"),  # two letters from Bob: too far for a 3-letter name
        ("allow", "staff", "error"),  # a group's name written as a person
        ("allow", "Zoe", "warning"),  # nobody like her yet: enrolled later
        ("schedule", "group:cleaning", "warning"),  # no such group yet
    ],
)
def test_entries_that_match_nobody(where: str, entry: str, level: str) -> None:
    from edge.door.policy import check_names

    g = _gallery()
    allow = ["group:staff", "Alice"] + ([entry] if where == "allow" else [])
    schedule = {entry: ("mon-fri 07:00-19:00",)} if where == "schedule" else {}
    found = check_names(allow, schedule, g.names, {n: g.groups(n) for n in g.names})
    assert [f.level for f in found] == [level], found
    key = f"door.schedule.{entry}" if where == "schedule" else f"door.allow[{len(allow) - 1}]"
    assert found[0].key == key, found


def test_exact_entries_are_fine() -> None:
    from edge.door.policy import check_names

    g = _gallery()
    found = check_names(
        ["Alice", "Bob", "group:staff", "group:night"],
        {"group:staff": ("mon-fri 07:00-19:00",), "Alice": ("* 00:00-24:00",)},
        g.names,
        {n: g.groups(n) for n in g.names},
    )
    assert found == []


def _d6_config(tmp_path: Path, schedule_key: str) -> Path:
    g = _gallery()
    g.save(tmp_path / "gallery.fgg")
    return _write(
        tmp_path,
        '[gallery]\npath = "gallery.fgg"\n[door]\nenabled = true\npin_factory = "mock"\n'
        f'allow = ["group:staff", "Alice"]\ntimezone = "UTC"\n'
        f'[door.schedule]\n"{schedule_key}" = ["mon-fri 07:00-09:00"]\n',
    )


def test_check_config_names_the_key_that_matches_nobody(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """D6 in check-config: the gallery is read (names and groups only) when it can be."""
    from edge.cli import main

    assert main(["check-config", str(_d6_config(tmp_path, "group:Staff"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facegate: error: door.schedule.group:Staff: ") and "group:staff" in err
    (tmp_path / "later").mkdir()
    assert main(["check-config", str(_d6_config(tmp_path / "later", "Zoe"))]) == 0
    out = capsys.readouterr().out
    assert "warning: door.schedule.Zoe:" in out


def test_the_daemon_refuses_a_near_miss_at_start(tmp_path: Path) -> None:
    """D6 at start: Carol (group staff) is not granted on the strength of "group:Staff"."""
    pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")
    import threading

    from _standins import ScriptedRecognizer

    from edge.daemon import run
    from edge.delivery.publishers import MemoryPublisher
    from edge.sdnotify import Notifier

    cfg = parse_config(
        {
            "door": {"enabled": True, "pin_factory": "mock", "allow": ["group:staff"],
                     "schedule": {"group:Staff": ["mon-fri 07:00-09:00"]}},
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )  # fmt: skip

    class NoFrames:
        dropped = 0
        alive = True
        finished = True

        def start(self) -> None: ...

        def get(self, timeout: float) -> None:
            return None

        def join(self, timeout: float) -> None: ...

    with pytest.raises(ConfigError, match=r"door\.schedule\.group:Staff"):
        run(
            cfg,
            threading.Event(),
            MemoryPublisher(cfg),
            notifier=Notifier(""),
            recognizer=ScriptedRecognizer(_gallery()),
            capture_factory=lambda c, s: NoFrames(),  # type: ignore[arg-type,return-value]
        )
