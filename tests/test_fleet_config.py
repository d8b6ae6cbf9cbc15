"""``[fleet]`` in the config: each mistake is one error naming its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config import parse_config
from edge.errors import ConfigError

KEYS = {"site_key_file": "site.key", "public_key_file": "public.pem"}
DOOR = {"enabled": True, "site": "hq", **KEYS}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"fleet": DOOR}, "fleet.enabled: needs mqtt.enabled = true"),
        ({"mqtt": {"enabled": True}, "fleet": {**DOOR, "site": ""}}, "fleet.site: required"),
        ({"fleet": {"site": "h/q"}}, "fleet.site: 'h/q' is not made of A-Z a-z 0-9 _ -"),
        (
            {"mqtt": {"enabled": True}, "fleet": {"enabled": True, "site": "hq"}},
            "fleet.site_key_file: fleet.enabled needs the site key",
        ),
        (
            {
                "mqtt": {"enabled": True},
                "fleet": {"enabled": True, "site": "hq", "site_key_file": "k"},
            },
            "fleet.public_key_file: fleet.enabled needs the admin's public key",
        ),
        (
            {"mqtt": {"enabled": True}, "fleet": {**DOOR, "signing_key_file": "s.pem"}},
            "fleet.signing_key_file: a door never holds the signing key",
        ),
        (
            {"device": {"id": "_fleet"}, "mqtt": {"enabled": True}, "fleet": DOOR},
            "device.id: '_fleet' is the topic level of gallery bundles",
        ),
        ({"fleet": {"max_age_s": -1.0}}, "fleet.max_age_s: must be in [0,"),
        ({"fleet": {"chunk_kib": 0}}, "fleet.chunk_kib: must be in [1, 1024]"),
        ({"fleet": {"sync_wait_s": 0.0}}, "fleet.sync_wait_s: must be in (0, 600]"),
        ({"fleet": {"bogus": 1}}, "fleet.bogus: unknown key"),
        (
            {"fleet": {**KEYS, "site_key_file": "same", "public_key_file": "same"}},
            "names the same file",
        ),
    ],
)
def test_fleet_config_errors(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_check_config_reads_the_fleet_keys(tmp_path: Path) -> None:
    from edge.config import load_config

    (tmp_path / "site.key").write_text("short")
    (tmp_path / "public.pem").write_text("x")
    cfg = tmp_path / "door.toml"
    cfg.write_text(
        '[camera]\nsource = "fake"\n[mqtt]\nenabled = true\n'
        '[fleet]\nenabled = true\nsite = "hq"\nsite_key_file = "site.key"\n'
        'public_key_file = "public.pem"\n'
        f'[service]\nstate_dir = "{tmp_path}"\n'
    )
    with pytest.raises(ConfigError, match=r"fleet.site_key: too short \(5 bytes, need 16\+\)"):
        load_config(cfg)


def test_check_config_wants_a_pem_public_key(tmp_path: Path) -> None:
    from edge.config import load_config

    (tmp_path / "site.key").write_text("s" * 32)
    (tmp_path / "public.pem").write_text("not a key")
    cfg = tmp_path / "door.toml"
    cfg.write_text(
        '[camera]\nsource = "fake"\n[mqtt]\nenabled = true\n'
        '[fleet]\nenabled = true\nsite = "hq"\nsite_key_file = "site.key"\n'
        'public_key_file = "public.pem"\n'
        f'[service]\nstate_dir = "{tmp_path}"\n'
    )
    with pytest.raises(ConfigError, match=r"fleet\.public_key: no PEM public key"):
        load_config(cfg)
