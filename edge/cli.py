"""The ``facegate`` command line (also ``python -m edge``).

Sub-commands: ``enroll``, ``gallery list|stats|remove|set-groups|rebind``,
``identify``, ``demo``, ``doctor``, ``check-config``, ``run``, ``audit``,
``door test|sign-unlock``, ``events verify``. Bad input never produces a traceback: every
:class:`~edge.errors.FacegateError` becomes one ``facegate: error: ...``
line on stderr and exit code 2; per-image problems are reported as
skipped-with-reason lines and the command goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge import __version__
from edge.errors import FacegateError

if TYPE_CHECKING:
    from edge.config import Config
    from edge.manifest import Manifest
    from edge.recognizer import Recognizer

log = logging.getLogger("facegate")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config (models, gallery, key)")
    p.add_argument("--detector", help="detector model (default: from config or models/)")
    p.add_argument("--embedder", help="embedder model (default: from config or models/)")
    p.add_argument(
        "--key-file", type=Path, help="file holding the gallery key (never the key itself)"
    )


def _config(args: argparse.Namespace) -> Config:
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


def _recognizer(cfg: Config) -> Recognizer:
    from edge.recognizer import Recognizer

    return Recognizer.from_config(cfg)


def _image_paths(items: Sequence[str]) -> list[Path]:
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


def _skip(path: Path | str, why: str) -> None:
    print(f"skipped {path}: {why}", file=sys.stderr)


# -- commands -----------------------------------------------------------------
def cmd_enroll(args: argparse.Namespace) -> int:
    from edge.enrol import PhotoMeasure, lookalike_message, plan_enrolment
    from edge.gallery import check_new_name, gallery_key
    from edge.imageio import read_image

    check_new_name(args.name)  # before any photo is read
    cfg = _config(args)
    rec = _recognizer(cfg)
    gallery = rec.gallery
    key = gallery_key(cfg)
    paths = _image_paths(args.images)
    measures = []
    for p in paths:
        try:
            measures.append(rec.measure_photo(read_image(p)))
        except FacegateError as e:
            measures.append(PhotoMeasure(None, None, str(e).removeprefix(f"{p}: ")))
    names, emb, starts = gallery.matrix()
    plan = plan_enrolment(
        args.name,
        measures,
        names,
        emb,
        starts,
        rec.calibration,
        rec.operating_point_for,
        force=args.force,
    )
    for i, why in plan.refused:
        _skip(paths[i], why)
    for i, text in plan.warnings:
        print(f"warning: {paths[i]}: {text}", file=sys.stderr)
    for i, note in plan.notes:
        print(f"note: {paths[i]}: {note}", file=sys.stderr)
    if not plan.accepted:
        hint = "" if args.force else " (--force keeps photos refused for quality or as outliers)"
        raise FacegateError(
            f"no usable photo among {len(paths)} image(s); {args.name!r} not enrolled{hint}"
        )
    gallery.add(args.name, plan.embeddings)
    if args.group:  # door: person metadata for door.allow = ["group:NAME"]
        gallery.set_groups(args.name, sorted({*gallery.groups(args.name), *args.group}))
    path = cfg.resolve(cfg.gallery.path)
    gallery.save(path, key)
    for la in plan.lookalikes:
        print(f"warning: {lookalike_message(la)}", file=sys.stderr)
    point = plan.point
    after = "" if point is None else f"; {point.describe()}"
    print(
        f"enrolled {args.name!r}: {len(plan.accepted)} of {len(paths)} image(s) used; "
        f"gallery {path} holds {len(gallery)} people{after}"
    )
    return 0


def _gallery_report(rec: Recognizer) -> dict[str, object]:
    """The gallery's operating point and look-alike pairs (``gallery list`` / ``stats``)."""
    from edge.enrol import lookalike_message, lookalikes

    names, emb, starts = rec.gallery.matrix()
    point = rec.operating_point
    pairs = lookalikes(names, emb, starts, point.threshold, rec.margin)
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
    from edge.embedder import Embedder
    from edge.files import exists
    from edge.gallery import gallery_key, open_for_config

    cfg = _config(args)
    path = cfg.resolve(cfg.gallery.path)
    if not exists(path, "gallery"):
        raise FacegateError(f"{path}: no gallery there")
    emb = Embedder.load(cfg.model_path(cfg.embedder.model), runtime=cfg.embedder.runtime)
    if args.action == "rebind":
        return _gallery_rebind(cfg, path, emb.manifest, args.allow_rollback)
    gallery = open_for_config(cfg, emb.sha256, emb.manifest, allow_rollback=args.allow_rollback)
    if args.action in ("list", "stats"):
        from edge.recognizer import Recognizer

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
    from edge.gallery import gallery_key, rebind

    g = rebind(path, gallery_key(cfg), manifest, allow_rollback=allow_rollback)
    print(
        f"gallery {path}: bound to the manifest of {manifest.name} "
        f"({manifest.path}), generation {g.generation}, {len(g)} people"
    )
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from edge.files import exists
    from edge.imageio import read_image

    cfg = _config(args)
    if not exists(cfg.resolve(cfg.gallery.path), "gallery"):
        raise FacegateError(f"{cfg.resolve(cfg.gallery.path)}: no gallery there (enroll first)")
    rec = _recognizer(cfg)
    failed = 0
    for p in _image_paths(args.images):
        try:
            faces = rec.identify(read_image(p))
        except FacegateError as e:
            failed += 1
            _skip(p, str(e).removeprefix(f"{p}: "))
            continue
        print(json.dumps({"image": str(p), "faces": [f.to_json() for f in faces]}), flush=True)
    return 1 if failed else 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from edge.config import load_config

    cfg = load_config(args.path)
    missing = [
        str(p)
        for p in (cfg.model_path(cfg.detector.model), cfg.model_path(cfg.embedder.model))
        if not p.exists()
    ]
    print(f"{args.path}: ok")
    for m in missing:
        print(f"warning: model {m} does not exist yet (python -m tools.models build)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from edge.doctor import doctor

    return doctor(args.config)


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo

    return run_demo(broker=args.broker, out=sys.stdout, models=args.models)


def cmd_audit(args: argparse.Namespace) -> int:
    from edge.audit import parse_since, read_entries, to_csv
    from edge.config import load_config
    from edge.door import audit_path

    cfg = load_config(args.config)
    since = parse_since(args.since) if args.since else None
    entries = read_entries(audit_path(cfg), since)
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
    from edge.door import door_test, remote_key, sign_unlock

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


MAX_EVENT_LINE = 65536
"""``events verify`` reads at most this many bytes per line; longer lines are refused."""


def _event_key(args: argparse.Namespace) -> tuple[bytes, str | None]:
    """The signing key and the expected device, from ``--config`` or ``--key-file``/``--device``."""
    from dataclasses import replace

    from edge.config import load_config, warn_if_exposed
    from edge.publishers import sign_key

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

    from edge.errors import SignatureError
    from edge.events import encode, verify_payload, why_not_act

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


def cmd_run(args: argparse.Namespace) -> int:
    from edge.daemon import main_run

    return main_run(str(args.config))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="facegate", description="Offline face recognition for door-access devices."
    )
    ap.add_argument("--version", action="version", version=f"facegate {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("enroll", help="add a person to the gallery from photos")
    p.add_argument("--gallery", required=True, help="gallery file (.fgg)")
    p.add_argument("--name", required=True)
    p.add_argument(
        "--group", action="append", default=[], help="add the person to this group (repeatable)"
    )
    p.add_argument("images", nargs="+", help="images or folders of images")
    p.add_argument(
        "--force",
        action="store_true",
        help="keep photos refused as too small, blurred, turned or unlike the others",
    )
    _add_model_args(p)
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
    _add_model_args(p)
    p.set_defaults(func=cmd_gallery)

    p = sub.add_parser("identify", help="print who is in each image, one JSON line per image")
    p.add_argument("--gallery", required=True)
    p.add_argument("images", nargs="+")
    _add_model_args(p)
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("demo", help="run the whole pipeline on built-in photos")
    p.add_argument("--broker", help="also publish to this MQTT broker (HOST[:PORT])")
    p.add_argument(
        "--models",
        type=Path,
        help="folder with the default models and manifests (default: the checkout's models/; "
        "an installed package: e.g. /opt/facegate/models)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "doctor", help="check that this device is ready: one line per check, with a fix"
    )
    p.add_argument("--config", type=Path, help="TOML config (default: the built-in defaults)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("check-config", help="validate a TOML config")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("run", help="run the recognition service")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("audit", help="print the door's audit log (JSON lines or CSV)")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--since", help="ISO date/time (local) or an age: 90s, 15m, 2h, 7d")
    p.add_argument("--csv", action="store_true", help="CSV with a header row")
    p.set_defaults(func=cmd_audit)

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

    p = sub.add_parser("door", help="installer checks: pulse the relay; sign a remote unlock")
    p.add_argument("action", choices=["test", "sign-unlock"])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--seconds", type=float, help="test: pulse length (default: door.unlock_s)")
    p.set_defaults(func=cmd_door)
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
