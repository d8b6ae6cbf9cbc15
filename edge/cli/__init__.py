"""The ``facegate`` command line (also ``python -m edge``).

Sub-commands: ``enroll``, ``gallery list|stats|remove|set-groups|rebind``,
``identify``, ``liveness``, ``demo``, ``doctor``, ``check-config``, ``run``, ``audit``,
``door test|sign-unlock``, ``events verify``, ``fleet keygen|push|status``,
``unknowns list|show|enroll|forget``.
Bad input never produces a traceback: every
:class:`~edge.errors.FacegateError` becomes one ``facegate: error: ...``
line on stderr and exit code 2; per-image problems are reported as
skipped-with-reason lines and the command goes on.

One module per group of commands, each with a ``register(sub)`` that adds
its sub-commands and their ``cmd_*`` functions: :mod:`~edge.cli.gallery`
(``enroll``, ``gallery``, ``identify``), :mod:`~edge.cli.service`
(``demo``, ``check-config``, ``run``), :mod:`~edge.cli.door` (``audit``,
``door``), :mod:`~edge.cli.events` (``events``), :mod:`~edge.cli.fleet`
(``fleet``), :mod:`~edge.cli.unknowns` (``unknowns``), :mod:`~edge.cli.doctor`
(``doctor``), :mod:`~edge.cli.liveness` (``liveness``); what they share is
:mod:`~edge.cli.common`. A new command is a new module listed in
:data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from edge import __version__
from edge.cli import doctor, door, events, fleet, gallery, liveness, service, unknowns
from edge.errors import FacegateError

log = logging.getLogger("facegate")

COMMAND_MODULES = (gallery, service, door, events, fleet, unknowns, doctor, liveness)
"""Each adds its sub-commands to the parser (``register``); a new command is a new module."""


def build_parser() -> argparse.ArgumentParser:
    """The ``facegate`` parser: global flags, then every module's sub-commands."""
    ap = argparse.ArgumentParser(
        prog="facegate", description="Offline face recognition for door-access devices."
    )
    ap.add_argument("--version", action="version", version=f"facegate {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from edge.imageio import limit_decoder

    limit_decoder()  # before anything imports cv2
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "gallery" and args.action == "remove" and not args.names:
        print("facegate: error: gallery remove needs at least one name", file=sys.stderr)
        return 2
    if args.command == "gallery" and args.action == "set-groups" and not args.names:
        print("facegate: error: gallery set-groups needs NAME [GROUP...]", file=sys.stderr)
        return 2
    try:
        rc: int = args.func(args)
        return rc
    except FacegateError as e:
        print(f"facegate: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # The file system said no somewhere a FacegateError did not wrap it:
        # still one line (an OSError is never a bug in the input's reader).
        where = f"{e.filename}: " if e.filename else ""
        print(f"facegate: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main"]
