"""``facegate doctor [--config C]``: is this device ready? One line per check.

Each check is a small function of the config and a :class:`System` (what it
reads of the machine: paths, the clock, the service user; tests replace
parts of it). It returns :class:`Check` lines, each ``pass``, ``warn`` or
``fail`` with a one-line fix; the command exits 1 when any line fails.
Nothing is changed on the machine: the gallery is opened from a temporary
copy (loading a gallery may raise its generation mark), the broker gets one
MQTT CONNECT under a client id of its own (never the service's, which would
disconnect it), the door's pins are not touched (``facegate door test``
does that).

Checks, in order: Python; the TFLite runtime; the models against their
manifests; the camera delivers a frame; the clock is NTP-synchronised; the
secret files (gallery key, MQTT password, ...) readable by the service user
and not by everyone; the broker reachable with TLS as configured; free disk
for the outbox and the audit log; GPIO access for the door pins; the
systemd unit installed; the gallery's model hash matches the embedder.
Feature modules are imported inside the checks, so a missing optional
package fails its own check, not the command.
"""

from __future__ import annotations

import grp
import os
import platform
import pwd
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edge.errors import FacegateError

if TYPE_CHECKING:
    from edge.config import Config, SecretRef
    from edge.identity.gallery import Gallery
    from edge.vision.manifest import Manifest

Status = Literal["pass", "warn", "fail"]

