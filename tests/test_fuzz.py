"""A seeded, bounded fuzz of everything a user hands facegate: configs, images, galleries.

* ~500 configs (mostly one to three hostile values in an otherwise valid
  config, some broken TOML): ``check-config`` answers ``ok`` or exactly one
  ``facegate: error:`` line, never a traceback; ``run`` agrees. For a config
  ``check-config`` refuses, ``run`` refuses it with the same line; for one it
  accepts, the service's real start-up (publisher and outbox, capture,
  tracker, secrets) raises no ConfigError and nothing that is not a
  FacegateError. The recognizer is a stand-in: the models are not what is
  fuzzed, and loading them 500 times would take minutes.
* ~100 images (valid files of every accepted format, mutated): decoding
  gives an image or one ImageError line, in a process limited to 1 GiB of
  address space (a decompression bomb that gets through fails the test
  instead of eating the machine).
* ~100 galleries (a valid one, mutated at the byte and at the JSON level):
  loading gives a gallery of finite unit vectors or one GalleryError line.

Everything is seeded: a failure names the case and reproduces.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import math
import random
import resource
import subprocess
import sys
import threading
import typing
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _hostile import ROOT, toml_value
from _standins import StandInRecognizer

from edge.config import Config, ConfigError, load_config
from edge.errors import FacegateError, GalleryError
from edge.identity.gallery import MAGIC, MODE_PLAIN, Gallery

SEED = 20261130
N_CONFIGS = 500
N_IMAGES = 100
N_GALLERIES = 100

STRINGS = [
    "", " ", ".", "..", "/", "~", "sub/", "../..", "a", "gallery.fgg", "x" * 300, "y" * 5000,
    "a\x00b", "a\nb", "tab\there", "rtsp://u:p@h/x", "rtsp://viewer@h/x", "0", "$SYS", "door/1",
    "#", "+", "ünïcödé", "localhost", "127.0.0.1", "::1", "facegate", "replay", "gallery.key",
    "broker lan", "a" * 253, "a" * 254, "DEBUG", "fake", "auto", "%s%n", "C:\\\\x", "-1",
]  # fmt: skip
INTS = [0, 1, -1, 2, 3, 4, 9, 100, 1000, 65535, 65536, 2**31, 2**63 - 1, -(2**63), 10**7 + 1]
FLOATS = [0.0, 0.3, 0.5, 1.0, 1.5, 2.0, -1.0, 5.0, 1e308, 1e-300, math.inf, -math.inf, math.nan]
ODD = [True, [1, 2], {"a": 1}, [[[]]], "1.0", 7, 0.25]


def _schema() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(Config):
        if f.name == "base_dir":
            continue
        cls = typing.get_type_hints(Config)[f.name]
        out[f.name] = {
            g.name: typing.get_type_hints(cls, include_extras=True)[g.name]
            for g in dataclasses.fields(cls)
        }
    return out


def _pool(tp: Any) -> list[Any]:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal:
        return [*args, "nope", "", 3]
    if typing.get_origin(tp) is tuple:  # an array of strings (door.allow)
        return [[], ["Alice", "group:staff"], [""], ["group:"], ["x" * 300], *ODD]
    if typing.get_origin(tp) is dict:  # a table of arrays (door.schedule)
        return [{}, {"Alice": ["mon-fri 07:00-19:00"]}, {"Alice": ["9-5"]}, {"": []}, *ODD]
    base = args[0] if args else tp
    return {bool: [True, False], int: INTS, float: FLOATS + INTS[:6], str: STRINGS}[base] + ODD


def _base(d: Path) -> dict[str, dict[str, Any]]:
    """A valid config for the fuzz's folder: fake camera, MQTT to a port nothing listens on."""
    return {
        "device": {"id": "fuzz-door"},
        "camera": {"source": "fake", "fps": 50.0},
        "gallery": {"path": "gallery.fgg"},
        "mqtt": {"enabled": False, "host": "127.0.0.1", "port": 9},
        "service": {"state_dir": "state", "stop_timeout_s": 0.3},
    }


