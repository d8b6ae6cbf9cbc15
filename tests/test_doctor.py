"""``facegate doctor``: every check's pass and fail paths, on real files and a real broker.

The machine-facing parts (the unit folders, the service user, the clock
state, the GPIO chips) come from :class:`edge.doctor.System`, which the
tests point at temporary files; everything else is real: model files and
manifests, photos for the folder camera, key files with real modes, a real
Mosquitto (plain, TLS with a password file), a real small tmpfs for the disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _hostile import on_full_fs
from broker import Broker, mqtt_broker
from conftest import DETECTOR, EMBEDDER, MODELS

from edge.config import load_config
from edge.doctor import (
    Check,
    Context,
    System,
    check_broker,
    check_camera,
    check_clock,
    check_config_file,
    check_disk,
    check_gallery,
    check_gpio,
    check_liveness,
    check_models,
    check_python,
    check_runtime,
    check_secrets,
    check_unit,
    doctor,
    mqtt_connect_packet,
    parse_unit,
    run_checks,
    service_user,
)
from tools._broker import free_port

__all__ = ["mqtt_broker"]

ROOT = Path(__file__).resolve().parents[1]


def models_there() -> None:
    if not (DETECTOR.exists() and EMBEDDER.exists()):
        pytest.skip("models not built (bash tools/setup.sh)")


def write(tmp: Path, body: str, name: str = "facegate.toml") -> Path:
    """A config in ``tmp`` whose models are the checkout's, plus ``body``'s sections."""
    p = tmp / name
    p.write_text(
        "[detector]\n"
        f'model = "{DETECTOR}"\n'
        "[embedder]\n"
        f'model = "{EMBEDDER}"\n'
        "[service]\n"
        f'state_dir = "{tmp / "state"}"\n' + body
    )
    return p


def key_file(path: Path, mode: int = 0o600, data: bytes | None = None) -> Path:
    path.write_bytes(os.urandom(32) if data is None else data)
    path.chmod(mode)
    return path


def ctx_for(cfg_path: Path, **system: object) -> Context:
    cfg = load_config(cfg_path, environment=False)
    sys_ = replace(System(unit_dirs=(cfg_path.parent / "no-units",)), **system)  # type: ignore[arg-type]
    unit = sys_.unit()
    return Context(cfg, sys_, unit, service_user(unit, sys_.user))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user can enter (pytest's own tmp folders are 0700 to others)."""
    d = Path(tempfile.mkdtemp(prefix="facegate-doctor-test-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def only(checks: list[Check]) -> Check:
    assert len(checks) == 1, checks
    return checks[0]


# -- python, runtime, models ------------------------------------------------------------


def test_python_and_runtime_pass_here(tmp_path: Path) -> None:
    ctx = ctx_for(write(tmp_path, ""))
    py = only(check_python(ctx))
    assert py.status == "pass" and sys.version.split()[0] in py.message
    rt = only(check_runtime(ctx))
    assert rt.status == "pass" and rt.message.startswith(("ai_edge_litert", "tflite_runtime"))


def test_a_runtime_that_is_not_installed_fails_with_the_pip_line(tmp_path: Path) -> None:
    from edge.vision.runtime import available_runtimes

    missing = [r for r in ("tflite_runtime", "ai_edge_litert") if r not in available_runtimes()]
    if not missing:
        pytest.skip("both runtimes are installed here")
    ctx = ctx_for(write(tmp_path, ""))
    cfg = replace(ctx.cfg, embedder=replace(ctx.cfg.embedder, runtime=missing[0]))
    c = only(check_runtime(replace(ctx, cfg=cfg)))
    assert c.status == "fail" and "not installed" in c.message and "pip install" in c.fix


def test_models_pass_and_a_missing_or_altered_model_fails(tmp_path: Path) -> None:
    models_there()
    ok = check_models(ctx_for(write(tmp_path, "")))
    assert [c.status for c in ok] == ["pass", "pass"]
    assert "matches its manifest" in ok[1].message
    # A copy of the models folder without the embedder, and one with an altered byte.
    d = tmp_path / "m"
    d.mkdir()
    for p in (DETECTOR, DETECTOR.with_suffix(".json"), EMBEDDER.with_suffix(".json")):
        shutil.copy(p, d)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[detector]\nmodel = "{d / DETECTOR.name}"\n[embedder]\nmodel = "{d / EMBEDDER.name}"\n'
    )
    gone = check_models(ctx_for(cfg))
    assert gone[0].status == "pass"
    assert gone[1].status == "fail" and "is missing" in gone[1].message
    assert f"copy {EMBEDDER.name} and {EMBEDDER.with_suffix('.json').name}" in gone[1].fix
    data = bytearray(EMBEDDER.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / EMBEDDER.name).write_bytes(bytes(data))
    bad = check_models(ctx_for(cfg))[1]
    assert bad.status == "fail" and "sha256" in bad.message


def test_liveness_a_door_without_require_warns_and_a_broken_mesh_fails(tmp_path: Path) -> None:
    models_there()
    door = '[door]\nenabled = true\npin_factory = "mock"\n'
    (ok,) = check_liveness(ctx_for(write(tmp_path, '[liveness]\nmode = "require"\n' + door)))
    assert ok.status == "pass" and "face_landmark.tflite" in ok.message
    (warn,) = check_liveness(ctx_for(write(tmp_path, door)))  # the default, report
    assert warn.status == "warn" and "photo" in warn.message and "require" in warn.fix
    (off,) = check_liveness(ctx_for(write(tmp_path, '[liveness]\nmode = "off"\n')))
    assert off.status == "pass"
    bad = tmp_path / "mesh.tflite"
    bad.write_bytes(b"not a model")
    cfg = write(tmp_path, f'[liveness]\nmodel = "{bad}"\n')
    (fail,) = check_liveness(ctx_for(cfg))
    assert fail.status == "fail"


# -- camera, clock --------------------------------------------------------------------


def test_camera_folder_and_fake_deliver_and_an_empty_folder_fails(tmp_path: Path) -> None:
    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.full((48, 64, 3), 128, np.uint8))
    c = only(
        check_camera(ctx_for(write(tmp_path, f'[camera]\nsource = "folder"\npath = "{photos}"\n')))
    )
    assert c.status == "pass" and "64x48" in c.message
    fake = only(check_camera(ctx_for(write(tmp_path, '[camera]\nsource = "fake"\n'))))
    assert fake.status == "pass"
    empty = tmp_path / "empty"
    empty.mkdir()
    e = only(
        check_camera(ctx_for(write(tmp_path, f'[camera]\nsource = "folder"\npath = "{empty}"\n')))
    )
    assert e.status == "fail" and "camera.path" in e.fix


