"""The TOML config file, parsed into validated, frozen dataclasses.

One file, one :class:`Config`; every TOML table is a section
(:mod:`edge.config.sections`) whose fields are the allowed keys, so an
unknown key is an error. Every error names its key path and fits on one line
(``mqtt.port: must be in [1, 65535], got 0``). Secrets are never config
values: the config names a file or a systemd credential that holds them
(:mod:`edge.config.secrets`).

The package, bottom up (each module imports only those above it in this
list, and none imports a feature module: the config describes and validates
its own sections):

* :mod:`~edge.config.secrets`: ``<name>_file`` / ``<name>_credential`` pairs, :func:`read_secret`;
* :mod:`~edge.config.values`: value grammars shared with the stages (weekly
  windows, time zones, group names);
* :mod:`~edge.config.checker`: the type-and-constraint checker and the
  :class:`Section` base class (``Annotated[int, Range(ge=1, le=65535)]``);
* :mod:`~edge.config.sections`: the sections, each with its own ``check()``;
* :mod:`~edge.config.document`: :class:`Config` and :func:`parse_config`;
* :mod:`~edge.config.environment`: :func:`check_environment`, what ``run``
  needs from the file system;
* :mod:`~edge.config.loader`: :func:`load_config`, the one path for
  ``check-config`` and ``run``.

Adding a constrained key is one line in its section. This package's public
names are importable from ``edge.config`` itself.
"""

from __future__ import annotations

from edge.config.checker import (
    MAX_INT,
    MAX_ITEMS,
    MAX_TEXT,
    NAME_MAX,
    Constraint,
    CredentialName,
    DirPath,
    FilePath,
    Invalid,
    Range,
    Section,
    Text,
    TopicPrefix,
)
from edge.config.document import MODELS_DIR, Config, parse_config
from edge.config.environment import check_distinct_keys, check_environment
from edge.config.loader import MAX_CONFIG_BYTES, load_config
from edge.config.secrets import (
    KEY_MIN_BYTES,
    MAX_SECRET_BYTES,
    Secret,
    SecretRef,
    read_secret,
    warn_if_exposed,
)
from edge.config.sections import (
    OPEN_SET_LIMIT,
    CameraConfig,
    Credential,
    DecisionConfig,
    DetectorConfig,
    DeviceConfig,
    DoorConfig,
    EmbedderConfig,
    EventsConfig,
    FleetConfig,
    GalleryConfig,
    HomeAssistantConfig,
    IoU,
    LivenessConfig,
    MatchingConfig,
    ModelPath,
    MqttConfig,
    OptionalFile,
    ReviewConfig,
    ServiceConfig,
    SourceName,
    uri_has_password,
)
from edge.errors import ConfigError

__all__ = [
    "KEY_MIN_BYTES",
    "MAX_CONFIG_BYTES",
    "MAX_INT",
    "MAX_ITEMS",
    "MAX_SECRET_BYTES",
    "MAX_TEXT",
    "MODELS_DIR",
    "NAME_MAX",
    "OPEN_SET_LIMIT",
    "CameraConfig",
    "Config",
    "ConfigError",
    "Constraint",
    "Credential",
    "CredentialName",
    "DecisionConfig",
    "DetectorConfig",
    "DeviceConfig",
    "DirPath",
    "DoorConfig",
    "EmbedderConfig",
    "EventsConfig",
    "FilePath",
    "FleetConfig",
    "GalleryConfig",
    "HomeAssistantConfig",
    "Invalid",
    "IoU",
    "LivenessConfig",
    "MatchingConfig",
    "ModelPath",
    "MqttConfig",
    "OptionalFile",
    "Range",
    "ReviewConfig",
    "Secret",
    "SecretRef",
    "Section",
    "ServiceConfig",
    "SourceName",
    "Text",
    "TopicPrefix",
    "check_distinct_keys",
    "check_environment",
    "load_config",
    "parse_config",
    "read_secret",
    "uri_has_password",
    "warn_if_exposed",
]
