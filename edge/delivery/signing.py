"""Signed events: an HMAC-SHA256 ``"sig"`` at the end of every event payload.

With ``events.sign_key_file`` (or ``sign_key_credential``) every payload on
the ``event`` topic is signed: ``"sig"`` is appended as its last member
(:func:`sign_payload`, :func:`verify_payload`), so a consumer holding the key
can tell the device's events from ones any other broker client wrote.
:func:`why_not_act` is the rest of what a consumer that opens something on
an event checks.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Any

from edge.delivery.codec import encode, loads_strict
from edge.delivery.events import LIVE
from edge.errors import FacegateError, SignatureError

if TYPE_CHECKING:
    from edge.config import Config


EVENT_SIG_CONTEXT = b"facegate-event-v1\n"
"""What the MAC of an event starts with, so it can never pass for another of the
device's MACs (a remote unlock's message starts ``facegate-unlock-v1``)."""
STATUS_SIG_CONTEXT = b"facegate-status-v1\n"
"""The same for a retained status topic (the door's): a signed status never passes
for a signed event, nor an event for a status."""
_SIG_SUFFIX = re.compile(rb',"sig":"([0-9a-f]{64})"\}\Z')


def event_mac(key: bytes, body: bytes, context: bytes = EVENT_SIG_CONTEXT) -> str:
    """``hex(HMAC-SHA256(key, b"facegate-event-v1\\n" + body))``: the ``sig`` of ``body``.

    ``context`` is :data:`STATUS_SIG_CONTEXT` for a status topic.
    """
    return hmac.new(key, context + body, hashlib.sha256).hexdigest()


def sign_payload(body: bytes, key: bytes, context: bytes = EVENT_SIG_CONTEXT) -> bytes:
    """``body`` with ``"sig"`` appended as its last member.

    The result is ``body[:-1] + b',"sig":"' + mac + b'"}'``.

    ``body`` is the compact JSON object :func:`encode` writes (it must start
    with ``{``, end with ``}`` and hold at least one member); ``mac`` is
    :func:`event_mac` of exactly those bytes. The signature covers bytes, not
    a re-serialisation, so a consumer in any language checks it without
    re-encoding JSON: strip the 74-byte suffix ``,"sig":"<64 hex>"}``, put
    back the ``}``, and compute the MAC of the result (:func:`verify_payload`).
    """
    if len(body) < 3 or body[:1] != b"{" or body[-1:] != b"}" or b"\n" in body:
        raise FacegateError("sign: the body must be a compact, non-empty JSON object")
    return body[:-1] + b',"sig":"' + event_mac(key, body, context).encode() + b'"}'


def verify_payload(
    payload: bytes, key: bytes, context: bytes = EVENT_SIG_CONTEXT
) -> dict[str, Any]:
    """The event inside a signed payload, after its signature is checked.

    ``payload`` is exactly what was received (a trailing newline, as a line
    reader leaves it, is tolerated). It must end with ``,"sig":"<64 hex>"}``;
    the body is the payload without that suffix, closed again with ``}``, and
    its :func:`event_mac` must equal the hex digits (compared in constant
    time). Only the body is parsed (:func:`loads_strict`: a key named twice
    is refused), so nothing outside the signed bytes reaches the caller.
    Raises :class:`~edge.errors.SignatureError` saying why otherwise.
    """
    data = payload[:-1] if payload.endswith(b"\n") else payload
    m = _SIG_SUFFIX.search(data)
    if m is None:
        raise SignatureError('unsigned: no "sig" member at the end of the payload')
    body = data[: m.start()] + b"}"
    if not hmac.compare_digest(event_mac(key, body, context), m.group(1).decode()):
        raise SignatureError("bad signature: not signed with this key, or altered")
    try:
        doc = loads_strict(body)
    except ValueError as e:  # only a key holder could have signed it: a bug, still refused
        raise SignatureError(f"signed body is not JSON ({e})") from None
    if not isinstance(doc, dict) or "sig" in doc:
        raise SignatureError("signed body is not one event object")
    return doc


def why_not_act(
    event: dict[str, Any], *, now: float, device: str | None = None, last_seq: int | None = None
) -> str | None:
    """Why a door must not act on ``event`` now, or None when it may.

    A consumer that opens something on an event refuses it unless all hold:
    it is a decision (it has ``expires_at_unix``; door records never do),
    ``delivery == "live"``, ``clock_synced`` is true (else ``expires_at``
    means nothing), ``now <= expires_at_unix`` by the consumer's own clock,
    ``device`` is the expected one, and ``seq > last_seq`` (a captured event
    published again, signed or not, repeats its ``seq``). Checking the
    signature (:func:`verify_payload`) comes first; this is the rest.
    """
    if device is not None and event.get("device") != device:
        return f"from device {event.get('device')!r}, not {device!r}"
    expires = event.get("expires_at_unix")
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        return "not a decision (no expires_at_unix)"
    if event.get("delivery") != LIVE:
        return f"delivery is {event.get('delivery')!r}, not 'live'"
    if event.get("clock_synced") is not True:
        return "the device's clock is not synchronised: expires_at cannot be trusted"
    if now > float(expires):
        return f"expired {now - float(expires):.1f} s ago"
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return "no integer seq"
    if last_seq is not None and seq <= last_seq:
        return f"seq {seq} is not newer than {last_seq} (a repeat or a replay)"
    return None


def sign_key(cfg: Config) -> bytes | None:
    """The event signing key (``events.sign_key_file`` / ``sign_key_credential``), or None.

    Read once when a publisher is made, so a missing or short key stops the
    start, not the first event.
    """
    return cfg.events.sign_key.read(cfg.base_dir)  # 16+ bytes (ConfigError otherwise)


def wire_event(payload: dict[str, Any], key: bytes | None) -> bytes:
    """The bytes of an event as they go out: :func:`encode`, signed when there is a key."""
    body = encode(payload)
    return sign_payload(body, key) if key is not None else body


__all__ = [
    "EVENT_SIG_CONTEXT",
    "STATUS_SIG_CONTEXT",
    "event_mac",
    "sign_key",
    "sign_payload",
    "verify_payload",
    "why_not_act",
    "wire_event",
]
