"""``python -m tools.quantize``: see :mod:`tools.quantize`."""

import contextlib
import sys

from tools.quantize.tool import main

if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
