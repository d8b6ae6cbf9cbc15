"""The wire form of JSON payloads: :func:`encode` out, :func:`loads_strict` in."""

from __future__ import annotations

import json
from typing import Any


def encode(payload: dict[str, Any]) -> bytes:
    """The wire form of a JSON payload: compact UTF-8, keys sorted (stable for tests)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


class DuplicateKeyError(ValueError):
    """A JSON object names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook: an object that names a key twice is refused."""
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise DuplicateKeyError(f"duplicate key {key!r}")
        doc[key] = value
    return doc


def loads_strict(payload: bytes) -> Any:
    """Parse UTF-8 JSON in which no object names a key twice; ValueError otherwise
    (:class:`DuplicateKeyError` for a repeated key).

    Python's ``json`` keeps the last of two equal keys silently, so
    ``{"command": "reload-gallery", "command": "x"}`` would be read
    differently by other parsers; a command that two readers can disagree on
    is refused.
    """
    return json.loads(payload.decode("utf-8"), object_pairs_hook=_unique_keys)


__all__ = ["DuplicateKeyError", "encode", "loads_strict"]
