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


def test_the_page_needs_none_of_the_heavy_libraries_and_no_ray_without_the_flag(tmp_path):
    """One process: the page's imports (none of the heavy libraries), then an Engine and the page built
    as launch.py builds them without --cluster (Ray, an optional extra costing seconds, never imported)."""
    script = (
        "import sys, launch, app.engine, app.settings, app.workers, server.compose, ui.app\n"
        f"print('heavy:', *(name for name in {HEAVY!r} if name in sys.modules))\n"
        "from app.preferences import Preferences\n"
        "args = launch.parse_args(['--demo', '--no-browser'])\n"
        "assert args.cluster is None\n"
        f"settings = app.settings.load_settings({{**launch.settings_overrides(args), 'models_dir': r'{tmp_path / 'models'}',"
        f" 'cache_dir': r'{tmp_path / 'cache'}', 'outputs_dir': r'{tmp_path / 'out'}', 'torch_compile': False}})\n"
        "engine = app.engine.create_engine(settings)\n"
        f"ui.app.build_ui(engine, Preferences(r'{tmp_path / 'prefs.json'}'), [])\n"
        "engine.close()\n"
        "print('ray:', *sorted(name for name in sys.modules if name == 'ray' or name.startswith('ray.')))\n"
    )
    answer = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert answer.returncode == 0, answer.stderr
    found = {line.split(":")[0]: line.split()[1:] for line in answer.stdout.splitlines() if line.startswith(("heavy:", "ray:"))}
    assert found["heavy"] == [], f"imported before the page is served: {found['heavy']}"
    assert found["ray"] == [], f"Ray was imported without --cluster: {found['ray']}"