def test_camera_that_cannot_open_fails_with_the_source_fix(tmp_path: Path) -> None:
    cfg = write(tmp_path, f'[camera]\nsource = "opencv"\nuri = "{tmp_path / "nope.mp4"}"\n')
    c = only(check_camera(ctx_for(cfg, camera_timeout_s=3.0)))
    assert c.status == "fail" and "camera.uri" in c.fix


def test_clock_states(tmp_path: Path) -> None:
    cfg = write(tmp_path, "")
    synced = only(check_clock(ctx_for(cfg, clock_state=lambda: 0)))
    assert synced.status == "pass"
    unsynced = only(check_clock(ctx_for(cfg, clock_state=lambda: 5)))
    assert unsynced.status == "warn" and "timedatectl set-ntp true" in unsynced.fix
    unknown = only(check_clock(ctx_for(cfg, clock_state=lambda: None)))
    assert unknown.status == "warn" and "unavailable" in unknown.message
    early = only(check_clock(ctx_for(cfg, clock_state=lambda: 0, now=lambda: 86400.0)))
    assert early.status == "warn"  # 1970: no RTC, NTP not run yet
    door = write(
        tmp_path,
        '[door]\nenabled = true\npin_factory = "mock"\nallow = ["Ann"]\n'
        'schedule = { "Ann" = ["mon-fri 07:00-19:00"] }\n',
    )
    c = only(check_clock(ctx_for(door, clock_state=lambda: 5)))
    assert c.status == "fail" and "schedule" in c.message


