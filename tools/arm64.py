"""facegate on arm64 Debian bookworm (what Raspberry Pi OS 64-bit is), under emulation.

``bash tools/arm64.sh`` (root) builds an arm64 bookworm root filesystem with
``debootstrap`` (foreign; the second stage runs under Debian's
``qemu-user-static``), from Debian's own packages, and caches it in
``.arm64/`` (git-ignored). Inside it installs the package exactly as the
README tells a Pi owner (a venv, ``pip install '<checkout>[litert]'``; once
more with ``[tflite]``: ``tflite_runtime`` 2.14 and numpy<2), copies in the
models built on this machine (the Pi builds none), and runs, from arm64
Python, under each runtime:

* ``facegate demo`` (its events are printed);
* ``facegate enroll`` and ``facegate identify`` on a fixed photo set
  (``../shared/faces`` when present, else variants of the demo's photos);
* ``facegate doctor``;
* :mod:`tools.arm64_probe` for SFace and FaceNet, whose embeddings are then
  compared here with x86's, computed by the same code
  (:mod:`tools.arm64_compare`): mean and worst cosine, and whether the
  open-set identify decision and the pair accept/reject decision agree.

What it mounts it undoes. ``binfmt_misc`` is mounted (and ``qemu-aarch64``
registered) only when it is not already, and put back as found at the end,
also after Ctrl-C; a run killed outright leaves a note in ``.arm64/`` that
the next run acts on. Every command inside the root filesystem runs in its
own mount and PID namespace (``unshare``) with a fresh ``/proc``: nothing of
the host's ``/proc`` or ``/dev`` is bound into it, and its mounts vanish
with the namespace even when the process is killed.

Speed under emulation says nothing about a Pi's speed: nothing here is timed
but the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from edge.errors import FacegateError
from tools.arm64_compare import Row, compare, identify_split, load_probe, person_of, table

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".arm64"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU = "/usr/bin/qemu-aarch64-static"
HOST_PACKAGES = {
    "debootstrap": "/usr/sbin/debootstrap",
    "qemu-user-static": QEMU,
    "binfmt-support": "/usr/sbin/update-binfmts",
}
# What the README's apt line installs, less python3-picamera2 (Raspberry Pi's
# own archive, not Debian's; the camera is faked here).
ROOTFS_PACKAGES = ("python3-venv", "mosquitto-clients", "ca-certificates")
# The kernel's register line for qemu-aarch64 (the same magic and mask as
# Debian's /usr/share/binfmts/qemu-aarch64), with F: the interpreter is opened
# now, so it need not exist inside the root filesystem.
AARCH64_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
RUNTIMES = {"litert": "ai_edge_litert", "tflite": "tflite_runtime"}
# Inside the root filesystem.
DEV_ROOT = "/opt/facegate"


_T0 = time.monotonic()


def say(msg: str) -> None:
    """A progress line on stderr, with the minutes and seconds since the run started."""
    m, sec = divmod(int(time.monotonic() - _T0), 60)
    print(f"arm64 [{m:3d}:{sec:02d}]: {msg}", file=sys.stderr, flush=True)


def register_line(interpreter: str = QEMU) -> str:
    """The ``binfmt_misc`` register line for arm64 ELF binaries (flags F: fix binary)."""
    return f":qemu-aarch64:M::{AARCH64_MAGIC}:{AARCH64_MASK}:{interpreter}:F"


def mounts_under(path: Path, mountinfo: str) -> list[str]:
    """Mount points at or under ``path`` in a ``/proc/self/mounts`` text, deepest first."""
    root = str(path.resolve())
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        # /proc/mounts escapes spaces and the like as octal (\040).
        point = fields[1].encode().decode("unicode_escape")
        if point == root or point.startswith(root + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def why_not_possible(need_network: bool = True) -> str | None:
    """Why this machine cannot run the arm64 check (None when it can).

    Root, a ``binfmt_misc`` that is mounted or can be, and (for a first run)
    the Debian mirror reachable. The opt-in tests skip with this reason.
    """
    if os.geteuid() != 0:
        return "not root: debootstrap, binfmt_misc and chroot need root"
    if not BINFMT.exists():
        return f"{BINFMT} does not exist: the kernel has no binfmt_misc"
    if not (BINFMT / "register").exists():
        probe = subprocess.run(
            ["unshare", "--mount", "--", "mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            return f"cannot mount binfmt_misc: {probe.stderr.strip() or probe.returncode}"
    if need_network and not _reachable(MIRROR):
        return f"{MIRROR} is not reachable (debootstrap and pip need the network)"
    return None


def _reachable(url: str, timeout: float = 10.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except OSError:
        return False


def _run(cmd: Sequence[str], **kw: object) -> None:
    say("$ " + shlex.join(cmd))
    subprocess.run(list(cmd), check=True, **kw)  # type: ignore[call-overload]


def ensure_host_packages() -> None:
    """apt-get install debootstrap, qemu-user-static and binfmt-support when missing."""
    missing = [pkg for pkg, path in HOST_PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    say(f"installing Debian packages on the host: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
    _run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        env=env,
        stdout=subprocess.DEVNULL,
    )


class Binfmt:
    """``binfmt_misc`` mounted and ``qemu-aarch64`` registered; undone on exit as found.

    A state file in ``.arm64/`` records what this run changed, so that a run
    killed before its cleanup is cleaned up by the next one.
    """

    def __init__(self, state: Path) -> None:
        self.state = state
        self.mounted = False
        self.registered = False

    def _save(self) -> None:
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self.state.write_text(
            json.dumps({"mounted": self.mounted, "registered": self.registered}) + "\n"
        )

    def recover(self) -> None:
        """Take over what a killed earlier run left, so :meth:`undo` removes it."""
        if not self.state.exists():
            return
        try:
            old = json.loads(self.state.read_text())
        except ValueError:
            old = {}
        say(f"an earlier run was interrupted before cleaning up ({old}): taking it over")
        self.mounted = bool(old.get("mounted")) and (BINFMT / "register").exists()
        self.registered = bool(old.get("registered")) and (BINFMT / "qemu-aarch64").exists()

    def setup(self) -> None:
        if not (BINFMT / "register").exists():
            _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
            self.mounted = True
            self._save()
        entry = BINFMT / "qemu-aarch64"
        if entry.exists() and entry.read_text().startswith("enabled"):
            return
        if entry.exists():  # registered but disabled
            entry.write_text("1")
        else:
            done = subprocess.run(
                ["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, check=False
            )
            if done.returncode != 0 or not entry.exists():
                # update-binfmts can fail in a container: write the entry ourselves.
                say("update-binfmts failed; registering qemu-aarch64 directly")
                (BINFMT / "register").write_text(register_line())
        self.registered = True
        self._save()
        say("registered qemu-aarch64 in binfmt_misc")

    def undo(self) -> None:
        entry = BINFMT / "qemu-aarch64"
        if self.registered and entry.exists():
            entry.write_text("-1")  # removes the entry
            say("removed the qemu-aarch64 binfmt_misc entry")
        if self.mounted and (BINFMT / "register").exists():
            subprocess.run(["umount", str(BINFMT)], check=False)
            say(f"unmounted {BINFMT}")
        self.mounted = self.registered = False
        self.state.unlink(missing_ok=True)


def unmount_leftovers(rootfs: Path) -> None:
    """Unmount anything still mounted under the root filesystem (an interrupted debootstrap)."""
    for point in mounts_under(rootfs, Path("/proc/self/mounts").read_text()):
        say(f"unmounting leftover {point}")
        subprocess.run(["umount", "--lazy", point], check=False)


@dataclass(frozen=True)
class Cpu:
    """An emulated Raspberry Pi CPU: qemu's model and the ``/proc/cpuinfo`` a Pi shows.

    qemu-user (Debian bookworm's 7.2) passes the host's ``/proc/cpuinfo``
    through; XNNPACK's cpuinfo library then finds no ARM core in it, and
    with a sysfs mounted it crashes (SIGSEGV), without one it gives up and
    TFLite runs without XNNPACK. So each command sees the cpuinfo of the
    Pi's core instead, matching qemu's model (``QEMU_CPU``) and the hwcaps
    it reports, so XNNPACK picks the kernels it would pick on that Pi.
    """

    name: str
    qemu: str
    features: str
    variant: str
    part: str
    revision: int

    def cpuinfo(self, count: int) -> str:
        """``/proc/cpuinfo`` as arm64 Linux writes it, for ``count`` cores."""
        one = (
            "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {f}\n"
            "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {v}\n"
            "CPU part\t: {p}\nCPU revision\t: {r}\n\n"
        )
        body = "".join(
            one.format(i=i, f=self.features, v=self.variant, p=self.part, r=self.revision)
            for i in range(count)
        )
        return body + f"Model\t\t: {self.name} (emulated)\n"


CPUS = {
    # Raspberry Pi 5: Cortex-A76 (dot product instructions: XNNPACK's int8 sdot kernels).
    "pi5": Cpu(
        "Raspberry Pi 5",
        "cortex-a76",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
        "lrcpc dcpop asimddp",
        "0x4",
        "0xd0b",
        1,
    ),
    # Raspberry Pi 4: Cortex-A72 (plain NEON; no crypto extensions on the Pi's BCM2711).
    "pi4": Cpu("Raspberry Pi 4", "cortex-a72", "fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", 3),
}


@dataclass(frozen=True)
class Chroot:
    """Runs commands inside the arm64 root filesystem, each in its own namespaces.

    ``unshare --mount --pid --fork --kill-child --mount-proc`` gives the
    command a private mount table with a fresh ``/proc`` of its own PID
    namespace: when the command ends, or it or unshare is killed, every
    process inside dies and the namespace and its mounts are gone.
    """

    rootfs: Path
    cpu: Cpu | None = None

    def argv(self, script: str) -> list[str]:
        env = [
            "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME=/root",
            "LANG=C.UTF-8",
            "DEBIAN_FRONTEND=noninteractive",
            "PIP_DISABLE_PIP_VERSION_CHECK=1",
            "PIP_NO_INPUT=1",
            "PIP_DEFAULT_TIMEOUT=120",
            "PYTHONDONTWRITEBYTECODE=1",
        ]
        if self.cpu is not None:
            env.append(f"QEMU_CPU={self.cpu.qemu}")
        inner = shlex.join(["chroot", str(self.rootfs), "/usr/bin/env", "-i", *env])
        # Fresh mounts inside the new namespace (never the host's bound in): a
        # sysfs (XNNPACK's cpuinfo reads the CPU lists there, as on a Pi) and a
        # tmpfs for /dev/shm.
        fake = ""
        if self.cpu is not None:
            info = CACHE / f"cpuinfo-{self.cpu.qemu}"
            info.parent.mkdir(parents=True, exist_ok=True)
            info.write_text(self.cpu.cpuinfo(os.cpu_count() or 1))
            fake = (
                f"mount --bind {shlex.quote(str(info))} "
                f"{shlex.quote(str(self.rootfs / 'proc/cpuinfo'))} && "
            )
        setup = (
            fake + f"mount -t sysfs sysfs {shlex.quote(str(self.rootfs / 'sys'))} && "
            f"mkdir -p {shlex.quote(str(self.rootfs / 'dev/shm'))} && "
            f"mount -t tmpfs -o mode=1777 tmpfs {shlex.quote(str(self.rootfs / 'dev/shm'))} && "
            f'exec {inner} /bin/sh -ec "$0"'
        )
        # --kill-child: if unshare dies (Ctrl-C, SIGKILL of the run), the
        # namespace's first process gets SIGKILL, and with it every process
        # inside; nothing emulated outlives the run.
        return [
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
            f"--mount-proc={self.rootfs / 'proc'}",
            "/bin/sh",
            "-ec",
            setup,
            script,
        ]

    def run(self, script: str, capture: bool = False) -> str:
        """Run a shell script inside; its output is shown (or returned when ``capture``)."""
        lines = [ln.strip() for ln in script.splitlines() if ln.strip()]
        shown = [ln for ln in lines if not ln.startswith(("#", "echo "))] or [""]
        more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
        say(f"inside: {shown[0][:100]}{more}")
        done = subprocess.run(
            self.argv(script),
            check=False,
            stdout=subprocess.PIPE if capture else None,
            text=True,
        )
        if done.returncode != 0:
            raise FacegateError(f"inside arm64 failed (exit {done.returncode}): {script[:200]}")
        return done.stdout or ""


def build_rootfs(rootfs: Path) -> None:
    """debootstrap an arm64 bookworm (foreign; second stage under qemu), once.

    Built in ``rootfs.partial`` and renamed when complete, so an interrupted
    build is started over rather than half-used.
    """
    if (rootfs / "etc" / "facegate-rootfs").exists():
        say(f"reusing the arm64 {SUITE} root filesystem in {rootfs.relative_to(ROOT)}/")
        return
    partial = rootfs.with_name(rootfs.name + ".partial")
    unmount_leftovers(partial)
    if partial.exists():
        shutil.rmtree(partial)
    t0 = time.monotonic()
    say(f"building an arm64 Debian {SUITE} root filesystem (foreign debootstrap, then qemu)")
    _run(
        [
            "debootstrap",
            "--foreign",
            "--arch=arm64",
            "--variant=minbase",
            SUITE,
            str(partial),
            MIRROR,
        ],
        stdout=subprocess.DEVNULL,
    )
    chroot = Chroot(partial)
    # The second stage mounts /proc and /sys itself; inside our namespace they go away with it.
    chroot.run("/debootstrap/debootstrap --second-stage >/dev/null")
    (partial / "etc" / "apt" / "sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
    )
    shutil.copy("/etc/resolv.conf", partial / "etc" / "resolv.conf")
    # The README's apt line (what a Pi owner types), less picamera2.
    chroot.run(
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
        + " ".join(ROOTFS_PACKAGES)
        + " >/dev/null && apt-get clean"
    )
    (partial / "etc" / "facegate-rootfs").write_text(
        f"arm64 Debian {SUITE} for facegate's emulated check; packages: "
        + " ".join(ROOTFS_PACKAGES)
        + "\n"
    )
    if rootfs.exists():
        shutil.rmtree(rootfs)
    partial.rename(rootfs)
    say(f"root filesystem ready ({time.monotonic() - t0:.0f} s)")


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so cleanup runs as for Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- the run inside ----------------------------------------------------------------

RUN_CONFIG = """\
# The arm64 check's config: docs/service.md's /etc/facegate/facegate.toml with
# a folder of photos for a camera and MQTT off (no broker in the check).
# Written by tools/arm64.py.
[device]
id = "arm64-check"

[camera]
source = "folder"
path = "{camera}"

[detector]
model = "{models}/face_detection_short_range.tflite"

[embedder]
model = "{models}/sface_int8.tflite"

[gallery]
path = "{state}/gallery.fgg"
{key_line}

[mqtt]
enabled = false

[service]
state_dir = "{state}"
"""


@dataclass(frozen=True)
class Layout:
    """Where things are, as seen from inside (``inside``) or from the host (``host``)."""

    base: Path

    @property
    def src(self) -> Path:
        return self.base / "src"

    @property
    def models(self) -> Path:
        return self.base / "models"

    @property
    def photos(self) -> Path:
        return self.base / "photos"

    @property
    def out(self) -> Path:
        return self.base / "out"

    def venv(self, runtime: str) -> Path:
        return self.base / f"venv-{runtime}"


def copy_tree_files(files: Sequence[Path], src_root: Path, dest: Path) -> None:
    """Copy ``files`` (paths relative to ``src_root``) into ``dest``, keeping their folders."""
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_root / rel, target)


def checkout_files() -> list[Path]:
    """The checkout's files as git sees them: tracked and untracked, ignored ones left out."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return [Path(p) for p in out.split("\0") if p and (ROOT / p).is_file()]


def model_files(models: Path) -> list[Path]:
    """What a Pi gets from a workstation: the models, their manifests, SFace's license files."""
    keep = []
    for p in sorted(models.iterdir()):
        if p.suffix == ".tflite" and p.with_suffix(".json").exists():
            keep += [p, p.with_suffix(".json")]
        elif p.name.startswith("sface.") and p.suffix == ".txt":
            keep.append(p)
    return keep


def demo_photo_set(dest: Path) -> Path:
    """Without ../shared: variants of the demo's registry photos, one folder per person.

    Each person's photo placed on the demo's 640x480 canvas four times:
    shifted, scaled and re-lit (:func:`edge.demo.place`), written as PNG.
    """
    import cv2

    from edge.demo import demo_photos, place
    from edge.imageio import read_image

    people = {"Grace_Hopper": "grace_hopper", "Eileen_Collins": "astronaut"}
    people["Cameraman"] = "cameraman"
    variants = [(1.0, 0, 0, 1.0), (0.8, -40, 10, 0.8), (0.9, 30, -10, 1.2), (0.7, 0, 30, 0.9)]
    photos = demo_photos()
    for person, role in people.items():
        img = read_image(photos[role])
        zoom = 1.5 if role == "cameraman" else 1.0  # his face is small in the photo
        (dest / person).mkdir(parents=True, exist_ok=True)
        for k, (scale, dx, dy, gain) in enumerate(variants):
            frame = place(img, scale * zoom, dx, dy, gain)
            cv2.imwrite(str(dest / person / f"{k}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return dest


def stage_files(rootfs: Path, photos: Path) -> Layout:
    """Copy the checkout, the x86-built models and the photos into the root filesystem."""
    inside = Layout(rootfs / DEV_ROOT.lstrip("/"))
    for old in (inside.src, inside.models, inside.photos, inside.out):
        if old.exists():
            shutil.rmtree(old)
    copy_tree_files(checkout_files(), ROOT, inside.src)
    models = [p.relative_to(ROOT / "models") for p in model_files(ROOT / "models")]
    copy_tree_files(models, ROOT / "models", inside.models)
    shutil.copytree(photos, inside.photos)
    inside.out.mkdir(parents=True)
    # The host's trust store, for pip behind a TLS-inspecting proxy: public
    # certificates only (the chroot trusts what the host trusts).
    ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if ca.is_file():
        shutil.copy(ca, rootfs / "etc/ssl/host-ca.crt")
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    return inside


def write_config(path: Path, models: Path, camera: Path, state: Path, key_line: str) -> None:
    """The run config at ``path`` (paths as the reader of the config sees them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        RUN_CONFIG.format(
            camera=camera.as_posix(),
            models=models.as_posix(),
            state=state.as_posix(),
            key_line=key_line,
        )
    )


def write_key(path: Path) -> None:
    """A fresh random gallery key, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))


def dependency_stamp() -> str:
    """A digest of pyproject's dependencies and extras: a venv is rebuilt when they change."""
    import hashlib
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {"dependencies": project["dependencies"], "extras": project["optional-dependencies"]}
    return hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()


def install_script(runtime: str, stamp: str) -> str:
    """Install facegate as the README tells a Pi owner: a venv, pip, the runtime's extra."""
    venv = f"{DEV_ROOT}/venv-{runtime}"
    out = f"{DEV_ROOT}/out/{runtime}"
    spec = shlex.quote(f"{DEV_ROOT}/src[{runtime},demo]")
    return f"""
mkdir -p {out}
export PIP_CERT=/etc/ssl/host-ca.crt
[ -f "$PIP_CERT" ] || unset PIP_CERT
if [ "$(cat {venv}/.facegate-stamp 2>/dev/null)" != {shlex.quote(stamp)} ]; then
  rm -rf {venv}
  python3 -m venv --system-site-packages {venv}
  if ! {venv}/bin/pip install {spec} >{out}/pip.log 2>&1; then
    tail -n 25 {out}/pip.log >{out}/pip-error.txt
    exit 3
  fi
  echo {shlex.quote(stamp)} >{venv}/.facegate-stamp
else
  # Dependencies are installed: only this checkout's package is put in again.
  {venv}/bin/pip install --no-deps --force-reinstall {DEV_ROOT}/src >{out}/pip.log 2>&1
fi
{venv}/bin/pip freeze >{out}/pip-freeze.txt
"""


SERVICE_SETUP = """
# docs/service.md, steps 1-5, as a Pi owner types them (less apt's picamera2
# and systemctl: no systemd runs in the check).
id facegate >/dev/null 2>&1 || useradd --system --home-dir /var/lib/facegate \\
    --shell /usr/sbin/nologin --user-group --groups video facegate
install -d -o facegate -g facegate -m 0700 /var/lib/facegate
install -d -m 0755 /etc/facegate
[ -s /etc/facegate/gallery.key ] || \\
    sh -c 'umask 077; head -c 32 /dev/urandom | base64 > /etc/facegate/gallery.key'
chmod 0644 /etc/facegate/facegate.toml
mkdir -p /etc/systemd/system
cp {src}/systemd/facegate.service /etc/systemd/system/
"""


def run_script(runtime: str, enrol: list[tuple[str, str]], probes: list[str]) -> str:
    """Demo, then docs/service.md's enrolment, identify and doctor, with the runtime's venv.

    The unit's ``/opt/facegate/venv`` is a link to the runtime's venv, so its
    ``ExecStart`` exists for the doctor.
    """
    venv = f"{DEV_ROOT}/venv-{runtime}"
    out = f"{DEV_ROOT}/out/{runtime}"
    cfg = "/etc/facegate/facegate.toml"
    gallery = "/var/lib/facegate/gallery.fgg"
    key = "--key-file /etc/facegate/gallery.key"
    lines = [
        SERVICE_SETUP.format(src=f"{DEV_ROOT}/src"),
        f"ln -sfn {venv} {DEV_ROOT}/venv",
        f"mkdir -p {out}",
        f"rm -f {gallery} {gallery}.generation",
        "cd /tmp",
        f"{venv}/bin/python -c "
        + shlex.quote(
            "import json, platform, cv2, numpy\n"
            "from importlib import metadata\n"
            "from edge.vision.runtime import available_runtimes\n"
            "d = {'ai_edge_litert': 'ai-edge-litert', 'tflite_runtime': 'tflite-runtime'}\n"
            "print(json.dumps({'machine': platform.machine(), "
            "'python': platform.python_version(), 'numpy': numpy.__version__, "
            "'opencv': cv2.__version__, 'facegate': metadata.version('facegate'), "
            "'runtimes': {r: metadata.version(d[r]) for r in available_runtimes()}}))"
        )
        + f" >{out}/versions.json",
        "echo '(arm64) facegate demo' >&2",
        f"{venv}/bin/facegate demo --models {DEV_ROOT}/models >{out}/demo.jsonl 2>{out}/demo.err"
        f" || echo $? >{out}/demo.rc",
        f"cd {DEV_ROOT}/photos",
        f"echo '(arm64) facegate enroll ({len(enrol)} people), identify "
        f"({len(probes)} photos)' >&2",
        f": >{out}/enroll.log",
    ]
    for name, photo in enrol:
        lines.append(
            f"{venv}/bin/facegate enroll --config {cfg} {key} --gallery {gallery} "
            f"--name {shlex.quote(name)} {shlex.quote(photo)} >>{out}/enroll.log 2>&1"
            f" || echo 'exit '$? >>{out}/enroll.log"
        )
    lines += [
        f"chown facegate:facegate {gallery}",
        f"{venv}/bin/facegate identify --config {cfg} {key} --gallery {gallery} "
        + " ".join(shlex.quote(p) for p in probes)
        + f" >{out}/identify.jsonl 2>{out}/identify.err || echo $? >{out}/identify.rc",
        "cd /tmp",
        "echo '(arm64) facegate doctor' >&2",
        f"{venv}/bin/facegate doctor --config {cfg} >{out}/doctor.txt 2>{out}/doctor.err"
        f" && echo 0 >{out}/doctor.rc || echo $? >{out}/doctor.rc",
    ]
    return "\n".join(lines) + "\n"


def probe_script(runtime: str, cpu: str) -> str:
    venv = f"{DEV_ROOT}/venv-{runtime}"
    out = f"{DEV_ROOT}/out/{runtime}"
    return (
        "cd /tmp\n"
        f"echo '(arm64) embeddings of the photo set, {runtime}, {cpu}' >&2\n"
        f"{venv}/bin/python {DEV_ROOT}/src/tools/arm64_probe.py --models {DEV_ROOT}/models "
        f"--photos {DEV_ROOT}/photos --crops {DEV_ROOT}/out/x86.npz "
        f"--runtime {RUNTIMES[runtime]} --out {out}/probe-{cpu}.npz 2>{out}/probe-{cpu}.log\n"
    )


# -- the host's side: x86 reference, comparison, report ------------------------------


def x86_identify(photos: Path, work: Path, enrol: list[tuple[str, str]], probes: list[str]) -> Path:
    """The same enrolment and ``facegate identify`` on this machine (x86, its runtime)."""
    base = work / "x86"
    state = base / "state"
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    cfg, key = base / "facegate.toml", base / "gallery.key"
    write_config(
        cfg, ROOT / "models", photos / person_of(enrol[0][1]), state, f'key_file = "{key}"'
    )
    write_key(key)
    facegate = [sys.executable, "-m", "edge"]
    gallery = state / "gallery.fgg"
    with (base / "enroll.log").open("w") as log:
        for name, photo in enrol:
            cmd = ["enroll", "--config", str(cfg), "--gallery", str(gallery), "--name", name, photo]
            subprocess.run([*facegate, *cmd], cwd=photos, stdout=log, stderr=log, check=False)
    out = base / "identify.jsonl"
    with out.open("w") as f:
        cmd = ["identify", "--config", str(cfg), "--gallery", str(gallery), *probes]
        subprocess.run(
            [*facegate, *cmd], cwd=photos, stdout=f, stderr=subprocess.DEVNULL, check=False
        )
    return out


def read_identify(path: Path) -> dict[str, list[tuple[str | None, float]]]:
    """``facegate identify`` output: per image, each face's (name, distance)."""
    res: dict[str, list[tuple[str | None, float]]] = {}
    if not path.exists():
        return res
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        res[str(d["image"])] = [(f["name"], float(f["distance"])) for f in d["faces"]]
    return res


def identify_agreement(
    ref: dict[str, list[tuple[str | None, float]]], other: dict[str, list[tuple[str | None, float]]]
) -> tuple[int, int, float, list[str]]:
    """(images whose names agree, images, largest distance change, disagreements)."""
    agree, worst, notes = 0, 0.0, []
    for image, faces in sorted(ref.items()):
        mine = other.get(image)
        if mine is not None and [n for n, _ in mine] == [n for n, _ in faces]:
            agree += 1
            for (_, a), (_, b) in zip(faces, mine, strict=True):
                worst = max(worst, abs(a - b))
        else:
            notes.append(f"{image}: x86 {faces}, arm64 {mine}")
    for image in sorted(set(other) - set(ref)):
        notes.append(f"{image}: only arm64 answered: {other[image]}")
    return agree, len(ref), worst, notes


@dataclass
class Outcome:
    """What one runtime did inside (or why it could not)."""

    runtime: str
    installed: bool
    error: str = ""
    versions: dict[str, object] | None = None
    demo: list[str] | None = None
    demo_err: str = ""
    identify: str = ""
    doctor: str = ""
    doctor_rc: int | None = None


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def collect(inside: Layout, runtime: str) -> Outcome:
    out = inside.out / runtime
    err = _text(out / "pip-error.txt")
    if err:
        return Outcome(runtime, False, err)
    o = Outcome(runtime, True)
    v = _text(out / "versions.json").strip()
    o.versions = json.loads(v) if v else None
    o.demo = [ln for ln in _text(out / "demo.jsonl").splitlines() if ln.strip()]
    o.demo_err = _text(out / "demo.err")
    o.doctor = _text(out / "doctor.txt")
    rc = _text(out / "doctor.rc").strip()
    o.doctor_rc = int(rc) if rc else None
    return o


def photo_set(arg: Path | None, work: Path) -> tuple[Path, str]:
    """The fixed photo set and a description: ``--photos``, ../shared/faces, or the demo's."""
    if arg is not None:
        return arg.resolve(), f"{arg}"
    shared = Path(os.environ.get("FACEGATE_SHARED") or ROOT.parent / "shared") / "faces"
    if shared.is_dir():
        return shared.resolve(), "../shared/faces"
    dest = work / "demo-photos"
    if dest.exists():
        shutil.rmtree(dest)
    return demo_photo_set(dest), "variants of the demo's registry photos"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/arm64.sh", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rootfs-only", action="store_true", help="build (or check) the root filesystem only"
    )
    p.add_argument("--rebuild", action="store_true", help="build the root filesystem afresh")
    p.add_argument(
        "--runtimes",
        nargs="+",
        choices=sorted(RUNTIMES),
        default=["litert", "tflite"],
        help="the venvs to install and run (default: both)",
    )
    p.add_argument(
        "--cpus",
        nargs="+",
        choices=sorted(CPUS),
        default=["pi5", "pi4"],
        help="emulated CPUs for the embedding comparison (the demo, identify and doctor run "
        "on the first)",
    )
    p.add_argument("--photos", type=Path, help="photo set, Person/photo (default: ../shared/faces)")
    p.add_argument(
        "--report", type=Path, default=ROOT / "reports" / "arm64", help="folder for the report"
    )
    return p.parse_args(argv)


