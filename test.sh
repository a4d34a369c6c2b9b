#!/usr/bin/env bash
# Runs Easel's tests: sets up .venv like launch.sh (CPU torch, pinned), then pytest.
# Extra arguments go to pytest, e.g. ./test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")"
./launch.sh --setup-only --with-tests
# The browser tests (tests/e2e) drive Debian's Chromium. CI runs as root: install it there if missing.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 ||
    echo "Could not install Chromium (apt-get); the browser tests will say so." >&2
fi
exec .venv/bin/python -m pytest "$@"
