"""The gallery: round trip, encryption at rest, refusal of bad files, atomic writes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _hostile import FACEGATE, ROOT, assert_one_line_error, face_photo, write_config
from broker import Broker, Collector, mqtt_broker

from edge.errors import GalleryError
from edge.identity.gallery import (
    MAGIC,
    MODE_PLAIN,
    Gallery,
    manifest_digest,
    read_high_water,
    rebind,
)
from edge.vision.manifest import load_manifest

__all__ = ["mqtt_broker"]

SHA = "a" * 64
MSHA = "m" * 64  # the embedder manifest's digest
KEY = b"correct horse battery staple 123"


def load(p: Path, key: bytes | None = KEY, sha: str = SHA, **kw: Any) -> Gallery:
    return Gallery.load(p, key, sha, manifest_sha256=kw.pop("manifest_sha256", MSHA), **kw)


def _gallery() -> Gallery:
    rng = np.random.default_rng(1)
    g = Gallery(SHA, manifest_sha256=MSHA)
    g.add("bob", rng.normal(size=(2, 8)).astype(np.float32))
    g.add("thomas", rng.normal(size=(1, 8)).astype(np.float32))
    return g


@pytest.mark.parametrize("key", [None, KEY])
def test_round_trip(tmp_path: Path, key: bytes | None) -> None:
    g = _gallery()
    p = tmp_path / "g.fgg"
    g.save(p, key)
    back = load(p, key)
    assert back.names == ["bob", "thomas"]
    _, E, starts = back.matrix()
    assert E.shape == (3, 8) and starts.tolist() == [0, 2]
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(E, g.matrix()[1])
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert back.generation == 1 and read_high_water(p) == 1


def test_encrypted_file_hides_names(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, KEY)
    assert b"thomas" not in p.read_bytes()


def test_wrong_key_tampering_and_missing_key_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, KEY)
    with pytest.raises(GalleryError, match="wrong key or the file was tampered"):
        load(p, b"another key of sixteen+ bytes")
    with pytest.raises(GalleryError, match="no key is configured"):
        load(p, None)
    data = bytearray(p.read_bytes())
    data[40] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="tampered"):
        load(p, KEY)


def test_plain_gallery_refused_when_a_key_is_configured(tmp_path: Path) -> None:
    # An attacker must not swap an encrypted gallery for a plain one of their own.
    p = tmp_path / "g.fgg"
    _gallery().save(p, None)
    with pytest.raises(GalleryError, match="not encrypted"):
        load(p, KEY)


def test_corrupt_and_foreign_files(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, None)
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="corrupt"):
        load(p, None)
    p.write_text("hello")
    with pytest.raises(GalleryError, match="not a facegate gallery"):
        load(p, None)
    with pytest.raises(GalleryError, match="cannot read"):
        load(tmp_path / "missing.fgg", None)


def test_gallery_of_another_model_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, None)
    with pytest.raises(GalleryError, match="another model"):
        load(p, None, "b" * 64)


def test_atomic_write_keeps_the_old_gallery_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, KEY)
    before = p.read_bytes()
    g = load(p, KEY)
    g.add("john", np.ones((1, 8), np.float32))

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(GalleryError, match=r"cannot write gallery \(power cut\)"):
        g.save(p, KEY)
    monkeypatch.undo()
    assert p.read_bytes() == before
    # No temporary file left behind.
    assert sorted(os.listdir(tmp_path)) == ["g.fgg", "g.fgg.generation"]
    assert load(p, KEY).names == ["bob", "thomas"]


def test_add_remove_and_validation() -> None:
    g = _gallery()
    g.add("bob", np.ones((1, 8), np.float32))
    assert len(g.person("bob").embeddings) == 3
    g.remove("thomas")
    assert g.names == ["bob"]
    with pytest.raises(GalleryError):
        g.remove("nobody")
    with pytest.raises(GalleryError, match="embedding size"):
        g.add("eve", np.ones((1, 4), np.float32))
    with pytest.raises(GalleryError, match="invalid person name"):
        g.add("\n", np.ones((1, 8), np.float32))


# -- the manifest is bound ------------------------------------------------------------


def test_manifest_digest_is_canonical_and_sees_every_digit(models: Path) -> None:
    m = load_manifest(models / "sface_int8.tflite")
    assert manifest_digest(m) == manifest_digest(load_manifest(models / "sface_int8.json"))
    assert m.calibration is not None
    from dataclasses import replace

    edited = replace(m, calibration=replace(m.calibration, threshold=1.5))
    assert manifest_digest(edited) != manifest_digest(m)
    nudged = replace(m, output=replace(m.output, scale=m.output.scale * (1 + 1e-9)))
    assert manifest_digest(nudged) != manifest_digest(m)


def test_gallery_of_another_manifest_is_refused_with_how_to_accept_it(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, KEY)
    with pytest.raises(GalleryError, match=r"enrolled under manifest mmmm") as e:
        load(p, KEY, manifest_sha256="n" * 64)
    assert "facegate gallery rebind" in str(e.value) and "\n" not in str(e.value)


def _copy_models(models: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("face_detection_short_range", "sface_int8"):
        for ext in (".tflite", ".json"):
            shutil.copy(models / f"{name}{ext}", dest / f"{name}{ext}")
    return dest


def test_edited_manifest_refused_end_to_end_until_rebind(tmp_path: Path, models: Path) -> None:
    """The issue's attack: threshold 1.5 in the manifest. identify refuses; rebind accepts."""
    m = _copy_models(models, tmp_path / "models")
    (tmp_path / "gallery.key").write_bytes(b"k" * 32)
    (tmp_path / "gallery.key").chmod(0o600)
    cfg = write_config(
        tmp_path / "door.toml",
        {
            "detector": {"model": str(m / "face_detection_short_range.tflite")},
            "embedder": {"model": str(m / "sface_int8.tflite")},
            "gallery": {"path": "gallery.fgg", "key_file": "gallery.key"},
        },
    )
    photo = str(face_photo())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FACEGATE, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
        )

    r = cli("enroll", "--config", str(cfg), "--gallery", str(tmp_path / "gallery.fgg"),
            "--name", "Grace", photo)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads((m / "sface_int8.json").read_text())
    doc["calibration"]["threshold"] = 1.5
    (m / "sface_int8.json").write_text(json.dumps(doc, indent=2))
    r = cli("identify", "--config", str(cfg), "--gallery", str(tmp_path / "gallery.fgg"), photo)
    assert r.returncode == 2
    assert_one_line_error(r.stderr, "facegate gallery rebind")
    # Rebind needs the key: without it, nothing changes.
    r = cli("gallery", "rebind", "--config", str(cfg), "--gallery", str(tmp_path / "gallery.fgg"),
            "--key-file", str(tmp_path / "nokey"))  # fmt: skip
    assert r.returncode == 2
    r = cli("gallery", "rebind", "--config", str(cfg), "--gallery", str(tmp_path / "gallery.fgg"))
    assert r.returncode == 0, r.stderr
    r = cli("identify", "--config", str(cfg), "--gallery", str(tmp_path / "gallery.fgg"), photo)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["faces"][0]["name"] == "Grace"


