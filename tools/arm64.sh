#!/usr/bin/env bash
# facegate on arm64 Debian bookworm under qemu emulation (see tools/arm64.py).
#
#   sudo bash tools/arm64.sh            # root filesystem (cached in .arm64/), both runtimes,
#                                       # demo, identify, doctor, arm64-vs-x86 embeddings
#   sudo bash tools/arm64.sh --help
#
# Needs root (debootstrap, binfmt_misc, chroot), the network on a first run, and
# the x86 models built (bash tools/setup.sh). Runs at nice 10: it is long and
# CPU-bound, and emulated speed means nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "arm64: run bash tools/setup.sh first (.venv, models)" >&2; exit 1; }
exec nice -n 10 .venv/bin/python -m tools.arm64 "$@"
