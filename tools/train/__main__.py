"""``python -m tools.train``: see :mod:`tools.train`."""

import contextlib
import sys

from tools.train.cli import main

if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
