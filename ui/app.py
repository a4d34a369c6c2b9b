"""The Gradio Blocks app: header, then one tab per task. Presentation only: it calls the Engine."""

import gradio as gr

from app.engine import Engine
from ui.header import build_header
from ui.img2img import build_img2img_tab
from ui.txt2img import build_txt2img_tab

TITLE = "Easel"


def build_ui(engine: Engine) -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {TITLE}\nMake pictures from words, or change a picture you have. Everything runs on this computer.")
        build_header(engine)
        with gr.Tabs():
            with gr.Tab("Text to image", id="txt2img"):
                build_txt2img_tab(engine)
            with gr.Tab("Image to image", id="img2img"):
                build_img2img_tab(engine)
    return blocks
