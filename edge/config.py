"""The TOML config file, parsed into validated, frozen dataclasses.

Every section is a dataclass; its fields are the allowed keys and an unknown
key is an error. The rules live on the fields themselves: the type (``bool``,
``int``, ``float``, ``str`` or a ``Literal`` of the allowed words) and, with
``typing.Annotated``, small constraint objects::

    port: Annotated[int, Range(ge=1, le=65535)] = 1883
    state_dir: Annotated[str, DirPath()] = "."
    source: SourceName = "opencv"

Adding a constrained key is that one line. Rules that tie several keys of a
section together are its ``check()`` method; rules across sections are
:meth:`Config.check`. Validation runs whenever a section is built (parsing
the TOML, ``dataclasses.replace``, or building one in code), so
``check-config`` and ``run`` go through the same path: :func:`load_config`.

Every error names its key path and fits on one line
(``mqtt.port: must be in [1, 65535], got 0``). Whatever the rule, every
number must be finite and every string bounded and free of control
characters. Secrets are never config values: the config names a file or a
systemd credential that holds them (:class:`Secret`, :func:`read_secret`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, overload

from edge.errors import ConfigError
from edge.files import read_bounded

log = logging.getLogger("facegate.config")

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused before it is parsed."""
MAX_SECRET_BYTES = 64 * 1024
MAX_TEXT = 4096
"""The longest string any key accepts (paths included: Linux's PATH_MAX)."""
NAME_MAX = 255
"""The longest path component, in bytes (Linux's NAME_MAX)."""
MAX_ITEMS = 1000
"""The most items an array or table key (``door.allow``, ``door.schedule``) accepts."""
MAX_INT = 2**53
"""No integer key accepts more: every one has a tighter range anyway."""

OPEN_SET_LIMIT = 1.0
"""``matching.threshold`` at or above this cosine distance accepts faces no more
similar to a person than unrelated vectors are (cosine <= 0): the promise that
a stranger comes out ``unknown`` no longer holds, and the config says so."""

SourceName = Literal["picamera2", "opencv", "folder", "fake"]
"""Frame sources; each has its backend module in :mod:`edge.sources`."""


# -- constraints -------------------------------------------------------------------


class Invalid(ValueError):
    """A value breaks a constraint; the message lacks the key path (the parser adds it)."""


class Constraint:
    """A rule on one value, attached to a field with ``Annotated[T, rule]``."""

    def check(self, value: Any) -> None:
        """Raise :class:`Invalid` when ``value`` breaks the rule."""
        raise NotImplementedError


