"""The whole config file: :class:`Config` (every section) and :func:`parse_config`.

:func:`parse_config` turns a parsed TOML document into a :class:`Config`:
an unknown section or key is an error naming it; each section checks itself
(:mod:`edge.config.sections`), then :meth:`Config.check` the rules across
sections. Paths in the config are relative to the config file's folder
(:meth:`Config.resolve`); state files to ``service.state_dir``.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config.checker import Section, check_value, field_types
from edge.config.sections import (
    CameraConfig,
    DecisionConfig,
    DetectorConfig,
    DeviceConfig,
    DoorConfig,
    EmbedderConfig,
    EventsConfig,
    FleetConfig,
    GalleryConfig,
    HomeAssistantConfig,
    LivenessConfig,
    MatchingConfig,
    MqttConfig,
    ReviewConfig,
    ServiceConfig,
)
from edge.errors import ConfigError

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
"""The checkout's ``models/`` folder, where a bare model name is looked up."""


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
    review: ReviewConfig = field(default_factory=ReviewConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    base_dir: Path = field(default_factory=Path.cwd, compare=False)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Rules across sections.

        No two keys name the same file; a remote unlock needs commands and a
        key of its own (not the event signing key's credential); a door
        never decides on a single frame.
        """
        files: dict[Path, str] = {}
        for key, path in self.files().items():
            other = files.setdefault(path, key)
            if other != key:
                raise ConfigError(f"{key}: names the same file as {other} ({path})")
        d = self.door
        if d.remote_unlock and not (self.mqtt.enabled and self.mqtt.commands):
            raise ConfigError(
                "door.remote_unlock: needs mqtt.enabled = true and mqtt.commands = true"
            )
        if d.enabled and self.decision.single_frame:
            raise ConfigError(
                "decision.single_frame: not with door.enabled = true (one frame would open "
                "the door; a door decides on k of n frames)"
            )
        cred = self.events.sign_key_credential
        if d.remote_unlock and cred and cred == d.remote_key_credential:
            raise ConfigError(
                f"events.sign_key_credential: {cred!r} is also door.remote_key_credential; "
                "every event consumer could then sign unlocks: give each its own key"
            )
        r = self.review
        if r.enrol_command and not (self.mqtt.enabled and self.mqtt.commands):
            raise ConfigError(
                "review.enrol_command: needs mqtt.enabled = true and mqtt.commands = true"
            )
        if r.keep_unknown and not (r.key.configured or self.gallery.key.configured):
            raise ConfigError(
                "review.keep_unknown: the ring of unknown visitors is always encrypted: set "
                "review.key_file or review.key_credential (or a gallery key)"
            )
        if r.notify and not self.mqtt.enabled:
            raise ConfigError("review.notify: needs mqtt.enabled = true")
        if r.enrol_command and self.fleet.enabled:
            raise ConfigError(
                "review.enrol_command: not with fleet.enabled = true (the door's gallery comes "
                "from the fleet: enrol on the admin machine, then `facegate fleet push`)"
            )
        if self.fleet.enabled and not self.mqtt.enabled:
            raise ConfigError("fleet.enabled: needs mqtt.enabled = true (bundles come over MQTT)")
        if self.fleet.enabled and self.device.id == "_fleet":
            raise ConfigError("device.id: '_fleet' is the topic level of gallery bundles")

    def files(self) -> dict[str, Path]:
        """Every file the config names (models excluded), by key path, resolved."""
        out = {"gallery.path": self.resolve(self.gallery.path)}
        if self.mqtt.enabled:
            out["mqtt.outbox_path"] = self.outbox_file
        if self.door.enabled:
            out["door.audit_path"] = self.audit_file
        if self.review.keep_unknown:
            out["review.path"] = self.review_dir
        for key in (
            "gallery.key_file",
            "review.key_file",
            "review.enrol_key_file",
            "door.remote_key_file",
            "events.sign_key_file",
            "fleet.site_key_file",
            "fleet.public_key_file",
            "fleet.signing_key_file",
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

    @property
    def review_dir(self) -> Path:
        """``review.path``; a relative path is taken inside ``service.state_dir``."""
        p = Path(self.review.path).expanduser()
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
        types_ = field_types(cls)
        data = {k: check_value(f"{prefix}.{k}", types_[k], v) for k, v in data.items()}
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


__all__ = ["MODELS_DIR", "Config", "parse_config"]
