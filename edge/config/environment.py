"""What ``run`` needs from the file system, checked up front (:func:`check_environment`).

``check-config`` runs the same checks: the files the daemon writes are not the
config itself nor anything but regular files, the secrets and TLS files it
reads can be read, and a replay's folder or video exists.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from edge.config.secrets import MAX_SECRET_BYTES, SecretRef, warn_if_exposed
from edge.errors import ConfigError
from edge.files import read_bounded

if TYPE_CHECKING:
    from edge.config.document import Config

log = logging.getLogger("facegate.config")


def _stat(path: Path, key: str) -> os.stat_result | None:
    """``os.stat``, None when the path does not exist; ConfigError when it cannot be looked up."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"{key}: cannot look up {path} ({e.strerror or e})") from None


def _secrets_used(cfg: Config) -> list[SecretRef]:
    """The secrets ``run`` will read with this config."""
    used = [cfg.gallery.key]
    if cfg.door.enabled and cfg.door.remote_unlock:
        used.append(cfg.door.remote_key)
    if cfg.mqtt.enabled:
        used.append(cfg.mqtt.password)
    if cfg.camera.password.configured:
        used.append(cfg.camera.password)
    if cfg.events.sign_key.configured:
        used.append(cfg.events.sign_key)
    if cfg.review.keep_unknown and cfg.review.key.configured:
        used.append(cfg.review.key)
    if cfg.review.enrol_command:
        used.append(cfg.review.enrol_key)
    if cfg.fleet.enabled:  # fleet: the site key (secret) and the admin's public key
        used += [cfg.fleet.site_key, cfg.fleet.public_key]
    return used


def _check_secrets(cfg: Config) -> None:
    """The secrets ``run`` will read: readable files, and credentials when systemd passes them."""
    used = _secrets_used(cfg)
    read: dict[str, bytes | None] = {}
    for ref in used:
        if ref.file:
            if ref.key != "fleet.public_key":  # a public key is no secret
                warn_if_exposed(cfg.resolve(ref.file), f"{ref.key}_file")
            read[ref.key] = ref.read(cfg.base_dir)
            _check_pem(ref.key, read[ref.key])
        elif ref.credential and os.environ.get("CREDENTIALS_DIRECTORY"):
            read[ref.key] = ref.read(cfg.base_dir)
            _check_pem(ref.key, read[ref.key])
        elif ref.credential:
            log.info(
                "%s_credential: %r is read from $CREDENTIALS_DIRECTORY when systemd runs "
                "the service; not checked here",
                ref.key,
                ref.credential,
            )
    check_distinct_keys(read.get("door.remote_key"), read.get("events.sign_key"))
    check_enrol_key(read.get("review.enrol_key"), read.get("events.sign_key"))


def check_enrol_key(enrol: bytes | None, sign: bytes | None) -> None:
    """The review's enrol key must not be the event signing key: enrolling grants access,
    and every event consumer holds the signing key."""
    if enrol is not None and sign is not None and enrol == sign:
        raise ConfigError(
            "review.enrol_key: the same key as events.sign_key (the same bytes); every "
            "event consumer could then enrol people: give enrolment a key of its own"
        )


def check_distinct_keys(unlock: bytes | None, sign: bytes | None) -> None:
    """The remote unlock key and the event signing key must differ (compared as bytes).

    Everyone who checks events holds the signing key; if it also opened the
    door, every event consumer could sign unlocks.
    """
    if unlock is not None and sign is not None and unlock == sign:
        raise ConfigError(
            "door.remote_key: the same key as events.sign_key (the same bytes); every "
            "event consumer could then sign unlocks: give the door a key of its own"
        )


def _check_pem(key: str, data: bytes | None) -> None:
    """fleet: the doors' trusted keys must be PEM public keys (the fleet parses them at start)."""
    if key == "fleet.public_key" and data is not None and b"-----BEGIN PUBLIC KEY-----" not in data:
        raise ConfigError(f"{key}: no PEM public key (-----BEGIN PUBLIC KEY-----) in it")


def _check_tls(cfg: Config) -> None:
    """The CA, certificate and key load the way the MQTT client will load them."""
    import ssl

    m = cfg.mqtt
    if m.tls_key_file:
        warn_if_exposed(cfg.resolve(m.tls_key_file), "mqtt.tls_key_file")
    for key, value in (("mqtt.tls_ca_file", m.tls_ca_file), ("mqtt.tls_cert_file",
                       m.tls_cert_file), ("mqtt.tls_key_file", m.tls_key_file)):  # fmt: skip
        if value:
            read_bounded(cfg.resolve(value), MAX_SECRET_BYTES * 16, key, ConfigError)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if m.tls_ca_file:
            ctx.load_verify_locations(cafile=str(cfg.resolve(m.tls_ca_file)))
        if m.tls_cert_file:
            ctx.load_cert_chain(str(cfg.resolve(m.tls_cert_file)), str(cfg.resolve(m.tls_key_file)))
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ConfigError(f"mqtt.tls_ca_file: cannot set up TLS ({e})") from None


def _check_camera(cfg: Config) -> None:
    """A replay's folder or video file exists (a camera device is only known when opened)."""
    cam = cfg.camera
    if cam.source == "folder":
        path = cfg.resolve(cam.path)
        st = _stat(path, "camera.path")
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"camera.path: {path} is not a folder")
    elif cam.source == "opencv":
        uri = cam.uri.strip()
        if not uri.isdigit() and "://" not in uri:
            path = cfg.resolve(uri)
            st = _stat(path, "camera.uri")
            if st is None or not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"camera.uri: video file {path} does not exist")


def check_environment(cfg: Config, config_path: Path | None = None) -> None:
    """What ``run`` needs from the file system, checked up front; ``check-config`` runs it too.

    A file the daemon writes (gallery, outbox) must not be the config file
    itself nor exist as anything but a regular file (a folder, a device); the
    secrets, TLS files and replay sources it reads must be readable (a
    systemd credential only where ``$CREDENTIALS_DIRECTORY`` is set); secret
    files readable by group or others are warned about. Models are not
    checked here: ``check-config`` warns about missing ones, they may be
    built after the config is written.
    """
    config_file = config_path.resolve() if config_path is not None else None
    writes = {"gallery.path": cfg.resolve(cfg.gallery.path)}
    if cfg.door.enabled:
        writes["door.audit_path"] = cfg.audit_file
    if cfg.mqtt.enabled or cfg.door.enabled:
        if cfg.mqtt.enabled:
            writes["mqtt.outbox_path"] = cfg.outbox_file
        st = _stat(cfg.state_dir, "service.state_dir")
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"service.state_dir: {cfg.state_dir} exists and is not a folder")
    for key, path in writes.items():
        if config_file is not None and path == config_file:
            raise ConfigError(f"{key}: {path} is the config file itself")
        st = _stat(path, key)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{key}: {path} exists and is not a regular file")
    if cfg.review.keep_unknown:
        st = _stat(cfg.review_dir, "review.path")
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"review.path: {cfg.review_dir} exists and is not a folder")
    _check_secrets(cfg)
    if cfg.mqtt.enabled and cfg.mqtt.tls:
        _check_tls(cfg)
    _check_camera(cfg)


__all__ = ["check_distinct_keys", "check_enrol_key", "check_environment"]
