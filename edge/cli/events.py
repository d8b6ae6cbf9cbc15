"""``facegate events verify``: signed event payloads checked, one per line on stdin."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.cli.common import Subcommands
from edge.errors import FacegateError


def register(sub: Subcommands) -> None:
    """``events verify``."""
    p = sub.add_parser(
        "events",
        help="verify signed event payloads (one per line on stdin); "
        "--act: pass only those a door may act on now",
    )
    p.add_argument("action", choices=["verify"])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="the device's config (events.sign_key_*)")
    src.add_argument(
        "--key-file", type=Path, help="file holding the signing key (never the key itself)"
    )
    p.add_argument("--device", help="accept events of this device.id only")
    p.add_argument(
        "--act",
        action="store_true",
        help="also refuse late, expired, unsynchronised-clock and repeated (seq) events",
    )
    p.set_defaults(func=cmd_events)


MAX_EVENT_LINE = 65536
"""``events verify`` reads at most this many bytes per line; longer lines are refused."""


def _event_key(args: argparse.Namespace) -> tuple[bytes, str | None]:
    """The signing key and the expected device, from ``--config`` or ``--key-file``/``--device``."""
    from dataclasses import replace

    from edge.config import load_config, warn_if_exposed
    from edge.delivery.signing import sign_key

    if args.config is not None:
        cfg = load_config(args.config, environment=False)
        device = args.device or cfg.device.id
    else:
        from edge.config import Config

        warn_if_exposed(args.key_file, "--key-file")
        cfg = Config()
        cfg = replace(cfg, events=replace(cfg.events, sign_key_file=str(args.key_file.resolve())))
        device = args.device
    key = sign_key(cfg)
    if key is None:
        raise FacegateError("events.sign_key_file / sign_key_credential: no key configured")
    return key, device


def cmd_events(args: argparse.Namespace) -> int:
    """``events verify``: payload lines on stdin; verified events (JSON) on stdout.

    Each line is one payload as received (``mosquitto_sub -t <prefix>/<id>/event``
    prints one per line). A line whose signature does not hold, or (with
    ``--act``) an event a door must not act on now, is reported on stderr with
    the reason; exit status 1 when any line was refused.
    """
    import time

    from edge.delivery.codec import encode
    from edge.delivery.signing import verify_payload, why_not_act
    from edge.errors import SignatureError

    key, device = _event_key(args)
    stdin = sys.stdin.buffer
    refused = 0
    last_seq: dict[str, int] = {}  # per device: a wildcard subscription mixes devices
    n = 0
    while line := stdin.readline(MAX_EVENT_LINE + 1):
        n += 1
        if len(line) > MAX_EVENT_LINE:
            while line and not line.endswith(b"\n"):  # skip the rest of the long line
                line = stdin.readline(MAX_EVENT_LINE)
            reason: str | None = f"longer than {MAX_EVENT_LINE} bytes"
        elif not line.strip():
            continue
        else:
            try:
                event = verify_payload(line.rstrip(b"\r\n"), key)
                reason = None
            except SignatureError as e:
                reason = str(e)
            if reason is None and args.act:
                dev = str(event.get("device"))
                seen = last_seq.get(dev)
                reason = why_not_act(event, now=time.time(), device=device, last_seq=seen)
                if reason is None:
                    last_seq[dev] = int(event["seq"])
            elif reason is None and device is not None and event.get("device") != device:
                reason = f"from device {event.get('device')!r}, not {device!r}"
        if reason is not None:
            refused += 1
            print(f"facegate: refused line {n}: {reason}", file=sys.stderr, flush=True)
            continue
        print(encode(event).decode(), flush=True)
    return 1 if refused else 0


__all__ = ["MAX_EVENT_LINE", "cmd_events", "register"]
