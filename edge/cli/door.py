"""``facegate audit`` (the door's audit log) and ``door test|sign-unlock``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.cli.common import Subcommands
from edge.errors import FacegateError


def register(sub: Subcommands) -> None:
    """``audit`` and ``door``."""
    p = sub.add_parser("audit", help="print the door's audit log (JSON lines or CSV)")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--since", help="ISO date/time (local) or an age: 90s, 15m, 2h, 7d")
    p.add_argument("--csv", action="store_true", help="CSV with a header row")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the file, SQLite's integrity and the hash chain; exit 1 if not intact",
    )
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("door", help="installer checks: pulse the relay; sign a remote unlock")
    p.add_argument("action", choices=["test", "sign-unlock"])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--seconds", type=float, help="test: pulse length (default: door.unlock_s)")
    p.set_defaults(func=cmd_door)


def cmd_audit(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.door.audit import parse_since, read_entries, to_csv, verify_log

    cfg = load_config(args.config)
    if args.verify:
        report = verify_log(cfg.audit_file)
        for line in [*report.notes, *report.problems]:
            print(line)
        print(report.summary())
        return 0 if report.ok else 1
    since = parse_since(args.since) if args.since else None
    entries = read_entries(cfg.audit_file, since)
    if args.csv:
        sys.stdout.write(to_csv(entries))
    else:
        for e in entries:
            print(json.dumps(e.to_json()))
    return 0


def cmd_door(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edge.config import load_config
    from edge.door.remote import remote_key, sign_unlock
    from edge.door.selftest import door_test

    cfg = load_config(args.config)
    if args.action == "sign-unlock":
        key = remote_key(cfg)
        if key is None:
            raise FacegateError("door.remote_key_file / remote_key_credential: no key configured")
        print(json.dumps(sign_unlock(key, cfg.device.id), separators=(",", ":")))
        return 0
    stop = threading.Event()

    def on_stop(signum: int, _frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        door_test(cfg, seconds=args.seconds, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


__all__ = ["cmd_audit", "cmd_door", "register"]
