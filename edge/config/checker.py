"""The config's type-and-constraint checker: what a section's fields may hold.

Every section is a frozen dataclass (:class:`Section`); its fields are the
allowed keys. The rules live on the fields themselves: the type (``bool``,
``int``, ``float``, ``str``, ``X | None``, a ``Literal`` of the allowed words,
``tuple[X, ...]`` for an array, ``dict[str, X]`` for a table) and, with
``typing.Annotated``, small constraint objects::

    port: Annotated[int, Range(ge=1, le=65535)] = 1883
    state_dir: Annotated[str, DirPath()] = "."

Whatever the rule, every number must be finite and every string bounded and
free of control characters. Every error names its key path and fits on one
line (``mqtt.port: must be in [1, 65535], got 0``). Validation runs whenever
a section is built (parsing the TOML, ``dataclasses.replace``, or building
one in code). docs/architecture.md says why this is hand-written rather than
pydantic or msgspec.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from edge.config.secrets import Secret, SecretRef
from edge.errors import ConfigError

MAX_TEXT = 4096
"""The longest string any key accepts (paths included: Linux's PATH_MAX)."""
NAME_MAX = 255
"""The longest path component, in bytes (Linux's NAME_MAX)."""
MAX_ITEMS = 1000
"""The most items an array or table key (``door.allow``, ``door.schedule``) accepts."""
MAX_INT = 2**53
"""No integer key accepts more: every one has a tighter range anyway."""

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


# -- the checker -------------------------------------------------------------------

_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_value(path: str, tp: Any, value: Any) -> Any:
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
    v = check_value(path, base, value)
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
    return check_value(path, args[0], value)


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
    return tuple(check_value(f"{path}[{i}]", item, v) for i, v in enumerate(value))


def _check_table(path: str, tp: Any, value: Any) -> Any:
    """``dict[str, X]``: a TOML table."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a table, got {value!r:.80}")
    if len(value) > MAX_ITEMS:
        raise ConfigError(f"{path}: too many entries ({len(value)}, at most {MAX_ITEMS})")
    item = typing.get_args(tp)[1]
    return {
        check_value(f"{path}", str, k): check_value(f"{path}.{k:.80}", item, v)
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


def field_types(cls: type) -> dict[str, Any]:
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
        for name, tp in field_types(type(self)).items():
            value = getattr(self, name)
            checked = check_value(f"{self.SECTION}.{name}", tp, value)
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


__all__ = [
    "MAX_INT",
    "MAX_ITEMS",
    "MAX_TEXT",
    "NAME_MAX",
    "Constraint",
    "CredentialName",
    "DirPath",
    "FilePath",
    "Invalid",
    "Range",
    "Section",
    "Text",
    "TopicPrefix",
    "check_value",
    "field_types",
]
