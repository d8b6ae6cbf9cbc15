"""The TOML config file, parsed into validated, frozen dataclasses.

Every section is a dataclass; its fields are the allowed keys, their types
are checked, and an unknown key is an error. Each error names its key path
(``mqtt.port: expected an integer, got 'abc'``). Secrets are never config
values: the config names a file or a systemd credential that holds them
(see :func:`read_secret`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class DeviceConfig:
    """Identity of this device."""

    id: str = "facegate"
    name: str = "facegate door"


@dataclass(frozen=True)
class CameraConfig:
    """Where frames come from.

    ``source``: ``picamera2`` (Pi camera), ``opencv`` (USB index, RTSP URL or
    video file in ``uri``), ``folder`` (replay images from ``path``) or
    ``fake`` (synthetic frames, for tests).
    """

    source: str = "opencv"
    uri: str = "0"
    # A network camera's password (rtsp://USER@host/...): from a file or a
    # systemd credential, inserted into the URI when the stream is opened.
    password_file: str = ""
    password_credential: str = ""
    path: str = ""
    width: int = 640
    height: int = 480
    fps: float = 10.0
    loop: bool = False
    # Replay sources (folder, video file): deliver every frame instead of
    # dropping stale ones the way a live camera must.
    realtime: bool = True


@dataclass(frozen=True)
class DetectorConfig:
    """BlazeFace detector."""

    model: str = "face_detection_short_range.tflite"
    score_threshold: float = 0.6
    nms_iou: float = 0.3
    min_face_size: int = 40
    max_faces: int = 10


@dataclass(frozen=True)
class EmbedderConfig:
    """Embedding model and TFLite runtime."""

    model: str = "sface_int8.tflite"
    runtime: str = "auto"  # auto | ai_edge_litert | tflite_runtime
    num_threads: int = 2
    edgetpu: bool = False


@dataclass(frozen=True)
class MatchingConfig:
    """Open-set rule overrides; unset values come from the model manifest."""

    threshold: float | None = None
    margin: float | None = None


@dataclass(frozen=True)
class GalleryConfig:
    """The on-device gallery and the key that encrypts it at rest.

    The key comes from ``key_file`` or the systemd credential
    ``key_credential`` (``$CREDENTIALS_DIRECTORY/<name>``); with neither, the
    gallery is stored unencrypted (fine on a workstation, not on a door).
    """

    path: str = "gallery.fgg"
    key_file: str = ""
    key_credential: str = ""


@dataclass(frozen=True)
class DecisionConfig:
    """Decisions over frames: k of the last n frames must agree."""

    k: int = 3
    n: int = 4
    cooldown_s: float = 30.0
    iou: float = 0.3
    max_track_age_s: float = 2.0
    single_frame: bool = False


@dataclass(frozen=True)
class MqttConfig:
    """The broker, the topics and the delivery guarantees."""

    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    prefix: str = "facegate"
    client_id: str = ""
    keepalive: int = 30
    username: str = ""
    password_file: str = ""
    password_credential: str = ""
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    outbox_path: str = "outbox.sqlite"
    outbox_max: int = 10000
    drain_rate: float = 50.0
    state_interval_s: float = 60.0
    ha_discovery: bool = False
    ha_prefix: str = "homeassistant"
    commands: bool = False
    snapshot: bool = False


@dataclass(frozen=True)
class ServiceConfig:
    """Process-level settings."""

    log_level: str = "INFO"
    state_dir: str = "."
    stop_timeout_s: float = 5.0


@dataclass(frozen=True)
class Config:
    """The whole config file."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    base_dir: Path = field(default_factory=Path.cwd, compare=False)

    def resolve(self, p: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def model_path(self, p: str) -> Path:
        """A model path: absolute, relative to the config, or a name in ``models/``."""
        path = Path(p).expanduser()
        if path.is_absolute():
            return path
        if (self.base_dir / path).exists() or len(path.parts) > 1:
            return self.base_dir / path
        return MODELS_DIR / path


_CHOICES: dict[str, tuple[str, ...]] = {
    "camera.source": ("picamera2", "opencv", "folder", "fake"),
    "embedder.runtime": ("auto", "ai_edge_litert", "tflite_runtime"),
    "service.log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
}
_POSITIVE = {
    "camera.fps",
    "camera.width",
    "camera.height",
    "detector.max_faces",
    "decision.k",
    "decision.n",
    "embedder.num_threads",
    "mqtt.port",
    "mqtt.keepalive",
    "mqtt.outbox_max",
    "mqtt.drain_rate",
    "mqtt.state_interval_s",
    "service.stop_timeout_s",
}


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _check_value(path: str, tp: Any, value: Any) -> Any:
    """Check one value against a field type; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check_value(path, args[0], value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")


def _parse_section(cls: Any, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}"
        if key not in known:
            raise ConfigError(f"{path}: unknown key (allowed: {', '.join(sorted(known))})")
        v = _check_value(path, hints[key], value)
        if path in _CHOICES and v not in _CHOICES[path]:
            raise ConfigError(f"{path}: must be one of {', '.join(_CHOICES[path])}, got {v!r}")
        if path in _POSITIVE and v <= 0:
            raise ConfigError(f"{path}: must be positive, got {v!r}")
        kwargs[key] = v
    return cls(**kwargs)


def parse_config(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "base_dir"}
    hints = typing.get_type_hints(Config)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in sections:
            raise ConfigError(f"{key}: unknown section (allowed: {', '.join(sorted(sections))})")
        kwargs[key] = _parse_section(hints[key], value, key)
    cfg = Config(**kwargs, base_dir=base_dir or Path.cwd())
    d = cfg.decision
    if d.k > d.n:
        raise ConfigError(f"decision.k: must be at most decision.n ({d.n}), got {d.k}")
    if cfg.camera.source == "folder" and not cfg.camera.path:
        raise ConfigError("camera.path: required when camera.source = 'folder'")
    if cfg.camera.source == "opencv" and not cfg.camera.uri:
        raise ConfigError("camera.uri: required when camera.source = 'opencv'")
    cam = cfg.camera
    if cam.password_file or cam.password_credential:
        key = "camera.password_file" if cam.password_file else "camera.password_credential"
        if cam.password_file and cam.password_credential:
            raise ConfigError(f"{key}: give password_file or password_credential, not both")
        if cam.source != "opencv" or not re.match(_URI_SCHEME + r"[^/@]+@", cam.uri):
            raise ConfigError(
                f"{key}: needs camera.source = 'opencv' and a network camera.uri with the "
                "user name (rtsp://USER@host/...)"
            )
        if uri_has_password(cam.uri):
            raise ConfigError(f"camera.uri: holds a password, and {key} gives one too")
    if cfg.gallery.key_file and cfg.gallery.key_credential:
        raise ConfigError("gallery.key_file: give key_file or key_credential, not both")
    if cfg.mqtt.password_file and cfg.mqtt.password_credential:
        raise ConfigError("mqtt.password_file: give password_file or password_credential, not both")
    if bool(cfg.mqtt.tls_cert_file) != bool(cfg.mqtt.tls_key_file):
        raise ConfigError("mqtt.tls_cert_file: a client certificate needs both cert and key files")
    return cfg


_URI_SCHEME = r"^[a-zA-Z][a-zA-Z0-9+.-]*://"


def uri_has_password(uri: str) -> bool:
    """Whether a URI carries a password in its user info (``scheme://user:pw@host``)."""
    return re.match(_URI_SCHEME + r"[^/@]*:[^/@]*@", uri) is not None


def load_config(path: Path | str) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML ({e})") from None
    return parse_config(data, base_dir=p.resolve().parent)


def read_secret(
    file: str, credential: str, what: str, base_dir: Path | None = None
) -> bytes | None:
    """Read a secret from a file or a systemd credential; None when neither is set.

    A systemd credential ``name`` (``LoadCredential=name:/path``) is read from
    ``$CREDENTIALS_DIRECTORY/name``. Trailing newlines are stripped. Secrets
    never come from argv or the config itself.
    """
    if credential:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(
                f"{what}: credential {credential!r} requested but $CREDENTIALS_DIRECTORY is "
                "not set (run under systemd with LoadCredential=, or use a file)"
            )
        path = Path(cred_dir) / credential
    elif file:
        path = Path(file)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
    else:
        return None
    try:
        return path.read_bytes().rstrip(b"\r\n")
    except OSError as e:
        raise ConfigError(f"{what}: cannot read secret from {path} ({e.strerror or e})") from None
