"""Home Assistant's own virtualenv for the tests: ``python -m tools.ha_venv [build|check]``.

``tests/test_homeassistant.py`` runs a real Home Assistant 2024.1 (the newest
release that installs on Python 3.11) from ``.venv-ha/`` in the checkout
(git-ignored). ``bash tools/setup.sh --dev`` builds it (about 2 minutes on 2
cores, from the package index): setup work belongs in the setup, never
inside a test under the per-test timeout. A stamp inside the folder records
what was installed, so a second run only checks (as the main venv's does).
When the venv is missing or stale the tests skip and say this command.

``build`` creates or refreshes it (exit 1 when pip fails, with the end of its
log); ``check`` exits 0 when it is ready, else 1 with the reason.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tools._common import run_tool

REPO_ROOT = Path(__file__).resolve().parents[1]
HA_VENV = REPO_ROOT / ".venv-ha"
HA_VERSION = "2024.1.6"
# Home Assistant itself, and what the integrations the test uses need: mqtt
# (paho 1.6), file_upload (janus), camera, loaded by mqtt (numpy,
# PyTurboJPEG). The versions are those Home Assistant 2024.1 pins; the test
# runs it with --skip-pip.
REQUIREMENTS = (
    f"homeassistant=={HA_VERSION}",
    "paho-mqtt==1.6.1",
    "janus==1.0.0",
    "numpy==1.26.0",
    "PyTurboJPEG==1.7.1",
)
STAMP = "facegate-requirements.txt"
LOG = "setup-pip.log"
BUILD_TIMEOUT_S = 1800  # pip on a busy 2-core machine, with a cold cache
SETUP = "bash tools/setup.sh --dev"


def wanted() -> str:
    """The stamp's text for :data:`REQUIREMENTS` (one per line)."""
    return "\n".join(REQUIREMENTS) + "\n"


def status(venv: Path = HA_VENV) -> tuple[Path | None, str]:
    """(the venv's python, "") when it holds :data:`REQUIREMENTS`, else (None, why not)."""
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted():
        return python, ""
    if not venv.exists():
        why = f"{venv.name}/ is not built"
    elif stamp.is_file():
        why = f"{venv.name}/ holds other requirements than these tests pin"
    else:
        why = f"{venv.name}/ is incomplete (its last build did not finish)"
    log = venv / LOG
    tail = log.read_text(errors="replace").strip()[-300:] if log.is_file() else ""
    return None, (
        f"Home Assistant {HA_VERSION}: {why}; `{SETUP}` builds it (needs the package index)"
        + (f"; the last build said: {tail}" if tail else "")
    )


def build(venv: Path = HA_VENV, python: str = sys.executable) -> tuple[bool, str]:
    """Create (or refresh) the venv with :data:`REQUIREMENTS`; (ok, what happened)."""
    if status(venv)[0] is not None:
        return True, f"Home Assistant {HA_VERSION}: up to date in {venv.name}/"
    steps = [
        [python, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
    ]
    for cmd in steps:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            out, rc = p.stdout + p.stderr, p.returncode
        except subprocess.TimeoutExpired:
            out, rc = f"timed out after {BUILD_TIMEOUT_S} s: {' '.join(cmd)}", 1
        except OSError as e:  # no such python
            out, rc = f"{cmd[0]}: {e.strerror or e}", 1
        if rc != 0:
            if venv.is_dir():
                (venv / LOG).write_text(out)
            return False, f"cannot install Home Assistant {HA_VERSION}: {out.strip()[-600:]}"
    (venv / STAMP).write_text(wanted())
    (venv / LOG).unlink(missing_ok=True)
    return True, f"Home Assistant {HA_VERSION}: installed in {venv.name}/"


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.ha_venv", description=__doc__)
    ap.add_argument("action", nargs="?", choices=("build", "check"), default="build")
    ap.add_argument("--venv", type=Path, default=HA_VENV, help="default: %(default)s")
    args = ap.parse_args(argv)
    if args.action == "check":
        python, why = status(args.venv)
        print(f"ready: {python}" if python else why)
        return 0 if python else 1
    ok, said = build(args.venv)
    print(said, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("ha_venv", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