EMBEDDER_STEMS = ("sface_int8", "facenet_int8")


@dataclass
class Result:
    """Everything the run found, for the printout and the JSON report."""

    photos: str
    outcomes: list[Outcome]
    rows: list[Row]
    cli: dict[str, tuple[int, int, float, list[str]]]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Some runtime installed, every one that did shows a recognized demo event,
        and every comparison meets its targets."""
        ok = [o for o in self.outcomes if o.installed]
        demo_ok = all(any('"type":"recognized"' in e for e in (o.demo or [])) for o in ok)
        return bool(ok) and demo_ok and bool(self.rows) and all(r.passed for r in self.rows)


@dataclass(frozen=True)
class Reference:
    """x86's side: its probe (in ``work``), the identify split and x86's identify output."""

    enrol: list[tuple[str, str]]
    probes: list[str]
    identify: dict[str, list[tuple[str | None, float]]]


def x86_reference(photos: Path, work: Path, inside: Layout) -> Reference:
    """Embeddings of the photo set on this machine, and the same enroll + identify here."""
    import numpy as np

    from tools.arm64_probe import probe

    say("x86: embeddings of the photo set (the reference, this machine's runtime)")
    ref = probe(ROOT / "models", photos)
    np.savez_compressed(inside.out / "x86.npz", **ref)
    shutil.copy(inside.out / "x86.npz", work / "x86.npz")
    names = tuple(str(p) for p in ref["photos"])
    split = identify_split(names)
    enrol = [(person_of(names[i]), names[i]) for i in split.enrol]
    probes = [names[i] for i in split.probes]
    say(f"x86: facegate enroll ({len(enrol)} people) and identify ({len(probes)} photos)")
    return Reference(enrol, probes, read_identify(x86_identify(photos, work, enrol, probes)))


def run_inside(rt: str, cpus: list[str], rootfs: Path, inside: Layout, ref: Reference) -> Outcome:
    """One runtime: install its venv, run demo/enroll/identify/doctor, probe on each CPU.

    The demo, identify and doctor run on the first of ``cpus``.
    """
    main_cpu = CPUS[cpus[0]]
    say(f"installing facegate[{rt},demo] in a venv inside, as the README says")
    try:
        Chroot(rootfs, main_cpu).run(install_script(rt, dependency_stamp()))
    except FacegateError:
        outcome = collect(inside, rt)
        say(f"{rt} did not install inside:\n{outcome.error}")
        return outcome
    Chroot(rootfs, main_cpu).run(run_script(rt, ref.enrol, ref.probes))
    for cpu in cpus:
        Chroot(rootfs, CPUS[cpu]).run(probe_script(rt, cpu))
    return collect(inside, rt)


def compare_all(
    outcomes: list[Outcome], cpus: list[str], work: Path, inside: Layout, ref: Reference
) -> tuple[list[Row], dict[str, tuple[int, int, float, list[str]]]]:
    """Every installed runtime's probes against x86's, and its identify output against x86's."""
    from edge.vision.manifest import load_manifest

    rows: list[Row] = []
    cli: dict[str, tuple[int, int, float, list[str]]] = {}
    for o in outcomes:
        if not o.installed:
            continue
        module = RUNTIMES[o.runtime]
        found = (o.versions or {}).get("runtimes")
        version = str(found.get(module, "?")) if isinstance(found, dict) else "?"
        cli[o.runtime] = identify_agreement(
            ref.identify, read_identify(inside.out / o.runtime / "identify.jsonl")
        )
        for stem in EMBEDDER_STEMS:
            manifest = load_manifest(ROOT / "models" / f"{stem}.tflite")
            ref_probe = load_probe(work / "x86.npz", stem)
            for cpu in cpus:
                other = load_probe(inside.out / o.runtime / f"probe-{cpu}.npz", stem)
                rows.append(compare(ref_probe, other, manifest, stem, f"{module} {version}", cpu))
    return rows, cli


