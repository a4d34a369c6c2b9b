"""The upscale tab: a picture in, a larger picture out, its generation parameters kept."""

from dataclasses import dataclass

import gradio as gr

from app.engine import Engine
from app.generation.upscale import LANCZOS, MAX_SCALE, UPSCALERS, UpscaleRequest
from ui.runner import user_message


@dataclass
class UpscaleTab:
    image: gr.Image


def build_upscale_tab(engine: Engine) -> UpscaleTab:
    with gr.Row():
        with gr.Column():
            # format="png" and type="pil": the picture's parameters text comes along.
            image = gr.Image(label="Picture", type="pil", image_mode=None, format="png", sources=("upload", "clipboard"),
                             height=400, elem_id="upscale-image")
            with gr.Row():
                upscaler = gr.Dropdown(list(UPSCALERS), value=LANCZOS, label="Upscaler", elem_id="upscale-upscaler",
                                       info="More upscalers (SD x4, ESRGAN) come in a later version")
                scale = gr.Slider(1, MAX_SCALE, value=4, step=0.5, label="Scale", elem_id="upscale-scale")
            run = gr.Button("Upscale", variant="primary", elem_id="upscale-run")
        with gr.Column():
            result = gr.Image(label="Result", format="png", interactive=False, height=400, elem_id="upscale-result")
            info = gr.Textbox(label="Parameters", lines=4, interactive=False, elem_id="upscale-info")

    def upscale(picture, chosen: str, factor: float):
        if picture is None:
            raise gr.Error("Upload a picture first (drop it on the Picture box).")
        try:
            done = engine.upscale(UpscaleRequest(image=picture, scale=factor, upscaler=chosen))
        except Exception as error:
            raise gr.Error(user_message(error)) from None
        return str(done.path), done.parameters

    run.click(upscale, inputs=[image, upscaler, scale], outputs=[result, info], api_name="upscale", concurrency_id="generate")
    return UpscaleTab(image)
