"""``facegate check-config``, ``run`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.cli.common import Subcommands
    from edge.config import Config


def register(sub: Subcommands) -> None:
    """``demo``, ``check-config`` and ``run``."""
    p = sub.add_parser("demo", help="run the whole pipeline on built-in photos")
    p.add_argument("--broker", help="also publish to this MQTT broker (HOST[:PORT])")
    p.add_argument(
        "--models",
        type=Path,
        help="folder with the default models and manifests (default: the checkout's models/; "
        "an installed package: e.g. /opt/facegate/models)",
    )
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("check-config", help="validate a TOML config")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("run", help="run the recognition service")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_run)


def cmd_check_config(args: argparse.Namespace) -> int:
    from edge.config import load_config

    cfg = load_config(args.path)
    missing = [
        str(p)
        for p in (cfg.model_path(cfg.detector.model), cfg.model_path(cfg.embedder.model))
        if not p.exists()
    ]
    notes = _check_door_names(cfg) if cfg.door.enabled else []
    print(f"{args.path}: ok")
    for n in notes:
        print(n)
    for m in missing:
        print(f"warning: model {m} does not exist yet (python -m tools.models build)")
    return 0


def _check_door_names(cfg: Config) -> list[str]:
    """door.allow and door.schedule against the gallery's names and groups (when it can be read).

    A near miss of an enrolled name or group is an error (ConfigError); the
    rest are returned as ``warning:`` / ``note:`` lines.
    """
    from edge.door.policy import check_names, raise_errors
    from edge.errors import FacegateError
    from edge.files import exists
    from edge.identity.gallery import gallery_key, read_people

    path = cfg.resolve(cfg.gallery.path)
    try:
        if not exists(path, "gallery"):
            return [f"note: {path}: no gallery yet: door.allow and door.schedule not checked"]
        people = read_people(path, gallery_key(cfg))
    except FacegateError as e:
        return [f"note: door.allow and door.schedule not checked against the gallery ({e})"]
    found = check_names(cfg.door.allow, cfg.door.schedule, people, people)
    raise_errors(found)
    return [f"warning: {f.key}: {f.message}" for f in found]


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo

    return run_demo(broker=args.broker, out=sys.stdout, models=args.models)


def cmd_run(args: argparse.Namespace) -> int:
    from edge.daemon import main_run

    return main_run(str(args.config))


__all__ = ["cmd_check_config", "cmd_demo", "cmd_run", "register"]