def run_checks(args: argparse.Namespace, rootfs: Path) -> Result:
    """Stage the files, install each runtime's venv, run everything inside, compare."""
    work = CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    photos, what = photo_set(args.photos, work)
    say(f"photo set: {what} ({photos})")
    inside = stage_files(rootfs, photos)
    dev = Layout(Path(DEV_ROOT))
    ref = x86_reference(photos, work, inside)
    write_config(
        rootfs / "etc" / "facegate" / "facegate.toml",
        dev.models,
        dev.photos / person_of(ref.enrol[0][1]),
        Path("/var/lib/facegate"),
        'key_credential = "gallery-key"',
    )
    outcomes = [run_inside(rt, args.cpus, rootfs, inside, ref) for rt in args.runtimes]
    rows, cli = compare_all(outcomes, args.cpus, work, inside, ref)
    return Result(what, outcomes, rows, cli)


def render(res: Result, rootfs_python: str) -> str:
    """The end of the run's output: per runtime the demo's events, identify, doctor; the table."""
    out = [
        f"== arm64 Debian bookworm ({rootfs_python}) under qemu-user; photo set: {res.photos} =="
    ]
    for o in res.outcomes:
        if not o.installed:
            out.append(f"-- {o.runtime}: pip install failed:\n{o.error.rstrip()}")
            continue
        v = o.versions or {}
        out.append(
            f"-- {o.runtime}: {v.get('machine')} Python {v.get('python')}, numpy {v.get('numpy')}, "
            f"opencv {v.get('opencv')}, runtimes {v.get('runtimes')}"
        )
        out.append("facegate demo (events printed by arm64 Python):")
        out.extend(o.demo or ["(no events)"])
        out.extend(
            ln for ln in o.demo_err.splitlines() if ln.startswith(("demo:", "facegate: error"))
        )
        agree, total, worst, notes = res.cli.get(o.runtime, (0, 0, 0.0, []))
        out.append(
            f"facegate identify (SFace, the CLI): {agree}/{total} images name the same people "
            f"as on x86; largest distance change {worst:.4f}"
        )
        out.extend(f"  differs: {n}" for n in notes)
        if o.doctor:
            out.append(f"facegate doctor (exit {o.doctor_rc}):")
            out.extend("  " + ln for ln in o.doctor.rstrip().splitlines())
    out.append("")
    out.append("int8 embeddings, arm64 against x86 (same code, same photos):")
    out.append(table(res.rows) if res.rows else "(no runtime installed: nothing to compare)")
    return "\n".join(out)