SERVICE = "facegate.service"
UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)
DEFAULT_USER = "facegate"
# Space the outbox and the audit log can take at their configured row limits,
# per row: an event payload is 0.4-0.7 kB (1 kB signed), an audit row ~0.3 kB;
# with SQLite's page and index overhead, twice that is a safe bound.
OUTBOX_ROW_BYTES = 2048
AUDIT_ROW_BYTES = 1024
# Room the rest of the system needs beside them (journal, apt) before it warns.
DISK_HEADROOM_BYTES = 256 << 20


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    message: str
    fix: str = ""

    def line(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix and self.status != "pass" else ""
        return f"{self.status.upper():<4}  {self.name}: {self.message}{fix}"


def _pass(name: str, message: str) -> Check:
    return Check(name, "pass", message)


def _warn(name: str, message: str, fix: str) -> Check:
    return Check(name, "warn", message, fix)


def _fail(name: str, message: str, fix: str) -> Check:
    return Check(name, "fail", message, fix)


# -- the machine, as the checks see it -------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """The installed systemd unit: its file and the [Service] settings (drop-ins applied)."""

    path: Path
    settings: dict[str, list[str]]

    def get(self, key: str, default: str = "") -> str:
        values = self.settings.get(key)
        return values[-1] if values else default

    def all(self, key: str) -> list[str]:
        return self.settings.get(key, [])

    def credential_source(self, name: str) -> Path | None:
        """The file ``LoadCredential=name:/path`` hands over as credential ``name``."""
        for entry in self.all("LoadCredential") + self.all("LoadCredentialEncrypted"):
            cred, _, source = entry.partition(":")
            if cred.strip() == name and source.strip():
                return Path(source.strip())
        return None


def parse_unit(text: str, settings: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The ``[Service]`` section's ``Key=Value`` lines, values per key in order.

    An empty assignment (``Key=``) resets the list, as systemd does; comments
    and other sections are skipped; continuation lines are not used by the
    shipped unit and are read as plain lines.
    """
    out = {k: list(v) for k, v in (settings or {}).items()}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Service" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if value:
            out.setdefault(key, []).append(value)
        else:
            out[key] = []
    return out


@dataclass(frozen=True)
class ServiceUser:
    """Who the service runs as: the unit's ``User=``, else ``facegate``, else whoever runs this."""

    name: str
    uid: int
    gids: frozenset[int]
    note: str = ""

    def can(self, path: Path, want: int) -> bool:
        """Whether this user gets ``want`` (``os.R_OK | os.W_OK | os.X_OK`` bits) on ``path``.

        The classic owner/group/other mode bits (root gets everything); ACLs
        are not read.
        """
        st = os.stat(path)
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid in self.gids:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return bits & want == want

    def blocker(self, path: Path, want: int) -> Path | None:
        """The folder on the way this user cannot enter, or ``path`` itself when it lacks
        ``want`` on it; None when it gets through."""
        path = Path(os.path.abspath(path))
        for parent in reversed(path.parents):
            if not self.can(parent, os.X_OK):
                return parent
        return None if self.can(path, want) else path

    def reach(self, path: Path, want: int) -> str | None:
        """Why this user cannot get ``want`` on ``path`` (a folder on the way, or the file)."""
        block = self.blocker(path, want)
        if block is None:
            return None
        if block != Path(os.path.abspath(path)):
            return f"{self.name} cannot enter {block}"
        return f"{self.name} cannot {'write' if want & os.W_OK else 'read'} {block}"


def service_user(unit: Unit | None, name: str | None = None) -> ServiceUser:
    """The service's user and groups (the unit's ``SupplementaryGroups=`` included)."""
    wanted = name or (unit.get("User") if unit else "") or DEFAULT_USER
    try:
        pw = pwd.getpwnam(wanted)
    except KeyError:
        pw = pwd.getpwuid(os.geteuid())
        note = f"user {wanted!r} does not exist here: checked for {pw.pw_name!r}"
        wanted = pw.pw_name
    else:
        note = ""
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if wanted in g.gr_mem}
    for group in unit.all("SupplementaryGroups") if unit else []:
        for g in group.split():
            try:
                gids.add(grp.getgrnam(g).gr_gid)
            except KeyError:
                continue
    return ServiceUser(wanted, pw.pw_uid, frozenset(gids), note)


@dataclass(frozen=True)
class System:
    """What the checks read of the machine; tests replace fields."""

    unit_dirs: tuple[Path, ...] = UNIT_DIRS
    user: str | None = None
    clock_state: Callable[[], int | None] | None = None
    now: Callable[[], float] = time.time
    gpio_chips: Callable[[], list[Path]] = field(
        default=lambda: sorted(Path("/dev").glob("gpiochip*"))
    )
    camera_timeout_s: float = 10.0
    broker_timeout_s: float = 5.0
    config_path: Path | None = None

    def unit(self) -> Unit | None:
        """The installed ``facegate.service`` (first of :attr:`unit_dirs`) with its drop-ins."""
        for d in self.unit_dirs:
            path = d / SERVICE
            if path.is_file():
                settings = parse_unit(path.read_text(errors="replace"))
                for drop in sorted((d / f"{SERVICE}.d").glob("*.conf")):
                    settings = parse_unit(drop.read_text(errors="replace"), settings)
                return Unit(path, settings)
        return None


@dataclass(frozen=True)
class Context:
    cfg: Config
    system: System
    unit: Unit | None
    user: ServiceUser

    @property
    def config_arg(self) -> str:
        return str(self.system.config_path) if self.system.config_path else "CONFIG"


# -- the checks ------------------------------------------------------------------------


def _unreadable(ctx: Context, path: Path, what: str) -> Check | None:
    """A fail line when the service user cannot read ``path`` (a folder on the way, or it)."""
    why = ctx.user.reach(path, os.R_OK)
    if why is None:
        return None
    block = ctx.user.blocker(path, os.R_OK)
    fix = (
        f"sudo chmod o+x {block} (it holds no secret; the secrets stay 0600)"
        if block != Path(os.path.abspath(path))
        else f"sudo chmod o+r {path}"
    )
    return _fail(what, f"{why}: the service runs as {ctx.user.name}", fix)


def check_config_file(ctx: Context) -> list[Check]:
    """The service user can read the config (it holds no secret: 0644 in a 0755 folder)."""
    path = ctx.system.config_path
    if path is None:
        return []
    bad = _unreadable(ctx, path, "config")
    note = f" ({ctx.user.note})" if ctx.user.note else ""
    return [bad] if bad else [_pass("config", f"{path} readable by {ctx.user.name}{note}")]


def check_python(ctx: Context) -> list[Check]:
    v = sys.version_info
    where = f"Python {platform.python_version()} on {platform.machine()} ({sys.executable})"
    if v < (3, 11):
        return [_fail("python", where, "install Python 3.11 or newer (Raspberry Pi OS bookworm)")]
    return [_pass("python", where)]


def check_runtime(ctx: Context) -> list[Check]:
    """Which TFLite runtime the embedder will load (the configured or the first installed)."""
    from importlib import metadata

    import numpy as np

    from edge.vision.runtime import resolve_runtime

    fix = "pip install ai-edge-litert (or 'tflite-runtime==2.14.*' 'numpy<2')"
    try:
        name = resolve_runtime(ctx.cfg.embedder.runtime)
    except FacegateError as e:
        return [_fail("runtime", str(e), fix)]
    except Exception as e:  # a runtime that imports but cannot load (numpy ABI)
        return [_fail("runtime", f"{ctx.cfg.embedder.runtime}: {e}", fix)]
    dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}[name]
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = "?"
    forced = ctx.cfg.embedder.runtime
    what = f"{name} {version} (numpy {np.__version__}; embedder.runtime = {forced!r})"
    if name == "tflite_runtime" and int(np.__version__.split(".")[0]) >= 2:
        return [
            _fail("runtime", what + ": tflite_runtime 2.14 needs numpy<2", "pip install 'numpy<2'")
        ]
    out = [_pass("runtime", what)]
    if ctx.cfg.embedder.edgetpu:
        from edge.vision.runtime import EDGETPU_LIB, _import_runtime

        _, load_delegate = _import_runtime(name)
        try:
            load_delegate(EDGETPU_LIB)
        except (OSError, ValueError, RuntimeError) as e:
            out.append(
                _warn(
                    "edgetpu",
                    f"embedder.edgetpu = true, but {EDGETPU_LIB} does not load ({e}): "
                    "the CPU runs the model",
                    "install libedgetpu1-std from Coral's apt repository and plug the Coral in",
                )
            )
        else:
            out.append(_pass("edgetpu", f"{EDGETPU_LIB} loads"))
    return out


