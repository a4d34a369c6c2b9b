#!/usr/bin/env bash
# Easel's GPU check, for a machine with no network whose Python has torch (CUDA) and transformers
# but not diffusers or Easel's other packages. It makes a venv over that Python (its torch and
# transformers stay visible), installs the wheels from a folder with no index, then runs
# bench/gpu_check.py (it/s of SD 1.5 and SD 2.1 through Easel's engine, the memory ladder, the checks).
#
#   bash bench/gpu_check.sh [--wheels DIR] [gpu_check.py options...]
#
# DIR defaults to bench/wheels (fill it beforehand with bench/gpu_wheels.sh, where pip reaches the
# index). PYTHON picks the interpreter (default python3); VENV the venv's place (default
# /tmp/easel-gpu-venv, made again each run). Everything after the options goes to gpu_check.py, e.g.
# `--device cpu --tiny` for the dry run on the tiny test models.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WHEELS="$REPO/bench/wheels"
if [ "${1:-}" = "--wheels" ]; then WHEELS="$(cd "$2" && pwd)"; shift 2; fi
PY="${PYTHON:-python3}"
VENV="${VENV:-/tmp/easel-gpu-venv}"
# No index and no pip configuration of this machine's: only the wheel folder counts.
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL
export PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

"$PY" -c "import torch, transformers; print(f'python {__import__(\"sys\").version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, CUDA {torch.cuda.is_available()}')"
ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "No wheels in $WHEELS: run bench/gpu_wheels.sh where pip reaches the index, and bring that folder."; exit 2; }

rm -rf "$VENV"
# The venv sees exactly what $PY sees: a .pth file adds each of $PY's site folders (with their own .pth
# files). That is --system-site-packages made right for a $PY that is itself a venv (as
# /opt/torch/.venv on the lent H200s), where that flag would point at the base interpreter instead.
PIP=("$VENV/bin/python" -m pip)
if ! "$PY" -m venv "$VENV" 2>/dev/null; then
  rm -rf "$VENV"  # no ensurepip (Debian without python3-venv): $PY's own pip installs into the venv
  "$PY" -m venv --without-pip "$VENV"
  PIP=("$PY" -m pip --python "$VENV/bin/python")
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PY" -c 'import site; print("\n".join(f"import site; site.addsitedir({p!r})" for p in site.getsitepackages()))' \
  > "$SITE/_easel_base_python.pth"
"$VENV/bin/python" -c "import torch, transformers" \
  || { echo "The venv does not see $PY's torch and transformers."; exit 2; }

# Only the wheels whose package $PY does not have, without dependency resolution: pip's resolver would
# also re-check every package already there (torch's own pins included) and can fail on those.
mapfile -t MISSING < <("$VENV/bin/python" - "$WHEELS" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    try:
        version(wheel.name.split("-")[0])
    except PackageNotFoundError:
        print(wheel)
PY
)
echo "installing ${#MISSING[@]} wheels: ${MISSING[*]##*/}"
if [ ${#MISSING[@]} -gt 0 ]; then "${PIP[@]}" install --quiet --no-index --no-deps "${MISSING[@]}"; fi
"$VENV/bin/python" -c "import diffusers, accelerate, omegaconf; print(f'diffusers {diffusers.__version__}, accelerate {accelerate.__version__}')"

cd "$REPO"
exec "$VENV/bin/python" bench/gpu_check.py "$@"