@dataclass(frozen=True)
class Range(Constraint):
    """A number within bounds (``ge``/``gt`` below, ``le``/``lt`` above)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __str__(self) -> str:
        lo = "(-inf" if self.ge is None and self.gt is None else ""
        if self.ge is not None:
            lo = f"[{self.ge:g}"
        elif self.gt is not None:
            lo = f"({self.gt:g}"
        hi = "inf)"
        if self.le is not None:
            hi = f"{self.le:g}]"
        elif self.lt is not None:
            hi = f"{self.lt:g})"
        return f"{lo}, {hi}"

    def check(self, value: Any) -> None:
        v = float(value)
        if (
            (self.ge is not None and v < self.ge)
            or (self.gt is not None and v <= self.gt)
            or (self.le is not None and v > self.le)
            or (self.lt is not None and v >= self.lt)
        ):
            raise Invalid(f"must be in {self}, got {value!r}")


@dataclass(frozen=True)
class Text(Constraint):
    """A string of at most ``max_len`` characters, optionally required and of a pattern."""

    max_len: int = 256
    required: bool = False
    pattern: str | None = None
    hint: str = ""

    def check(self, value: Any) -> None:
        if not value:
            if self.required:
                raise Invalid("must not be empty")
            return
        if len(value) > self.max_len:
            raise Invalid(f"too long ({len(value)} characters, at most {self.max_len})")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise Invalid(f"{value!r} is not {self.hint or 'allowed'}")


@dataclass(frozen=True)
class TopicPrefix(Constraint):
    """MQTT topic levels to publish under: no wildcards, not ``$``-reserved, not empty."""

    def check(self, value: Any) -> None:
        if not value.strip("/"):
            raise Invalid("must not be empty")
        if len(value) > 128:
            raise Invalid(f"too long ({len(value)} characters, at most 128)")
        if any(c in value for c in "+#") or any(c.isspace() for c in value):
            raise Invalid(f"{value!r} cannot be used in an MQTT topic (no '+', '#' or spaces)")
        if value.startswith("$"):
            raise Invalid(f"{value!r}: topics starting with '$' are reserved for the broker")


def _check_path(value: str) -> None:
    if len(value.encode("utf-8", "surrogatepass")) > MAX_TEXT:
        raise Invalid(f"path too long ({len(value)} characters)")
    for part in value.split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
            raise Invalid(f"path component too long ({part[:20]}..., over {NAME_MAX} bytes)")


@dataclass(frozen=True)
class DirPath(Constraint):
    """A path naming a folder (relative to the config's folder unless absolute)."""

    required: bool = True

    def check(self, value: Any) -> None:
        if not value:
            if self.required:
                raise Invalid("must not be empty")
            return
        _check_path(value)


@dataclass(frozen=True)
class FilePath(DirPath):
    """A path naming a file: a folder's checks, and a last component that is a name."""

    def check(self, value: Any) -> None:
        super().check(value)
        if value and (value.endswith("/") or Path(value).name in ("", ".", "..")):
            raise Invalid(f"{value!r} names a folder, not a file")


@dataclass(frozen=True)
class CredentialName(Constraint):
    """The name of a systemd credential (a file name in ``$CREDENTIALS_DIRECTORY``)."""

    def check(self, value: Any) -> None:
        if value and ("/" in value or value in (".", "..") or len(value) > NAME_MAX):
            raise Invalid(f"{value!r} is not a credential name (a file name, no '/')")


# Field types used by several sections.
OptionalFile = Annotated[str, FilePath(required=False)]
Credential = Annotated[str, CredentialName()]
ModelPath = Annotated[str, FilePath()]
IoU = Annotated[float, Range(gt=0, le=1)]


# -- secrets -----------------------------------------------------------------------

KEY_MIN_BYTES = 16
"""The shortest gallery key, event signing key or remote unlock key accepted."""


@dataclass(frozen=True)
class SecretRef:
    """Where one secret comes from: a file, a systemd credential, or nowhere (unset)."""

    key: str
    """The key path for messages, e.g. ``gallery.key``."""
    file: str = ""
    credential: str = ""
    min_bytes: int = 0
    """A shorter secret is refused (keys: 16 bytes, so a guessable one never starts)."""

    @property
    def configured(self) -> bool:
        return bool(self.file or self.credential)

    def read(self, base_dir: Path | None = None) -> bytes | None:
        """The secret's bytes (trailing newlines stripped), or None when unset.

        ConfigError when it cannot be read or is shorter than ``min_bytes``;
        ``check-config`` reads it the same way, so a key it accepts starts.
        """
        what = f"{self.key}_file" if self.file else f"{self.key}_credential"
        data = read_secret(self.file, self.credential, what, base_dir)
        if data is not None and len(data) < self.min_bytes:
            raise ConfigError(f"{self.key}: too short ({len(data)} bytes, need {self.min_bytes}+)")
        return data


class Secret:
    """Declares the key pair ``<name>_file`` / ``<name>_credential`` of a section.

    ``key = Secret()`` in :class:`GalleryConfig` makes ``cfg.gallery.key`` a
    :class:`SecretRef` built from ``key_file`` and ``key_credential``; giving
    both is an error. ``min_bytes``: the shortest secret accepted.
    """

    def __init__(self, min_bytes: int = 0) -> None:
        self.min_bytes = min_bytes

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Secret: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> SecretRef: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Secret | SecretRef:
        if obj is None:
            return self
        section = getattr(obj, "SECTION", "")
        return SecretRef(
            f"{section}.{self.name}",
            getattr(obj, f"{self.name}_file"),
            getattr(obj, f"{self.name}_credential"),
            self.min_bytes,
        )


# -- the checker -------------------------------------------------------------------

_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_value(path: str, tp: Any, value: Any) -> Any:
    """Check one value against a field type; return it (ints widen to floats).

    Scalars by their type (:data:`_SCALAR_CHECKS`), the rest by the type's
    origin (:data:`_GENERIC_CHECKS`: constraints, optional, choices, arrays,
    tables).
    """
    origin = typing.get_origin(tp)
    check = _GENERIC_CHECKS.get(origin) if origin is not None else _SCALAR_CHECKS.get(tp)
    if check is None:
        raise ConfigError(f"{path}: unsupported type {_SCALARS.get(tp, str(tp))}")
    return check(path, tp, value)


def _check_annotated(path: str, tp: Any, value: Any) -> Any:
    base, *rules = typing.get_args(tp)
    v = _check_value(path, base, value)
    if v is not None:
        for rule in rules:
            if isinstance(rule, Constraint):
                try:
                    rule.check(v)
                except Invalid as e:
                    raise ConfigError(f"{path}: {e}") from None
    return v


def _check_optional(path: str, tp: Any, value: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None and len(args) < len(typing.get_args(tp)):
        return None
    return _check_value(path, args[0], value)


def _check_literal(path: str, tp: Any, value: Any) -> Any:
    allowed = typing.get_args(tp)
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{path}: must be one of {', '.join(allowed)}, got {value!r:.80}")
    return value


def _check_bool(path: str, tp: Any, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {value!r:.80}")
    return value


def _check_int(path: str, tp: Any, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, got {value!r:.80}")
    if abs(value) > MAX_INT:
        raise ConfigError(f"{path}: integer out of range ({value:.3g})")
    return value


def _check_float(path: str, tp: Any, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: expected a number, got {value!r:.80}")
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise ConfigError(f"{path}: number out of range ({value:.3g})")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")
    return v


def _check_str(path: str, tp: Any, value: Any) -> Any:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {value!r:.80}")
    if len(value) > MAX_TEXT:
        raise ConfigError(f"{path}: too long ({len(value)} characters, at most {MAX_TEXT})")
    if _CONTROL.search(value):
        raise ConfigError(f"{path}: must not contain control characters (NUL, newline, ...)")
    return value


def _check_array(path: str, tp: Any, value: Any) -> Any:
    """``tuple[X, ...]``: a TOML array."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{path}: expected an array, got {value!r:.80}")
    if len(value) > MAX_ITEMS:
        raise ConfigError(f"{path}: too many items ({len(value)}, at most {MAX_ITEMS})")
    item = typing.get_args(tp)[0]
    return tuple(_check_value(f"{path}[{i}]", item, v) for i, v in enumerate(value))


def _check_table(path: str, tp: Any, value: Any) -> Any:
    """``dict[str, X]``: a TOML table."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a table, got {value!r:.80}")
    if len(value) > MAX_ITEMS:
        raise ConfigError(f"{path}: too many entries ({len(value)}, at most {MAX_ITEMS})")
    item = typing.get_args(tp)[1]
    return {
        _check_value(f"{path}", str, k): _check_value(f"{path}.{k:.80}", item, v)
        for k, v in value.items()
    }


_Check = Callable[[str, Any, Any], Any]
_SCALAR_CHECKS: dict[Any, _Check] = {
    bool: _check_bool,
    int: _check_int,
    float: _check_float,
    str: _check_str,
}
_GENERIC_CHECKS: dict[Any, _Check] = {
    Annotated: _check_annotated,
    typing.Union: _check_optional,
    types.UnionType: _check_optional,
    Literal: _check_literal,
    tuple: _check_array,
    dict: _check_table,
}


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    """Each field's type with its constraints (``Annotated``), resolved once per class."""
    types_ = _FIELD_TYPES.get(cls)
    if types_ is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        types_ = _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return types_


def _secrets(cls: type) -> list[Secret]:
    return [v for k in dir(cls) if isinstance(v := getattr(cls, k, None), Secret)]


@dataclass(frozen=True)
class Section:
    """A config section: fields checked (types and constraints), then :meth:`check`."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, tp in _field_types(type(self)).items():
            value = getattr(self, name)
            checked = _check_value(f"{self.SECTION}.{name}", tp, value)
            if type(checked) is not type(value):
                object.__setattr__(self, name, checked)  # 3 -> 3.0 for a float key
        for secret in _secrets(type(self)):
            ref: SecretRef = getattr(self, secret.name)
            if ref.file and ref.credential:
                n = secret.name
                raise ConfigError(
                    f"{self.SECTION}.{n}_file: give {n}_file or {n}_credential, not both"
                )
        self.check()

    def check(self) -> None:
        """Rules across this section's keys (ConfigError naming a key)."""


# -- the sections ------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceConfig(Section):
    """Identity of this device."""

    SECTION = "device"
    # An MQTT topic level and a Home Assistant id: HA drops a discovery topic
    # with other characters, and a one-to-one mapping needs no rewriting.
    id: Annotated[
        str, Text(64, True, r"[A-Za-z0-9_-]+", "made of A-Z a-z 0-9 _ - (1-64 characters)")
    ] = "facegate"
    name: Annotated[str, Text(128)] = "facegate door"


@dataclass(frozen=True)
class CameraConfig(Section):
    """Where frames come from.

    ``source``: ``picamera2`` (Pi camera), ``opencv`` (USB index, RTSP URL or
    video file in ``uri``), ``folder`` (replay images from ``path``) or
    ``fake`` (synthetic frames, for tests).
    """

    SECTION = "camera"
    source: SourceName = "opencv"
    uri: Annotated[str, Text(MAX_TEXT)] = "0"
    # A network camera's password (rtsp://USER@host/...): from a file or a
    # systemd credential, inserted into the URI when the stream is opened.
    password_file: OptionalFile = ""
    password_credential: Credential = ""
    password = Secret()
    path: Annotated[str, DirPath(required=False)] = ""
    width: Annotated[int, Range(ge=1, le=16384)] = 640
    height: Annotated[int, Range(ge=1, le=16384)] = 480
    fps: Annotated[float, Range(gt=0, le=240)] = 10.0
    loop: bool = False
    # Replay sources (folder, video file): deliver every frame instead of
    # dropping stale ones the way a live camera must.
    realtime: bool = True
    # liveness (issue 24): the camera is fixed to a wall, so the room behind a
    # face stands still; a held or moving camera turns the liveness stage's
    # prop cue off (edge.liveness.decide).
    mounted: bool = True

    def check(self) -> None:
        if self.source == "folder" and not self.path:
            raise ConfigError("camera.path: required when camera.source = 'folder'")
        if self.source == "opencv" and not self.uri.strip():
            raise ConfigError("camera.uri: required when camera.source = 'opencv'")
        if self.password.configured:
            key = "camera.password_file" if self.password_file else "camera.password_credential"
            if self.source != "opencv" or not re.match(_URI_SCHEME + r"[^/@]+@", self.uri):
                raise ConfigError(
                    f"{key}: needs camera.source = 'opencv' and a network camera.uri with the "
                    "user name (rtsp://USER@host/...)"
                )
            if uri_has_password(self.uri):
                raise ConfigError(f"camera.uri: holds a password, and {key} gives one too")


@dataclass(frozen=True)
class DetectorConfig(Section):
    """BlazeFace detector."""

    SECTION = "detector"
    model: ModelPath = "face_detection_short_range.tflite"
    score_threshold: Annotated[float, Range(gt=0, lt=1)] = 0.6
    nms_iou: IoU = 0.3
    min_face_size: Annotated[int, Range(ge=0, le=4096)] = 40
    max_faces: Annotated[int, Range(ge=1, le=100)] = 10


@dataclass(frozen=True)
class EmbedderConfig(Section):
    """Embedding model and TFLite runtime."""

    SECTION = "embedder"
    model: ModelPath = "sface_int8.tflite"
    runtime: Literal["auto", "ai_edge_litert", "tflite_runtime"] = "auto"
    num_threads: Annotated[int, Range(ge=1, le=64)] = 2
    edgetpu: bool = False


@dataclass(frozen=True)
class MatchingConfig(Section):
    """The open-set rule; unset values come from the model manifest.

    ``target_fpir``: the share of strangers the door may name; the threshold
    follows the gallery size to keep it (:mod:`edge.thresholds`).
    ``threshold`` and ``margin`` override the manifest's calibration (an
    explicit threshold stops the threshold from following the gallery size).
    Cosine distances lie in [0, 2]. A ``threshold`` of 2 would match every
    face and is refused; one at or above :data:`OPEN_SET_LIMIT` (1.0) is
    accepted with a warning, because it matches faces no closer to a person
    than unrelated vectors are, so strangers are no longer reliably unknown.
    """

    SECTION = "matching"
    threshold: Annotated[float | None, Range(gt=0, lt=2)] = None
    margin: Annotated[float | None, Range(ge=0, lt=2)] = None
    target_fpir: Annotated[float, Range(gt=0, lt=0.5)] = 0.01

    def check(self) -> None:
        if self.threshold is not None and self.threshold >= OPEN_SET_LIMIT:
            log.warning(
                "matching.threshold = %g is at or above %g: faces no closer to an enrolled "
                "person than an unrelated face will match them, so strangers are no longer "
                "reported as unknown; use the calibrated threshold (leave it unset)",
                self.threshold,
                OPEN_SET_LIMIT,
            )


@dataclass(frozen=True)
class GalleryConfig(Section):
    """The on-device gallery and the key that encrypts it at rest.

    The key comes from ``key_file`` or the systemd credential
    ``key_credential`` (``$CREDENTIALS_DIRECTORY/<name>``); with neither, the
    gallery is stored unencrypted (fine on a workstation, not on a door).
    """

    SECTION = "gallery"
    path: Annotated[str, FilePath()] = "gallery.fgg"
    key_file: OptionalFile = ""
    key_credential: Credential = ""
    key = Secret(min_bytes=KEY_MIN_BYTES)


@dataclass(frozen=True)
class DecisionConfig(Section):
    """Decisions over frames: k of the last n frames must agree."""

    SECTION = "decision"
    k: Annotated[int, Range(ge=1, le=100)] = 3
    n: Annotated[int, Range(ge=1, le=100)] = 4
    cooldown_s: Annotated[float, Range(ge=0, le=86400)] = 30.0
    iou: IoU = 0.3
    max_track_age_s: Annotated[float, Range(gt=0, le=3600)] = 2.0
    single_frame: bool = False

    def check(self) -> None:
        if self.k > self.n:
            raise ConfigError(f"decision.k: must be at most decision.n ({self.n}), got {self.k}")


@dataclass(frozen=True)
class MqttConfig(Section):
    """The broker, the topics and the delivery guarantees."""

    SECTION = "mqtt"
    enabled: bool = False
    host: Annotated[str, Text(253, True, r"[A-Za-z0-9._:%\[\]-]+", "a host name or IP address")] = (
        "localhost"
    )
    port: Annotated[int, Range(ge=1, le=65535)] = 1883
    prefix: Annotated[str, TopicPrefix()] = "facegate"
    client_id: Annotated[str, Text(128, False, r"[\x21-\x7e]+", "printable ASCII")] = ""
    keepalive: Annotated[int, Range(ge=1, le=65535)] = 30
    username: Annotated[str, Text(256)] = ""
    password_file: OptionalFile = ""
    password_credential: Credential = ""
    password = Secret()
    tls: bool = False
    tls_ca_file: OptionalFile = ""
    tls_cert_file: OptionalFile = ""
    tls_key_file: OptionalFile = ""
    outbox_path: Annotated[str, FilePath()] = "outbox.sqlite"
    outbox_max: Annotated[int, Range(ge=1, le=10_000_000)] = 10000
    drain_rate: Annotated[float, Range(gt=0, le=10_000)] = 50.0
    state_interval_s: Annotated[float, Range(gt=0, le=86400)] = 60.0
    ha_discovery: bool = False
    ha_prefix: Annotated[str, TopicPrefix()] = "homeassistant"
    commands: bool = False
    snapshot: bool = False

    def check(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(
                "mqtt.tls_cert_file: a client certificate needs both cert and key files"
            )
        if self.password.configured and not self.username:
            raise ConfigError("mqtt.username: a password is configured but no username")


@dataclass(frozen=True)
class EventsConfig(Section):
    """How long a decision event may be acted on.

    ``valid_for_s``: an event expires this long after the face was seen
    (``expires_at = ts + valid_for_s``); one published later says
    ``delivery: "late"`` and must not open a door. ``sign_key_file`` /
    ``sign_key_credential``: a shared key (16+ bytes) with which every
    payload on the event topic is signed (:func:`edge.events.sign_payload`).
    """

    SECTION = "events"
    valid_for_s: Annotated[float, Range(gt=0, le=3600)] = 5.0
    # With a key, every payload on the event topic carries an HMAC ("sig"),
    # so consumers can refuse events other broker clients wrote.
    sign_key_file: OptionalFile = ""
    sign_key_credential: Credential = ""
    sign_key = Secret(min_bytes=KEY_MIN_BYTES)


@dataclass(frozen=True)
class HomeAssistantConfig(Section):
    """Home Assistant entities beyond discovery itself (``mqtt.ha_discovery``)."""

    SECTION = "homeassistant"
    # The "Last person" sensor goes blank this long after the last live event.
    last_person_clear_s: Annotated[float, Range(gt=0, le=86400)] = 60.0


@dataclass(frozen=True)
class DoorConfig(Section):
    """The door itself (off by default): strike relay, inputs, granting rules, audit log.

    Pins are BCM GPIO numbers; an input left unset (``None``) is not wired.
    ``allow`` names people and ``group:NAME`` groups (the gallery's person
    metadata); ``schedule`` maps a person or ``group:NAME`` to weekly windows
    such as ``"mon-fri 07:00-19:00"`` (see :mod:`edge.door`, which also checks
    pins, names, windows and the time zone: :func:`edge.door.check_door_config`).
    """

    SECTION = "door"
    enabled: bool = False
    pin_factory: Literal["auto", "lgpio", "rpigpio", "pigpio", "native", "mock"] = "auto"
    mock_log: OptionalFile = ""
    # BCM GPIO numbers of the 40-pin header (edge.door.MAX_PIN).
    relay_pin: Annotated[int, Range(ge=0, le=27)] = 17
    active_high: bool = True
    contact_pin: Annotated[int | None, Range(ge=0, le=27)] = None
    contact_closed_when_shut: bool = True
    exit_pin: Annotated[int | None, Range(ge=0, le=27)] = None
    tamper_pin: Annotated[int | None, Range(ge=0, le=27)] = None
    tamper_closed_when_ok: bool = True
    debounce_ms: Annotated[int, Range(ge=0, le=1000)] = 50
    unlock_s: Annotated[float, Range(gt=0, le=120)] = 3.0
    # A door must not act on old faces: at most 5 s between the frame and the grant.
    max_decision_age_ms: Annotated[int, Range(ge=1, le=5000)] = 1000
    allow: tuple[Annotated[str, Text(128)], ...] = ()
    schedule: dict[str, tuple[Annotated[str, Text(64)], ...]] = field(default_factory=dict)
    timezone: Annotated[str, Text(64)] = ""
    max_denials: Annotated[int, Range(ge=1, le=1000)] = 5
    lockout_window_s: Annotated[float, Range(gt=0, le=86400)] = 60.0
    lockout_s: Annotated[float, Range(gt=0, le=86400)] = 300.0
    held_open_s: Annotated[float, Range(gt=0, le=86400)] = 30.0
    remote_unlock: bool = False
    remote_key_file: OptionalFile = ""
    remote_key_credential: Credential = ""
    remote_key = Secret(min_bytes=KEY_MIN_BYTES)
    audit_path: Annotated[str, FilePath()] = "audit.sqlite"
    audit_max_age_days: Annotated[float, Range(gt=0, le=36500)] = 365.0
    audit_max_rows: Annotated[int, Range(ge=1, le=100_000_000)] = 100000


# -- liveness (issue 24) --------------------------------------------------------------
# One block for the merge with the config split: the [liveness] section.

LivenessMode = Literal["off", "report", "require"]


@dataclass(frozen=True)
class LivenessConfig(Section):
    """Presentation-attack detection per track (:mod:`edge.liveness`).

    ``mode``: ``off``; ``report`` (events carry the verdict, the door ignores
    it); ``require`` (the door opens only for a track that passed). A track
    without a verdict after ``max_wait_s`` is denied ``no_liveness``. The
    thresholds are physical: ``min_turn_deg`` the smallest out-of-plane turn
    of the face (seen by the mesh; its texture must show half of it),
    ``min_z`` the texture parallax's significance, ``min_prop_points`` how
    many points beyond the head moving exactly with the face mark a prop.
    ``texture_model``: an optional anti-spoofing model (tools.quantize
    --antispoof); a track whose mean live probability is under
    ``texture_min`` is a spoof (see docs/liveness.md).
    """

    SECTION = "liveness"
    mode: LivenessMode = "report"
    model: ModelPath = "face_landmark.tflite"
    max_wait_s: Annotated[float, Range(gt=0, le=60)] = 3.0
    min_turn_deg: Annotated[float, Range(gt=0, le=45)] = 6.0
    min_z: Annotated[float, Range(gt=0, le=100)] = 4.5
    min_prop_points: Annotated[int, Range(ge=1, le=10000)] = 12
    blinks: bool = True
    texture_model: OptionalFile = ""
    texture_min: Annotated[float, Range(gt=0, lt=1)] = 0.5


# -- end of liveness -----------------------------------------------------------------


@dataclass(frozen=True)
class ServiceConfig(Section):
    """Process-level settings."""

    SECTION = "service"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    state_dir: Annotated[str, DirPath()] = "."
    stop_timeout_s: Annotated[float, Range(gt=0, le=300)] = 5.0


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
    events: EventsConfig = field(default_factory=EventsConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    door: DoorConfig = field(default_factory=DoorConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)  # issue 24
    base_dir: Path = field(default_factory=Path.cwd, compare=False)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Rules across sections: no two keys may name the same file; the door's own rules."""
        files: dict[Path, str] = {}
        for key, path in self.files().items():
            other = files.setdefault(path, key)
            if other != key:
                raise ConfigError(f"{key}: names the same file as {other} ({path})")
        from edge.door import check_door_config  # pins, allow list, schedules, remote unlock

        check_door_config(self)

    def files(self) -> dict[str, Path]:
        """Every file the config names (models excluded), by key path, resolved."""
        out = {"gallery.path": self.resolve(self.gallery.path)}
        if self.mqtt.enabled:
            out["mqtt.outbox_path"] = self.outbox_file
        if self.door.enabled:
            out["door.audit_path"] = self.audit_file
        for key in (
            "gallery.key_file",
            "door.remote_key_file",
            "events.sign_key_file",
            "mqtt.password_file",
            "camera.password_file",
            "mqtt.tls_ca_file",
            "mqtt.tls_cert_file",
            "mqtt.tls_key_file",
        ):
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value:
                out[key] = self.resolve(value)
        return out

    def resolve(self, p: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(p).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else self.base_dir / path))

    @property
    def state_dir(self) -> Path:
        """``service.state_dir``, resolved."""
        return self.resolve(self.service.state_dir)

    @property
    def outbox_file(self) -> Path:
        """``mqtt.outbox_path``; a relative path is taken inside ``service.state_dir``."""
        p = Path(self.mqtt.outbox_path).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.state_dir / p))

    @property
    def audit_file(self) -> Path:
        """``door.audit_path``; a relative path is taken inside ``service.state_dir``."""
        p = Path(self.door.audit_path).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.state_dir / p))

    def model_path(self, p: str) -> Path:
        """A model path: absolute, relative to the config, or a name in ``models/``."""
        path = Path(p).expanduser()
        if path.is_absolute():
            return path
        if (self.base_dir / path).exists() or len(path.parts) > 1:
            return self.base_dir / path
        return MODELS_DIR / path


def _parse_section(cls: type[Any], data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a table, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{prefix}.{key:.80}: unknown key (allowed: {', '.join(sorted(known))})"
            )
    if not issubclass(cls, Section):
        # A section written as a plain dataclass still gets its types checked
        # (a Section checks itself, also when built in code).
        types_ = _field_types(cls)
        data = {k: _check_value(f"{prefix}.{k}", types_[k], v) for k, v in data.items()}
    return cls(**data)


def parse_config(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    sections = {f.name for f in dataclasses.fields(Config) if f.name != "base_dir"}
    hints = typing.get_type_hints(Config)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in sections:
            allowed = ", ".join(sorted(sections))
            raise ConfigError(f"{key:.80}: unknown section (allowed: {allowed})")
        kwargs[key] = _parse_section(hints[key], value, key)
    return Config(**kwargs, base_dir=base_dir or Path.cwd())


_URI_SCHEME = r"^[a-zA-Z][a-zA-Z0-9+.-]*://"


def uri_has_password(uri: str) -> bool:
    """Whether a URI carries a password in its user info (``scheme://user:pw@host``)."""
    return re.match(_URI_SCHEME + r"[^/@]*:[^/@]*@", uri) is not None


def warn_if_exposed(path: Path, key: str) -> None:
    """Log a warning when a secret file can be read by its group or by others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # reading it later says why
    if stat.S_ISREG(mode) and mode & 0o077:
        log.warning(
            "%s: %s can be read or written by group or others (mode %04o); chmod 600 it",
            key,
            path,
            stat.S_IMODE(mode),
        )


def _stat(path: Path, key: str) -> os.stat_result | None:
    """``os.stat``, None when the path does not exist; ConfigError when it cannot be looked up."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"{key}: cannot look up {path} ({e.strerror or e})") from None


def _check_secrets(cfg: Config) -> None:
    """The secrets ``run`` will read: readable files, and credentials when systemd passes them."""
    used = [cfg.gallery.key]
    if cfg.door.enabled and cfg.door.remote_unlock:
        used.append(cfg.door.remote_key)
    if cfg.mqtt.enabled:
        used.append(cfg.mqtt.password)
    if cfg.camera.password.configured:
        used.append(cfg.camera.password)
    if cfg.events.sign_key.configured:
        used.append(cfg.events.sign_key)
    for ref in used:
        if ref.file:
            warn_if_exposed(cfg.resolve(ref.file), f"{ref.key}_file")
            ref.read(cfg.base_dir)
        elif ref.credential and os.environ.get("CREDENTIALS_DIRECTORY"):
            ref.read(cfg.base_dir)
        elif ref.credential:
            log.info(
                "%s_credential: %r is read from $CREDENTIALS_DIRECTORY when systemd runs "
                "the service; not checked here",
                ref.key,
                ref.credential,
            )


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
    _check_secrets(cfg)
    if cfg.mqtt.enabled and cfg.mqtt.tls:
        _check_tls(cfg)
    _check_camera(cfg)


def load_config(path: Path | str, *, environment: bool = True) -> Config:
    """Read and validate a TOML config file (the one path for ``check-config`` and ``run``).

    ``environment=False`` skips :func:`check_environment` (for a config meant
    for another machine, such as the shipped example).
    """
    p = Path(path)
    raw = read_bounded(p, MAX_CONFIG_BYTES, "config", ConfigError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML ({str(e)[:200]})") from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid TOML (nested too deeply)") from None
    cfg = parse_config(data, base_dir=p.resolve().parent)
    if environment:
        check_environment(cfg, p)
    return cfg


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
        path = Path(file).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
    else:
        return None
    try:
        data = read_bounded(path, MAX_SECRET_BYTES, "secret", ConfigError)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    return data.rstrip(b"\r\n")
