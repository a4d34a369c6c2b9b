"""Easel in a real browser: what a user clicks, what the page shows, and what lands on disk.

Every test drives the served app in headless Chromium (see conftest.py), keeps generations tiny
(2-3 steps, 64-128 px, the tiny random models on the CPU), and checks both the page (gallery,
status, info box, toasts) and the PNG saved in the outputs folder (its A1111 parameters text).
"""

import io
import re
import time
from datetime import date
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
from PIL import Image

from app.generation.requests import GenerationRequest
from app.images.metadata import parse_infotext, read_parameters

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips these tests, or fails them in CI, saying why
    Page, expect = object, None

GENERATION_TIMEOUT_S = 60
UI_TIMEOUT_MS = 20_000
TXT2IMG, IMG2IMG = "txt2img-images", "img2img-images"


# --- helpers ----------------------------------------------------------------------------------


def set_slider(page: Page, elem_id: str, value) -> None:
    """Type into a slider's number box, leave it (Tab), and check the slider itself took the value."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")
    expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(str(value))


def set_seed(page: Page, tab: str, seed: int) -> None:
    box = page.locator(f"#{tab}-seed input[type=number]")
    box.fill(str(seed))
    box.press("Tab")
    expect(box).to_have_value(str(seed))


def small_settings(page: Page, tab: str, *, steps: int, width: int, height: int, seed: int) -> None:
    set_slider(page, f"{tab}-steps", steps)
    set_slider(page, f"{tab}-width", width)
    set_slider(page, f"{tab}-height", height)
    set_seed(page, tab, seed)


def saved_pngs(outputs: Path, category: str) -> set[Path]:
    folder = outputs / category
    return set(folder.rglob("*.png")) if folder.exists() else set()


def wait_for_new_pngs(outputs: Path, category: str, before: set[Path], count: int = 1) -> list[Path]:
    """The PNGs saved under outputs/<category> since `before`, once there are `count` of them."""
    deadline = time.monotonic() + GENERATION_TIMEOUT_S
    while time.monotonic() < deadline:
        new = sorted(saved_pngs(outputs, category) - before)
        if len(new) >= count:
            assert len(new) == count, f"expected {count} new picture(s), found {[p.name for p in new]}"
            return new
        time.sleep(0.2)
    pytest.fail(f"no new PNG under {outputs / category} after {GENERATION_TIMEOUT_S} s")


def parameters_of(path: Path) -> str:
    with Image.open(path) as image:
        text = read_parameters(image)
    assert text, f"{path} carries no parameters text"
    return text


def pixels(image_or_path) -> np.ndarray:
    if isinstance(image_or_path, Path):
        with Image.open(image_or_path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.int16)
    return np.asarray(image_or_path.convert("RGB"), dtype=np.int16)


def shown_result(page: Page, tab: str, saved: Path) -> Image.Image:
    """The picture the results gallery shows (once it shows `saved`), as the browser downloads it."""
    image = page.locator(f"#{tab}-gallery img").first
    expect(image).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(image).to_have_attribute("src", re.compile(re.escape(saved.name) + "$"), timeout=UI_TIMEOUT_MS)
    response = page.request.get(urljoin(page.url, image.get_attribute("src")))
    assert response.ok, f"the gallery's picture could not be fetched: HTTP {response.status}"
    return Image.open(io.BytesIO(response.body()))


def assert_dated_folder(path: Path, started: date) -> None:
    """outputs/<category>/<YYYY-MM-DD>/<NNNNN>-<seed>.png, dated the day of the generation."""
    assert path.parent.name in {started.isoformat(), date.today().isoformat()}, path
    assert re.fullmatch(r"\d{5}-\d+\.png", path.name), path.name


def open_img2img(page: Page, mode: str) -> None:
    page.get_by_role("tab", name="Image to image").click()
    page.get_by_role("tab", name=mode, exact=True).click()
    expect(page.get_by_role("tab", name=mode, exact=True)).to_have_attribute("aria-selected", "true")


def canvas_geometry(page: Page, editor: str) -> tuple[float, float, float]:
    """(centre x, centre y, screen pixels per picture pixel) of the picture in an ImageEditor."""
    canvas = page.locator(f"#{editor} canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    zoom = page.locator(f"#{editor} .zoom-number span").inner_text()  # e.g. "327%"
    scale = float(zoom.strip().rstrip("%")) / 100
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, scale


def stroke(page: Page, start: tuple[float, float], end: tuple[float, float], steps: int = 3) -> None:
    """One mouse drag, as a user draws: press, move in small steps, release."""
    page.mouse.move(*start)
    page.mouse.down()
    for i in range(1, steps + 1):
        page.mouse.move(start[0] + (end[0] - start[0]) * i / steps, start[1] + (end[1] - start[1]) * i / steps)
    page.mouse.up()


def canvas_shot(page: Page, editor: str) -> np.ndarray:
    return pixels(Image.open(io.BytesIO(page.locator(f"#{editor} canvas").first.screenshot())))


def select_brush(page: Page, editor: str) -> None:
    """The Brush tool, if it is not already the active one (clicking it again opens its options)."""
    brush = page.locator(f"#{editor}").get_by_role("button", name="Brush", exact=True)
    expect(brush).to_be_visible()
    if "highlight" not in (brush.get_attribute("class") or ""):
        brush.click()
    expect(brush).to_have_class(re.compile(r"\bhighlight\b"))


# --- tests ------------------------------------------------------------------------------------


def test_generate_from_text_shows_and_saves_the_picture(page, served, screenshot):
    started = date.today()
    prompt = "a lighthouse at dusk, oil painting"
    page.locator("#txt2img-prompt textarea").fill(prompt)
    small_settings(page, "txt2img", steps=3, width=128, height=64, seed=4242)
    before = saved_pngs(served.outputs, TXT2IMG)

    page.locator("#txt2img-generate").click()

    [saved] = wait_for_new_pngs(served.outputs, TXT2IMG, before)
    status = page.locator("#txt2img-status")
    expect(status).to_contain_text("Done: 1 image(s)", timeout=UI_TIMEOUT_MS)
    expect(status).to_contain_text("Seed(s): 4242.")
    info = page.locator("#txt2img-info textarea")
    expect(info).to_have_value(re.compile(re.escape(prompt)))
    expect(info).to_have_value(re.compile(r"Steps: 3,"))
    shown = shown_result(page, "txt2img", saved)
    screenshot("first")

    assert_dated_folder(saved, started)
    assert saved.name.endswith("-4242.png")
    text = parameters_of(saved)
    assert info.input_value() == text  # the info box shows exactly what the PNG carries
    fields = parse_infotext(text)
    assert fields["Prompt"] == prompt
    assert (fields["Steps"], fields["Seed"], fields["Size"]) == ("3", "4242", "128x64")
    # The gallery serves the saved PNG itself: same pixels, parameters kept (not re-encoded to WebP).
    assert shown.format == "PNG" and shown.size == (128, 64)
    assert read_parameters(shown) == text
    assert np.array_equal(pixels(shown), pixels(saved))

    # Ctrl+Enter in the prompt box generates too.
    second_prompt = "a red fox in the snow"
    page.locator("#txt2img-prompt textarea").fill(second_prompt)
    set_seed(page, "txt2img", 4243)
    before = saved_pngs(served.outputs, TXT2IMG)
    page.locator("#txt2img-prompt textarea").press("Control+Enter")

    [second] = wait_for_new_pngs(served.outputs, TXT2IMG, before)
    expect(status).to_contain_text("Seed(s): 4243.", timeout=UI_TIMEOUT_MS)
    expect(info).to_have_value(re.compile(re.escape(second_prompt)))
    shown_result(page, "txt2img", second)
    assert second.name.endswith("-4243.png")
    fields = parse_infotext(parameters_of(second))
    assert (fields["Prompt"], fields["Steps"], fields["Seed"]) == (second_prompt, "3", "4243")


def test_sketch_strokes_reach_the_generation(page, served, screenshot):
    """Same seed, same settings: a blank canvas and one with strokes must give different pictures,
    and a new blank canvas must give the blank one's picture again."""
    open_img2img(page, "Sketch")
    page.locator("#img2img-prompt textarea").fill("a cat, pencil sketch")
    small_settings(page, "img2img", steps=2, width=128, height=128, seed=777)
    set_slider(page, "img2img-strength", 0.6)
    zoom = page.locator("#img2img-sketch .zoom-number span")
    default_zoom = zoom.inner_text()  # the 512 px canvas the tab opens with
    page.locator("#img2img-new-canvas").click()
    expect(zoom).not_to_have_text(default_zoom)  # redrawn at 128 px: zoomed in

    def generate() -> Path:
        before = saved_pngs(served.outputs, IMG2IMG)
        page.locator("#img2img-generate").click()
        [saved] = wait_for_new_pngs(served.outputs, IMG2IMG, before)
        shown_result(page, "img2img", saved)
        expect(page.locator("#img2img-status")).to_contain_text("Done: 1 image(s)", timeout=UI_TIMEOUT_MS)
        return saved

    blank = generate()

    blank_canvas = canvas_shot(page, "img2img-sketch")
    cx, cy, scale = canvas_geometry(page, "img2img-sketch")
    half = 64 * scale  # half the picture's side, on screen
    stroke(page, (cx - 0.7 * half, cy - 0.5 * half), (cx + 0.7 * half, cy - 0.1 * half))
    stroke(page, (cx - 0.1 * half, cy - 0.8 * half), (cx + 0.1 * half, cy + 0.8 * half))
    drawn_canvas = canvas_shot(page, "img2img-sketch")
    changed = (np.abs(drawn_canvas - blank_canvas).max(axis=-1) > 0).mean()
    assert changed > 0.02, f"the strokes did not show on the canvas ({changed:.1%} of it changed)"
    screenshot("drawn")

    sketched = generate()
    page.locator("#img2img-new-canvas").click()
    expect(page.locator("#img2img-sketch canvas").first).to_be_visible()
    page.wait_for_timeout(500)  # let the editor swap its layers before reading it back
    blank_again = generate()
    page.locator("#img2img-gallery").scroll_into_view_if_needed()

    for path in (blank, sketched, blank_again):
        fields = parse_infotext(parameters_of(path))
        assert "Denoising strength: 0.6," in parameters_of(path)
        assert (fields["Seed"], fields["Size"], fields["Steps"]) == ("777", "128x128", "2")
        assert Image.open(path).size == (128, 128)
    assert np.array_equal(pixels(blank), pixels(blank_again)), "same seed and blank canvas, different pictures"
    difference = np.abs(pixels(sketched) - pixels(blank)).mean()
    assert difference > 2, f"the strokes did not reach the generation (mean difference {difference:.2f})"


