"""What the commands share: the model and config flags, the images they read, skip lines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.config import Config
    from edge.decide.recognizer import Recognizer

if TYPE_CHECKING:
    # What add_subparsers() returns (generic only to the type checker):
    # each command module's register() adds its commands to it.
    Subcommands = argparse._SubParsersAction[Any]


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--detector``, ``--embedder`` and ``--key-file``."""
    p.add_argument("--config", type=Path, help="TOML config (models, gallery, key)")
    p.add_argument("--detector", help="detector model (default: from config or models/)")
    p.add_argument("--embedder", help="embedder model (default: from config or models/)")
    p.add_argument(
        "--key-file", type=Path, help="file holding the gallery key (never the key itself)"
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The config of ``--config`` (no environment checks), with the flags' overrides."""
    from dataclasses import replace

    from edge.config import Config, load_config

    # The environment checks are run's (camera, MQTT): enrolment needs none of them.
    cfg = load_config(args.config, environment=False) if getattr(args, "config", None) else Config()
    if getattr(args, "detector", None):
        cfg = replace(cfg, detector=replace(cfg.detector, model=str(Path(args.detector).resolve())))
    if getattr(args, "embedder", None):
        cfg = replace(cfg, embedder=replace(cfg.embedder, model=str(Path(args.embedder).resolve())))
    if getattr(args, "key_file", None):
        from edge.config import warn_if_exposed

        warn_if_exposed(args.key_file, "--key-file")
        cfg = replace(
            cfg,
            gallery=replace(cfg.gallery, key_file=str(args.key_file.resolve()), key_credential=""),
        )
    if getattr(args, "gallery", None):
        cfg = replace(cfg, gallery=replace(cfg.gallery, path=str(Path(args.gallery).resolve())))
    return cfg


def recognizer_for(cfg: Config) -> Recognizer:
    """The configured recognizer (models verified, gallery opened)."""
    from edge.decide.recognizer import Recognizer

    return Recognizer.from_config(cfg)


def image_paths(items: Sequence[str]) -> list[Path]:
    """Expand folders into their image files; keep files as given (errors come later).

    A folder that cannot be listed is one error line; a path that cannot even
    be looked up (an unsearchable folder) is kept and reported when read.
    """
    import stat

    from edge.imageio import list_images

    out: list[Path] = []
    for it in items:
        p = Path(it)
        try:
            is_dir = stat.S_ISDIR(p.stat().st_mode)
        except OSError:
            is_dir = False
        out.extend(list_images(p) if is_dir else [p])
    return out


def skip(path: Path | str, why: str) -> None:
    """One ``skipped PATH: WHY`` line on stderr; the command goes on."""
    print(f"skipped {path}: {why}", file=sys.stderr)


__all__ = [
    "add_model_args",
    "config_from_args",
    "image_paths",
    "recognizer_for",
    "skip",
]
