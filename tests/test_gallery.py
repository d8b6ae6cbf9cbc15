"""The gallery: round trip, encryption at rest, refusal of bad files, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from edge.errors import GalleryError
from edge.gallery import Gallery

SHA = "a" * 64
KEY = b"correct horse battery staple 123"


def _gallery() -> Gallery:
    rng = np.random.default_rng(1)
    g = Gallery(SHA)
    g.add("bob", rng.normal(size=(2, 8)).astype(np.float32))
    g.add("thomas", rng.normal(size=(1, 8)).astype(np.float32))
    return g


@pytest.mark.parametrize("key", [None, KEY])
def test_round_trip(tmp_path: Path, key: bytes | None) -> None:
    g = _gallery()
    p = tmp_path / "g.fgg"
    g.save(p, key)
    back = Gallery.load(p, key, SHA)
    assert back.names == ["bob", "thomas"]
    _, E, starts = back.matrix()
    assert E.shape == (3, 8) and starts.tolist() == [0, 2]
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(E, g.matrix()[1])
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_encrypted_file_hides_names(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, KEY)
    assert b"thomas" not in p.read_bytes()


def test_wrong_key_tampering_and_missing_key_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, KEY)
    with pytest.raises(GalleryError, match="wrong key or the file was tampered"):
        Gallery.load(p, b"another key of sixteen+ bytes", SHA)
    with pytest.raises(GalleryError, match="no key is configured"):
        Gallery.load(p, None, SHA)
    data = bytearray(p.read_bytes())
    data[40] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="tampered"):
        Gallery.load(p, KEY, SHA)


def test_plain_gallery_refused_when_a_key_is_configured(tmp_path: Path) -> None:
    # An attacker must not swap an encrypted gallery for a plain one of their own.
    p = tmp_path / "g.fgg"
    _gallery().save(p, None)
    with pytest.raises(GalleryError, match="not encrypted"):
        Gallery.load(p, KEY, SHA)


def test_corrupt_and_foreign_files(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, None)
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="corrupt"):
        Gallery.load(p, None, SHA)
    p.write_text("hello")
    with pytest.raises(GalleryError, match="not a facegate gallery"):
        Gallery.load(p, None, SHA)
    with pytest.raises(GalleryError, match="cannot read"):
        Gallery.load(tmp_path / "missing.fgg", None, SHA)


def test_gallery_of_another_model_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, None)
    with pytest.raises(GalleryError, match="another model"):
        Gallery.load(p, None, "b" * 64)


def test_atomic_write_keeps_the_old_gallery_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "g.fgg"
    _gallery().save(p, KEY)
    before = p.read_bytes()
    g = Gallery.load(p, KEY, SHA)
    g.add("john", np.ones((1, 8), np.float32))

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        g.save(p, KEY)
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["g.fgg"]  # no temporary file left behind
    assert Gallery.load(p, KEY, SHA).names == ["bob", "thomas"]


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
