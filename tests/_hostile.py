"""Helpers for the hostile-input tests: configs, one-line errors, a full disk, no privileges.

* :func:`write_config` writes a TOML config from sections of plain values.
* :func:`assert_one_line_error` checks the CLI's contract for bad input: one
  ``facegate: error: ...`` line on stderr, no traceback.
* :func:`on_full_fs` runs a command with a small, really full file system
  (tmpfs) mounted at a folder: inside ``unshare --user --map-root-user
  --mount``, so it needs no root, only user namespaces; the test is skipped
  with the reason when they are not available.
* :func:`unprivileged` is the argv prefix that runs a command without root's
  power over file modes when the tests run as root (root ignores them, so
  "unreadable" would mean nothing): uid 0 with no capabilities, else
  ``nobody``; empty for an ordinary user.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FACEGATE = [sys.executable, "-m", "edge"]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is JSON-compatible for these values
    return repr(v)


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    text = "".join(
        f"[{sec}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items()) + "\n"
        for sec, keys in sections.items()
    )
    path.write_text(text)
    return path


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """The CLI's bad-input contract: exactly one ``facegate: error:`` line, no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in lines if ln.startswith("facegate: error: ")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], stderr
    return errors[0]


@functools.cache
def _unshare_works() -> str:
    """'' when user+mount namespaces and tmpfs mounts work here, else the reason."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    try:
        r = subprocess.run(
            ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt && echo ok"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    if r.stdout.strip() != "ok":
        return f"user namespaces with a tmpfs mount are not available: {r.stderr.strip()[:200]}"
    return ""


def on_full_fs(
    mountpoint: Path,
    cmd: Sequence[str],
    *,
    size_kb: int = 1024,
    fill: bool = True,
    popen: bool = False,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Any:
    """Run ``cmd`` with a ``size_kb`` tmpfs at ``mountpoint``, filled to the last byte first.

    The mount lives in a private mount namespace: it disappears with the
    process. Returns the CompletedProcess, or the Popen with ``popen=True``.
    """
    why = _unshare_works()
    if why:
        pytest.skip(why)
    mountpoint.mkdir(parents=True, exist_ok=True)
    m = str(mountpoint)
    script = f'mount -t tmpfs -o size={size_kb}k none "{m}" || exit 97\n'
    if fill:
        script += (
            f'dd if=/dev/zero of="{m}/filler" bs=4096 2>/dev/null\n'
            f'dd if=/dev/zero of="{m}/filler2" bs=1 2>/dev/null\n'
        )
    script += 'exec "$@"\n'
    argv = ["unshare", "-Urm", "sh", "-c", script, "sh", *cmd]
    kwargs: dict[str, Any] = {
        "cwd": cwd or ROOT,
        "env": dict(env) if env is not None else None,
        "text": True,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
    }
    if popen:
        return subprocess.Popen(argv, **kwargs)
    return subprocess.run(argv, timeout=timeout, **kwargs)


# Ways to run a command as root without root's power over file modes, best first:
# uid 0 with every capability dropped (file modes bind it as they bind any owner,
# and it still reaches a checkout only root may enter, such as a clone in a
# mkdtemp folder), then the user nobody (needs a checkout anyone may enter).
DROP_PRIVILEGES = (
    ("setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"),
    ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
)
# Run with a prefix: facegate must import, and a mode-000 folder must stay shut.
_PROBE = """
import os, sys
import edge
try:
    os.listdir(sys.argv[1])
except PermissionError:
    sys.exit(0)
sys.exit("file modes do not bind it: it listed a mode-000 folder")
"""


@functools.lru_cache(maxsize=1)
def _drop_privileges() -> tuple[tuple[str, ...] | None, str]:
    """The first :data:`DROP_PRIVILEGES` prefix that works here, or None and why none does."""
    if shutil.which("setpriv") is None:
        return None, "running as root without setpriv (util-linux)"
    tried = []
    with tempfile.TemporaryDirectory(prefix="facegate-probe-") as tmp:
        shut = Path(tmp) / "shut"
        shut.mkdir(mode=0o000)
        Path(tmp).chmod(0o755)  # nobody may reach the folder, not list it
        for prefix in DROP_PRIVILEGES:
            cmd = [*prefix, *FACEGATE[:1], "-c", _PROBE, str(shut)]
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
            if p.returncode == 0:
                return prefix, ""
            tried.append(f"{' '.join(prefix)}: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return None, "; ".join(tried)


def unprivileged() -> list[str]:
    """Prefix that takes root's power over file modes away; [] when not root.

    Root ignores file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), and CI
    runs as root, so "unreadable" would mean nothing there. The command then
    runs as uid 0 with no capabilities, or else as ``nobody``; whichever is
    used is checked first to import facegate and to be refused a mode-000
    folder. The test is skipped, saying why, when neither works.
    """
    if os.geteuid() != 0:
        return []
    prefix, why = _drop_privileges()
    if prefix is None:
        pytest.skip(f"cannot test file permissions as root: {why}")
    return list(prefix)


def face_photo() -> Path:
    """A photo of one face that ships with a registry package (matplotlib's Grace Hopper)."""
    from edge.demo import demo_photos
    from edge.errors import FacegateError

    try:
        return demo_photos()["grace_hopper"]
    except FacegateError as e:
        pytest.skip(str(e))
        raise  # unreachable; for type checkers
