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


def test_without_the_cluster_flag_ray_is_never_imported(tmp_path):
    """Ray costs seconds and is an optional extra: only `--cluster` may import it."""
    script = (
        "import sys, launch, app.engine, app.settings, app.workers, server.compose, ui.app\n"
        "from ui.app import build_ui\n"
        "from app.preferences import Preferences\n"
        "args = launch.parse_args(['--demo', '--no-browser'])\n"
        "assert args.cluster is None\n"
        f"settings = app.settings.load_settings({{**launch.settings_overrides(args), 'models_dir': r'{tmp_path / 'models'}',"
        f" 'cache_dir': r'{tmp_path / 'cache'}', 'outputs_dir': r'{tmp_path / 'out'}', 'torch_compile': False}})\n"
        "engine = app.engine.create_engine(settings)\n"
        f"build_ui(engine, Preferences(r'{tmp_path / 'prefs.json'}'), [])\n"
        "engine.close()\n"
        "print(sorted(name for name in sys.modules if name == 'ray' or name.startswith('ray.')))\n"
    )
    answer = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "[]", f"Ray was imported without --cluster: {answer.stdout.strip()}"