# -- rollback and forged embeddings ----------------------------------------------------


def test_an_older_generation_put_back_is_refused_unless_allowed(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    g = _gallery()
    g.save(p, KEY)
    old = p.read_bytes()
    g.remove("thomas")  # removed on purpose ...
    g.save(p, KEY)
    assert read_high_water(p) == 2
    p.write_bytes(old)  # ... and brought back by copying the old file
    with pytest.raises(
        GalleryError, match=r"generation 1 is older than the newest seen here \(2\)"
    ):
        load(p)
    assert "thomas" in load(p, allow_rollback=True).names
    # The mark is not secret: the service user reads what root wrote.
    assert stat.S_IMODE((tmp_path / "g.fgg.generation").stat().st_mode) == 0o644


def test_rebind_accepts_a_restored_copy_on_purpose(tmp_path: Path, models: Path) -> None:
    manifest = load_manifest(models / "sface_int8.tflite")
    p = tmp_path / "g.fgg"
    g = Gallery.for_manifest(manifest)
    g.add("bob", np.ones((1, manifest.embedding_size), np.float32))
    g.save(p, KEY)
    old = p.read_bytes()
    g.add("carol", np.ones((1, manifest.embedding_size), np.float32))
    g.save(p, KEY)
    p.write_bytes(old)
    with pytest.raises(GalleryError, match="older than the newest"):
        rebind(p, KEY, manifest)
    back = rebind(p, KEY, manifest, allow_rollback=True)
    assert back.names == ["bob"] and back.generation == 3
    assert Gallery.load(
        p, KEY, manifest.sha256, manifest_sha256=manifest_digest(manifest)
    ).names == ["bob"]


def _plain_blob(doc: dict[str, Any]) -> bytes:
    payload = json.dumps(doc).encode()
    return MAGIC + bytes([MODE_PLAIN]) + hashlib.sha256(payload).digest() + payload


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.full(8, 50.0 / np.sqrt(8), np.float32), "not of unit length"),
        (np.array([np.nan] + [0.0] * 7, np.float32), "non-finite"),
        (np.array([np.inf] + [0.0] * 7, np.float32), "non-finite"),
        (np.zeros(8, np.float32), "not of unit length"),
    ],
)
def test_forged_embeddings_are_refused_on_load(
    tmp_path: Path, vector: np.ndarray, message: str
) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, None)
    doc = json.loads(p.read_bytes()[37:])
    doc["people"]["mallory"] = {
        "added": 0.0,
        "count": 1,
        "embeddings": base64.b64encode(vector.astype("<f4").tobytes()).decode(),
    }
    p.write_bytes(_plain_blob(doc))
    with pytest.raises(GalleryError, match=message):
        load(p, None)
    with pytest.raises(GalleryError):
        _gallery().add("eve", vector[None, :] * np.nan)