def _model_fix(path: Path) -> str:
    return (
        f"copy {path.name} and {path.with_suffix('.json').name} from a workstation's models/ "
        f"(bash tools/setup.sh builds them) to {path.parent}/"
    )


def check_models(ctx: Context) -> list[Check]:
    """Both models load and match their manifests (sha256, input shape, dtype, quantisation)."""
    from edge.vision.detector import FaceDetector
    from edge.vision.embedder import Embedder

    cfg = ctx.cfg
    out = []
    for what, key, loader in (
        ("detector", cfg.detector.model, FaceDetector.load),
        ("embedder", cfg.embedder.model, Embedder.load),
    ):
        path = cfg.model_path(key)
        name = f"model {what}"
        if not path.exists():
            out.append(_fail(name, f"{path} is missing", _model_fix(path)))
            continue
        try:
            model = loader(path, runtime=cfg.embedder.runtime, num_threads=1)
        except FacegateError as e:
            out.append(_fail(name, str(e), _model_fix(path)))
            continue
        m = model.manifest
        bad = next(
            (c for p in (path, m.path) if p and (c := _unreadable(ctx, Path(p), name))), None
        )
        if bad is not None:
            out.append(bad)
            continue
        cal = " (calibrated)" if m.calibration else ""
        out.append(_pass(name, f"{path} matches its manifest{cal}, sha256 {m.sha256[:12]}..."))
    return out


def check_liveness(ctx: Context) -> list[Check]:
    """The face mesh loads (when liveness is on); a door without ``mode = "require"`` warns."""
    from edge.liveness.mesh import FaceMesh

    cfg = ctx.cfg
    lv = cfg.liveness
    if lv.mode == "off":
        if cfg.door.enabled:
            msg = "liveness is off: a photo of an enrolled person opens this door"
            return [_warn("liveness", msg, 'set [liveness] mode = "require" (docs/liveness.md)')]
        return [_pass("liveness", "off")]
    path = cfg.model_path(lv.model)
    if not path.exists():
        return [_fail("liveness", f"{path} is missing", _model_fix(path))]
    try:
        FaceMesh.load(path, runtime=cfg.embedder.runtime, num_threads=1)
    except FacegateError as e:
        return [_fail("liveness", str(e), _model_fix(path))]
    if cfg.door.enabled and lv.mode != "require":
        return [_warn("liveness", f"mode {lv.mode!r}: the door opens for a photo of an "
                      "enrolled person", 'set [liveness] mode = "require" on a door '
                      "(docs/liveness.md: what it costs live visitors)")]  # fmt: skip
    return [_pass("liveness", f"mode {lv.mode!r}, face mesh {path.name} matches its manifest")]


CAMERA_FIX = {
    "picamera2": "stop the service first if it runs (it holds the camera); check the ribbon "
    "cable and `rpicam-hello --list-cameras`; install python3-picamera2 with apt and make "
    "the venv with --system-site-packages",
    "opencv": "stop the service first if it runs (it holds the camera); check camera.uri "
    "(a USB index such as 0, or an rtsp:// URL) and `v4l2-ctl --list-devices`",
    "folder": "put readable images into camera.path",
    "fake": "camera.source = 'fake' always delivers: report a bug",
}


def check_camera(ctx: Context) -> list[Check]:
    """The configured source opens and delivers one frame within the timeout."""
    from edge.sources import open_source

    cfg = ctx.cfg
    src_name = cfg.camera.source
    fix = CAMERA_FIX.get(src_name, "check [camera]")
    result: dict[str, object] = {}

    def grab() -> None:
        try:
            source = open_source(cfg)
            source.open()
            try:
                end = time.monotonic() + ctx.system.camera_timeout_s
                while time.monotonic() < end:
                    frame = source.read(min(1.0, max(0.05, end - time.monotonic())))
                    if frame is not None:
                        result["frame"] = frame.image.shape
                        return
                    if getattr(source, "exhausted", False):
                        break
            finally:
                source.close()
        except Exception as e:  # report any camera failure as the check's result
            result["error"] = e

    t = threading.Thread(target=grab, name="doctor-camera", daemon=True)
    t.start()
    t.join(ctx.system.camera_timeout_s + 5.0)
    name = f"camera ({src_name})"
    if "frame" in result:
        shape = result["frame"]
        assert isinstance(shape, tuple)
        return [_pass(name, f"delivered a {shape[1]}x{shape[0]} frame")]
    if "error" in result:
        return [_fail(name, f"cannot read a frame: {result['error']}", fix)]
    return [_fail(name, f"no frame within {ctx.system.camera_timeout_s:g} s", fix)]


