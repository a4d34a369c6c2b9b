"""The Gradio Blocks app: header, then one tab per task. Presentation only: it calls the Engine."""

import gradio as gr
from PIL import Image

from app.engine import Engine
from app.preferences import Preferences
from ui.header import build_header
from ui.history import build_history_tab
from ui.img2img import INPAINT, SKETCH, UPLOAD, Img2ImgTab, build_img2img_tab, depth_section_visible, editor_value
from ui.pnginfo import PngInfoTab, build_pnginfo_tab
from ui.runner import page_error
from ui.styles import keep_in_step
from ui.txt2img import build_txt2img_tab
from ui.upscale import UpscaleTab, build_upscale_tab
from ui.widgets import GenerationControls, ResultsPanel, pasted_values

TITLE = "Easel"
TXT2IMG_TAB, IMG2IMG_TAB, UPSCALE_TAB, PNGINFO_TAB, HISTORY_TAB = "txt2img", "img2img", "upscale", "pnginfo", "history"

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


def build_ui(engine: Engine, preferences: Preferences | None = None, lan_urls: list[str] | None = None) -> gr.Blocks:
    """The page. `lan_urls`: the addresses colleagues can open (shown for copying when shared)."""
    preferences = preferences or Preferences(None)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {TITLE}\nMake pictures from words, or change a picture you have. Everything runs on this computer.")
        if lan_urls:
            gr.Textbox("  ".join(lan_urls), label="Shared on your network: colleagues open", interactive=False,
                       buttons=["copy"], elem_id="lan-urls")
        checkpoint_selected = build_header(engine)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Text to image", id=TXT2IMG_TAB):
                txt2img = build_txt2img_tab(engine, preferences)
            with gr.Tab("Image to image", id=IMG2IMG_TAB):
                img2img = build_img2img_tab(engine, preferences)
            with gr.Tab("Upscale", id=UPSCALE_TAB):
                upscale = build_upscale_tab(engine)
            with gr.Tab("PNG info", id=PNGINFO_TAB):
                pnginfo = build_pnginfo_tab(engine)
            with gr.Tab("History", id=HISTORY_TAB):
                build_history_tab(engine)
        for results in (txt2img.results, img2img.results):
            wire_send_to_img2img(results, img2img, tabs)
            wire_send_to_upscale(results, upscale, tabs)
        wire_pnginfo(pnginfo, txt2img.controls, img2img, tabs)
        keep_in_step([txt2img.styles, img2img.styles], engine, blocks)
        # The depth map upload follows the checkpoint: shown only for an SD 2 depth one.
        checkpoint_selected.then(lambda: gr.update(visible=depth_section_visible(engine)), outputs=img2img.depth,
                                 queue=False, api_visibility="private")
        blocks.load(lambda: gr.update(visible=depth_section_visible(engine)), outputs=img2img.depth, queue=False,
                    api_visibility="private")
    return blocks


def _picture(paths: list[str], selected: int) -> Image.Image:
    if not paths:
        raise page_error("Generate a picture first, then send it.")
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


def wire_send_to_upscale(results: ResultsPanel, upscale: UpscaleTab, tabs: gr.Tabs) -> None:
    def send(paths: list[str], selected: int):
        if not paths:
            raise page_error("Generate a picture first, then send it.")
        # The saved file, not a copy: its parameters text must reach the upscaler.
        return paths[selected if 0 <= selected < len(paths) else 0], gr.Tabs(selected=UPSCALE_TAB)

    results.send_upscale.click(
        send, inputs=[results.paths, results.selected], outputs=[upscale.image, tabs], queue=False, api_visibility="private"
    )


def _control_updates(fields: dict, controls: GenerationControls) -> list:
    """One update per generation control: the value read from a PNG, off (hires, variation), or unchanged."""
    return pasted_values(fields, controls.names())


def wire_pnginfo(pnginfo: PngInfoTab, txt2img: GenerationControls, img2img: Img2ImgTab, tabs: gr.Tabs) -> None:
    """PNG info's send buttons: the parameters into a tab's settings (and the picture into img2img)."""

    def to_txt2img(fields: dict):
        return *_control_updates(fields or {}, txt2img), gr.Tabs(selected=TXT2IMG_TAB)

    def to_img2img(picture, fields: dict):
        if picture is None:
            raise page_error("Drop a picture on PNG info first.")
        strength = (fields or {}).get("strength", gr.skip())
        return (
            *_control_updates(fields or {}, img2img.controls), picture, strength,
            gr.Tabs(selected=IMG2IMG_TAB), gr.Tabs(selected=UPLOAD), UPLOAD,
        )

    pnginfo.send_to_txt2img.click(
        to_txt2img, inputs=pnginfo.fields, outputs=[*txt2img.inputs(), tabs], queue=False, api_visibility="private"
    )
    pnginfo.send_to_img2img.click(
        to_img2img,
        inputs=[pnginfo.image, pnginfo.fields],
        outputs=[*img2img.controls.inputs(), img2img.upload, img2img.strength, tabs, img2img.modes, img2img.mode],
        queue=False,
        api_visibility="private",
    )