def _text(doc: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return toml_value(v)

    out = []
    for sec, keys in doc.items():
        if not isinstance(keys, dict):
            out.append(f"{sec} = {value(keys)}\n")
            continue
        out.append(f"[{sec}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items()))
    return "\n".join(out)


def configs(rng: random.Random, d: Path) -> Iterator[tuple[str, str | bytes]]:
    schema = _schema()
    for i in range(N_CONFIGS):
        doc = _base(d)
        kind = rng.random()
        for _ in range(rng.choice((1, 1, 2, 3))):
            sec = rng.choice(list(schema))
            key = rng.choice(list(schema[sec]))
            doc.setdefault(sec, {})[key] = rng.choice(_pool(schema[sec][key]))
        if kind < 0.15:  # a real publisher: slower to start and stop
            doc["mqtt"]["enabled"] = True
        if kind > 0.97:
            doc[rng.choice(list(schema))] = {"not_a_key": 1}
        if 0.95 < kind <= 0.97:
            doc["mqtt"] = rng.choice(ODD)
        text: str | bytes = _text(doc)
        r = rng.random()
        if r < 0.04:
            text = text[: rng.randrange(len(text))]  # cut anywhere
        elif r < 0.06:
            text = "x = " + "[" * rng.choice((100, 5000, 200_000)) + "\n"
        elif r < 0.08:
            raw = bytearray(text.encode())
            raw[rng.randrange(len(raw))] = rng.choice((0x00, 0xFF, 0xC3, 0x5B, 0x22))
            text = bytes(raw)
        yield f"config {i}", text


def _cli(args: list[str]) -> tuple[int, str, str]:
    from edge.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


def _start_and_stop(path: Path) -> None:
    """The service's start-up on this config, stopped at once (what ``run`` does first)."""
    from edge.daemon import run
    from edge.identity.gallery import gallery_key
    from edge.sdnotify import Notifier

    cfg = load_config(path)
    gallery_key(cfg)  # the one start-up read the stand-in recognizer skips
    stop = threading.Event()
    stop.set()
    out = io.StringIO()
    with redirect_stdout(out):
        run(
            cfg,
            stop,
            notifier=Notifier(""),
            recognizer=StandInRecognizer(Gallery("fuzz", manifest_sha256="fuzz")),
        )


@pytest.mark.slow  # 500 configs through check-config and run
def test_configs_check_config_and_run_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(SEED)
    d = tmp_path / "door"
    (d / "replay").mkdir(parents=True)
    (d / "gallery.key").write_bytes(b"k" * 32)
    (d / "gallery.key").chmod(0o600)
    creds = tmp_path / "credentials"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.chdir(d)
    accepted = refused = started = 0
    for case, text in configs(rng, d):
        path = d / "fuzz.toml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        rc, out, err = _cli(["check-config", str(path)])
        assert "Traceback" not in err, f"{case}: {err}\n{text!r:.2000}"
        if rc == 0:
            accepted += 1
            assert out.startswith(f"{path}: ok"), f"{case}: {out}"
            try:
                _start_and_stop(path)
                started += 1
            except ConfigError as e:
                pytest.fail(f"{case}: check-config said ok, run said: {e}\n{text!r:.2000}")
            except FacegateError:
                pass  # the environment, not the config: no camera here, for one
        else:
            refused += 1
            assert rc == 2, f"{case}: rc {rc}"
            lines = [ln for ln in err.splitlines() if ln.startswith("facegate: error: ")]
            assert len(lines) == 1 and len(lines[0]) < 600, f"{case}: {err}"
            assert not [
                ln for ln in err.splitlines() if ln and not ln.startswith(("facegate:", "WARNING"))
            ], f"{case}: {err}"
            rc_run, _, err_run = _cli(["run", "--config", str(path)])
            assert rc_run == 2, f"{case}: run accepted what check-config refused"
            assert lines[0] in err_run.splitlines(), f"{case}: {lines[0]} / {err_run}"
    # The fuzz explores both sides (a generator that only produces junk tests little).
    assert accepted > 60 and refused > 200, (accepted, refused)
    assert started > 40, started


# -- images ----------------------------------------------------------------------------

IMAGE_SCRIPT = """
import json, random, struct, sys
import numpy as np
from edge.errors import ImageError
from edge.imageio import decode_image, import_cv2

cv2 = import_cv2()
rng = random.Random(int(sys.argv[1]))
img = np.zeros((48, 64, 3), np.uint8)
img[10:30, 20:40] = (200, 30, 90)
seeds = []
for ext, params in ((".jpg", []), (".png", []), (".bmp", []), (".webp", []), (".tiff", []),
                    (".ppm", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])):
    ok, buf = cv2.imencode(ext, img, params)
    seeds.append(buf.tobytes())
results = []
for i in range(int(sys.argv[2])):
    data = bytearray(rng.choice(seeds))
    how = rng.randrange(6)
    if how == 0:  # flip bytes anywhere
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif how == 1:  # truncate
        data = data[: rng.randrange(len(data))]
    elif how == 2:  # claim a huge size in the first bytes that look like one
        at = rng.randrange(12, 40)
        size = rng.choice((0, 1, 20000, 65535, 2**31 - 1))
        data[at : at + 4] = struct.pack(rng.choice(("<I", ">I")), size)
    elif how == 3:  # random bytes behind a real magic
        data = data[:8] + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    elif how == 4:  # the tail of one format behind the head of another
        other = rng.choice(seeds)
        data = data[: rng.randrange(1, 30)] + other[rng.randrange(len(other)):]
    else:
        pass  # valid
    try:
        out = decode_image(bytes(data), f"image {i}")
        results.append(["ok", list(out.shape)])
    except ImageError as e:
        results.append(["error", str(e)])
print(json.dumps(results))
"""


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_images_decode_or_give_one_line() -> None:
    r = subprocess.run(
        [sys.executable, "-c", IMAGE_SCRIPT, str(SEED), str(N_IMAGES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    results = json.loads(r.stdout)
    assert len(results) == N_IMAGES
    for i, (kind, detail) in enumerate(results):
        if kind == "ok":
            h, w, c = detail
            assert c == 3 and h * w <= 40_000_000, (i, detail)
        else:
            assert "\n" not in detail and detail.startswith(f"image {i}: "), (i, detail)
    kinds = {k for k, _ in results}
    assert kinds == {"ok", "error"}, kinds


# -- galleries -------------------------------------------------------------------------


def _plain(payload: bytes) -> bytes:
    return MAGIC + bytes([MODE_PLAIN]) + hashlib.sha256(payload).digest() + payload


def _json_mutation(rng: random.Random, doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    person = next(iter(doc["people"].values()))
    target, key = rng.choice(
        [
            (doc, "version"), (doc, "model_sha256"), (doc, "manifest_sha256"),
            (doc, "generation"), (doc, "embedding_size"), (doc, "people"),
            (person, "count"), (person, "added"), (person, "embeddings"),
        ]
    )  # fmt: skip
    choice = rng.randrange(4)
    if choice == 0:
        target.pop(key, None)
    elif choice == 1:
        target[key] = rng.choice([None, -1, 0, 2**64, "x", [], {}, 1e308, "NaN", True])
    elif choice == 2 and key == "embeddings":
        vec = np.frombuffer(base64.b64decode(person["embeddings"]), "<f4").copy()
        vec[rng.randrange(len(vec))] = rng.choice([np.nan, np.inf, 50.0, -1e30])
        target[key] = base64.b64encode(vec.tobytes()).decode()
    else:
        doc["people"][rng.choice(["", "\n", "x" * 500, "a\x00b", "ok"])] = dict(person)
    return doc


def test_galleries_load_or_give_one_line(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    key = b"k" * 32
    g = Gallery("m" * 64, manifest_sha256="f" * 64)
    vecs = np.random.default_rng(SEED).normal(size=(3, 16)).astype(np.float32)
    g.add("alice", vecs[:2])
    g.add("bob", vecs[2:])
    p = tmp_path / "g.fgg"
    g.save(p, None)
    plain = p.read_bytes()
    doc = json.loads(plain[37:])
    g.save(tmp_path / "e.fgg", key)
    encrypted = (tmp_path / "e.fgg").read_bytes()
    outcomes = {"ok": 0, "error": 0}
    for i in range(N_GALLERIES):
        how = rng.randrange(3)
        if how == 0:
            blob = bytearray(rng.choice((plain, encrypted)))
            for _ in range(rng.randrange(1, 4)):
                blob[rng.randrange(len(blob))] = rng.randrange(256)
            data, use_key = bytes(blob), (key if blob[4] == 1 else None)
        elif how == 1:
            src = rng.choice((plain, encrypted))
            data, use_key = src[: rng.randrange(len(src))], (key if src is encrypted else None)
        else:
            data, use_key = _plain(json.dumps(_json_mutation(rng, doc)).encode()), None
        q = tmp_path / f"fuzz{i}.fgg"
        q.write_bytes(data)
        try:
            back = Gallery.load(q, use_key, "m" * 64, manifest_sha256="f" * 64)
        except GalleryError as e:
            assert "\n" not in str(e) and len(str(e)) < 600, (i, str(e))
            outcomes["error"] += 1
            continue
        _, emb, _ = back.matrix()
        assert np.all(np.isfinite(emb)), i
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3), i
        outcomes["ok"] += 1
    assert outcomes["error"] > 50, outcomes