def check_clock(ctx: Context) -> list[Check]:
    """The kernel's clock state (what ``timedatectl`` shows) and a plausible date."""
    from edge.clock import adjtimex_state, clock_synced

    state = ctx.system.clock_state or adjtimex_state
    now = ctx.system.now()
    fix = "enable NTP: sudo timedatectl set-ntp true (and let the Pi reach a time server)"
    if clock_synced(now, state):
        if state() is None:
            return [_warn("clock", "the kernel's sync state is unavailable here", fix)]
        return [_pass("clock", "NTP-synchronised")]
    door = ctx.cfg.door
    if door.enabled and door.schedule:
        return [
            _fail(
                "clock",
                "not synchronised: the door's schedule denies everyone until it is",
                fix,
            )
        ]
    return [_warn("clock", "not synchronised: events say clock_synced false", fix)]


def _secrets(cfg: Config) -> list[SecretRef]:
    refs = [cfg.gallery.key]
    if cfg.mqtt.enabled:
        refs.append(cfg.mqtt.password)
    if cfg.door.enabled and cfg.door.remote_unlock:
        refs.append(cfg.door.remote_key)
    if cfg.camera.password.configured:
        refs.append(cfg.camera.password)
    if cfg.events.sign_key.configured:
        refs.append(cfg.events.sign_key)
    if cfg.fleet.enabled:
        refs.append(cfg.fleet.site_key)
    if cfg.fleet.signing_key.configured:  # the admin machine's private key
        refs.append(cfg.fleet.signing_key)
    if cfg.review.keep_unknown and cfg.review.key.configured:  # the unknown visitors' ring
        refs.append(cfg.review.key)
    if cfg.review.enrol_command:  # enrolling at the door grants access
        refs.append(cfg.review.enrol_key)
    return refs


def secret_path(ctx: Context, ref: SecretRef) -> tuple[Path | None, str]:
    """The file a secret comes from: ``*_file``, or the unit's ``LoadCredential=`` source.

    Returns (path or None, how it reaches the service: "file" or "credential").
    """
    if ref.file:
        return ctx.cfg.resolve(ref.file), "file"
    if ref.credential:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir:
            return Path(cred_dir) / ref.credential, "credential"
        if ctx.unit is not None:
            return ctx.unit.credential_source(ref.credential), "credential"
    return None, "credential"


def _no_secret_file(ctx: Context, ref: SecretRef) -> Check:
    """The line for a secret without a file to check: unset, or a credential nobody hands over."""
    name = ref.key
    if not ref.configured:
        if ref.key == "gallery.key":
            return _warn(
                name,
                "no key: the gallery is stored unencrypted",
                "head -c 32 /dev/urandom | sudo tee /etc/facegate/gallery.key >/dev/null; "
                "set gallery.key_credential (docs/service.md)",
            )
        return _pass(name, "not configured")
    if ctx.unit is None:
        return _warn(
            name,
            f"credential {ref.credential!r}: the unit that hands it over is not installed",
            "install the systemd unit (docs/service.md), or use a *_file",
        )
    return _fail(
        name,
        f"credential {ref.credential!r} is not in the unit's LoadCredential=",
        f"add LoadCredential={ref.credential}:/etc/facegate/{ref.credential} to the unit",
    )


def _unreadable_secret(ctx: Context, ref: SecretRef, path: Path) -> Check | None:
    """A fail line when the service user cannot read a ``*_file`` secret itself."""
    why = ctx.user.reach(path, os.R_OK)
    if why is None:
        return None
    block = ctx.user.blocker(path, os.R_OK)
    user = ctx.user.name
    fix = (
        f"sudo chown {user} {path} && sudo chmod 600 {path}"
        if block == Path(os.path.abspath(path))
        else f"sudo chgrp {user} {block} && sudo chmod g+x {block}"
    )
    return _fail(ref.key, f"{why} (the service reads {ref.key}_file itself)", fix)