# -- secrets --------------------------------------------------------------------------


def test_key_file_modes(tmp_path: Path) -> None:
    key = key_file(tmp_path / "gallery.key")
    cfg = write(tmp_path, f'[gallery]\nkey_file = "{key}"\n')
    assert only(check_secrets(ctx_for(cfg))).status == "pass"
    key.chmod(0o644)
    c = only(check_secrets(ctx_for(cfg)))
    assert c.status == "fail" and "world-readable" in c.message and c.fix == f"sudo chmod 600 {key}"
    key.chmod(0o640)
    g = only(check_secrets(ctx_for(cfg)))
    assert g.status == "warn" and "group-readable" in g.message
    key.chmod(0o600)
    key.write_bytes(b"short")
    s = only(check_secrets(ctx_for(cfg)))
    assert s.status == "fail" and "at least 16" in s.message
    key.unlink()
    m = only(check_secrets(ctx_for(cfg)))
    assert m.status == "fail" and "No such file" in m.message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder others cannot enter")
def test_a_config_or_model_in_a_closed_folder_fails_for_the_service_user(open_dir: Path) -> None:
    """As docs/service.md once had it: /etc/facegate 0700 root, the config inside."""
    etc = open_dir / "etc"
    etc.mkdir(mode=0o700)
    cfg = write(etc, "")
    ok = only(check_config_file(ctx_for(cfg, config_path=cfg)))
    assert ok.status == "pass"  # root reads it
    c = only(check_config_file(ctx_for(cfg, config_path=cfg, user="nobody")))
    assert c.status == "fail" and f"nobody cannot enter {etc}" in c.message
    assert c.fix.startswith(f"sudo chmod o+x {etc}")
    assert check_config_file(ctx_for(cfg)) == []  # no --config: nothing to read
    models_there()
    m = open_dir / "models"
    m.mkdir()
    for p in (DETECTOR, DETECTOR.with_suffix(".json"), EMBEDDER, EMBEDDER.with_suffix(".json")):
        shutil.copy(p, m)
    (m / EMBEDDER.name).chmod(0o600)
    body = f'[detector]\nmodel = "{m / DETECTOR.name}"\n[embedder]\nmodel = "{m / EMBEDDER.name}"\n'
    (open_dir / "c.toml").write_text(body)
    det, emb = check_models(ctx_for(open_dir / "c.toml", user="nobody"))
    assert det.status == "pass"
    assert emb.status == "fail" and "nobody cannot read" in emb.message
    assert emb.fix == f"sudo chmod o+r {m / EMBEDDER.name}"


def test_fleet_keys_are_secrets_and_the_gallery_comes_from_the_site(tmp_path: Path) -> None:
    site = key_file(tmp_path / "site.key", 0o644)
    public = key_file(tmp_path / "admin.pub", 0o644, b"-----BEGIN PUBLIC KEY-----\n")
    cfg = write(
        tmp_path,
        f'[fleet]\nenabled = true\nsite = "hq"\nsite_key_file = "{site}"\n'
        f'public_key_file = "{public}"\n' + mqtt_section(free_port(), tls=False),
    )
    ctx = ctx_for(cfg)
    lines = {c.name: c for c in check_secrets(ctx)}
    assert (
        lines["fleet.site_key"].status == "fail"
        and "world-readable" in lines["fleet.site_key"].message
    )
    assert "fleet.public_key" not in lines  # a public key may be read by anyone
    g = only(check_gallery(ctx))
    assert g.status == "pass" and "site 'hq'" in g.message


def test_review_keys_are_secrets(tmp_path: Path) -> None:
    """The unknown visitors' ring key and the enrol command's key are checked like the others."""
    ring = key_file(tmp_path / "review.key", 0o644)
    enrol = key_file(tmp_path / "enrol.key", 0o600)
    cfg = write(
        tmp_path,
        f'[review]\nkeep_unknown = true\nkey_file = "{ring}"\nenrol_command = true\n'
        f'enrol_key_file = "{enrol}"\n' + mqtt_section(free_port(), tls=False, commands=True),
    )
    lines = {c.name: c for c in check_secrets(ctx_for(cfg))}
    assert lines["review.key"].status == "fail" and "world-readable" in lines["review.key"].message
    assert lines["review.enrol_key"].status == "pass"


