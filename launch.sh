#!/usr/bin/env bash
# Easel launcher for Linux and macOS. Double-click or run ./launch.sh [flags for launch.py].
# First run: makes a Python environment in .venv next to this file and installs Easel into it
# (the CUDA build of torch when an NVIDIA GPU is present, the small CPU build otherwise).
# Later runs start at once. `./launch.sh --setup-only [--with-tests]` installs and stops.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP="$VENV/.easel-installed"
CPU_TORCH_INDEX="${EASEL_CPU_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
# torchvision must be the build made for the installed torch (spandrel imports it): always install the pair.
TORCH_CPU_PIN=(torch==2.14.1 torchvision==0.29.1)
TORCH_RANGE=("torch>=2.4,<2.15" "torchvision>=0.19,<0.30")

setup_only=0
extras=""
args=()
for arg in "$@"; do
  case "$arg" in
    --setup-only) setup_only=1 ;;
    --with-tests) extras="[test]" ;;
    *) args+=("$arg") ;;
  esac
done

say() { printf 'Easel: %s\n' "$*"; }
fail() { printf 'Easel could not start: %s\n' "$*" >&2; exit 1; }

find_python() {
  for candidate in "${PYTHON:-}" python3.12 python3.11 python3.10 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

has_nvidia_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

torch_works() { "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; }

install_torch() {
  local pip=("$VENV/bin/python" -m pip install --quiet)
  if torch_works; then return 0; fi
  if [ "$(uname -s)" = "Darwin" ]; then
    say "installing PyTorch (Apple build)…"
    "${pip[@]}" "${TORCH_RANGE[@]}"
  elif has_nvidia_gpu; then
    say "NVIDIA GPU found: installing PyTorch with CUDA (a large download, once)…"
    "${pip[@]}" "${TORCH_RANGE[@]}"
  else
    say "no NVIDIA GPU found: installing the CPU build of PyTorch…"
    # The CPU index has the small build. PyPI's Linux wheels bundle CUDA (several GB, but they run
    # on the CPU too): the pinned pair from PyPI is the fallback when that index cannot be reached,
    # or when what it gave does not import (a torchvision built for another torch).
    "${pip[@]}" --retries 1 --timeout 30 --index-url "$CPU_TORCH_INDEX" "${TORCH_RANGE[@]}" 2>/dev/null || true
    torch_works || "${pip[@]}" "${TORCH_CPU_PIN[@]}"
  fi
  torch_works
}

# The stamp records what was installed: pyproject's content, the torch pins, and whether the test extras came too,
# so a launch after the tests does not reinstall, and a change to pyproject does.
deps_fingerprint() { { cat pyproject.toml; echo "${TORCH_CPU_PIN[*]} ${TORCH_RANGE[*]}"; } | cksum; }
installed_enough() {
  [ -f "$STAMP" ] || return 1
  [ "$(head -n 1 "$STAMP")" = "$(deps_fingerprint)" ] || return 1
  [ -z "$extras" ] || [ "$(sed -n 2p "$STAMP")" = "$extras" ]
}

python_bin=$(find_python) || fail "Python 3.10 or newer is needed. Install it from https://www.python.org/downloads/ and run this again."
if [ ! -x "$VENV/bin/python" ]; then
  say "first run: creating a Python environment in $VENV…"
  "$python_bin" -m venv "$VENV" || fail "could not create $VENV. On Debian/Ubuntu, install python3-venv first."
fi
if ! installed_enough; then
  install_torch || fail "installing PyTorch failed. Check your internet connection and run this again."
  say "installing Easel's packages…"
  "$VENV/bin/python" -m pip install --quiet -e ".$extras" ||
    fail "installing packages failed. Check your internet connection and run this again."
  printf '%s\n%s\n' "$(deps_fingerprint)" "$extras" > "$STAMP"
fi
[ "$setup_only" = 1 ] && exit 0
exec "$VENV/bin/python" launch.py ${args[@]+"${args[@]}"}
