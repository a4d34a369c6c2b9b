#!/usr/bin/env bash
# Easel launcher for Linux and macOS: ./launch.sh [options]   (./launch.sh --help lists them)
# It finds a Python that Easel can use and hands over to bootstrap.py, which does the rest, the same
# as for launch.bat: the .venv with the PyTorch build for this computer, the install log
# (logs/install.log), the record of what is installed, then Easel itself.
# Typed as "sh launch.sh" (dash on Debian and Ubuntu): start again in bash before any bash-only line.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -uo pipefail
cd "$(dirname "$0")" || exit 1

# Preferred first; bootstrap.py --check-python has the final word on each (it knows the supported range).
PYTHON_NAMES=(python3.11 python3.12 python3.13 python3.14 python3 python)

wait_for_a_key() {
  if [ -t 0 ] && [ -t 1 ]; then
    read -r -n 1 -s -p "Press any key to close." || true
    echo
  fi
}

find_python() {
  local name found
  for name in ${EASEL_PYTHON:+"$EASEL_PYTHON"} "${PYTHON_NAMES[@]}"; do
    command -v "$name" >/dev/null 2>&1 || continue
    if found=$("$name" bootstrap.py --check-python 2>/dev/null) && [ -n "$found" ]; then
      echo "$found"
      return 0
    fi
  done
  return 1
}

no_python_screen() {
  local seen
  seen=$(python3 --version 2>/dev/null || true)
  echo
  echo "Easel needs Python 3.11, 3.12, 3.13 or 3.14, and this computer does not have one${seen:+ (it has $seen)}."
  echo
  if [ "$(uname -s)" = "Darwin" ]; then
    echo "Install Python 3.12 from https://www.python.org/downloads/macos/"
    echo "(or, with Homebrew: brew install python@3.12), then start Easel again."
  else
    echo "Install Python 3.12 with your system's package manager, for example:"
    echo "  Ubuntu, Debian:  sudo apt install python3.12 python3.12-venv"
    echo "  Fedora:          sudo dnf install python3.12"
    echo "or from https://www.python.org/downloads/ , then run ./launch.sh again."
  fi
  echo
  echo "If Python is installed somewhere else, say where: EASEL_PYTHON=/path/to/python3 ./launch.sh"
  echo
}

if ! python=$(find_python); then
  no_python_screen
  wait_for_a_key
  exit 1
fi
exec "$python" bootstrap.py "$@"
