"""Small helpers shared by the offline tools: error mapping and progress bars.

``run_tool`` turns a tool's ``main`` into a process exit code: a
:class:`~edge.errors.FacegateError` (bad input, the user's to fix) becomes one
line ``<tool>: error: <message>`` on stderr and its ``exit_code`` (2); Ctrl-C
becomes exit 130; anything else is a bug and keeps its traceback.

``progress`` wraps an iterable in a tqdm bar on stderr when tqdm is
installed and the caller wants one; otherwise it returns the iterable as is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from edge.errors import FacegateError

T = TypeVar("T")


def run_tool(
    name: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None
) -> int:
    """Call ``main(argv)``; map user errors to one stderr line and an exit code."""
    try:
        return int(main(argv))
    except FacegateError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def progress(
    it: Iterable[T], desc: str, total: int | None = None, enabled: bool = True, unit: str = "it"
) -> Iterable[T]:
    """``it`` with a tqdm progress bar on stderr (or plain ``it`` without tqdm)."""
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    bar: Iterable[T] = tqdm(it, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr)
    return bar


class Stage:
    """A one-step-at-a-time progress bar for work that is not an iterable.

    ``with Stage("converting", total=3) as s: ...; s.step("int8")`` advances the
    bar by one and shows the step's name. Without tqdm it does nothing.
    """

    def __init__(self, desc: str, total: int, enabled: bool = True) -> None:
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr)

    def step(self, what: str = "") -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(what)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
