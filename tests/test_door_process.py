"""The relay across processes: SIGTERM, SIGKILL and watchdog aborts on real processes.

gpiozero's mock pins live inside one process, so these tests use the
``mock_log`` of ``door.pin_factory = "mock"``: every relay write of every
process, as ``PID PIN STATE`` lines appended straight to the kernel. A
SIGKILLed process cannot release anything; what the tests show is that its
successor writes the released state first, before anything else it does. On
real hardware the pull-down on the relay input (README, "Wiring") covers the
gap between the two.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from broker import wait_for

pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")

ROOT = Path(__file__).resolve().parents[1]
RELAY = "GPIO17"


def writes(log: Path, pid: int | None = None) -> list[tuple[int, str, int]]:
    """Every (pid, pin, state) line of the mock log, optionally of one process."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        p, pin, state = line.split()
        if pid is None or int(p) == pid:
            out.append((int(p), pin, int(state)))
    return out


def relay_states(log: Path, pid: int) -> list[int]:
    """The relay levels one process wrote, repeats collapsed (a stop writes "released" again)."""
    out: list[int] = []
    for _, pin, s in writes(log, pid):
        if pin == RELAY and out[-1:] != [s]:
            out.append(s)
    return out


def door_config(d: Path, extra: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "door.toml"
    cfg.write_text(
        f'[service]\nstate_dir = "{d}"\n'
        '[door]\nenabled = true\npin_factory = "mock"\nmock_log = "relay.log"\n'
        "relay_pin = 17\nunlock_s = 60.0\n" + extra
    )
    return cfg


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "edge", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def energised(log: Path, proc: subprocess.Popen[str]) -> bool:
    assert proc.poll() is None, proc.communicate()
    return relay_states(log, proc.pid)[-1:] == [1]


def test_sigterm_during_a_pulse_releases(tmp_path: Path) -> None:
    cfg = door_config(tmp_path)
    log = tmp_path / "relay.log"
    proc = spawn("door", "test", "--config", str(cfg), "--seconds", "60")
    try:
        assert wait_for(lambda: energised(log, proc), 30)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert relay_states(log, proc.pid) == [0, 1, 0]
    assert "stopped early" in out and "Traceback" not in err


def test_sigkill_leaves_the_line_released_at_the_next_start(tmp_path: Path) -> None:
    cfg = door_config(tmp_path)
    log = tmp_path / "relay.log"
    first = spawn("door", "test", "--config", str(cfg), "--seconds", "60")
    try:
        assert wait_for(lambda: energised(log, first), 30)
        first.send_signal(signal.SIGKILL)  # no handler, no finally: nothing released
        first.communicate(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert relay_states(log, first.pid) == [0, 1]  # the dead process left it energised
    # The daemon starts again (systemd's restart): its very first write is the release,
    # even though its start-up then fails (no such model) before anything else happens.
    daemon_cfg = door_config(
        tmp_path / "daemon",
        '[embedder]\nmodel = "no-such-model.tflite"\n[mqtt]\nenabled = false\n',
    )
    (tmp_path / "daemon" / "relay.log").symlink_to(log)
    second = spawn("run", "--config", str(daemon_cfg))
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2, err
    assert "no-such-model" in err
    mine = writes(log, second.pid)
    assert mine[0] == (second.pid, RELAY, 0)  # released, before anything else
    assert relay_states(log, second.pid) == [0]
    assert "door: stopped, relay released" in err


needs_models = pytest.mark.skipif(
    not (ROOT / "models" / "facenet_int8.tflite").exists(),
    reason="models not built (python -m tools.models build)",
)


@needs_models
def test_watchdog_abort_stops_the_daemon_with_the_relay_released(tmp_path: Path) -> None:
    """systemd's watchdog sends SIGABRT: the daemon stops as on SIGTERM, relay released."""
    cfg = door_config(tmp_path, '[camera]\nsource = "fake"\nfps = 10.0\n[mqtt]\nenabled = false\n')
    log = tmp_path / "relay.log"
    proc = spawn("run", "--config", str(cfg))
    try:
        assert wait_for(lambda: relay_states(log, proc.pid) == [0], 60), proc.poll()
        assert proc.stderr is not None
        assert wait_for(lambda: proc.poll() is not None or _running(tmp_path), 120)
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "door: stopped, relay released" in err and "stopped in" in err
    assert relay_states(log, proc.pid) == [0]


def _running(d: Path) -> bool:
    # The daemon opened the audit log (the door is up) and the models are loading or loaded;
    # SIGABRT at any point after the door exists must end with the relay released.
    return (d / "audit.sqlite").exists()
