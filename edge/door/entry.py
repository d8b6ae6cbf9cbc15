"""One audit entry: its kinds, its stream, and how a stored row is read back, odd or not.

Every entry has a kind (:data:`KINDS`, also the ``type`` of its MQTT event)
and belongs to one of two streams (:data:`STREAMS`), which retention treats
apart: ``access`` (grants, denials, lockouts, remote unlocks, door tests:
the decisions) and ``input`` (tamper, contact and exit-button events and
refused remote commands: what the world does to the door, which an
attacker can make as loud as they like). The row bound removes input noise
first, so flapping never evicts a grant or a denial.

:func:`row_entry` reads a stored row whatever it holds: a row written
behind the daemon's back (a ``data`` that is not a JSON object, a ``ts``
that is text or out of range, bytes that are not UTF-8) comes back as an
:class:`AuditEntry` whose :attr:`~AuditEntry.odd` says what is wrong, so a
listing shows it and goes on.

Standard library and :mod:`edge.errors` only (``facegate audit`` starts fast).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edge.errors import FacegateError

GRANTED = "access_granted"
DENIED = "access_denied"
EXIT = "exit_request"
HELD_OPEN = "door_held_open"
FORCED = "door_forced"
TAMPER = "tamper"
LOCKOUT = "lockout"
REMOTE_UNLOCK = "remote_unlock"
REMOTE_REFUSED = "remote_refused"
DOOR_TEST = "door_test"
KINDS = (
    GRANTED,
    DENIED,
    EXIT,
    HELD_OPEN,
    FORCED,
    TAMPER,
    LOCKOUT,
    REMOTE_UNLOCK,
    REMOTE_REFUSED,
    DOOR_TEST,
)
"""Every kind of audit entry; each is also the ``type`` of its MQTT event."""

ACCESS = "access"
INPUT = "input"
STREAMS = (ACCESS, INPUT)
INPUT_KINDS = frozenset({EXIT, HELD_OPEN, FORCED, TAMPER, REMOTE_REFUSED})
"""Entries driven by inputs anyone can toggle (and refused commands): the ``input`` stream."""


def stream_of(kind: str) -> str:
    """The retention stream of an entry kind: ``input`` for :data:`INPUT_KINDS`, else ``access``."""
    return INPUT if kind in INPUT_KINDS else ACCESS


class AuditError(FacegateError):
    """The audit log cannot be opened, written or read."""


class AuditBusy(AuditError):
    """Another connection holds the audit database's write lock (try again later)."""


def iso_time(t: float) -> str | None:
    """``t`` (Unix seconds) as ISO 8601 UTC with milliseconds; None when it is no time."""
    try:
        iso = datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return None
    return iso.replace("+00:00", "Z")


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log (``odd``: what is wrong with a row not written by facegate)."""

    id: int
    ts: float
    clock_synced: bool
    kind: str
    name: str | None = None
    reason: str | None = None
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    odd: tuple[str, ...] = ()
    ts_raw: str | None = None
    """The stored ``ts`` when it is no number (shown as it is)."""

    def to_json(self) -> dict[str, Any]:
        """The entry as ``facegate audit`` prints it (one JSON object; ``odd`` only when odd)."""
        iso = iso_time(self.ts) if math.isfinite(self.ts) else None
        out: dict[str, Any] = {
            "id": self.id,
            "ts": iso,
            "ts_unix": round(self.ts, 3) if iso is not None else None,
            "clock_synced": self.clock_synced,
            "kind": self.kind,
            "name": self.name,
            "reason": self.reason,
            "detail": self.detail,
            "data": self.data,
        }
        if self.odd:
            out["odd"] = list(self.odd)
            out["ts_raw"] = self.ts_raw
        return out

    def event_fields(self) -> dict[str, Any]:
        """This entry's fields in its MQTT event (beside the envelope: v, id, seq, ts, type)."""
        return {
            "audit_id": self.id,
            "name": self.name,
            "reason": self.reason,
            "detail": self.detail,
            **self.data,
        }


def _text(value: Any, column: str, odd: list[str]) -> str | None:
    """A text column read as bytes: decoded, or replaced (and noted) when not UTF-8."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            odd.append(f"{column}: not UTF-8 text (undecodable bytes replaced)")
            return value.decode("utf-8", "replace")
    return str(value)


def _ts(value: Any, odd: list[str]) -> tuple[float, str | None]:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, int | float) and not isinstance(value, bool):
        t = float(value)
        if math.isfinite(t) and iso_time(t) is not None:
            return t, None
        odd.append(f"ts: {value!r} is no time")
        return math.nan, repr(value)
    odd.append(f"ts: {str(value)[:40]!r} is not a number")
    return math.nan, str(value)[:200]


def row_entry(row: tuple[Any, ...]) -> AuditEntry:
    """An entry from a stored row ``(id, ts, clock_synced, kind, name, reason, detail, data)``.

    Text columns may come as bytes (the reader asks SQLite for bytes, so that
    one undecodable row cannot stop a listing). Whatever is wrong is noted in
    :attr:`AuditEntry.odd`, never raised.
    """
    i, ts, synced, kind, name, reason, detail, data = row
    odd: list[str] = []
    t, ts_raw = _ts(ts, odd)
    text = _text(data, "data", odd) or ""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        odd.append("data: not a JSON object")
        parsed = {"unparsed": text[:1000]}
    kind_text = _text(kind, "kind", odd) or ""
    if kind_text not in KINDS:
        odd.append(f"kind: {kind_text[:40]!r} is no audit kind")
    try:
        row_id = int(i)
    except (TypeError, ValueError):
        odd.append("id: not an integer")
        row_id = -1
    return AuditEntry(
        row_id,
        t,
        bool(synced) if isinstance(synced, int) else False,
        kind_text,
        _text(name, "name", odd),
        _text(reason, "reason", odd),
        _text(detail, "detail", odd) or "",
        parsed,
        tuple(odd),
        ts_raw,
    )


__all__ = [
    "ACCESS",
    "DENIED",
    "DOOR_TEST",
    "EXIT",
    "FORCED",
    "GRANTED",
    "HELD_OPEN",
    "INPUT",
    "INPUT_KINDS",
    "KINDS",
    "LOCKOUT",
    "REMOTE_REFUSED",
    "REMOTE_UNLOCK",
    "STREAMS",
    "TAMPER",
    "AuditBusy",
    "AuditEntry",
    "AuditError",
    "iso_time",
    "row_entry",
    "stream_of",
]
