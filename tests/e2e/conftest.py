"""End-to-end setup: the real UI served over the tiny models, driven in headless Chromium.

- `served`: one Easel server for the whole e2e run (engine on the CPU over the tiny models,
  `build_ui` with its own preferences file, `serve` on 127.0.0.1 at a free port), closed at the end.
- `browser`: Debian's Chromium (/usr/bin/chromium) under Playwright; never a downloaded browser.
  Missing Chromium (or Playwright) skips these tests, except in CI (CI=true), where it fails them.
- `page`: a fresh browser context and page per test, 1400x1000, with the app loaded. At the end
  of every test, passed or failed, a screenshot of what the user sees is saved to
  test-artifacts/e2e/<test-name>.png (a full-page one beside it when the test failed).
"""

import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.engine import Engine, create_engine
from app.preferences import Preferences
from tests.conftest import CPU_ONLY, TINY_SD1, make_settings

CHROMIUM = Path("/usr/bin/chromium")
# As the machine notes say: no GPU, no QUIC, and none of Chromium's own background connections
# (this machine's closed network refuses them). Playwright's launch() adds a fresh, empty
# --user-data-dir of its own for every browser it starts (it refuses one passed in `args`).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "e2e"
PAGE_TIMEOUT_MS = 30_000


def _unavailable(reason: str) -> None:
    """Skip on a developer machine without a browser; fail in CI, which must run these tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run in CI)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    url: str
    engine: Engine
    outputs: Path
    models: Path


@pytest.fixture(scope="session")
def served(tiny_models_dir, tiny_configs_dir, tmp_path_factory):
    from server.compose import serve
    from ui.app import build_ui

    root = tmp_path_factory.mktemp("e2e-app")
    models = root / "models"  # its own copy: tests add LoRA files to it
    shutil.copytree(tiny_models_dir, models)
    settings = make_settings(
        root, models, host="127.0.0.1", port=_free_port(), model_configs_dir=str(tiny_configs_dir)
    )
    engine = create_engine(settings, CPU_ONLY)
    engine.select_checkpoint(TINY_SD1)  # before build_ui: the header shows the active checkpoint
    blocks = build_ui(engine, Preferences(root / "prefs.json"))
    server = None
    try:
        server = serve(blocks, engine, settings)
        url = server.url
        yield Served(url=url, engine=engine, outputs=settings.outputs_dir, models=models)
    finally:
        if server is not None:
            server.close()
        engine.close()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so the page fixture knows whether it failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def artifact_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"


@pytest.fixture
def page(browser, served, request):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(served.url)
        page.locator("#txt2img-generate").wait_for(state="visible")
        yield page
    finally:
        name = request.node.name
        try:
            page.screenshot(path=artifact_path(name))
            report = getattr(request.node, "report_call", None)
            if report is None or report.failed:
                page.screenshot(path=artifact_path(f"{name}-failed-full"), full_page=True)
        except Exception as error:  # a crashed page must not hide the test's own failure
            print(f"Could not take the screenshot of {name}: {error}")
        if errors:
            print(f"JavaScript errors in the page during {name}:", *errors, sep="\n  ")
        context.close()


@pytest.fixture
def screenshot(page, request):
    """screenshot("step") saves test-artifacts/e2e/<test-name>-step.png of the page now."""

    def take(step: str) -> Path:
        path = artifact_path(f"{request.node.name}-{step}")
        page.screenshot(path=path)
        return path

    return take


@pytest.fixture
def picture_file(tmp_path) -> Path:
    """A 128x128 picture with a different colour at every pixel (a shift or rescale shows)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:128, 0:128]
    pixels = np.stack([x * 2, y * 2, (x * 3 + y * 5) % 256], axis=-1).astype("uint8")
    path = tmp_path / "picture.png"
    Image.fromarray(pixels, "RGB").save(path)
    return path

