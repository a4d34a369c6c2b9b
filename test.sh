#!/usr/bin/env bash
# Runs Easel's tests: sets up .venv like launch.sh (CPU torch, pinned), then pytest.
# Extra arguments go to pytest, e.g. ./test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")"
./launch.sh --setup-only --with-tests
exec .venv/bin/python -m pytest "$@"
