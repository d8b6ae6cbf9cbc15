"""Person groups in the gallery, and the door's command-line tools."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edge.errors import GalleryError
from edge.identity.gallery import Gallery

KEY = b"g" * 32


def _gallery(sha: str = "sha-test", size: int = 4, manifest: str = "manifest-test") -> Gallery:
    g = Gallery(sha, size, manifest_sha256=manifest)
    rng = np.random.default_rng(1)
    for name in ("Alice", "Bob"):
        g.add(name, rng.normal(size=(2, size)).astype(np.float32))
    return g


@pytest.mark.parametrize("key", [None, KEY])
def test_groups_are_saved_with_the_person(tmp_path: Path, key: bytes | None) -> None:
    g = _gallery()
    g.set_groups("Alice", ["staff", "night", "staff"])
    g.add("Alice", np.ones((1, 4), np.float32))  # more photos keep the groups
    g.save(tmp_path / "g.fgg", key)
    back = Gallery.load(tmp_path / "g.fgg", key, "sha-test", manifest_sha256="manifest-test")
    assert back.groups("Alice") == ("night", "staff")
    assert back.groups("Bob") == () and back.groups("Nobody") == ()
    assert len(back.person("Alice").embeddings) == 3


def test_a_gallery_without_groups_still_loads(tmp_path: Path) -> None:
    g = _gallery()
    g.save(tmp_path / "g.fgg")
    # People without groups are stored exactly as before groups existed.
    assert b'"groups"' not in (tmp_path / "g.fgg").read_bytes()
    assert (
        Gallery.load(tmp_path / "g.fgg", None, "sha-test", manifest_sha256=None).groups("Alice")
        == ()
    )


def test_bad_group_names_and_unknown_people_are_refused() -> None:
    g = _gallery()
    for bad in ("", "with space", "a/b", "x" * 65, "group:staff"):
        with pytest.raises(GalleryError, match="invalid group name"):
            g.set_groups("Alice", [bad])
    with pytest.raises(GalleryError, match="no person named"):
        g.set_groups("Carol", ["staff"])


def test_gallery_set_groups_and_list(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.cli import main
    from edge.vision.embedder import Embedder

    emb = Embedder.load(models / "sface_int8.tflite")
    g = Gallery.for_manifest(emb.manifest)
    rng = np.random.default_rng(1)
    for name in ("Alice", "Bob"):
        g.add(name, rng.normal(size=(2, emb.dim)).astype(np.float32))
    path = tmp_path / "g.fgg"
    g.save(path)
    assert main(["gallery", "set-groups", "Alice", "staff", "night", "--gallery", str(path)]) == 0
    assert main(["gallery", "list", "--gallery", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = [json.loads(x) for x in out if x.startswith("{")]
    assert {p["name"]: p["groups"] for p in listed} == {"Alice": ["night", "staff"], "Bob": []}
    assert main(["gallery", "set-groups", "Alice", "--gallery", str(path)]) == 0  # clears
    assert Gallery.load(path, None, emb.sha256, manifest_sha256=None).groups("Alice") == ()
    assert main(["gallery", "set-groups", "--gallery", str(path)]) == 2
    assert main(["gallery", "set-groups", "Alice", "bad group", "--gallery", str(path)]) == 2
    err = capsys.readouterr().err
    assert "invalid group name" in err and "Traceback" not in err


def test_enroll_with_groups(
    tmp_path: Path, models: Path, shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.cli import main
    from edge.imageio import list_images
    from edge.vision.embedder import Embedder

    photos = shared / "faces" / "Barack_Obama"  # a multi-face photo is skipped, the rest used
    assert list_images(photos)
    path = tmp_path / "g.fgg"
    args = ["enroll", "--gallery", str(path), "--name", "Obama", "--group", "staff"]
    assert main([*args, "--group", "board", str(photos)]) == 0, capsys.readouterr().err
    sha = Embedder.load(models / "sface_int8.tflite").sha256
    assert Gallery.load(path, None, sha, manifest_sha256=None).groups("Obama") == ("board", "staff")


def _door_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "door.toml"
    cfg.write_text(
        f'[service]\nstate_dir = "{tmp_path}"\n[device]\nid = "front-door"\n'
        '[door]\nenabled = true\npin_factory = "mock"\nmock_log = "relay.log"\n' + extra
    )
    return cfg


def test_facegate_door_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")
    from edge.cli import main

    cfg = _door_config(tmp_path, "contact_pin = 5\n")
    assert main(["door", "test", "--config", str(cfg), "--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "relay GPIO17 energised for 0.05 s" in out and "relay released" in out
    assert "inputs before: door open (GPIO5)" in out  # mock contact: open switch
    states = [ln.split()[2] for ln in (tmp_path / "relay.log").read_text().splitlines()]
    assert "".join(s for i, s in enumerate(states) if i == 0 or s != states[i - 1]) == "010"
    assert main(["audit", "--config", str(cfg)]) == 0
    [entry] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert entry["kind"] == "door_test"


def test_facegate_door_sign_unlock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main
    from edge.door.remote import NonceCache, verify_unlock

    (tmp_path / "unlock.key").write_bytes(b"k" * 32)
    cfg = _door_config(
        tmp_path,
        'remote_unlock = true\nremote_key_file = "unlock.key"\n'
        "[mqtt]\nenabled = true\ncommands = true\n",
    )
    assert main(["door", "sign-unlock", "--config", str(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"command", "ts", "nonce", "hmac"}
    reason = verify_unlock(
        doc,
        key=b"k" * 32,
        device_id="front-door",
        now=time.time(),
        mono=0.0,
        synced=True,
        nonces=NonceCache(),
    )
    assert reason is None
    (tmp_path / "x").mkdir()
    no_key = _door_config(tmp_path / "x")
    assert main(["door", "sign-unlock", "--config", str(no_key)]) == 2
    assert "no key configured" in capsys.readouterr().err


# -- issue 19: the door's command-line edges -------------------------------------------------


@pytest.mark.parametrize("seconds", ["inf", "1e9", "121", "nan", "0", "-1"])
def test_door_test_seconds_has_the_bounds_of_unlock_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seconds: str
) -> None:
    """D9: ``--seconds`` outside ``door.unlock_s``'s (0, 120] is one line, and nothing pulses."""
    pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")
    from edge.cli import main

    cfg = _door_config(tmp_path)
    assert main(["door", "test", "--config", str(cfg), "--seconds", seconds]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("facegate: error: door test --seconds:"), err
    assert "Traceback" not in captured.err and "energised" not in captured.out
    assert not (tmp_path / "relay.log").exists()  # the relay was never touched


def test_door_test_takes_the_state_dir_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """D13: ``door test`` beside a running daemon (same state_dir) is one line, no pulse."""
    pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")
    from edge.cli import main
    from edge.files import StateLock

    cfg = _door_config(tmp_path)
    with StateLock(tmp_path):
        assert main(["door", "test", "--config", str(cfg), "--seconds", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "in use by another facegate process" in err and "Traceback" not in err
    assert not (tmp_path / "relay.log").exists()
