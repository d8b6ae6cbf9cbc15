"""The arm64 check (``tools/arm64.sh``): its parts here, the whole run behind ``-m arm64``.

The default suite checks the pure parts: the comparison (cosines, the
open-set and pair decisions, the listing of disagreements), the photo split,
the binfmt register line, the emulated CPU's ``/proc/cpuinfo``, the mount
bookkeeping and the namespace command line. The opt-in test
(``pytest -m arm64``: root, binfmt_misc, the network on a first run; about
40 minutes on 2 cores the first time, 25 with the root filesystem cached)
runs the whole thing and checks its report.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge.vision.manifest import load_manifest
from tools.arm64 import (
    BINFMT,
    CACHE,
    CPUS,
    ROOT,
    Chroot,
    identify_agreement,
    mounts_under,
    register_line,
    why_not_possible,
)
from tools.arm64_compare import (
    NO_FACE,
    Probe,
    compare,
    identify_split,
    pair_distances,
    row_cosines,
    table,
)

EMBEDDER = ROOT / "models" / "sface_int8.tflite"


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


PHOTOS = tuple(f"P{p}/{k}.jpg" for p in range(6) for k in range(3))


def people_embeddings(noise: float, seed: int = 0) -> np.ndarray:
    """Three photos per person: the person's direction plus ``noise``."""
    centres = unit_rows(6, 128, 42)
    rng = np.random.default_rng(seed)
    e = np.repeat(centres, 3, axis=0) + noise * rng.normal(size=(18, 128)).astype(np.float32)
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def manifest_or_skip() -> object:
    if not EMBEDDER.exists():
        pytest.skip("models not built (bash tools/setup.sh)")
    return load_manifest(EMBEDDER)


def test_split_enrols_first_photos_and_keeps_every_third_person_a_stranger() -> None:
    s = identify_split(PHOTOS)
    assert s.strangers == frozenset({"P2", "P5"})
    assert [PHOTOS[i] for i in s.enrol] == ["P0/0.jpg", "P1/0.jpg", "P3/0.jpg", "P4/0.jpg"]
    assert len(s.probes) == len(PHOTOS) - 4 and not set(s.enrol) & set(s.probes)


def test_row_cosines_and_pair_distances() -> None:
    a = unit_rows(4, 8, 1)
    assert np.allclose(row_cosines(a, a), 1.0)
    b = a.copy()
    b[2] = np.nan
    c = row_cosines(a, b)
    assert np.isnan(c[2]) and np.allclose(c[[0, 1, 3]], 1.0)
    d = pair_distances(a)
    assert d.shape == (6,)
    assert np.isclose(d[0], 1 - float(a[0] @ a[1]))


def test_identical_embeddings_agree_everywhere() -> None:
    m = manifest_or_skip()
    e = people_embeddings(0.3)
    ref = Probe(PHOTOS, e, e.copy())
    row = compare(ref, Probe(PHOTOS, e.copy(), e.copy()), m, "sface_int8", "x", "pi5")  # type: ignore[arg-type]
    assert row.mean_cos == pytest.approx(1.0) and row.worst_cos == pytest.approx(1.0)
    assert row.identify_agree == row.identify_total == 14
    assert row.pair_agree == row.pair_total == 18 * 17 // 2
    assert row.disagreements == () and row.passed
    assert row.crop_max_abs_diff == 0.0


def test_perturbed_embeddings_list_their_disagreements() -> None:
    """Another machine whose embeddings moved: each changed decision is listed, with distances."""
    m = manifest_or_skip()
    e = people_embeddings(0.3)
    other = people_embeddings(0.3, seed=1)  # same people, other noise: cos well under 1
    other[4] = np.nan  # no face found there
    row = compare(Probe(PHOTOS, e), Probe(PHOTOS, other), m, "sface_int8", "x", "pi4")  # type: ignore[arg-type]
    assert row.faces_both == 17 and row.mean_cos < 0.99 and not row.passed
    assert "face found on x86 only: P1/1.jpg" in row.disagreements
    assert any(d.startswith("identify P1/1.jpg") and NO_FACE in d for d in row.disagreements)
    pairs = [d for d in row.disagreements if d.startswith("pair ")]
    assert len(pairs) == row.pair_total - row.pair_agree
    text = table([row])
    assert "FAIL" in text and "P1/1.jpg" in text


def test_identify_agreement_of_cli_outputs() -> None:
    ref = {"a.jpg": [("Ann", 0.3)], "b.jpg": [(None, 0.8)], "c.jpg": []}
    same = {"a.jpg": [("Ann", 0.31)], "b.jpg": [(None, 0.7)], "c.jpg": []}
    agree, total, worst, notes = identify_agreement(ref, same)
    assert (agree, total, notes) == (3, 3, []) and worst == pytest.approx(0.1)
    other = {"a.jpg": [(None, 0.6)], "b.jpg": [(None, 0.8)]}
    agree, total, _, notes = identify_agreement(ref, other)
    assert (agree, total, len(notes)) == (1, 3, 2)


