"""bench/gpu_check.py's dry run (tiny models, CPU): the flow that runs on a GPU machine later, in one
go, must not fail there for a reason a CPU can show here."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_SD1

REPO = Path(__file__).resolve().parents[2]


# The script, run as `python bench/gpu_check.py ARGS` runs it; then whether invisible-watermark (it pulls
# OpenCV, which the GPU machine's venv does not get) stayed unimported: the watermark is off there.
RUN_WITHOUT_OPENCV = """
import runpy, sys
sys.argv = ["bench/gpu_check.py", *sys.argv[1:]]
try:
    runpy.run_path("bench/gpu_check.py", run_name="__main__")
except SystemExit as done:
    loaded = {"imwatermark", "cv2"} & set(sys.modules)
    assert not loaded, loaded
    print("OpenCV stayed out")
    sys.exit(done.code)
"""


def _script_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_the_dry_run_times_the_engine_and_walks_the_memory_ladder(tiny_models_dir, tiny_configs_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    # The session's tiny models and configs, under the names the script builds them with (it keeps them).
    (work / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    (work / "model-configs").symlink_to(tiny_configs_dir, target_is_directory=True)
    summary = tmp_path / "summary.md"
    arguments = ["--dry-run", "--workdir", str(work), "--models", "sd15", "--ladder", "8,forced", "--no-compile",
                 "--summary-file", str(summary)]
    done = subprocess.run([sys.executable, "-c", RUN_WITHOUT_OPENCV, *arguments],
                          capture_output=True, text=True, timeout=120, env=_script_env(), cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "OpenCV stayed out" in done.stdout
    text = summary.read_text()
    assert "----- summary" in done.stdout and text.strip() in done.stdout
    speed_row = next(line for line in text.splitlines() if line.startswith("| SD 1.5 (tiny) |"))
    cells = [cell.strip() for cell in speed_row.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[2]) > 0  # it/s, seconds per image
    assert "AttnProcessor2_0 (SDPA)" in speed_row  # Easel's UNet attends through torch's SDPA
    assert "| off after 0 s |" in speed_row  # with torch_compile off there is nothing to wait for
    # 8 GiB: the FULL plan; the forced FULL case at 4 GiB: the rung the ladder steps down to.
    assert "| 8 GiB | full | full |" in text
    assert "| 4 GiB, FULL forced, batch 8 | full | model-offload (simulated) |" in text
    # Every job saved its pictures: the warm-up, long and short jobs of SD 1.5 and of 8 GiB; the forced
    # case's one job of batch 8.
    assert len(list((work / "outputs").rglob("*.png"))) == 3 + 3 + 8
    assert TINY_SD1 in {p.name for p in (work / "models" / "Stable-diffusion").iterdir()}


def test_the_gpu_scripts_parse():
    """The shell scripts run once, on a machine nobody watches: at least they must be valid bash."""
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        done = subprocess.run(["bash", "-n", str(REPO / "bench" / script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"
