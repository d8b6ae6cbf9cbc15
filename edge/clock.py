"""Whether the wall clock can be trusted: :func:`clock_synced`.

Event timestamps, their ``expires_at``, door schedules and remote unlocks
all lean on the wall clock; a Pi without a real-time clock boots in 1970 and
is wrong until NTP has run. The kernel knows whether its clock is
synchronised (``adjtimex(2)``); :func:`clock_synced` asks it, read-only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from collections.abc import Callable

# No wall clock before this instant is plausible on a device running this
# code (2025-01-01T00:00:00Z): a Pi without RTC boots in 1970 until NTP runs.
_PLAUSIBLE_EPOCH = 1_735_689_600.0


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>: the first field is ``modes`` (0 = read
    # only); the rest is padding large enough for every Linux ABI (208 bytes).
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 252)]


_TIME_ERROR = 5  # adjtimex(2) return value: the clock is not synchronised


def adjtimex_state() -> int | None:
    """The kernel's clock state, ``adjtimex(2)`` called read-only; None where unavailable.

    0 (``TIME_OK``) to 4 mean synchronised (leap-second states included),
    5 (``TIME_ERROR``) not synchronised.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        return int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None


def clock_synced(
    now: float | None = None, kernel_state: Callable[[], int | None] = adjtimex_state
) -> bool:
    """Whether the wall clock can be trusted for event timestamps.

    False when the time is implausibly early (no RTC, NTP not yet run), or
    when the kernel reports the clock as unsynchronised: ``kernel_state()``
    (:func:`adjtimex_state`) is ``TIME_ERROR``, what ``timedatectl``'s
    "System clock synchronized" shows. Where adjtimex is unavailable (None)
    only the plausibility check applies.
    """
    t = time.time() if now is None else now
    if t < _PLAUSIBLE_EPOCH:
        return False
    return kernel_state() != _TIME_ERROR


__all__ = ["adjtimex_state", "clock_synced"]