def _check_secret(ctx: Context, ref: SecretRef) -> Check:
    """One secret: a regular file, not world-readable, long enough, readable by its reader."""
    name = ref.key
    path, how = secret_path(ctx, ref)
    if not ref.configured or path is None:
        return _no_secret_file(ctx, ref)
    try:
        st = os.stat(path)
    except OSError as e:
        return _fail(name, f"{path}: {e.strerror}", f"create {path} (chmod 600)")
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return _fail(name, f"{path} is not a regular file", f"put the secret in a file at {path}")
    if mode & 0o007:
        return _fail(
            name,
            f"{path} is world-{'readable' if mode & 0o004 else 'accessible'} (mode {mode:04o})",
            f"sudo chmod 600 {path}",
        )
    if how == "file" and (bad := _unreadable_secret(ctx, ref, path)) is not None:
        return bad
    if ref.min_bytes and st.st_size < ref.min_bytes:
        return _fail(
            name,
            f"{path} holds {st.st_size} bytes, at least {ref.min_bytes} needed",
            f"head -c 32 /dev/urandom | sudo tee {path} >/dev/null",
        )
    where = "handed over by systemd" if how == "credential" else f"read by {ctx.user.name}"
    note = f" ({ctx.user.note})" if ctx.user.note and how == "file" else ""
    if mode & 0o040:
        return _warn(
            name,
            f"{path}: group-readable, mode {mode:04o}, {where}{note}",
            f"sudo chmod 600 {path}",
        )
    return _pass(name, f"{path}: mode {mode:04o}, {where}{note}")


def check_secrets(ctx: Context) -> list[Check]:
    """Each configured secret: there, not world-readable, readable by whoever reads it."""
    out = [_check_secret(ctx, ref) for ref in _secrets(ctx.cfg)]
    m = ctx.cfg.mqtt
    if m.enabled and m.tls and m.tls_key_file:
        from edge.config import SecretRef

        out.append(_check_secret(ctx, SecretRef("mqtt.tls_key", file=m.tls_key_file)))
    return out


def _read_secret_file(ctx: Context, ref: SecretRef) -> bytes | None:
    path, _ = secret_path(ctx, ref)
    if path is None:
        return None
    try:
        return path.read_bytes().rstrip(b"\r\n")
    except OSError:
        return None


