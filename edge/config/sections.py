"""The config's sections: one frozen dataclass per TOML table.

Each field is an allowed key, with its type and constraints
(:mod:`edge.config.checker`); a key tied to other keys of its section is
checked by the section's ``check()``. Sections import nothing but the
checker, the secrets and the value grammars (:mod:`edge.config.values`):
the door's rules on pins, names, windows and the time zone are stated here,
on :class:`DoorConfig`, not in the door.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from edge.config.checker import (
    MAX_TEXT,
    CredentialName,
    DirPath,
    FilePath,
    Range,
    Section,
    Text,
    TopicPrefix,
)
from edge.config.secrets import KEY_MIN_BYTES, Secret
from edge.config.values import GROUP_PREFIX, check_group, parse_window, zone
from edge.errors import ConfigError, FacegateError

log = logging.getLogger("facegate.config")

_URI_SCHEME = r"^[a-zA-Z][a-zA-Z0-9+.-]*://"


def uri_has_password(uri: str) -> bool:
    """Whether a URI carries a password in its user info (``scheme://user:pw@host``)."""
    return re.match(_URI_SCHEME + r"[^/@]*:[^/@]*@", uri) is not None


OPEN_SET_LIMIT = 1.0
"""``matching.threshold`` at or above this cosine distance accepts faces no more
similar to a person than unrelated vectors are (cosine <= 0): the promise that
a stranger comes out ``unknown`` no longer holds, and the config says so."""

SourceName = Literal["picamera2", "opencv", "folder", "fake"]
"""Frame sources; each has its backend module in :mod:`edge.sources`."""


OptionalFile = Annotated[str, FilePath(required=False)]
Credential = Annotated[str, CredentialName()]
ModelPath = Annotated[str, FilePath()]
IoU = Annotated[float, Range(gt=0, le=1)]


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
    # The camera is fixed to a wall, so the room behind a face stands still;
    # a hand-held or moving camera turns the liveness stage's prop cue off
    # (edge.liveness.decide).
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
    follows the gallery size to keep it (:mod:`edge.identity.thresholds`).
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
    payload on the event topic is signed (:func:`edge.delivery.signing.sign_payload`).
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
    such as ``"mon-fri 07:00-19:00"`` (:func:`edge.config.values.parse_window`).
    :meth:`check` ties the keys together: no pin used twice, valid names,
    groups and windows, a known time zone; :meth:`Config.check` the remote
    unlock's need for MQTT commands.
    """

    SECTION = "door"
    enabled: bool = False
    pin_factory: Literal["auto", "lgpio", "rpigpio", "pigpio", "native", "mock"] = "auto"
    mock_log: OptionalFile = ""
    # BCM GPIO numbers of the 40-pin header (edge.door.pins.MAX_PIN).
    relay_pin: Annotated[int, Range(ge=0, le=27)] = 17
    active_high: bool = True
    contact_pin: Annotated[int | None, Range(ge=0, le=27)] = None
    contact_closed_when_shut: bool = True
    exit_pin: Annotated[int | None, Range(ge=0, le=27)] = None
    tamper_pin: Annotated[int | None, Range(ge=0, le=27)] = None
    tamper_closed_when_ok: bool = True
    # A tamper alarm in force denies grants (reason "tampered"); off: an alarm only.
    deny_while_tampered: bool = False
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

    def check(self) -> None:
        pins: dict[int, str] = {}
        for key in ("relay_pin", "contact_pin", "exit_pin", "tamper_pin"):
            pin = getattr(self, key)
            if pin is None:
                continue
            if pin in pins:
                raise ConfigError(f"door.{key}: GPIO{pin} is already door.{pins[pin]}")
            pins[pin] = key
        for i, who in enumerate(self.allow):
            _check_who(f"door.allow[{i}]", who)
        for who, windows in self.schedule.items():
            _check_who(f"door.schedule.{who}", who)
            for i, w in enumerate(windows):
                try:
                    parse_window(w)
                except ValueError as e:
                    raise ConfigError(f"door.schedule.{who}[{i}]: {e}") from None
        zone(self.timezone)
        if self.mock_log and self.pin_factory != "mock":
            raise ConfigError("door.mock_log: only with door.pin_factory = 'mock'")
        if self.remote_unlock and not (self.remote_key_file or self.remote_key_credential):
            raise ConfigError(
                "door.remote_unlock: needs door.remote_key_file or door.remote_key_credential"
            )


def _check_who(path: str, who: str) -> None:
    """An allow-list or schedule entry: a person's name, or ``group:NAME``."""
    if who.startswith(GROUP_PREFIX):
        try:
            check_group(who.removeprefix(GROUP_PREFIX))
        except FacegateError as e:
            raise ConfigError(f"{path}: {e}") from None
    elif not who.strip():
        raise ConfigError(f"{path}: an empty name")


@dataclass(frozen=True)
class ReviewConfig(Section):
    """Unknown-visitor review and enrolment while the service runs; both off by default.

    ``keep_unknown``: keep the last unknown visitors (best crop, embedding,
    time) in an encrypted ring in ``path`` (a folder, relative to
    ``service.state_dir``), at most ``max_visits`` visits and ``max_age_days``
    days; recurring strangers are one entry. Biometric data of people who did
    not consent: README's "Unknown visitors" says what that means. The key is
    ``key_file`` / ``key_credential``, else the gallery key (one of them is
    required: the ring is never stored in the clear). ``notify``: each new
    visit's crop and entry on MQTT (a Home Assistant image entity).

    ``enrol_command``: accept the signed MQTT command "enrol the next face
    as NAME" (HMAC with ``enrol_key_*``, its own key), which enrols up to
    ``enrol_photos`` camera frames collected within ``enrol_timeout_s``.
    Enrolling grants access: it needs its key, ``mqtt.commands`` and a
    synchronised clock, like the door's remote unlock.
    """

    SECTION = "review"
    keep_unknown: bool = False
    path: Annotated[str, DirPath()] = "unknowns"
    key_file: OptionalFile = ""
    key_credential: Credential = ""
    key = Secret(min_bytes=KEY_MIN_BYTES)
    max_visits: Annotated[int, Range(ge=1, le=100_000)] = 200
    max_age_days: Annotated[float, Range(gt=0, le=3650)] = 7.0
    notify: bool = False
    enrol_command: bool = False
    enrol_key_file: OptionalFile = ""
    enrol_key_credential: Credential = ""
    enrol_key = Secret(min_bytes=KEY_MIN_BYTES)
    enrol_photos: Annotated[int, Range(ge=1, le=20)] = 5
    enrol_timeout_s: Annotated[float, Range(gt=0, le=600)] = 30.0

    def check(self) -> None:
        if self.notify and not self.keep_unknown:
            raise ConfigError("review.notify: needs review.keep_unknown = true")
        if self.enrol_command and not self.enrol_key.configured:
            raise ConfigError(
                "review.enrol_command: needs review.enrol_key_file or review.enrol_key_credential"
            )


@dataclass(frozen=True)
class FleetConfig(Section):
    """Many doors, one gallery: signed gallery bundles over the broker (:mod:`edge.fleet`).

    ``enabled`` makes this device take its gallery from the site's bundles
    (the only gallery then: ``gallery.path`` is not used, and ``facegate
    enroll`` refuses a config with it). The admin machine leaves it off and
    names the same ``site`` with the signing key to run ``facegate fleet
    push``. Keys come from files or systemd credentials: the site key
    (AES-256-GCM, 16+ bytes; admin and doors), the Ed25519 public key(s) the
    doors trust (PEM, several for a rotation) and the admin's private
    signing key (PEM, the admin machine only). ``max_age_s`` (0: off) makes
    a door refuse every grant while its gallery was not confirmed current
    for that long (fail-secure).
    """

    SECTION = "fleet"
    enabled: bool = False
    site: Annotated[str, Text(64, False, r"[A-Za-z0-9_-]+", "made of A-Z a-z 0-9 _ -")] = ""
    site_key_file: OptionalFile = ""
    site_key_credential: Credential = ""
    site_key = Secret(min_bytes=KEY_MIN_BYTES)
    public_key_file: OptionalFile = ""
    public_key_credential: Credential = ""
    public_key = Secret()
    signing_key_file: OptionalFile = ""
    signing_key_credential: Credential = ""
    signing_key = Secret()
    max_age_s: Annotated[float, Range(ge=0, le=365 * 86400)] = 0.0
    sync_wait_s: Annotated[float, Range(gt=0, le=600)] = 3.0
    fetch_timeout_s: Annotated[float, Range(gt=0, le=3600)] = 30.0
    chunk_kib: Annotated[int, Range(ge=1, le=1024)] = 64

    def check(self) -> None:
        if not self.enabled:
            return
        if not self.site:
            raise ConfigError("fleet.site: required when fleet.enabled = true")
        if not self.site_key.configured:
            raise ConfigError(
                "fleet.site_key_file: fleet.enabled needs the site key "
                "(fleet.site_key_file or fleet.site_key_credential)"
            )
        if not self.public_key.configured:
            raise ConfigError(
                "fleet.public_key_file: fleet.enabled needs the admin's public key "
                "(fleet.public_key_file or fleet.public_key_credential)"
            )
        if self.signing_key.configured:
            raise ConfigError(
                "fleet.signing_key_file: a door never holds the signing key (a stolen door "
                "could then forge galleries); keep it on the admin machine only"
            )


LivenessMode = Literal["off", "report", "require"]


@dataclass(frozen=True)
class LivenessConfig(Section):
    """Presentation-attack detection per track (:mod:`edge.liveness`).

    ``mode``: ``off``; ``report`` (the default: events carry the verdict,
    the door ignores it); ``require`` (the door opens only for a track that
    passed; what a door should use: docs/liveness.md says why it is not the
    default yet). Decisions wait for the verdict, at most ``max_wait_s``. A track
    without a verdict ``max_wait_s`` after it appeared is denied
    ``no_liveness``. The thresholds are physical: ``min_turn_deg`` the
    smallest out-of-plane turn of the face (seen by the mesh; its texture
    must show half of it), ``min_z`` the texture parallax's significance,
    ``min_prop_points`` how many points beyond the head moving exactly with
    the face (while the room behind stands still) mark a prop.
    ``texture_model``: an optional anti-spoofing model (``tools.quantize
    --antispoof``); a track whose mean live probability is under
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


@dataclass(frozen=True)
class ServiceConfig(Section):
    """Process-level settings."""

    SECTION = "service"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    state_dir: Annotated[str, DirPath()] = "."
    stop_timeout_s: Annotated[float, Range(gt=0, le=300)] = 5.0


__all__ = [
    "OPEN_SET_LIMIT",
    "CameraConfig",
    "Credential",
    "DecisionConfig",
    "DetectorConfig",
    "DeviceConfig",
    "DoorConfig",
    "EmbedderConfig",
    "EventsConfig",
    "FleetConfig",
    "GalleryConfig",
    "HomeAssistantConfig",
    "IoU",
    "LivenessConfig",
    "LivenessMode",
    "MatchingConfig",
    "ModelPath",
    "MqttConfig",
    "OptionalFile",
    "ReviewConfig",
    "ServiceConfig",
    "SourceName",
    "uri_has_password",
]
