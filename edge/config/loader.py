"""Reading a config file: :func:`load_config`, the one path for ``check-config`` and ``run``."""

from __future__ import annotations

import tomllib
from pathlib import Path

from edge.config.document import Config, parse_config
from edge.config.environment import check_environment
from edge.errors import ConfigError
from edge.files import read_bounded

MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused before it is parsed."""


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


__all__ = ["MAX_CONFIG_BYTES", "load_config"]
