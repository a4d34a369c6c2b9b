#!/usr/bin/env bash
# Fills bench/wheels/ (or the folder given) with the wheels bench/gpu_check.sh installs on a GPU machine
# that has no network: what Easel's engine needs beyond torch and transformers (and their own needs),
# at the versions of this checkout's .venv, for the GPU machine's Python (default 3.12; --python-version).
#
#   bash bench/gpu_wheels.sh [--python-version 3.12] [DIR]
#
# Left out on purpose: gradio, fastapi, uvicorn (the server: the check drives the Engine), scipy and
# torchsde (LMS and DPM++ SDE only), spandrel (ESRGAN only), invisible-watermark (it pulls opencv,
# ~50 MB; the check runs with the watermark off and Easel imports it only to mark a picture).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYVER=3.12
DEST="$REPO/bench/wheels"
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER="$2"; shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) DEST="$1"; shift ;;
  esac
done
PY="${PYTHON:-$REPO/.venv/bin/python}"
# The packages, and the ones they need that torch + transformers do not bring.
NAMES=(diffusers accelerate omegaconf pillow psutil importlib_metadata zipp requests charset_normalizer urllib3
       certifi idna httpx httpcore h11 anyio sniffio typing_extensions)
# Pin each to the version this checkout was tested with (the .venv's), when the .venv has it.
PINS=$("$PY" - "${NAMES[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
PY
)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" \
  --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  $PINS
du -sh "$DEST"
ls "$DEST"
