"""``facegate liveness [--config C] CLIP...``: a live face or a photo? (see edge.liveness.clip)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.cli.common import Subcommands


def register(sub: Subcommands) -> None:
    """``liveness``."""
    p = sub.add_parser(
        "liveness",
        help="is the face in each clip (a video file or a folder of frames) a live person? "
        "one JSON line per clip",
    )
    p.add_argument("clips", nargs="+", metavar="CLIP")
    p.add_argument("--config", type=Path, help="TOML config (detector, [liveness], camera)")
    p.add_argument("--fps", type=float, help="frame rate of folders of frames (camera.fps)")
    p.set_defaults(func=cmd_liveness)


def cmd_liveness(args: argparse.Namespace) -> int:
    from edge.cli.common import config_from_args
    from edge.liveness.clip import main_clips

    return main_clips(config_from_args(args), args.clips, args.fps)


__all__ = ["cmd_liveness", "register"]
