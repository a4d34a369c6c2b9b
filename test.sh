#!/usr/bin/env bash
# Runs Easel's tests: sets up .venv as launch.sh does (same pins, plus the test packages), then pytest.
# Extra arguments go to pytest, e.g. ./test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")"
./launch.sh --setup-only --with-tests --with-cluster
# The browser tests (tests/e2e) drive Debian's Chromium and the launcher tests run Debian's shellcheck.
# CI runs as root: install them there if missing.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null 2>&1 ||
    echo "Could not install ${missing[*]} (apt-get); the tests that need them will say so." >&2
fi
# One worker per physical core (torch uses one thread in each): the suite takes half the time on 2 cores.
# A later -n (e.g. ./test.sh -n 0 tests/unit) overrides it. loadfile: each test file runs on one worker,
# in order, so a module's expensive fixture (a local Ray cluster, a loaded model) is built once.
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
