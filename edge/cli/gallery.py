"""``facegate enroll``, ``gallery list|stats|remove|set-groups|rebind`` and ``identify``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge.cli.common import (
    add_model_args,
    config_from_args,
    image_paths,
    recognizer_for,
    skip,
)
from edge.errors import FacegateError

if TYPE_CHECKING:
    from edge.cli.common import Subcommands
    from edge.config import Config
    from edge.decide.recognizer import Recognizer
    from edge.identity.enrol import PhotoMeasure
    from edge.vision.manifest import Manifest


def register(sub: Subcommands) -> None:
    """``enroll``, ``gallery`` and ``identify``."""
    p = sub.add_parser("enroll", help="add a person to the gallery from photos or the camera")
    p.add_argument("--gallery", help="gallery file (.fgg; default: the config's gallery.path)")
    p.add_argument("--name", required=True)
    p.add_argument(
        "--group", action="append", default=[], help="add the person to this group (repeatable)"
    )
    p.add_argument("images", nargs="*", help="images or folders of images")
    p.add_argument(
        "--force",
        action="store_true",
        help="keep photos refused as too small, blurred, turned or unlike the others",
    )
    p.add_argument(
        "--camera",
        action="store_true",
        help="enrol from the configured camera (camera.source): a few seconds of diverse frames",
    )
    p.add_argument("--photos", type=int, default=5, help="--camera: frames to keep (default 5)")
    p.add_argument(
        "--seconds", type=float, default=15.0, help="--camera: give up after this long (15)"
    )
    p.add_argument(
        "--signed-command",
        action="store_true",
        help="print the signed MQTT command that makes the running service enrol the next "
        "face as NAME (review.enrol_command; the key is review.enrol_key_*)",
    )
    add_model_args(p)
    p.set_defaults(func=cmd_enroll)
    p = sub.add_parser(
        "gallery",
        help="list or remove enrolled people, set their groups; stats: the threshold, "
        "expected FPIR and FNIR; rebind accepts a new embedder manifest",
    )
    p.add_argument("action", choices=["list", "stats", "remove", "set-groups", "rebind"])
    p.add_argument("names", nargs="*", help="people to remove; set-groups: NAME [GROUP...]")
    p.add_argument("--gallery", required=True)
    p.add_argument(
        "--allow-rollback",
        action="store_true",
        help="accept a gallery older than the newest one seen (a backup restored on purpose)",
    )
    add_model_args(p)
    p.set_defaults(func=cmd_gallery)
    p = sub.add_parser("identify", help="print who is in each image, one JSON line per image")
    p.add_argument("--gallery", required=True)
    p.add_argument("images", nargs="+")
    add_model_args(p)
    p.set_defaults(func=cmd_identify)


def refuse_fleet_gallery(cfg: Config, what: str) -> None:
    """A door with ``fleet.enabled`` takes its gallery from the fleet: no local changes."""
    if cfg.fleet.enabled:
        raise FacegateError(
            f"{what}: fleet.enabled = true in this config: the door's gallery comes from the "
            f"fleet (site {cfg.fleet.site!r}) and is the only one it uses; enrol on the admin "
            "machine (a config without fleet.enabled), then `facegate fleet push`"
        )


def cmd_enroll(args: argparse.Namespace) -> int:
    from edge.identity.enrol import PhotoMeasure
    from edge.identity.gallery import check_new_name
    from edge.imageio import read_image

    check_new_name(args.name)  # before any photo is read
    if args.gallery is None and args.config is None:
        raise FacegateError("enroll: give --gallery, or --config with a gallery.path")
    if args.signed_command:
        return _print_signed_enrol(args)
    if args.camera != (not args.images):
        raise FacegateError("enroll: give photos, or --camera (not both)")
    cfg = config_from_args(args)
    refuse_fleet_gallery(cfg, "enroll")
    rec = recognizer_for(cfg)
    if args.camera:
        labels, measures = _camera_frames(cfg, rec, args.photos, args.seconds)
        return enrol_measures(args, cfg, rec, labels, measures, force=args.force)
    paths = image_paths(args.images)
    measures = []
    for p in paths:
        try:
            measures.append(rec.measure_photo(read_image(p)))
        except FacegateError as e:
            measures.append(PhotoMeasure(None, None, str(e).removeprefix(f"{p}: ")))
    return enrol_measures(args, cfg, rec, [str(p) for p in paths], measures, force=args.force)


def _camera_frames(
    cfg: Config, rec: Recognizer, photos: int, seconds: float
) -> tuple[list[str], list[PhotoMeasure]]:
    """``enroll --camera``: the frames camera enrolment keeps (edge.identity.camera)."""
    from edge.identity.camera import CameraCollector, CameraRules, collect
    from edge.identity.enrol import outlier_distance
    from edge.sources import frames, open_source

    if photos < 1 or seconds <= 0:
        raise FacegateError("enroll --camera: --photos and --seconds must be positive")
    rules = CameraRules(photos=photos, max_distance=outlier_distance(rec.calibration))
    collector = CameraCollector(rules)
    source = open_source(cfg)
    print(f"camera: {cfg.camera.source}; look at the camera", file=sys.stderr)
    collect(
        (f.image for f in frames(source, timeout=min(seconds, 5.0))),
        rec.measure_photo,
        collector,
        seconds,
        lambda advice: print(f"camera: {advice}", file=sys.stderr),
    )
    print(f"camera: {collector.summary()}", file=sys.stderr)
    chosen = collector.chosen()
    if not chosen:
        raise FacegateError(
            f"no usable camera frame within {seconds:g} s ({collector.advice}); "
            f"{cfg.camera.source} source"
        )
    return [f"frame {i + 1}" for i in range(len(chosen))], chosen


def _print_signed_enrol(args: argparse.Namespace) -> int:
    """``enroll --signed-command``: the service's enrol command, signed, on stdout."""
    from edge.door.remote import sign_enrol

    cfg = config_from_args(args)
    refuse_fleet_gallery(cfg, "enroll --signed-command")
    key = cfg.review.enrol_key.read(cfg.base_dir)
    if key is None:
        raise FacegateError("enroll --signed-command: no review.enrol_key_file in the config")
    print(json.dumps(sign_enrol(key, cfg.device.id, args.name.strip())))
    return 0