def test_no_gallery_key_is_a_warning(tmp_path: Path) -> None:
    c = only(check_secrets(ctx_for(write(tmp_path, ""))))
    assert c.status == "warn" and "unencrypted" in c.message


@pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to own a file the service user cannot read"
)
def test_a_key_the_service_user_cannot_read_fails(open_dir: Path) -> None:
    tmp_path = open_dir
    key = key_file(tmp_path / "gallery.key")  # root's, 0600
    cfg = write(tmp_path, f'[gallery]\nkey_file = "{key}"\n')
    c = only(check_secrets(ctx_for(cfg, user="nobody")))
    assert c.status == "fail" and "nobody cannot read" in c.message
    assert c.fix == f"sudo chown nobody {key} && sudo chmod 600 {key}"
    # A folder on the way that the user cannot enter.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    key2 = key_file(locked / "k")
    os.chown(key2, 65534, -1)
    cfg2 = write(tmp_path, f'[gallery]\nkey_file = "{key2}"\n', "c2.toml")
    c2 = only(check_secrets(ctx_for(cfg2, user="nobody")))
    assert c2.status == "fail" and f"cannot enter {locked}" in c2.message
    assert c2.fix == f"sudo chgrp nobody {locked} && sudo chmod g+x {locked}"


def unit_dir(tmp: Path, body: str, enabled: bool = False) -> Path:
    d = tmp / "units"
    (d / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    (d / "facegate.service").write_text(body)
    wants = d / "multi-user.target.wants" / "facegate.service"
    if enabled and not wants.exists():
        wants.symlink_to(d / "facegate.service")
    return d


def test_credentials_are_checked_at_the_units_source_file(tmp_path: Path) -> None:
    secret = key_file(tmp_path / "mqtt-password", data=b"s3cret-password")
    cfg = write(
        tmp_path,
        '[gallery]\nkey_credential = "gallery-key"\n'
        '[mqtt]\nenabled = true\nusername = "door1"\npassword_credential = "mqtt-password"\n'
        f"tls = false\nport = {free_port()}\n",
    )
    # No unit installed: nothing says where the credentials come from.
    no_unit = check_secrets(ctx_for(cfg))
    assert [c.status for c in no_unit] == ["warn", "warn"]
    units = unit_dir(tmp_path, f"[Service]\nLoadCredential=mqtt-password:{secret}\n")
    ctx = ctx_for(cfg, unit_dirs=(units,))
    gallery, mqtt = check_secrets(ctx)
    assert gallery.status == "fail" and "LoadCredential=gallery-key:" in gallery.fix
    assert mqtt.status == "pass" and "handed over by systemd" in mqtt.message
    secret.chmod(0o604)
    assert check_secrets(ctx)[1].status == "fail"


def test_parse_unit_follows_systemd_resets_and_drop_ins() -> None:
    s = parse_unit("[Unit]\nUser=x\n[Service]\nUser=a\nDeviceAllow=one\n# c\nDeviceAllow=two\n")
    assert s == {"User": ["a"], "DeviceAllow": ["one", "two"]}
    s2 = parse_unit("[Service]\nDeviceAllow=\nDeviceAllow=three\n", s)
    assert s2["DeviceAllow"] == ["three"] and s["DeviceAllow"] == ["one", "two"]


# -- broker ----------------------------------------------------------------------------


def mqtt_section(port: int, **keys: object) -> str:
    lines = ["[mqtt]", "enabled = true", 'host = "127.0.0.1"', f"port = {port}"]
    for k, v in keys.items():
        lines.append(f"{k} = {'true' if v is True else 'false' if v is False else repr(str(v))}")
    return "\n".join(lines).replace("'", '"') + "\n"


def test_broker_off_and_wrong_port(tmp_path: Path) -> None:
    off = only(check_broker(ctx_for(write(tmp_path, ""))))
    assert off.status == "pass" and "off" in off.message
    port = free_port()
    bad = only(check_broker(ctx_for(write(tmp_path, mqtt_section(port, tls=False)))))
    assert bad.status == "fail" and f"cannot connect to 127.0.0.1:{port}" in bad.message
    assert "mqtt.port" in bad.fix


def test_broker_without_tls_is_a_warning(tmp_path: Path, mqtt_broker: Broker) -> None:
    c = only(check_broker(ctx_for(write(tmp_path, mqtt_section(mqtt_broker.port, tls=False)))))
    assert c.status == "warn" and "without TLS" in c.message and "anonymous" in c.message


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_broker_with_tls_and_a_password(tmp_path: Path) -> None:
    from broker import mosquitto_path
    from test_mqtt import make_certs

    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")
    certs = make_certs(tmp_path)
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "door1", "s3cret"],
        check=True,
        capture_output=True,
    )
    broker = Broker(
        tmp_path / "broker",
        extra_conf="\n".join(
            [
                f"cafile {certs['ca']}",
                f"certfile {certs['server']}",
                f"keyfile {certs['server_key']}",
                f"password_file {passwd}",
            ]
        ),
        anonymous=False,
    )
    broker.start()
    try:
        pw = key_file(tmp_path / "pw", data=b"s3cret\n")
        tls = {"tls": True, "tls_ca_file": certs["ca"], "username": "door1", "password_file": pw}
        ok = only(check_broker(ctx_for(write(tmp_path, mqtt_section(broker.port, **tls)))))
        assert ok.status == "pass" and "TLS" in ok.message and "'door1' accepted" in ok.message
        pw.write_bytes(b"wrong")
        refused = only(check_broker(ctx_for(write(tmp_path, mqtt_section(broker.port, **tls)))))
        assert refused.status == "fail" and "refused the connection" in refused.message
        # Another CA: the broker's certificate does not verify.
        (tmp_path / "other").mkdir()
        other = make_certs(tmp_path / "other")
        wrong_ca = dict(tls, tls_ca_file=other["ca"])
        hs = only(check_broker(ctx_for(write(tmp_path, mqtt_section(broker.port, **wrong_ca)))))
        assert hs.status == "fail" and "TLS handshake" in hs.message
        assert "tls_ca_file" in hs.fix
        # TLS configured against the plain port of nothing: a closed port.
        closed = only(check_broker(ctx_for(write(tmp_path, mqtt_section(free_port(), **tls)))))
        assert closed.status == "fail" and "cannot connect" in closed.message
    finally:
        broker.stop()