def write_report(res: Result, text: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "arm64.txt").write_text(text + "\n")
    data = {
        "photos": res.photos,
        "seconds": res.seconds,
        "passed": res.passed,
        "outcomes": [o.__dict__ for o in res.outcomes],
        "rows": [r.to_json() for r in res.rows],
        "identify_cli": {k: list(v) for k, v in res.cli.items()},
    }
    (folder / "arm64.json").write_text(json.dumps(data, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rootfs = CACHE / "rootfs"
    why = why_not_possible(need_network=not (rootfs / "etc" / "facegate-rootfs").exists())
    if why:
        raise FacegateError(why)
    ensure_host_packages()
    binfmt = Binfmt(CACHE / "binfmt-state.json")
    t0 = time.monotonic()
    res: Result | None = None
    with signals_raise():
        binfmt.recover()
        try:
            binfmt.setup()
            unmount_leftovers(rootfs)
            if args.rebuild and rootfs.exists():
                shutil.rmtree(rootfs)
            build_rootfs(rootfs)
            python = Chroot(rootfs).run("python3 --version", capture=True).strip()
            if not args.rootfs_only:
                res = run_checks(args, rootfs)
        finally:
            binfmt.undo()
            unmount_leftovers(rootfs)
    if res is None:
        say(f"root filesystem ready ({python}); done in {time.monotonic() - t0:.0f} s")
        return 0
    res.seconds = time.monotonic() - t0
    text = (
        render(res, python) + f"\n\nthe whole run took {res.seconds / 60:.1f} min on this machine"
    )
    write_report(res, text, args.report)
    print(text)
    say(f"report: {args.report}/arm64.txt, arm64.json")
    return 0 if res.passed else 1


if __name__ == "__main__":
    from tools._common import run_tool

    sys.exit(run_tool("arm64", main))