def enrol_measures(
    args: argparse.Namespace,
    cfg: Config,
    rec: Recognizer,
    labels: list[str],
    measures: list[PhotoMeasure],
    *,
    force: bool = False,
) -> int:
    """Plan ``args.name``'s enrolment from measured photos, say what was refused, save.

    The one tail of ``enroll`` (photos or ``--camera``) and ``unknowns enroll``.
    """
    from edge.identity.enrol import lookalike_message, plan_enrolment
    from edge.identity.gallery import gallery_key

    gallery = rec.gallery
    key = gallery_key(cfg)
    names, emb, starts = gallery.matrix()
    plan = plan_enrolment(
        args.name,
        measures,
        names,
        emb,
        starts,
        rec.calibration,
        rec.operating_point_for,
        force=force,
    )
    for i, why in plan.refused:
        skip(labels[i], why)
    for i, text in plan.warnings:
        print(f"warning: {labels[i]}: {text}", file=sys.stderr)
    for i, note in plan.notes:
        print(f"note: {labels[i]}: {note}", file=sys.stderr)
    if not plan.accepted:
        hint = "" if force else " (--force keeps photos refused for quality or as outliers)"
        raise FacegateError(
            f"no usable photo among {len(labels)} image(s); {args.name!r} not enrolled{hint}"
        )
    gallery.add(args.name, plan.embeddings)
    if getattr(args, "group", None):  # door: person metadata for door.allow = ["group:NAME"]
        gallery.set_groups(args.name, sorted({*gallery.groups(args.name), *args.group}))
    path = cfg.resolve(cfg.gallery.path)
    gallery.save(path, key)
    for la in plan.lookalikes:
        print(f"warning: {lookalike_message(la)}", file=sys.stderr)
    point = plan.point
    after = "" if point is None else f"; {point.describe()}"
    print(
        f"enrolled {args.name!r}: {len(plan.accepted)} of {len(labels)} image(s) used; "
        f"gallery {path} holds {len(gallery)} people{after}"
    )
    return 0


