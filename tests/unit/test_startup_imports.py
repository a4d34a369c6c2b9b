"""What launch.py imports before the page is served: not diffusers, transformers or inductor.

Those take about 5 s to import on a 2-core CPU; launch.py serves the page first and loads the first
checkpoint (which imports them) in the background. A module-level `from diffusers import ...` in
anything the engine, the UI or the server imports would quietly put those seconds back before the
page (bench/startup.py measures it).
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("diffusers", "transformers", "torch._inductor", "torch._dynamo", "spandrel", "scipy", "cv2")


def test_the_page_needs_none_of_the_heavy_libraries():
    script = (
        "import sys, launch, app.engine, app.settings, server.compose, ui.app\n"
        f"print(' '.join(name for name in {HEAVY!r} if name in sys.modules))\n"
    )
    answer = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "", f"imported before the page is served: {answer.stdout.strip()}"