def test_stale_temporary_files_are_cleaned_on_the_next_write(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    stale = tmp_path / ".g.fgg.dead1234.tmp"
    fresh = tmp_path / ".g.fgg.live5678.tmp"
    stale.write_bytes(b"left by kill -9")
    fresh.write_bytes(b"another writer, right now")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    _gallery().save(p, KEY)
    assert not stale.exists() and fresh.exists()


def test_gallery_that_is_a_fifo_or_in_a_file_is_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.fgg"
    os.mkfifo(fifo)
    with pytest.raises(GalleryError, match="not a regular file"):
        load(fifo)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GalleryError, match="cannot write gallery"):
        _gallery().save(tmp_path / "file" / "g.fgg", KEY)


# -- a reload never empties the door ---------------------------------------------------


@pytest.mark.mqtt
def test_reload_with_the_gallery_missing_keeps_the_old_one(
    tmp_path: Path, models: Path, mqtt_broker: Broker
) -> None:
    """``mv gallery away; kill -HUP`` and the ``reload-gallery`` command keep the old gallery."""
    import cv2

    from edge.decide.recognizer import Recognizer
    from edge.delivery.topics import Topics
    from edge.imageio import read_image

    rec = Recognizer.from_models(
        models / "face_detection_short_range.tflite", models / "sface_int8.tflite"
    )
    g = Gallery.for_manifest(rec.embedder.manifest)
    g.add("Grace", rec.embed_single_face(read_image(face_photo()))[None, :])
    g.save(tmp_path / "gallery.fgg")
    replay = tmp_path / "replay"
    replay.mkdir()
    face = cv2.imread(str(face_photo()))
    canvas = np.zeros((480, 640, 3), np.uint8)
    s = min(400 / face.shape[0], 400 / face.shape[1])
    small = cv2.resize(face, (int(face.shape[1] * s), int(face.shape[0] * s)))
    canvas[40 : 40 + small.shape[0], 100 : 100 + small.shape[1]] = small
    cv2.imwrite(str(replay / "0_face.png"), canvas)
    for i in range(1, 5):
        cv2.imwrite(str(replay / f"{i}_empty.png"), np.zeros((480, 640, 3), np.uint8))
    cfg = write_config(
        tmp_path / "door.toml",
        {
            "device": {"id": "reload-door"},
            "camera": {"source": "folder", "path": "replay", "fps": 20.0, "loop": True},
            "gallery": {"path": "gallery.fgg"},
            "decision": {"k": 1, "n": 1, "cooldown_s": 0.0, "max_track_age_s": 0.1},
            "mqtt": {"enabled": True, "host": mqtt_broker.host, "port": mqtt_broker.port,
                     "commands": True},
            "service": {"state_dir": str(tmp_path / "state"), "log_level": "INFO"},
        },
    )  # fmt: skip
    topics = Topics.for_device("facegate", "reload-door")
    sub = Collector(mqtt_broker, [topics.event], persistent=False).start()
    proc = subprocess.Popen(
        [*FACEGATE, "run", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()

    def names() -> list[str | None]:
        return [json.loads(p)["name"] for p in sub.payloads(topics.event)]

    def wait(pred: Any, what: str) -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end and proc.poll() is None:
            if pred():
                return
            time.sleep(0.1)
        raise AssertionError(f"{what}; log:\n{''.join(lines)}")

    try:
        wait(lambda: "Grace" in names(), "Grace never recognized")
        (tmp_path / "gallery.fgg").rename(tmp_path / "gallery.away")
        proc.send_signal(signal.SIGHUP)
        wait(lambda: sum("keeping the old one" in ln for ln in lines) >= 1, "no SIGHUP refusal")
        sub.client.publish(topics.command, json.dumps({"command": "reload-gallery"}), qos=1)
        wait(lambda: sum("keeping the old one" in ln for ln in lines) >= 2, "no command refusal")
        seen = len(names())
        wait(lambda: names()[seen:].count("Grace") >= 2, "Grace no longer recognized")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        sub.stop()
    reader.join(timeout=5)
    log = "".join(lines)
    assert "gallery file is missing" in log
    assert "gallery reloaded" not in log
    assert None not in names()  # no face became "unknown"


def test_a_person_name_never_reads_as_a_group_or_a_control_sequence(tmp_path: Path) -> None:
    from edge.identity.gallery import check_new_name

    assert check_new_name("  Zoë O'Brien 😀 ") == "Zoë O'Brien 😀"
    assert check_new_name("groups: Ann") == "groups: Ann"  # only the exact prefix is a group
    bad_names = ("group:staff", "Group:staff", " group:x", "", "   ", "a\nb", "a\x1b[2J", "x" * 129)
    for bad in bad_names:
        with pytest.raises(GalleryError, match="invalid person name"):
            check_new_name(bad)
    g = Gallery("sha", 4)
    with pytest.raises(GalleryError, match=r"names a group in door\.allow"):
        g.add("group:staff", np.eye(4, dtype=np.float32)[:1])
    assert g.names == []
    # The CLI says so before it reads a photo (this one does not exist).
    p = subprocess.run(
        [*FACEGATE, "enroll", "--gallery", str(tmp_path / "g.fgg"), "--name", "group:staff",
         str(tmp_path / "missing.jpg")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 2
    assert_one_line_error(p.stderr, "invalid person name 'group:staff'")
    assert not (tmp_path / "g.fgg").exists()
