"""``facegate doctor [--config C]``: is this device ready? (the checks: :mod:`edge.doctor`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.cli.common import Subcommands


def register(sub: Subcommands) -> None:
    """``doctor``."""
    p = sub.add_parser(
        "doctor", help="check that this device is ready: one line per check, with a fix"
    )
    p.add_argument("--config", type=Path, help="TOML config (default: the built-in defaults)")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from edge.doctor import doctor

    return doctor(args.config)


__all__ = ["cmd_doctor", "register"]
