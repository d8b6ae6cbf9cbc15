"""``facegate fleet keygen | push | status``: one gallery for many doors (:mod:`edge.fleet`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge.cli.common import config_from_args
from edge.errors import ConfigError, FacegateError

if TYPE_CHECKING:
    from edge.cli.common import Subcommands
    from edge.config import Config
    from edge.fleet.admin import SiteStatus
    from edge.identity.gallery import Gallery


def register(sub: Subcommands) -> None:
    """``fleet keygen``, ``fleet push`` and ``fleet status``."""
    p = sub.add_parser("fleet", help="one gallery for many doors over the MQTT broker")
    act = p.add_subparsers(dest="action", required=True)
    k = act.add_parser("keygen", help="write the admin's Ed25519 key pair and the site key (0600)")
    k.add_argument("--out", type=Path, required=True, help="folder for the three key files")
    k.add_argument("--prefix", default="fleet", help="file name prefix (default: %(default)s)")
    k.set_defaults(func=cmd_keygen)
    u = act.add_parser("push", help="publish the admin's gallery to the site's doors")
    u.add_argument(
        "--config", type=Path, required=True, help="the admin's config ([fleet], [mqtt])"
    )
    u.add_argument("--gallery", help="the local gallery (default: gallery.path of the config)")
    u.add_argument("--key-file", type=Path, help="file holding the gallery key")
    u.add_argument("--timeout", type=float, default=60.0, help="seconds (default %(default)s)")
    u.set_defaults(func=cmd_push)
    s = act.add_parser(
        "status", help="each door's gallery version; exit 1 while a door lags behind the site's"
    )
    s.add_argument("--config", type=Path, required=True, help="the admin's config")
    s.add_argument("--wait", type=float, default=2.0, help="seconds to collect the doors' states")
    s.add_argument("--json", action="store_true", help="JSON lines: one per door, then the site")
    s.set_defaults(func=cmd_status)


def cmd_keygen(args: argparse.Namespace) -> int:
    from edge.fleet.keys import generate, key_id, load_signing_key

    files = generate(args.out, args.prefix)
    kid = key_id(load_signing_key(files.signing.read_bytes()).public_key())
    print(f"signing key (admin machine only): {files.signing}")
    print(f"public key (every door):          {files.public}   key id {kid}")
    print(f"site key (admin and doors):       {files.site}")
    print("all three mode 0600; give doors the public key and the site key, never the signing key")
    return 0


def _admin_config(args: argparse.Namespace) -> Config:
    cfg = config_from_args(args)
    if cfg.fleet.enabled:
        raise ConfigError(
            "fleet.enabled: this is a door's config (it takes its gallery from the fleet); "
            "push and status run on the admin machine, with fleet.enabled = false"
        )
    if not cfg.fleet.site:
        raise ConfigError("fleet.site: required for facegate fleet")
    return cfg


def _admin_gallery(cfg: Config) -> Gallery:
    """The admin's local gallery, checked against the embedder's manifest (no model loaded)."""
    from edge.files import exists
    from edge.identity.gallery import open_for_config
    from edge.vision.manifest import load_manifest

    path = cfg.resolve(cfg.gallery.path)
    if not exists(path, "gallery"):
        raise FacegateError(f"{path}: no gallery there (facegate enroll first)")
    manifest = load_manifest(cfg.model_path(cfg.embedder.model))
    return open_for_config(cfg, manifest.sha256, manifest)


def cmd_push(args: argparse.Namespace) -> int:
    from edge.fleet.admin import push
    from edge.fleet.keys import admin_keys

    cfg = _admin_config(args)
    keys = admin_keys(cfg)
    gallery = _admin_gallery(cfg)
    r = push(cfg, gallery, keys, timeout=args.timeout)
    info = r.bundle.info
    print(
        f"pushed version {info.version} (was {r.previous}) to site {cfg.fleet.site!r}: "
        f"{info.people} people, {len(info.chunks)} chunks, {r.bundle.size} bytes"
    )
    if r.newly_revoked:
        print(f"revoked: {', '.join(r.newly_revoked)} (facegate fleet status shows who applied it)")
    if r.republished:
        print(f"note: the broker lost {r.republished} messages during the push; sent again")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from edge.fleet.admin import status
    from edge.fleet.keys import admin_keys

    cfg = _admin_config(args)
    st = status(cfg, admin_keys(cfg), wait_s=args.wait)
    if args.json:
        for d in st.doors:
            print(json.dumps(d.to_json()))
        print(json.dumps(_site_json(st)))
    else:
        _print_status(st)
    return 1 if st.lagging else 0


def _site_json(st: SiteStatus) -> dict[str, object]:
    c = st.current
    return {
        "site": st.site,
        "version": c.version if c else None,
        "digest": c.digest[:16] if c else None,
        "people": c.people if c else None,
        "verified": st.verified,
        "doors": len(st.doors),
        "lagging": [d.device for d in st.lagging],
        "revoked": [{"name": r.name, "version": r.version} for r in st.revoked],
    }


def _print_status(st: SiteStatus) -> None:
    c = st.current
    if c is None:
        print(f"site {st.site!r}: no bundle on the broker")
    else:
        ok = "" if st.verified else " (NOT signed by this admin's key)"
        print(f"site {st.site!r}: version {c.version} ({c.digest[:12]}), {c.people} people{ok}")
    for d in st.doors:
        where = {True: "online", False: "offline", None: "?"}[d.online]
        line = f"  {d.device}: version {d.version}, {d.sync or '?'}, {where}"
        if d.lagging:
            line += " BEHIND"
            if d.still_grants:
                line += f"; still grants {', '.join(d.still_grants)}"
        if d.refused:
            line += f"; last refused {d.refused.get('version')}: {d.refused.get('reason')}"
        print(line)
    if not st.doors:
        print("  no door reported this site (yet)")
    lag = st.lagging
    print(f"{len(st.doors) - len(lag)} of {len(st.doors)} doors hold the site's version")
    if lag:
        print(f"lagging: {', '.join(d.device for d in lag)}", file=sys.stderr)


__all__ = ["cmd_keygen", "cmd_push", "cmd_status", "register"]