def test_connect_packet_layout() -> None:
    p = mqtt_connect_packet("id", "u", b"pw")
    assert p[0] == 0x10 and p[1] == len(p) - 2
    assert p[2:8] == b"\x00\x04MQTT" and p[8] == 4 and p[9] == 0x02 | 0x80 | 0x40
    long = mqtt_connect_packet("x" * 200)
    assert long[1] & 0x80 and long[2] == 1  # two-byte remaining length: 214 = 0xD6 0x01


# -- disk -------------------------------------------------------------------------------


DISK_SCRIPT = """
import sys
from edge.config import load_config
from edge.doctor import Context, System, check_disk, service_user
cfg = load_config(sys.argv[1], environment=False)
for c in check_disk(Context(cfg, System(), None, service_user(None))):
    print(c.line())
"""


def test_disk_passes_here_and_fails_on_a_small_file_system(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = write(tmp_path, mqtt_section(free_port(), tls=False))
    ok = only(check_disk(ctx_for(cfg)))
    assert ok.status == "pass" and "outbox" in ok.message
    # The real command on a 1 MiB tmpfs: 10,000 outbox events do not fit.
    r = on_full_fs(
        state,
        [sys.executable, "-c", DISK_SCRIPT, str(cfg)],
        fill=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("FAIL  disk: outbox"), r.stdout
    assert "mqtt.outbox_max" in r.stdout


# -- GPIO, unit ---------------------------------------------------------------------------


DOOR = (
    '[door]\nenabled = true\npin_factory = "{f}"\nrelay_pin = 17\nexit_pin = 6\nallow = ["Ann"]\n'
)


def test_gpio_off_mock_and_no_chips(tmp_path: Path) -> None:
    assert only(check_gpio(ctx_for(write(tmp_path, "")))).status == "pass"
    mock = only(check_gpio(ctx_for(write(tmp_path, DOOR.format(f="mock")))))
    assert mock.status == "pass" and "relay 17, exit 6" in mock.message
    lines = check_gpio(ctx_for(write(tmp_path, DOOR.format(f="native")), gpio_chips=lambda: []))
    assert lines[-1].status == "fail" and "no /dev/gpiochip*" in lines[-1].message
    assert 'pin_factory = "mock"' in lines[-1].fix


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a chip node nobody can open")
def test_gpio_chip_the_user_cannot_open_and_a_unit_without_it(open_dir: Path) -> None:
    tmp_path = open_dir
    chip = tmp_path / "gpiochip0"
    chip.write_bytes(b"")
    chip.chmod(0o660)  # root:root 0660, as /dev/gpiochip0 is root:gpio
    cfg = write(tmp_path, DOOR.format(f="native"))
    lines = check_gpio(ctx_for(cfg, gpio_chips=lambda: [chip], user="nobody"))
    fail = [c for c in lines if c.status == "fail"]
    assert fail and "nobody cannot open" in fail[-1].message
    assert fail[-1].fix.startswith("sudo usermod -aG ") and fail[-1].fix.endswith(" nobody")
    units = unit_dir(tmp_path, "[Service]\nDevicePolicy=closed\nDeviceAllow=char-video4linux rw\n")
    lines = check_gpio(ctx_for(cfg, gpio_chips=lambda: [chip], unit_dirs=(units,)))
    assert (
        lines[-1].status == "fail"
        and lines[-1].fix == "add DeviceAllow=char-gpiochip rw to the unit"
    )


def test_unit_missing_broken_disabled_enabled(tmp_path: Path) -> None:
    cfg = write(tmp_path, "")
    missing = only(check_unit(ctx_for(cfg)))
    assert missing.status == "warn" and "systemctl enable --now facegate" in missing.fix
    units = unit_dir(tmp_path, "[Service]\nExecStart=/nonexistent/facegate run --config x\n")
    broken = only(check_unit(ctx_for(cfg, unit_dirs=(units,))))
    assert broken.status == "fail" and "/nonexistent/facegate does not exist" in broken.message
    exe = shutil.which("true") or "/bin/true"
    units = unit_dir(tmp_path, f"[Service]\nExecStart={exe} run --config {cfg}\nUser=root\n")
    disabled = only(check_unit(ctx_for(cfg, unit_dirs=(units,), config_path=cfg)))
    assert disabled.status == "warn" and "not enabled" in disabled.message
    units = unit_dir(tmp_path, f"[Service]\nExecStart={exe} run --config /etc/other.toml\n", True)
    lines = check_unit(ctx_for(cfg, unit_dirs=(units,), config_path=cfg))
    assert [c.status for c in lines] == ["warn", "pass"]
    assert "/etc/other.toml" in lines[0].message


# -- gallery -----------------------------------------------------------------------------


def enrolled(path: Path, manifest_path: Path, key: bytes | None) -> None:
    from edge.identity.gallery import Gallery
    from edge.vision.manifest import load_manifest

    m = load_manifest(manifest_path)
    g = Gallery.for_manifest(m)
    v = np.random.default_rng(0).normal(size=(1, m.embedding_size)).astype(np.float32)
    g.add("Ann", v / np.linalg.norm(v))
    g.save(path, key)


def test_gallery_missing_bound_and_of_another_model(tmp_path: Path) -> None:
    models_there()
    key = key_file(tmp_path / "gallery.key")
    body = f'[gallery]\npath = "{tmp_path / "g.fgg"}"\nkey_file = "{key}"\n'
    cfg = write(tmp_path, body)
    missing = only(check_gallery(ctx_for(cfg, config_path=cfg)))
    assert missing.status == "warn" and f"facegate enroll --config {cfg}" in missing.fix
    enrolled(tmp_path / "g.fgg", EMBEDDER, key.read_bytes())
    marks = sorted(p.name for p in tmp_path.iterdir())
    ok = only(check_gallery(ctx_for(cfg)))
    assert ok.status == "pass" and "1 person" in ok.message
    assert sorted(p.name for p in tmp_path.iterdir()) == marks  # nothing written beside it
    facenet = MODELS / "facenet_int8.tflite"
    if not facenet.exists():
        pytest.skip("FaceNet not built")
    enrolled(tmp_path / "g.fgg", facenet, key.read_bytes())
    other = only(check_gallery(ctx_for(cfg)))
    assert other.status == "fail" and "another model" in other.message
    assert "gallery rebind" in other.fix
    key_file(key)  # a new key: the gallery no longer opens
    wrong = only(check_gallery(ctx_for(cfg)))
    assert wrong.status == "fail"


# -- the whole command --------------------------------------------------------------------


def test_doctor_fails_with_the_right_fixes(tmp_path: Path) -> None:
    """A world-readable key, a missing model and a wrong broker port: three fails, one each."""
    models_there()
    key = key_file(tmp_path / "gallery.key", 0o644)
    port = free_port()
    cfg = tmp_path / "facegate.toml"
    cfg.write_text(
        f'[detector]\nmodel = "{DETECTOR}"\n'
        f'[embedder]\nmodel = "{tmp_path / "sface_int8.tflite"}"\n'
        f'[camera]\nsource = "fake"\n[gallery]\npath = "{tmp_path / "g.fgg"}"\nkey_file = "{key}"\n'
        f'[service]\nstate_dir = "{tmp_path}"\n' + mqtt_section(port, tls=True)
    )
    lines: list[str] = []
    rc = doctor(cfg, lines.append, System(unit_dirs=(tmp_path / "units",), clock_state=lambda: 0))
    assert rc == 1
    fails = [ln for ln in lines if ln.startswith("FAIL")]
    assert any(
        "model embedder" in ln and "is missing" in ln and "fix: copy sface_int8" in ln
        for ln in fails
    )
    assert any(
        "gallery.key" in ln and "world-readable" in ln and f"chmod 600 {key}" in ln for ln in fails
    )
    assert any(f"broker: cannot connect to 127.0.0.1:{port}" in ln for ln in fails)
    assert len(fails) == 3, lines
    assert lines[-1] == f"doctor: {len(lines) - 2} checks, 3 failed, 2 warnings"


def test_doctor_command_line(tmp_path: Path) -> None:
    """``facegate doctor --config``: one line per check, exit 1 on a fail, no traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[camera]\nsourse = 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "edge", "doctor", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 1 and r.stdout.startswith("FAIL  config: camera.sourse: unknown key")
    assert "Traceback" not in r.stderr
    models_there()
    cfg = write(tmp_path, '[camera]\nsource = "fake"\n')
    r = subprocess.run(
        [sys.executable, "-m", "edge", "doctor", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    names = [ln[6:].split(":")[0] for ln in r.stdout.splitlines()[:-1]]
    assert names[:6] == [
        "config",
        "config",
        "python",
        "runtime",
        "model detector",
        "model embedder",
    ]
    for want in ("camera (fake)", "clock", "gallery.key", "broker", "disk", "gpio", "systemd"):
        assert want in names, r.stdout
    assert "Traceback" not in r.stderr


def test_a_check_that_raises_is_one_failed_line(tmp_path: Path) -> None:
    def check_boom(ctx: Context) -> list[Check]:
        raise RuntimeError("kaput")

    cfg = load_config(write(tmp_path, ""), environment=False)
    (line,) = run_checks(cfg, System(unit_dirs=()), [check_boom])
    assert line.status == "fail" and line.name == "boom" and "kaput" in line.message
