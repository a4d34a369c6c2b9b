"""Easel shared on the network, in a real browser: the sign-in form, a wrong and a right password,
then the app with the address colleagues open, and a generation as the signed-in user."""

import pytest

from app.auth import Access, Credentials, LoginLimiter, hash_password
from app.engine import create_engine
from tests.conftest import CPU_ONLY, TINY_SD1, make_settings
from tests.e2e.conftest import PAGE_TIMEOUT_MS, VIEWPORT, artifact_path

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips or fails these tests, saying why
    expect = None

LAN_URL = "http://192.0.2.7:7860/"


@pytest.fixture
def shared(tiny_models_dir, tmp_path):
    from server.compose import serve
    from ui.app import build_ui

    settings = make_settings(tmp_path, tiny_models_dir, host="127.0.0.1", port=0)
    engine = create_engine(settings, CPU_ONLY)
    engine.select_checkpoint(TINY_SD1)
    credentials = Credentials({"ann": hash_password("ann-pw", iterations=1000)})
    server = serve(build_ui(engine, None, [LAN_URL]), engine, settings, Access(credentials, credentials),
                   LoginLimiter())
    yield server, engine
    server.close()
    engine.close()


def test_signing_in_opens_the_app_and_the_page_shows_the_shared_address(browser, shared):
    server, engine = shared
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page.goto(server.url)
        user, password = page.locator("input[type=text]").first, page.locator("input[type=password]")
        expect(password).to_be_visible()
        expect(page.locator("#txt2img-generate")).to_have_count(0)  # nothing of the app before signing in
        user.fill("ann")
        password.fill("wrong")
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_text("Incorrect Credentials", exact=False)).to_be_visible()
        user.fill("ann")  # the form clears the name after a failure
        password.fill("ann-pw")
        page.get_by_role("button", name="Login").click()
        page.locator("#txt2img-generate").wait_for(state="visible")
        expect(page.locator("#lan-urls textarea")).to_have_value(LAN_URL)

        page.locator("#txt2img-prompt textarea").fill("a lighthouse")
        for elem_id, value in (("txt2img-steps", 2), ("txt2img-width", 64), ("txt2img-height", 64)):
            box = page.locator(f"#{elem_id} input[type=number]")
            box.fill(str(value))
            box.press("Tab")
        page.locator("#txt2img-generate").click()
        expect(page.locator("#txt2img-status")).to_contain_text("Done: 1 image", timeout=60_000)
        assert engine.jobs_of("ann") == []  # the job ran as Ann, and is finished
    finally:
        page.screenshot(path=artifact_path("signing_in_opens_the_app"))
        context.close()
