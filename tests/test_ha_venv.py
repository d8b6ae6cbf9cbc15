"""Home Assistant's venv for its tests: built by the setup, its state told in one line.

No network and no install here: the build's failure path uses a python that
does not exist, and the states are made by hand.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tools import ha_venv


def fake_venv(tmp_path: Path, stamp: str | None) -> Path:
    venv = tmp_path / ".venv-ha"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    if stamp is not None:
        (venv / ha_venv.STAMP).write_text(stamp)
    return venv


def test_a_venv_with_the_pinned_requirements_is_ready(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, ha_venv.wanted())
    assert ha_venv.status(venv) == (venv / "bin" / "python", "")
    ok, said = ha_venv.build(venv, python="/nonexistent/python")  # nothing to do
    assert ok and said.endswith("up to date in .venv-ha/")


def test_missing_stale_or_unfinished_venvs_say_how_to_build_them(tmp_path: Path) -> None:
    python, why = ha_venv.status(tmp_path / ".venv-ha")
    assert python is None
    assert why == (
        f"Home Assistant {ha_venv.HA_VERSION}: .venv-ha/ is not built; "
        "`bash tools/setup.sh --dev` builds it (needs the package index)"
    )
    stale = fake_venv(tmp_path / "a", "homeassistant==2023.1\n")
    assert "holds other requirements" in ha_venv.status(stale)[1]
    unfinished = fake_venv(tmp_path / "b", None)
    (unfinished / ha_venv.LOG).write_text("ERROR: No matching distribution found")
    why = ha_venv.status(unfinished)[1]
    assert "incomplete" in why and why.endswith(
        "the last build said: ERROR: No matching distribution found"
    )


def test_a_failed_build_reports_and_leaves_no_stamp(tmp_path: Path) -> None:
    venv = tmp_path / ".venv-ha"
    ok, said = ha_venv.build(venv, python=str(tmp_path / "no-python"))
    assert not ok and said.startswith(f"cannot install Home Assistant {ha_venv.HA_VERSION}: ")
    assert not (venv / ha_venv.STAMP).exists()
    assert ha_venv.status(venv)[0] is None
    assert ha_venv.main(["check", "--venv", str(venv)]) == 1