def _gallery_report(rec: Recognizer) -> dict[str, object]:
    """The gallery's operating point and look-alike pairs (``gallery list`` / ``stats``)."""
    from edge.identity.enrol import lookalike_message, lookalikes

    names, emb, starts = rec.gallery.matrix()
    point = rec.operating_point
    pairs = lookalikes(names, emb, starts, point.threshold, rec.calibration.far_table)
    for la in pairs:
        print(f"warning: {lookalike_message(la)}", file=sys.stderr)
    return {
        "people": len(names),
        "embeddings": point.comparisons,
        "threshold": round(point.threshold, 6),
        "threshold_source": point.source,
        "margin": round(rec.margin, 6),
        "target_fpir": point.target_fpir,
        "per_comparison_far": point.target_far if point.source == "table" else None,
        "expected_fpir": point.expected_fpir,
        "expected_fnir": point.expected_fnir,
        "lookalikes": [{"a": la.a, "b": la.b, "distance": round(la.distance, 6)} for la in pairs],
    }


def cmd_gallery(args: argparse.Namespace) -> int:
    from edge.files import exists
    from edge.identity.gallery import gallery_key, open_for_config
    from edge.vision.embedder import Embedder

    cfg = config_from_args(args)
    if args.action in ("remove", "set-groups", "rebind"):
        refuse_fleet_gallery(cfg, f"gallery {args.action}")
    path = cfg.resolve(cfg.gallery.path)
    if not exists(path, "gallery"):
        raise FacegateError(f"{path}: no gallery there")
    emb = Embedder.load(cfg.model_path(cfg.embedder.model), runtime=cfg.embedder.runtime)
    if args.action == "rebind":
        return _gallery_rebind(cfg, path, emb.manifest, args.allow_rollback)
    gallery = open_for_config(cfg, emb.sha256, emb.manifest, allow_rollback=args.allow_rollback)
    if args.action in ("list", "stats"):
        from edge.decide.recognizer import Recognizer

        rec = Recognizer.from_config(cfg, gallery=gallery)
        if args.action == "list":
            for name in gallery.names:
                p = gallery.person(name)
                print(
                    json.dumps({"name": name, "embeddings": len(p.embeddings), "groups": p.groups})
                )
            _gallery_report(rec)
            print(rec.operating_point.describe(), file=sys.stderr)
        else:
            print(json.dumps(_gallery_report(rec)))
        return 0
    if args.action == "set-groups":  # door: NAME then its groups (none: clear them)
        name, groups = args.names[0], args.names[1:]
        gallery.set_groups(name, groups)
        gallery.save(path, gallery_key(cfg))
        print(f"{name!r} is in groups: {', '.join(gallery.groups(name)) or '(none)'}")
        return 0
    for name in args.names:
        gallery.remove(name)
    gallery.save(path, gallery_key(cfg))
    print(f"removed {', '.join(args.names)}; gallery holds {len(gallery)} people")
    return 0


def _gallery_rebind(cfg: Config, path: Path, manifest: Manifest, allow_rollback: bool) -> int:
    """``gallery rebind``: accept the current embedder manifest (and an old copy, if allowed)."""
    from edge.identity.gallery import gallery_key, rebind

    g = rebind(path, gallery_key(cfg), manifest, allow_rollback=allow_rollback)
    print(
        f"gallery {path}: bound to the manifest of {manifest.name} "
        f"({manifest.path}), generation {g.generation}, {len(g)} people"
    )
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from edge.files import exists
    from edge.imageio import read_image

    cfg = config_from_args(args)
    if not exists(cfg.resolve(cfg.gallery.path), "gallery"):
        raise FacegateError(f"{cfg.resolve(cfg.gallery.path)}: no gallery there (enroll first)")
    rec = recognizer_for(cfg)
    failed = 0
    for p in image_paths(args.images):
        try:
            faces = rec.identify(read_image(p))
        except FacegateError as e:
            failed += 1
            skip(p, str(e).removeprefix(f"{p}: "))
            continue
        print(json.dumps({"image": str(p), "faces": [f.to_json() for f in faces]}), flush=True)
    return 1 if failed else 0


__all__ = [
    "cmd_enroll",
    "cmd_gallery",
    "cmd_identify",
    "enrol_measures",
    "refuse_fleet_gallery",
    "register",
]