def test_inpaint_changes_only_the_painted_part(page, served, picture_file, screenshot):
    open_img2img(page, "Inpaint")
    page.locator("#img2img-prompt textarea").fill("a red balloon")
    set_slider(page, "img2img-steps", 2)
    set_seed(page, "img2img", 99)
    zoom = page.locator("#img2img-inpaint .zoom-number span")
    empty_zoom = zoom.inner_text()
    page.locator("#img2img-inpaint input[type=file]").set_input_files(picture_file)
    expect(zoom).not_to_have_text(empty_zoom)  # the 128 px picture is in, zoomed to fit
    select_brush(page, "img2img-inpaint")

    # A short stroke near the top-left corner, from picture pixel (16, 16) to (28, 22). Gradio's
    # brush (size 32) paints a disc about 60 px across on this 128 px picture, so the stroke
    # covers up to ~60 px from the corner; Mask blur 4 softens that edge by a few more.
    cx, cy, scale = canvas_geometry(page, "img2img-inpaint")
    at = lambda x, y: (cx + (x - 64) * scale, cy + (y - 64) * scale)  # noqa: E731  picture px → screen
    before_paint = canvas_shot(page, "img2img-inpaint")
    stroke(page, at(16, 16), at(28, 22))
    changed = (np.abs(canvas_shot(page, "img2img-inpaint") - before_paint).max(axis=-1) > 0).mean()
    assert changed > 0.01, f"the brush stroke did not show on the picture ({changed:.1%} changed)"
    screenshot("painted")

    before = saved_pngs(served.outputs, IMG2IMG)
    page.locator("#img2img-generate").click()
    [saved] = wait_for_new_pngs(served.outputs, IMG2IMG, before)
    expect(page.locator("#img2img-status")).to_contain_text("Done: 1 image(s)", timeout=UI_TIMEOUT_MS)
    shown = shown_result(page, "img2img", saved)
    expect(page.locator("#img2img-info textarea")).to_have_value(re.compile(r"Mask blur: 4"))

    text = parameters_of(saved)
    assert "Mask blur: 4" in text and "Denoising strength: 0.75" in text
    assert parse_infotext(text)["Size"] == "128x128"
    result, original = pixels(saved), pixels(picture_file)
    assert result.shape == original.shape == (128, 128, 3)
    assert np.array_equal(pixels(shown), result)
    # Far from the stroke the original is kept, pixel for pixel (a 30 px margin past the brush).
    far = np.zeros((128, 128), dtype=bool)
    far[96:, :] = True
    far[:, 96:] = True
    assert np.array_equal(result[far], original[far]), "pixels outside the painted area changed"
    # Under the stroke the picture was regenerated.
    painted = np.abs(result[14:25, 14:31] - original[14:25, 14:31]).mean()
    assert painted > 5, f"the painted area was not regenerated (mean difference {painted:.2f})"


