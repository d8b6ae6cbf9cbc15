"""``python -m tools.bench``: see :mod:`tools.bench`."""

from tools._common import run_tool
from tools.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(run_tool("tools.bench", main))
