"""Reading and writing the files a user hands us, safely.

:func:`read_bounded` is how facegate reads any file named by a user (config,
secrets, images, the gallery): opened once, without blocking (a FIFO never
hangs us), required to be a regular file (never a folder or a device such as
``/dev/zero``), read to at most ``limit + 1`` bytes, and every ``OSError``
turned into one line of the caller's error type.

:func:`write_atomic` replaces a file so that a crash at any instant leaves
either the old or the new content: a temporary file in the same folder,
fsync, rename, then an fsync of the folder. Temporary files left behind by a
process killed mid-write are removed on the next write.

:class:`StateLock` makes a folder one process's: an exclusive ``flock`` on
``<folder>/facegate.lock``, held while the process runs and freed by the
kernel however it ends (SIGKILL included).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from pathlib import Path

from edge.errors import FacegateError

STALE_TMP_S = 60.0
"""A temporary file of an atomic write older than this was left by a dead writer."""


def read_bounded(
    path: Path | str, limit: int, what: str, error: type[FacegateError] = FacegateError
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ``error`` (one line) otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "is a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise error(f"{path}: cannot read {what} ({kind})")
        if st.st_size > limit:
            raise error(f"{path}: {what} too large ({st.st_size} bytes, limit {limit})")
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise error(f"{path}: {what} too large (over {limit} bytes)")
        return data
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror or e})") from None
    finally:
        os.close(fd)


def exists(path: Path | str, what: str, error: type[FacegateError] = FacegateError) -> bool:
    """Whether ``path`` exists; ``error`` (one line) when that cannot be told (no permission)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            return False
        raise error(f"{path}: cannot look up {what} ({e.strerror or e})") from None
    return True


def make_private_dir(path: Path) -> None:
    """Create a folder (and its parents) as 0700 whatever the umask; an existing one is kept."""
    if path.is_dir():
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def remove_stale_tmp(path: Path, older_than_s: float = STALE_TMP_S) -> int:
    """Delete ``.<name>.*.tmp`` files beside ``path`` older than ``older_than_s``; how many."""
    removed = 0
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return 0
    prefix = f".{path.name}."
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


def write_atomic(
    path: Path | str,
    data: bytes,
    what: str,
    error: type[FacegateError] = FacegateError,
    mode: int = 0o600,
) -> None:
    """Replace ``path`` with ``data`` atomically (tmp, fsync, rename, folder fsync).

    The file gets ``mode`` whatever the umask (0600 by default: galleries,
    outbox state; models and manifests pass 0644). A missing folder is
    created 0700 for a private file, else with the umask's mode. Every
    OSError (read-only folder, full disk) becomes one ``error`` line; the old
    file is then untouched.

    This is facegate's one atomic write: the device's files, the tools'
    models, manifests and reports all go through it.
    """
    path = Path(path)
    try:
        if mode & 0o077:
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            make_private_dir(path.parent)
        remove_stale_tmp(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise error(f"{path}: cannot write {what} ({e.strerror or e})") from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise error(f"{path}: cannot write {what} ({e.strerror or e})") from None


def move_aside(path: Path) -> Path:
    """Rename ``path`` (an SQLite database) and its ``-wal``/``-shm`` to ``<name>.corrupt-<time>``.

    Returns the new name. OSError is the caller's to report.
    """
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    return aside


LOCK_NAME = "facegate.lock"
"""The lock file :class:`StateLock` holds in ``service.state_dir``."""


class StateLock:
    """An exclusive ``flock`` on ``<folder>/facegate.lock`` (a context manager).

    Two daemons on one ``service.state_dir`` would reuse outbox sequence
    numbers, write one audit log twice and push each other off the broker
    (one client id): the second must not start. :meth:`acquire` takes the
    lock without waiting, or raises ``error`` in one line naming the process
    that holds it (its pid is written in the file). The kernel frees the lock
    when the holder exits, whatever the way, so a crashed daemon never
    leaves a stale lock behind.
    """

    def __init__(
        self,
        folder: Path | str,
        key: str = "service.state_dir",
        error: type[FacegateError] = FacegateError,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.key = key
        self.error = error
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        """Take the lock (idempotent); ``error`` when another process holds it."""
        if self._fd is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise self.error(
                f"{self.key}: cannot create the lock file {self.path} ({e.strerror or e})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self.error(
                    f"{self.key}: cannot lock {self.path} ({e.strerror or e})"
                ) from None
            who = f" (pid {holder})" if holder else ""
            raise self.error(
                f"{self.key}: {self.folder} is in use by another facegate process{who}; "
                "stop it first (two on one state_dir would corrupt each other's state)"
            ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (idempotent); the file stays, empty of meaning."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


__all__ = [
    "LOCK_NAME",
    "STALE_TMP_S",
    "StateLock",
    "exists",
    "make_private_dir",
    "move_aside",
    "read_bounded",
    "remove_stale_tmp",
    "write_atomic",
]
