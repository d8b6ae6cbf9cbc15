"""The TOML config: validation with key paths, secrets from files and credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import main
from edge.config import load_config, parse_config, read_secret
from edge.errors import ConfigError


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"mqtt": {"port": "x"}}, "mqtt.port: expected an integer"),
        ({"mqtt": {"bogus": 1}}, "mqtt.bogus: unknown key"),
        ({"nosuch": {}}, "nosuch: unknown section"),
        ({"camera": {"source": "webcam"}}, "camera.source: must be one of"),
        ({"decision": {"k": 5, "n": 4}}, "decision.k: must be at most"),
        ({"embedder": {"num_threads": 0}}, "embedder.num_threads: must be positive"),
        ({"mqtt": {"tls": "yes"}}, "mqtt.tls: expected true or false"),
        ({"camera": {"source": "folder"}}, "camera.path: required"),
        ({"gallery": {"key_file": "a", "key_credential": "b"}}, "gallery.key_file"),
        ({"mqtt": 3}, "mqtt: expected a table"),
        ({"camera": {"width": 0}}, "camera.width: must be positive"),
        ({"camera": {"source": "opencv", "uri": ""}}, "camera.uri: required"),
    ],
)
def test_errors_name_the_key_path(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(doc)


def test_defaults_and_int_to_float() -> None:
    cfg = parse_config({"decision": {"cooldown_s": 5}, "device": {"id": "door-1"}})
    assert cfg.decision.cooldown_s == 5.0 and isinstance(cfg.decision.cooldown_s, float)
    assert cfg.decision.k == 3 and cfg.decision.n == 4
    assert cfg.device.id == "door-1"


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "systemd" / "facegate.example.toml"
    cfg = load_config(example)
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
