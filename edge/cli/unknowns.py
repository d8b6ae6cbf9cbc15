"""``facegate unknowns list | show ID | enroll ID --name N | forget ID``: the review ring.

The ring (``review.keep_unknown``, :mod:`edge.review.ring`) holds the last
unknown visitors the service saw, one entry per stranger (their visits
clustered). ``list`` prints one JSON line per entry, most recent first;
``show`` one entry with its visits (``--jpeg FILE`` writes its best crop,
mode 0600); ``enroll`` enrols the entry's crops under a name through the
same checks as photos (``facegate enroll``), then forgets the entry;
``forget`` deletes its visits from disk. Every command prunes the ring
first, so what the retention rules say is gone is gone before it is shown.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from edge.cli.common import add_model_args, config_from_args, recognizer_for
from edge.errors import FacegateError

if TYPE_CHECKING:
    from edge.cli.common import Subcommands
    from edge.config import Config
    from edge.review.ring import ReviewRing, Stranger


def register(sub: Subcommands) -> None:
    """``unknowns``."""
    p = sub.add_parser(
        "unknowns",
        help="review the unknown visitors the service kept (review.keep_unknown): list, show, "
        "enroll, forget",
    )
    p.add_argument("action", choices=["list", "show", "enroll", "forget"])
    p.add_argument("id", nargs="?", type=int, help="the entry (show, enroll, forget)")
    p.add_argument("--name", help="enroll: the person's name")
    p.add_argument("--photos", type=int, default=5, help="enroll: crops to use at most (5)")
    p.add_argument("--force", action="store_true", help="enroll: keep crops refused for quality")
    p.add_argument("--jpeg", help="show: write the entry's best crop to this file")
    add_model_args(p)
    p.set_defaults(func=cmd_unknowns)


def _ring(cfg: Config) -> ReviewRing:
    from edge.review.ring import ring_for_config

    if not cfg.review.keep_unknown:
        print(
            "note: review.keep_unknown is off in this config: the service keeps no new visitors",
            file=sys.stderr,
        )
    ring = ring_for_config(cfg)
    ring.prune()
    return ring


def cmd_unknowns(args: argparse.Namespace) -> int:
    if args.config is None:
        raise FacegateError("unknowns: --config is required (the ring's folder and key)")
    if args.action != "list" and args.id is None:
        raise FacegateError(f"unknowns {args.action}: give the entry's ID (see unknowns list)")
    cfg = config_from_args(args)
    if args.action == "enroll":
        from edge.cli.gallery import refuse_fleet_gallery

        # fleet: a door does not enrol on its own; `unknowns show ID --jpeg F` hands the
        # crop to the admin, who enrols it and pushes the gallery.
        refuse_fleet_gallery(cfg, "unknowns enroll")
    ring = _ring(cfg)
    if args.action == "list":
        for s in ring.strangers():
            print(json.dumps(s.summary()))
        if ring.unreadable:
            print(
                f"warning: {len(ring.unreadable)} visit(s) cannot be read (wrong key or damaged)",
                file=sys.stderr,
            )
        return 0
    entry = ring.stranger(args.id)
    if args.action == "show":
        return _show(entry, args.jpeg)
    if args.action == "forget":
        n = ring.forget(entry.id)
        print(f"forgot unknown visitor {entry.id}: {n} visit(s) deleted")
        return 0
    return _enroll(args, cfg, ring, entry)


def _best(entry: Stranger) -> bytes:
    """The entry's best crop: the largest picture (the face nearest the camera), the latest."""
    from edge.imageio import check_header

    def size(jpeg: bytes) -> int:
        try:
            _, w, h = check_header(jpeg)
        except FacegateError:
            return 0
        return w * h

    return max(reversed(entry.visits), key=lambda v: size(v.jpeg)).jpeg


def _show(entry: Stranger, jpeg: str | None) -> int:
    doc = {**entry.summary(), "visit_list": [v.summary() for v in entry.visits]}
    if jpeg:
        from pathlib import Path

        from edge.files import write_atomic

        write_atomic(Path(jpeg), _best(entry), "crop")
        doc["jpeg"] = jpeg
    print(json.dumps(doc))
    return 0


def _enroll(args: argparse.Namespace, cfg: Config, ring: ReviewRing, entry: Stranger) -> int:
    """The entry's crops through ``enroll``'s checks under ``--name``; then it is forgotten."""
    from edge.cli.gallery import enrol_measures
    from edge.identity.enrol import PhotoMeasure
    from edge.identity.gallery import check_new_name
    from edge.imageio import decode_image

    if not args.name:
        raise FacegateError("unknowns enroll: give --name")
    args.name = check_new_name(args.name)
    if args.photos < 1:
        raise FacegateError("unknowns enroll: --photos must be at least 1")
    rec = recognizer_for(cfg)
    visits = entry.visits[-args.photos :]  # the most recent
    labels, measures = [], []
    for v in visits:
        labels.append(f"unknown {entry.id} visit {v.id}")
        try:
            measures.append(rec.measure_photo(decode_image(v.jpeg, labels[-1])))
        except FacegateError as e:
            measures.append(PhotoMeasure(None, None, str(e)))
    rc = enrol_measures(args, cfg, rec, labels, measures, force=args.force)
    n = ring.forget(entry.id)
    print(f"unknown visitor {entry.id} is now {args.name!r}; {n} visit(s) deleted from the ring")
    return rc


__all__ = ["cmd_unknowns", "register"]