def test_send_a_result_to_image_to_image(page, served, screenshot):
    page.locator("#txt2img-prompt textarea").fill("a small boat")
    small_settings(page, "txt2img", steps=2, width=96, height=64, seed=31)
    before = saved_pngs(served.outputs, TXT2IMG)
    page.locator("#txt2img-generate").click()
    [made] = wait_for_new_pngs(served.outputs, TXT2IMG, before)
    shown_result(page, "txt2img", made)

    page.locator("#txt2img-send-img2img").click()

    expect(page.get_by_role("tab", name="Image to image")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tab", name="Upload", exact=True)).to_have_attribute("aria-selected", "true")
    init = page.locator("#img2img-init-image img")
    expect(init).to_be_visible()
    screenshot("sent")

    set_slider(page, "img2img-steps", 2)
    set_seed(page, "img2img", 32)
    before = saved_pngs(served.outputs, IMG2IMG)
    page.locator("#img2img-generate").click()
    [saved] = wait_for_new_pngs(served.outputs, IMG2IMG, before)
    expect(page.locator("#img2img-status")).to_contain_text("Done: 1 image(s)", timeout=UI_TIMEOUT_MS)
    shown_result(page, "img2img", saved)

    assert saved.parent.parent == served.outputs / IMG2IMG
    fields = parse_infotext(parameters_of(saved))
    # "Keep the picture's size" is on: the sent picture's 96x64, not the sliders' 512x512.
    assert (fields["Size"], fields["Seed"], fields["Denoising strength"]) == ("96x64", "32", "0.75")
    assert Image.open(saved).size == (96, 64)


def test_png_info_reads_a_saved_picture_and_sends_it_to_txt2img(page, served, screenshot):
    prompt = "an owl on a branch, watercolour"
    made = served.engine.generate(
        GenerationRequest(prompt=prompt, negative_prompt="blurry", steps=2, width=64, height=64, seed=8080),
        timeout=GENERATION_TIMEOUT_S,
    ).images[0]
    assert made.path.is_file()

    tab = page.get_by_role("tab", name="PNG info")
    expect(tab, "there is no 'PNG info' tab in the page (ui/app.py does not build ui/pnginfo.py)").to_be_visible(
        timeout=5_000
    )
    tab.click()
    page.locator("#pnginfo-image input[type=file]").set_input_files(made.path)

    parameters = page.locator("#pnginfo-parameters textarea")
    expect(parameters).to_have_value(re.compile(re.escape(prompt)), timeout=UI_TIMEOUT_MS)
    expect(parameters).to_have_value(re.compile(r"Seed: 8080,"))
    assert parameters.input_value() == parameters_of(made.path)
    expect(page.locator("#pnginfo-watermark")).to_contain_text("Too small to carry the watermark")
    screenshot("read")

    send = page.locator("#pnginfo-send-txt2img")
    expect(send).to_be_enabled()
    send.click()

    expect(page.get_by_role("tab", name="Text to image")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#txt2img-prompt textarea")).to_have_value(prompt)
    expect(page.locator("#txt2img-negative-prompt textarea")).to_have_value("blurry")
    expect(page.locator("#txt2img-seed input[type=number]")).to_have_value("8080")
    expect(page.locator("#txt2img-steps input[type=range]")).to_have_value("2")
    expect(page.locator("#txt2img-width input[type=range]")).to_have_value("64")
    page.locator("#txt2img-seed").scroll_into_view_if_needed()


def test_generate_without_a_picture_says_what_to_do(page, served, screenshot):
    open_img2img(page, "Upload")
    before = saved_pngs(served.outputs, IMG2IMG)

    page.locator("#img2img-generate").click()

    toast = page.locator("[data-testid=toast-body].error")
    expect(toast).to_be_visible(timeout=UI_TIMEOUT_MS)
    text = toast.locator("[data-testid=toast-text]")
    expect(text).to_contain_text("Upload a picture first")
    expect(toast).to_have_css("opacity", "1")  # faded in: what the user reads now
    screenshot("toast")
    assert "Traceback" not in text.inner_text() and 'File "' not in text.inner_text()
    assert "Traceback" not in page.locator("body").inner_text()
    assert saved_pngs(served.outputs, IMG2IMG) == before


def test_a_lora_from_the_list_and_hires_fix_make_a_bigger_picture_that_records_both(page, served, screenshot):
    from app.models.families import Family
    from tools.tiny_models import tiny_pipeline
    from tools.tiny_networks import kohya_lora, save_lora

    save_lora(served.models / "Lora" / "e2e-ink.safetensors", kohya_lora(tiny_pipeline(Family.SD1), seed=3))
    page.locator("#txt2img-prompt textarea").fill("a harbour at night")
    page.locator("#txt2img-networks").get_by_text("LoRA and embeddings").click()
    page.locator("#txt2img-networks-refresh").click()  # the file arrived after the page was built
    page.locator("#txt2img-networks-search textarea, #txt2img-networks-search input").first.fill("e2e-i")
    row = page.locator("#txt2img-loras").get_by_text("e2e-ink", exact=True)
    expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
    row.click()
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a harbour at night <lora:e2e-ink:1>",
                                                                   timeout=UI_TIMEOUT_MS)

    small_settings(page, "txt2img", steps=2, width=64, height=64, seed=515)
    page.locator("#txt2img-hires").get_by_text("Hires fix", exact=True).first.click()
    page.locator("#txt2img-enable-hr input[type=checkbox]").check()
    set_slider(page, "txt2img-hr-scale", 1.5)
    before = saved_pngs(served.outputs, TXT2IMG)
    page.locator("#txt2img-generate").click()

    [saved] = wait_for_new_pngs(served.outputs, TXT2IMG, before)
    expect(page.locator("#txt2img-status")).to_contain_text("Done: 1 image(s)", timeout=UI_TIMEOUT_MS)
    screenshot("hires-lora")
    with Image.open(saved) as picture:
        assert picture.size == (96, 96)
    fields = parse_infotext(parameters_of(saved))
    assert fields["Prompt"] == "a harbour at night <lora:e2e-ink:1>"
    assert fields["Size"] == "64x64" and fields["Hires upscale"] == "1.5" and fields["Hires upscaler"] == "Latent"
    assert fields["Lora hashes"].startswith("e2e-ink: ")
    assert "Couldn't find" not in page.locator("#txt2img-status").inner_text()


def choose_checkpoint(page: Page, title: str) -> None:
    box = page.locator("#checkpoint input")
    box.click()
    box.fill(title)
    page.get_by_role("option", name=title, exact=True).click()
    expect(page.locator("#model-status")).to_contain_text(f"Active checkpoint: {title}", timeout=UI_TIMEOUT_MS)


def test_the_depth_map_upload_shows_only_while_a_depth_checkpoint_is_active(page, served, screenshot):
    from app.models.families import Family
    from tools.tiny_models import save_tiny_model

    save_tiny_model(served.models / "Stable-diffusion" / "tiny-depth", Family.SD2_DEPTH)
    page.get_by_role("tab", name="Image to image").click()
    depth = page.locator("#img2img-depth")
    expect(depth).to_be_hidden()
    page.locator("#checkpoint-refresh").click()
    choose_checkpoint(page, "tiny-depth")
    expect(depth).to_be_visible(timeout=UI_TIMEOUT_MS)
    screenshot("depth-shown")
    choose_checkpoint(page, "tiny-sd15")
    expect(depth).to_be_hidden(timeout=UI_TIMEOUT_MS)


def test_a_style_saved_in_one_tab_is_offered_in_the_other(page, served, screenshot):
    page.locator("#txt2img-prompt textarea").fill("{prompt}, watercolour")
    page.locator("#txt2img-styles").get_by_text("Styles", exact=True).first.click()
    page.locator("#txt2img-styles-name textarea, #txt2img-styles-name input").first.fill("E2E watercolour")
    page.locator("#txt2img-styles-save").click()
    expect(page.locator("#txt2img-styles-message")).to_contain_text("Saved the style", timeout=UI_TIMEOUT_MS)

    page.get_by_role("tab", name="Image to image").click()
    page.locator("#img2img-styles").get_by_text("Styles", exact=True).first.click()
    page.locator("#img2img-styles-chosen input").click()
    expect(page.get_by_role("option", name="E2E watercolour")).to_be_visible(timeout=UI_TIMEOUT_MS)
    screenshot("style-offered")
    assert [style.name for style in served.engine.styles()].count("E2E watercolour") == 1


def test_reset_settings_also_clears_the_chosen_styles(page, served, screenshot):
    served.engine.save_style("E2E reset", "{prompt}, charcoal", "")
    page.reload()
    page.locator("#txt2img-styles").get_by_text("Styles", exact=True).first.click()
    page.locator("#txt2img-styles-chosen input").click()
    page.get_by_role("option", name="E2E reset").click()
    chosen = page.locator("#txt2img-styles-chosen")
    expect(chosen).to_contain_text("E2E reset")
    page.locator("#txt2img-reset").click()
    expect(chosen).not_to_contain_text("E2E reset", timeout=UI_TIMEOUT_MS)
