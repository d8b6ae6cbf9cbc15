"""The gallery bundle as pure functions: round trip, and every refusal with its reason."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from _fleet import MANIFEST, MODEL, SITE, bundle, gallery, keys

from edge.errors import ConfigError, FleetError
from edge.fleet import bundle as b
from edge.fleet.keys import AdminKeys, DoorKeys, generate, key_id, load_public_keys

Keys = tuple[AdminKeys, DoorKeys]


@pytest.fixture(scope="module")
def ks(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return keys(tmp_path_factory.mktemp("keys"))


def _open(bd: b.Bundle, door: DoorKeys) -> b.ManifestInfo:
    info = b.read_manifest(bd.manifest, door.public_keys, site=SITE)
    b.check_model(info, MODEL, MANIFEST)
    return info


def test_round_trip_keeps_people_embeddings_and_groups(ks: Keys) -> None:
    admin, door = ks
    g = gallery(["Alice", "Bob", "Carol"])
    g.set_groups("Alice", ["staff", "night"])
    bd = b.build_bundle(g, site=SITE, version=7, keys=admin, created=1.0, chunk_bytes=100)
    assert len(bd.chunks) > 3 and all(len(c) <= 100 for c in bd.chunks)
    info = _open(bd, door)
    assert (info.version, info.people, info.site) == (7, 3, SITE)
    out = b.open_bundle(info, bd.chunks, door.site_key)
    assert out.names == ["Alice", "Bob", "Carol"]
    assert out.groups("Alice") == ("night", "staff")
    for n in g.names:
        assert np.allclose(out.person(n).embeddings, g.person(n).embeddings, atol=1e-6)
    assert (out.model_sha256, out.manifest_sha256) == (MODEL, MANIFEST)


def test_no_plaintext_in_the_chunks_and_names_sealed(ks: Keys) -> None:
    admin, _ = ks
    bd = bundle(admin, ["Zebulon Quixote"], 1, revoked=(b.Revocation("Yolanda Vex", 1),))
    wire = bd.manifest + b"".join(bd.chunks)
    body = base64.b64decode(json.loads(bd.manifest)["body"])
    assert b"Zebulon" not in wire and b"Zebulon" not in body
    assert b"Yolanda" not in wire and b"Yolanda" not in body


def test_forged_manifest_is_refused_before_anything_else(tmp_path: Path, ks: Keys) -> None:
    _, door = ks
    thief, _ = keys(tmp_path, "thief")
    forged = bundle(thief, ["Mallory"], 99)
    with pytest.raises(b.BundleRefused) as e:
        b.read_manifest(forged.manifest, door.public_keys, site=SITE)
    assert e.value.reason == b.BAD_SIGNATURE


def test_altered_body_breaks_the_signature(ks: Keys) -> None:
    admin, door = ks
    bd = bundle(admin, ["Alice"], 3)
    doc = json.loads(bd.manifest)
    body = json.loads(base64.b64decode(doc["body"]))
    body["version"] = 4
    doc["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(b.BundleRefused) as e:
        b.read_manifest(json.dumps(doc).encode(), door.public_keys, site=SITE)
    assert e.value.reason == b.BAD_SIGNATURE


def test_wrong_site_and_wrong_model(ks: Keys) -> None:
    admin, door = ks
    other = bundle(admin, ["Alice"], 5, site="branch")
    with pytest.raises(b.BundleRefused) as e:
        b.read_manifest(other.manifest, door.public_keys, site=SITE)
    assert e.value.reason == b.WRONG_SITE
    info = b.read_manifest(
        bundle(admin, ["A"], 5, model="x" * 64).manifest, door.public_keys, site=SITE
    )
    with pytest.raises(b.BundleRefused) as e:
        b.check_model(info, MODEL, MANIFEST)
    assert e.value.reason == b.WRONG_MODEL
    with pytest.raises(b.BundleRefused) as e:
        b.check_model(_open(bundle(admin, ["A"], 5), door), MODEL, "e" * 64)
    assert e.value.reason == b.WRONG_MODEL


def test_truncated_or_altered_chunk(ks: Keys) -> None:
    admin, door = ks
    bd = bundle(admin, ["Alice", "Bob"], 2)
    info = _open(bd, door)
    for bad in (bd.chunks[1][:-1], bytes([bd.chunks[1][0] ^ 1]) + bd.chunks[1][1:]):
        with pytest.raises(b.BundleRefused) as e:
            b.check_chunk(info, 1, bad)
        assert e.value.reason == b.BAD_CHUNK
        chunks = list(bd.chunks)
        chunks[1] = bad
        with pytest.raises(b.BundleRefused):
            b.open_bundle(info, chunks, door.site_key)
    with pytest.raises(b.BundleRefused) as e:
        b.open_bundle(info, bd.chunks[:-1], door.site_key)
    assert e.value.reason == b.INCOMPLETE


def test_another_site_key_cannot_decrypt(tmp_path: Path, ks: Keys) -> None:
    admin, door = ks
    _, other = keys(tmp_path, "other")
    bd = bundle(admin, ["Alice"], 2)
    with pytest.raises(b.BundleRefused) as e:
        b.open_bundle(_open(bd, door), bd.chunks, other.site_key)
    assert e.value.reason == b.UNDECRYPTABLE


def test_revocation_history(ks: Keys) -> None:
    admin, door = ks
    h1 = b.next_revocations([], ["Alice", "Bob", "Carol"], ["Alice", "Carol"], 4)
    assert h1 == [b.Revocation("Bob", 4)]
    h2 = b.next_revocations(h1, ["Alice", "Carol"], ["Carol", "Bob"], 5)  # Bob back, Alice out
    assert h2 == [b.Revocation("Alice", 5)]
    bd = bundle(admin, ["Carol", "Bob"], 5, revoked=tuple(h2))
    assert b.open_revoked(_open(bd, door), door.site_key) == h2


def test_payload_refuses_a_non_unit_embedding(ks: Keys) -> None:
    admin, door = ks
    bd = bundle(admin, ["Alice"], 1)
    info = _open(bd, door)
    payload = b.encode_people(gallery(["Alice"]))
    raw = bytearray(payload)
    raw[-4:] = bytes.fromhex("00004842")  # 50.0 in float32 little endian
    with pytest.raises(b.BundleRefused) as e:
        b.decode_people(bytes(raw), info)
    assert e.value.reason == b.MALFORMED


def test_keygen_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    files = generate(tmp_path / "k")
    for p in (files.signing, files.public, files.site):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert len(files.site.read_bytes().strip()) >= 32
    with pytest.raises(FleetError, match="already exists"):
        generate(tmp_path / "k")
    # A door's file may trust several keys (a rotation): both are read.
    other = generate(tmp_path / "k2")
    both = files.public.read_bytes() + other.public.read_bytes()
    ids = [key_id(k) for k in load_public_keys(both)]
    assert len(set(ids)) == 2
    with pytest.raises(ConfigError, match="no PEM public key"):
        load_public_keys(b"not a key")


def test_an_empty_gallery_travels_too(ks: Keys) -> None:
    admin, door = ks
    g = gallery([])
    bd = b.build_bundle(g, site=SITE, version=9, keys=admin, created=1.0)
    out = b.open_bundle(_open(bd, door), bd.chunks, door.site_key)
    assert len(out) == 0 and out.embedding_size == g.embedding_size


def test_a_name_a_door_would_refuse_is_refused_at_push(ks: Keys) -> None:
    admin, _ = ks
    g = gallery(["Alice"])
    g._people["group:staff"] = g.person("Alice")  # an old gallery may hold such a name
    with pytest.raises(FleetError, match="cannot push 'group:staff'"):
        b.build_bundle(g, site=SITE, version=1, keys=admin, created=1.0)