def mqtt_connect_packet(client_id: str, username: str = "", password: bytes | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT packet (clean session, keepalive 10 s).

    Fixed header ``0x10`` and the remaining length (base-128 varint), then the
    protocol name ``MQTT``, level 4, the flags (0x02 clean session, 0x80
    user name, 0x40 password), the keepalive, and the payload: client id,
    user name, password, each a 2-byte length and its bytes.
    """

    def s(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    flags = 0x02 | (0x80 if username else 0) | (0x40 if username and password is not None else 0)
    body = s(b"MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big") + s(client_id.encode())
    if username:
        body += s(username.encode())
        if password is not None:
            body += s(password)
    n, length = len(body), b""
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return b"\x10" + length + body


CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


class _Refused(Exception):
    """A broker step failed: carries the report line."""

    def __init__(self, check: Check) -> None:
        super().__init__(check.message)
        self.check = check


def _tls(ctx: Context, raw: socket.socket, where: str, fix: str) -> socket.socket:
    """``raw`` wrapped in TLS as the service sets it up: CA, client certificate, host name."""
    import ssl

    cfg, m = ctx.cfg, ctx.cfg.mqtt
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if m.tls_ca_file:
            tls.load_verify_locations(cafile=str(cfg.resolve(m.tls_ca_file)))
        else:
            tls.load_default_certs()
        if m.tls_cert_file:
            tls.load_cert_chain(str(cfg.resolve(m.tls_cert_file)), str(cfg.resolve(m.tls_key_file)))
    except (OSError, ssl.SSLError, ValueError) as e:
        raise _Refused(
            _fail("broker", f"cannot set up TLS ({e})", "check mqtt.tls_ca_file, tls_cert_file")
        ) from None
    try:
        return tls.wrap_socket(raw, server_hostname=m.host)
    except (ssl.SSLError, ssl.CertificateError) as e:
        raise _Refused(
            _fail(
                "broker",
                f"TLS handshake with {where} failed ({e})",
                "mqtt.tls_ca_file must be the CA that signed the broker's certificate, "
                "whose name must match mqtt.host",
            )
        ) from None
    except OSError as e:
        raise _Refused(_fail("broker", f"TLS handshake with {where} failed ({e})", fix)) from None


def _hello(ctx: Context, sock: socket.socket, where: str, fix: str) -> str:
    """One MQTT CONNECT and DISCONNECT; what the broker accepted (who), else _Refused."""
    m = ctx.cfg.mqtt
    password = _read_secret_file(ctx, m.password) if m.password.configured else None
    client_id = f"facegate-doctor-{os.getpid()}-{int(time.time())}"
    try:
        sock.sendall(mqtt_connect_packet(client_id, m.username, password))
        ack = _recv_exact(sock, 4)
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError as e:
        raise _Refused(_fail("broker", f"{where}: no MQTT answer ({e})", fix)) from None
    if ack[0] != 0x20:
        raise _Refused(_fail("broker", f"{where}: not an MQTT broker ({ack.hex()})", fix))
    if ack[3] != 0:
        reason = CONNACK_REASONS.get(ack[3], f"code {ack[3]}")
        raise _Refused(
            _fail(
                "broker",
                f"{where} (user {m.username or '-'}) refused the connection: {reason}",
                "check mqtt.username and its password against the broker's password file",
            )
        )
    if not m.username:
        return "anonymous"
    if password is None:
        return f"user {m.username!r} (password not readable here: not checked)"
    return f"user {m.username!r} accepted"


def check_broker(ctx: Context) -> list[Check]:
    """TCP, then TLS as configured, then one MQTT CONNECT (own client id) with the credentials."""
    m = ctx.cfg.mqtt
    if not m.enabled:
        return [_pass("broker", "MQTT is off (mqtt.enabled = false): events are not published")]
    where = f"{m.host}:{m.port}"
    port = "8883 for TLS" if m.tls else "1883"
    fix = f"check mqtt.host and mqtt.port ({port}) and that the broker runs"
    timeout = ctx.system.broker_timeout_s
    try:
        raw = socket.create_connection((m.host, m.port), timeout=timeout)
    except OSError as e:
        return [_fail("broker", f"cannot connect to {where} ({e.strerror or e})", fix)]
    sock = raw
    try:
        raw.settimeout(timeout)
        if m.tls:
            sock = _tls(ctx, raw, where, fix)
        who = _hello(ctx, sock, where, fix)
    except _Refused as e:
        return [e.check]
    finally:
        sock.close()
        raw.close()
    if not m.tls:
        return [
            _warn(
                "broker",
                f"{where} accepts MQTT without TLS, {who}",
                "set mqtt.tls = true and give the broker a TLS listener (8883)",
            )
        ]
    return [_pass("broker", f"{where} with TLS as configured, {who}")]


def _free(path: Path) -> tuple[Path, int]:
    """The nearest existing folder at or above ``path`` and the bytes free to its users."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return p, st.f_bavail * st.f_frsize


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def check_disk(ctx: Context) -> list[Check]:
    """Free space where the outbox and the audit log grow, against their row limits."""
    cfg = ctx.cfg
    needs: list[tuple[str, Path, int]] = []
    if cfg.mqtt.enabled:
        needs.append(("outbox", cfg.outbox_file, cfg.mqtt.outbox_max * OUTBOX_ROW_BYTES))
    if cfg.door.enabled:
        needs.append(("audit log", cfg.audit_file, cfg.door.audit_max_rows * AUDIT_ROW_BYTES))
    if not needs:
        where, free = _free(cfg.state_dir)
        return [_pass("disk", f"{_mib(free)} free at {where} (no outbox, no audit log configured)")]
    out = []
    by_fs: dict[int, int] = {}
    for what, path, need in needs:
        where, free = _free(path.parent)
        dev = os.stat(where).st_dev
        by_fs[dev] = by_fs.get(dev, 0) + need
        total = by_fs[dev]
        msg = f"{what} {path}: {_mib(free)} free at {where}, up to {_mib(need)} at its limit"
        fix = f"free space on {where}, or lower the limit (mqtt.outbox_max / door.audit_max_rows)"
        if free < total:
            out.append(_fail("disk", msg, fix))
        elif free < total + DISK_HEADROOM_BYTES:
            out.append(
                _warn("disk", msg + f" (less than {_mib(DISK_HEADROOM_BYTES)} to spare)", fix)
            )
        else:
            out.append(_pass("disk", msg))
        if path.parent.exists():
            why = ctx.user.reach(path.parent, os.W_OK | os.X_OK)
            if why is not None:
                out.append(_fail("disk", why, f"sudo chown {ctx.user.name} {path.parent}"))
    return out


def _gpio_modules(pin_factory: str) -> list[Check]:
    """gpiozero there, and lgpio (a Pi 5's backend) when the factory may pick it."""
    from importlib.util import find_spec

    out = []
    if find_spec("gpiozero") is None:
        out.append(_fail("gpio", "gpiozero is not installed", "pip install 'facegate[door]'"))
    if pin_factory in ("auto", "lgpio") and find_spec("lgpio") is None:
        out.append(
            _warn(
                "gpio",
                "lgpio does not import (gpiozero's backend on a Pi 5)",
                "sudo apt install python3-lgpio (the venv made with --system-site-packages)",
            )
        )
    return out


def _gpio_unit(ctx: Context) -> list[Check]:
    """A unit with a closed device policy must admit the GPIO chips."""
    unit = ctx.unit
    if unit is None or unit.get("DevicePolicy") not in ("closed", "strict"):
        return []
    if "gpiochip" in " ".join(unit.all("DeviceAllow")):
        return []
    return [
        _fail(
            "gpio",
            f"{unit.path}: DevicePolicy={unit.get('DevicePolicy')} does not allow the GPIO chips",
            "add DeviceAllow=char-gpiochip rw to the unit",
        )
    ]


def check_gpio(ctx: Context) -> list[Check]:
    """The door's pins: the GPIO character devices the service user may open, gpiozero there."""
    door = ctx.cfg.door
    if not door.enabled:
        return [_pass("gpio", "the door is off (door.enabled = false)")]
    wired = (("contact", door.contact_pin), ("exit", door.exit_pin), ("tamper", door.tamper_pin))
    pins = [f"relay {door.relay_pin}"] + [f"{n} {p}" for n, p in wired if p is not None]
    what = "pins " + ", ".join(pins)
    if door.pin_factory == "mock":
        return [_pass("gpio", f"{what}: mock pins (a dry run: nothing is switched)")]
    out = _gpio_modules(door.pin_factory)
    chips = ctx.system.gpio_chips()
    if not chips:
        out.append(
            _fail(
                "gpio",
                f"{what}: no /dev/gpiochip* on this machine",
                'run on the Pi, or set door.pin_factory = "mock" for a dry run',
            )
        )
        return out
    denied = [c for c in chips if ctx.user.reach(c, os.R_OK | os.W_OK) is not None]
    if denied:
        group = grp.getgrgid(os.stat(denied[0]).st_gid).gr_name
        out.append(
            _fail(
                "gpio",
                f"{what}: {ctx.user.name} cannot open {', '.join(map(str, denied))}",
                f"sudo usermod -aG {group} {ctx.user.name}",
            )
        )
    else:
        out.append(_pass("gpio", f"{what}: {ctx.user.name} can open {', '.join(map(str, chips))}"))
    return out + _gpio_unit(ctx)


def check_unit(ctx: Context) -> list[Check]:
    """The systemd unit is installed, points at an existing facegate and this config."""
    install = (
        "sudo cp /opt/facegate/src/systemd/facegate.service /etc/systemd/system/ && "
        "sudo systemctl daemon-reload && sudo systemctl enable --now facegate"
    )
    unit = ctx.unit
    if unit is None:
        dirs = ", ".join(str(d) for d in ctx.system.unit_dirs)
        return [_warn("systemd", f"{SERVICE} is not installed ({dirs})", install)]
    exec_start = unit.get("ExecStart").lstrip("@-:+!")
    argv = exec_start.split()
    if not argv or not Path(argv[0]).is_file():
        return [
            _fail(
                "systemd",
                f"{unit.path}: ExecStart {argv[0] if argv else '(none)'} does not exist",
                "create the venv there (docs/service.md) or fix ExecStart",
            )
        ]
    out = []
    cfg_path = ctx.system.config_path
    if cfg_path is not None and "--config" in argv:
        given = argv[argv.index("--config") + 1] if argv.index("--config") + 1 < len(argv) else ""
        if given and Path(given).resolve() != cfg_path.resolve():
            out.append(
                _warn(
                    "systemd",
                    f"{unit.path} runs --config {given}, not {cfg_path}",
                    f"check {given} instead: facegate doctor --config {given}",
                )
            )
    wants = [
        d / "multi-user.target.wants" / SERVICE
        for d in ctx.system.unit_dirs
        if (d / "multi-user.target.wants" / SERVICE).exists()
    ]
    if not wants:
        out.append(
            _warn(
                "systemd",
                f"{unit.path} is installed but not enabled",
                "sudo systemctl enable --now facegate",
            )
        )
    else:
        out.append(_pass("systemd", f"{unit.path} installed and enabled (User={ctx.user.name})"))
    return out


def _gallery_key(ctx: Context) -> bytes | None:
    """The gallery key, read from its file or the unit's credential source; _Refused if not."""
    from edge.config import read_secret

    ref = ctx.cfg.gallery.key
    if not ref.configured:
        return None
    source, _ = secret_path(ctx, ref)
    if source is None:
        raise _Refused(
            _warn("gallery", "cannot check: the key is not readable here", "see gallery.key")
        )
    try:
        return read_secret(str(source), "", "gallery.key")
    except FacegateError as e:
        raise _Refused(_fail("gallery", f"cannot check: {e}", "see gallery.key")) from None


def _open_copy(ctx: Context, path: Path, key: bytes | None) -> tuple[Gallery, Manifest]:
    """The gallery loaded from a temporary copy (loading may raise the generation mark)."""
    import shutil

    from edge.identity.gallery import Gallery, manifest_digest
    from edge.vision.manifest import load_manifest

    cfg = ctx.cfg
    try:
        manifest = load_manifest(cfg.model_path(cfg.embedder.model))
    except FacegateError as e:
        raise _Refused(
            _fail("gallery", f"cannot check without the embedder's manifest ({e})", "see model")
        ) from None
    with tempfile.TemporaryDirectory(prefix="facegate-doctor-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        try:
            g = Gallery.load(
                copy,
                key,
                manifest.sha256,
                manifest_sha256=manifest_digest(manifest),
                allow_rollback=True,
            )
        except FacegateError as e:
            rebind = f"facegate gallery rebind --config {ctx.config_arg} --gallery {path}"
            raise _Refused(
                _fail("gallery", str(e).replace(str(copy), str(path)), f"{rebind}, or re-enrol")
            ) from None
    return g, manifest


def check_gallery(ctx: Context) -> list[Check]:
    """The gallery opens with the key and belongs to the configured embedder and its manifest."""
    from edge.identity.gallery import read_high_water

    if ctx.cfg.fleet.enabled:
        site = ctx.cfg.fleet.site
        return [_pass("gallery", f"fleet.enabled: the gallery comes from site {site!r}'s bundles")]
    path = ctx.cfg.resolve(ctx.cfg.gallery.path)
    enrol = f"facegate enroll --config {ctx.config_arg} --name NAME PHOTO..."
    if not path.exists():
        return [_warn("gallery", f"{path} does not exist: nobody is enrolled", enrol)]
    try:
        g, manifest = _open_copy(ctx, path, _gallery_key(ctx))
    except _Refused as e:
        return [e.check]
    mark = read_high_water(path)
    if g.generation < mark:
        return [
            _fail(
                "gallery",
                f"{path}: generation {g.generation} is older than the newest seen here ({mark})",
                f"facegate gallery rebind --allow-rollback --gallery {path} "
                "(if restored on purpose)",
            )
        ]
    people = len(g.names)
    return [
        _pass(
            "gallery",
            f"{path}: {people} {'person' if people == 1 else 'people'}, bound to "
            f"{Path(manifest.model_path).name} (sha256 {manifest.sha256[:12]}...) and its manifest",
        )
    ]


CHECKS: tuple[Callable[[Context], list[Check]], ...] = (
    check_config_file,
    check_python,
    check_runtime,
    check_models,
    check_liveness,
    check_camera,
    check_clock,
    check_secrets,
    check_broker,
    check_disk,
    check_gpio,
    check_unit,
    check_gallery,
)


def run_checks(
    cfg: Config,
    system: System | None = None,
    checks: Iterable[Callable[[Context], list[Check]]] = CHECKS,
) -> list[Check]:
    """Every check's lines, in order; a check that raises is one failed line, never a traceback."""
    system = system or System()
    unit = system.unit()
    ctx = Context(cfg, system, unit, service_user(unit, system.user))
    out: list[Check] = []
    for check in checks:
        name = check.__name__.removeprefix("check_")
        try:
            out.extend(check(ctx))
        except FacegateError as e:
            out.append(_fail(name, str(e), "see the message"))
        except Exception as e:  # a doctor reports; it does not crash on a broken machine
            out.append(
                _fail(name, f"the check itself failed: {type(e).__name__}: {e}", "report a bug")
            )
    return out


def doctor(
    config: Path | None, out: Callable[[str], None] = print, system: System | None = None
) -> int:
    """Load the config (the defaults without one), run every check, print; 1 on any fail."""
    from dataclasses import replace

    from edge.config import Config, load_config

    if config is not None:
        try:
            cfg = load_config(config, environment=False)
        except FacegateError as e:
            out(_fail("config", str(e), f"facegate check-config {config}").line())
            return 1
        out(_pass("config", f"{config} is valid").line())
    else:
        cfg = Config()
        out(
            _warn(
                "config",
                "no --config: the defaults",
                "facegate doctor --config /etc/facegate/facegate.toml",
            ).line()
        )
    system = replace(system or System(), config_path=config)
    results = run_checks(cfg, system)
    for r in results:
        out(r.line())
    fails = sum(r.status == "fail" for r in results)
    warns = sum(r.status == "warn" for r in results)
    out(f"doctor: {len(results)} checks, {fails} failed, {warns} warnings")
    return 1 if fails else 0


__all__: Sequence[str] = ["CHECKS", "Check", "System", "doctor", "run_checks"]
