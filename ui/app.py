"""The Gradio Blocks app: header, then one tab per task. Presentation only: it calls the Engine."""

import gradio as gr
from PIL import Image

from app.engine import Engine
from app.preferences import Preferences
from ui.header import build_header
from ui.img2img import INPAINT, SKETCH, UPLOAD, Img2ImgTab, build_img2img_tab, editor_value
from ui.txt2img import build_txt2img_tab
from ui.widgets import ResultsPanel

TITLE = "Easel"
TXT2IMG_TAB, IMG2IMG_TAB, PNGINFO_TAB, HISTORY_TAB = "txt2img", "img2img", "pnginfo", "history"

# Ctrl+Enter (Cmd+Enter on a Mac) presses the Generate button of the tab in view.
PAGE_JS = """
() => {
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const visible = [...document.querySelectorAll(".easel-generate")].find((b) => b.offsetParent !== null);
    if (visible) { event.preventDefault(); visible.click(); }
  });
}
"""


def build_ui(engine: Engine, preferences: Preferences | None = None) -> gr.Blocks:
    preferences = preferences or Preferences(None)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {TITLE}\nMake pictures from words, or change a picture you have. Everything runs on this computer.")
        build_header(engine)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Text to image", id=TXT2IMG_TAB):
                txt2img = build_txt2img_tab(engine, preferences)
            with gr.Tab("Image to image", id=IMG2IMG_TAB):
                img2img = build_img2img_tab(engine, preferences)
        for results in (txt2img.results, img2img.results):
            wire_send_to_img2img(results, img2img, tabs)
    return blocks


def _picture(paths: list[str], selected: int) -> Image.Image:
    if not paths:
        raise gr.Error("Generate a picture first, then send it.")
    with Image.open(paths[selected if 0 <= selected < len(paths) else 0]) as image:
        return image.convert("RGB")


def wire_send_to_img2img(results: ResultsPanel, img2img: Img2ImgTab, tabs: gr.Tabs) -> None:
    """The "Send to ..." buttons of a results panel: the selected picture into an image-to-image mode."""

    def sender(mode: str):
        def send(paths: list[str], selected: int):
            picture = _picture(paths, selected)
            updates = {UPLOAD: gr.skip(), SKETCH: gr.skip(), INPAINT: gr.skip()}
            updates[mode] = picture if mode == UPLOAD else editor_value(picture)
            return updates[UPLOAD], updates[SKETCH], updates[INPAINT], gr.Tabs(selected=IMG2IMG_TAB), gr.Tabs(selected=mode), mode

        return send

    outputs = [img2img.upload, img2img.sketch, img2img.inpaint, tabs, img2img.modes, img2img.mode]
    for button, mode in ((results.send_img2img, UPLOAD), (results.send_sketch, SKETCH), (results.send_inpaint, INPAINT)):
        button.click(sender(mode), inputs=[results.paths, results.selected], outputs=outputs, queue=False, api_visibility="private")
