"""The TOML config: validation with key paths, secrets from files and credentials."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest
from _hostile import FACEGATE, assert_one_line_error, write_config

from edge.cli import main
from edge.config import (
    Config,
    Range,
    SourceName,
    load_config,
    parse_config,
    read_secret,
)
from edge.errors import ConfigError


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"mqtt": {"port": "x"}}, "mqtt.port: expected an integer"),
        ({"mqtt": {"bogus": 1}}, "mqtt.bogus: unknown key"),
        ({"nosuch": {}}, "nosuch: unknown section"),
        ({"camera": {"source": "webcam"}}, "camera.source: must be one of"),
        ({"decision": {"k": 5, "n": 4}}, "decision.k: must be at most"),
        ({"embedder": {"num_threads": 0}}, "embedder.num_threads: must be in [1, 64], got 0"),
        ({"mqtt": {"tls": "yes"}}, "mqtt.tls: expected true or false"),
        ({"camera": {"source": "folder"}}, "camera.path: required"),
        ({"gallery": {"key_file": "a", "key_credential": "b"}}, "gallery.key_file"),
        ({"mqtt": 3}, "mqtt: expected a table"),
        ({"camera": {"width": 0}}, "camera.width: must be in [1, 16384], got 0"),
        ({"camera": {"source": "opencv", "uri": ""}}, "camera.uri: required"),
    ],
)
def test_errors_name_the_key_path(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(doc)


def test_defaults_and_int_to_float() -> None:
    cfg = parse_config({"decision": {"cooldown_s": 5}, "device": {"id": "door-1"}})
    assert cfg.decision.cooldown_s == 5.0 and isinstance(cfg.decision.cooldown_s, float)
    assert cfg.decision.k == 3 and cfg.decision.n == 4
    assert cfg.device.id == "door-1"


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "systemd" / "facegate.example.toml"
    cfg = load_config(example, environment=False)
    assert cfg.camera.source in ("picamera2", "opencv", "folder", "fake")


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\nport = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[device]\nid = "door"\n[mqtt]\nport = 8883\n')
    assert main(["check-config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 'eighty'\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mqtt.port" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize(
    ("camera", "message"),
    [
        (
            {"uri": "rtsp://u@cam/x", "password_file": "a", "password_credential": "b"},
            r"camera\.password_file: give password_file or password_credential",
        ),
        ({"uri": "0", "password_file": "a"}, r"camera\.password_file: needs .*USER@host"),
        ({"uri": "rtsp://cam/x", "password_credential": "c"}, r"camera\.password_credential"),
        (
            {"source": "picamera2", "uri": "rtsp://u@cam/x", "password_file": "a"},
            r"camera\.password_file: needs camera\.source = 'opencv'",
        ),
        (
            {"uri": "rtsp://u:inline@cam/x", "password_file": "a"},
            r"camera\.uri: holds a password",
        ),
    ],
)
def test_camera_password_settings_are_checked(camera: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"camera": camera})


def test_secrets_from_file_and_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_bytes(b"s3cret\n")
    assert read_secret("pw", "", "mqtt.password", base_dir=tmp_path) == b"s3cret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_bytes(b"from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret("", "mqtt-password", "mqtt.password") == b"from-systemd"
    assert read_secret("", "", "x") is None
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        read_secret("", "mqtt-password", "mqtt.password")
    with pytest.raises(ConfigError, match="cannot read secret"):
        read_secret("nope", "", "gallery.key", base_dir=tmp_path)


def test_readme_config_block_is_valid_and_names_every_key() -> None:
    # The README documents the config by one complete example; it must parse,
    # and a key added to the code without documenting it fails here.
    import dataclasses
    import re
    import tomllib

    from edge.config import Config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    # Optional keys are shown commented out ("# threshold = 0.39"): count them too.
    block = re.sub(r"(?m)^# (\w+ = )", r"\1", block)
    data = tomllib.loads(block)
    parse_config(data)
    for section in dataclasses.fields(Config):
        if section.name == "base_dir":
            continue
        documented = set(data.get(section.name, {}))
        keys = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert keys == documented, f"[{section.name}] differs: {keys ^ documented}"


# -- hostile values (issue: config validation gaps) ------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"gallery": {"path": "g" * 5000}}, "gallery.path: too long"),
        ({"gallery": {"path": "a/" + "b" * 300 + "/g"}}, "gallery.path: path component too long"),
        ({"gallery": {"path": "ga\x00llery.fgg"}}, "gallery.path: must not contain control"),
        ({"service": {"state_dir": ""}}, "service.state_dir: must not be empty"),
        ({"mqtt": {"outbox_path": ""}}, "mqtt.outbox_path: must not be empty"),
        ({"mqtt": {"outbox_path": "."}}, "mqtt.outbox_path: '.' names a folder"),
        ({"mqtt": {"outbox_path": "state/"}}, "mqtt.outbox_path: 'state/' names a folder"),
        ({"mqtt": {"host": ""}}, "mqtt.host: must not be empty"),
        ({"mqtt": {"host": "h" * 10_000}}, "mqtt.host: too long"),
        ({"mqtt": {"host": "broker lan"}}, "mqtt.host: 'broker lan' is not a host name"),
        ({"service": {"stop_timeout_s": float("inf")}}, "service.stop_timeout_s: must be a finite"),
        ({"decision": {"cooldown_s": float("nan")}}, "decision.cooldown_s: must be a finite"),
        ({"camera": {"fps": -1.0}}, "camera.fps: must be in (0, 240], got -1.0"),
        ({"embedder": {"num_threads": 2**63}}, "embedder.num_threads: integer out of range"),
        ({"mqtt": {"port": 70000}}, "mqtt.port: must be in [1, 65535], got 70000"),
        ({"mqtt": {"keepalive": -5}}, "mqtt.keepalive: must be in [1, 65535]"),
        ({"detector": {"score_threshold": 1.5}}, "detector.score_threshold: must be in (0, 1)"),
        ({"matching": {"threshold": 2.0}}, "matching.threshold: must be in (0, 2), got 2.0"),
        ({"matching": {"margin": -0.1}}, "matching.margin: must be in [0, 2)"),
        ({"device": {"id": "door/1"}}, "device.id: 'door/1' is not made of A-Z a-z 0-9 _ -"),
        ({"device": {"id": "door+"}}, "device.id: 'door+' is not made of A-Z a-z 0-9 _ -"),
        ({"device": {"id": ""}}, "device.id: must not be empty"),
        ({"mqtt": {"prefix": "///"}}, "mqtt.prefix: must not be empty"),
        ({"mqtt": {"prefix": "$SYS"}}, "mqtt.prefix: '$SYS': topics starting with '$'"),
        ({"mqtt": {"ha_prefix": "home/#"}}, "mqtt.ha_prefix: 'home/#' cannot be used"),
        ({"mqtt": {"password_file": "pw"}}, "mqtt.username: a password is configured"),
        ({"gallery": {"key_credential": "../key"}}, "gallery.key_credential: '../key' is not"),
        ({"service": {"log_level": "debug"}}, "service.log_level: must be one of DEBUG"),
        ({"camera": {"source": 3}}, "camera.source: must be one of"),
        (
            {"gallery": {"path": "same.fgg"}, "service": {"state_dir": "sub"},
             "mqtt": {"enabled": True, "outbox_path": "../same.fgg"}},
            "mqtt.outbox_path: names the same file as gallery.path",
        ),
    ],
)  # fmt: skip
def test_hostile_values_are_one_line_errors_naming_the_key(
    doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_config(doc)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_every_numeric_key_has_a_range_and_every_choice_a_literal() -> None:
    """A new key without its constraint fails here, not in the field."""
    for section in dataclasses_fields(Config):
        cls = typing.get_type_hints(Config)[section]
        hints = typing.get_type_hints(cls, include_extras=True)
        for name, tp in hints.items():
            if name == "SECTION":
                continue
            base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
            numeric = base in (int, float) or set(typing.get_args(base)) & {int, float}
            if numeric:
                rules = typing.get_args(tp)[1:] if typing.get_origin(tp) is typing.Annotated else ()
                assert any(isinstance(r, Range) for r in rules), f"{section}.{name}: no Range"


def dataclasses_fields(cls: type) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(cls) if f.name != "base_dir"]


def test_source_names_live_in_one_place() -> None:
    from edge.sources import registered

    assert set(registered()) == set(typing.get_args(SourceName))


def test_deeply_nested_toml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "deep.toml"
    p.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert main(["check-config", str(p)]) == 2
    assert_one_line_error(capsys.readouterr().err, "nested too deeply")


def test_config_that_is_a_fifo_or_a_device_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        r = subprocess.run(
            [*FACEGATE, "check-config", str(path)], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 2
        assert_one_line_error(r.stderr, "cannot read config")
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    with pytest.raises(ConfigError, match="too large"):
        load_config(big)


def test_threshold_that_turns_the_open_set_promise_off_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="facegate.config"):
        parse_config({"matching": {"threshold": 0.4}})
        assert not caplog.records
        parse_config({"matching": {"threshold": 1.2}})
    assert any("strangers are no longer" in r.getMessage() for r in caplog.records)


def test_secret_files_readable_by_others_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "gallery.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    cfg = write_config(tmp_path / "c.toml", {"gallery": {"key_file": "gallery.key"}})
    with caplog.at_level(logging.WARNING, logger="facegate.config"):
        load_config(cfg)
    assert any("gallery.key_file" in r.getMessage() and "chmod 600" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    caplog.clear()
    key.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="facegate.config"):
        load_config(cfg)
    assert not caplog.records


def test_outbox_path_empty_never_touches_the_config_folder(tmp_path: Path) -> None:
    """The issue's case: outbox_path = "" with state_dir "." must not rename the folder."""
    door = tmp_path / "door"
    door.mkdir()
    (door / "gallery.key").write_bytes(b"k" * 32)
    cfg = write_config(
        door / "facegate.toml",
        {"camera": {"source": "fake"}, "mqtt": {"enabled": True, "outbox_path": ""},
         "service": {"state_dir": "."}},
    )  # fmt: skip
    before = sorted(p.name for p in door.iterdir())
    for cmd in (["check-config", str(cfg)], ["run", "--config", str(cfg)]):
        r = subprocess.run([*FACEGATE, *cmd], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert_one_line_error(r.stderr, "mqtt.outbox_path: must not be empty")
    assert sorted(p.name for p in door.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["door"]


@pytest.mark.parametrize(
    "sections",
    [
        {"mqtt": {"enabled": True, "outbox_path": "facegate.toml"}},  # the config itself
        {"mqtt": {"enabled": True, "outbox_path": "sub"}},  # an existing folder
        {"gallery": {"path": "sub"}},
    ],
)
def test_check_config_and_run_agree_on_files_the_daemon_would_write(
    tmp_path: Path, sections: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sub").mkdir()
    cfg = write_config(tmp_path / "facegate.toml", {"camera": {"source": "fake"}, **sections})
    assert main(["check-config", str(cfg)]) == 2
    check = assert_one_line_error(capsys.readouterr().err)
    assert main(["run", "--config", str(cfg)]) == 2
    assert assert_one_line_error(capsys.readouterr().err) == check
    assert (tmp_path / "sub").is_dir() and (tmp_path / "facegate.toml").is_file()


def test_sections_validate_when_built_in_code_too() -> None:
    """dataclasses.replace (the CLI's overrides) and direct construction run the same checks."""
    import dataclasses

    from edge.config import MqttConfig

    cfg = Config()
    with pytest.raises(ConfigError, match=r"gallery\.path: must not contain control"):
        dataclasses.replace(cfg.gallery, path="a\x00b")
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        MqttConfig(port=0)
    assert Config().camera.password.configured is False