def test_register_line_matches_debians_qemu_aarch64_entry() -> None:
    line = register_line("/usr/bin/qemu-aarch64-static")
    name, kind, offset, magic, mask, interp, flags = line.lstrip(":").split(":")
    assert (name, kind, offset, interp, flags) == (
        "qemu-aarch64",
        "M",
        "",
        "/usr/bin/qemu-aarch64-static",
        "F",
    )
    # e_machine 0xb7 (EM_AARCH64) at offset 18, 64-bit little-endian ELF.
    raw = bytes(int(h, 16) for h in magic.split("\\x")[1:])
    assert raw[:4] == b"\x7fELF" and raw[4] == 2 and raw[5] == 1 and raw[18] == 0xB7
    assert len(mask.split("\\x")) - 1 == len(raw)
    debian = Path("/usr/share/binfmts/qemu-aarch64")
    if debian.exists():
        text = debian.read_text()
        assert magic in text and mask in text


def test_mounts_under_reads_proc_mounts() -> None:
    text = (
        "proc /proc proc rw 0 0\n"
        "proc /r/rootfs/proc proc rw 0 0\n"
        "sysfs /r/rootfs/sys sysfs rw 0 0\n"
        "tmpfs /r/rootfs/dev/shm tmpfs rw 0 0\n"
        "x /r/rootfs.partial/proc proc rw 0 0\n"
        "y /r/root\\040fs/proc proc rw 0 0\n"
    )
    got = mounts_under(Path("/r/rootfs"), text)
    assert got == ["/r/rootfs/dev/shm", "/r/rootfs/proc", "/r/rootfs/sys"]
    assert mounts_under(Path("/r/root fs"), text) == ["/r/root fs/proc"]


def test_emulated_cpuinfo_is_an_arm64_linux_cpuinfo() -> None:
    text = CPUS["pi5"].cpuinfo(2)
    blocks = [b for b in text.split("\n\n") if b.startswith("processor")]
    assert len(blocks) == 2
    assert "CPU part\t: 0xd0b" in blocks[1] and "asimddp" in blocks[0]  # Cortex-A76, dotprod
    assert "asimddp" not in CPUS["pi4"].cpuinfo(1)  # Cortex-A72: no dot product


def test_chroot_command_binds_nothing_of_the_host(tmp_path: Path) -> None:
    argv = Chroot(tmp_path / "rootfs", CPUS["pi5"]).argv("true")
    assert argv[:6] == ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation"]
    assert f"--mount-proc={tmp_path / 'rootfs' / 'proc'}" in argv
    setup = argv[argv.index("-ec") + 1]
    assert "mount -t sysfs sysfs" in setup and "mount -t tmpfs" in setup
    binds = [part for part in setup.split("&&") if "--bind" in part]
    assert len(binds) == 1 and "cpuinfo-cortex-a76" in binds[0]  # our file, nothing of the host
    assert "QEMU_CPU=cortex-a76" in setup


# -- the whole run (opt-in) ---------------------------------------------------------


@pytest.mark.arm64
@pytest.mark.timeout(4 * 3600)
def test_arm64_run_proves_the_pi_path(tmp_path: Path) -> None:
    """``tools/arm64.sh``: both runtimes install, the demo recognises Grace Hopper, and
    the int8 embeddings and decisions match x86's within the targets."""
    cached = (CACHE / "rootfs" / "etc" / "facegate-rootfs").exists()
    why = why_not_possible(need_network=not cached)
    if why:
        pytest.skip(why)
    binfmt_before = sorted(os.listdir(BINFMT)) if (BINFMT / "register").exists() else None
    report = tmp_path / "report"
    r = subprocess.run(
        ["bash", str(ROOT / "tools" / "arm64.sh"), "--report", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    data = json.loads((report / "arm64.json").read_text())
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert data["passed"]
    installed = [o for o in data["outcomes"] if o["installed"]]
    assert {o["runtime"] for o in installed} == {"litert", "tflite"}
    for o in installed:
        assert o["versions"]["machine"] == "aarch64"
        assert any('"name":"Grace Hopper"' in e for e in o["demo"])
    rows = data["rows"]
    assert {r["embedder"] for r in rows} == {"sface_int8", "facenet_int8"}
    for row in rows:
        assert row["mean_cos"] >= 0.99 and row["identify_rate"] >= 0.99
        assert row["pair_rate"] >= 0.99
    assert "int8 embeddings, arm64 against x86" in r.stdout
    # Nothing left mounted, binfmt_misc as it was.
    mounts = Path("/proc/self/mounts").read_text()
    assert mounts_under(CACHE, mounts) == []
    after = sorted(os.listdir(BINFMT)) if (BINFMT / "register").exists() else None
    assert after == binfmt_before
