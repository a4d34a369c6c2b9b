"""The image-to-image tab: an init image and a denoising strength."""

import gradio as gr

from app.engine import Engine
from app.generation.requests import GenerationRequest
from ui import runner
from ui.widgets import generation_controls, prompt_boxes, request_fields, results_panel


def build_img2img_tab(engine: Engine) -> None:
    job = gr.State(None)
    with gr.Row():
        with gr.Column(scale=5):
            init_image = gr.Image(
                label="Init image", type="pil", image_mode=None, sources=("upload", "clipboard"),
                height=360, elem_id="img2img-init-image",
            )
            strength = gr.Slider(
                0, 1, value=0.75, step=0.01, label="Denoising strength",
                info="Low keeps the image, high follows the prompt", elem_id="img2img-strength",
            )
            keep_size = gr.Checkbox(
                value=True, label="Use the image's own size (untick to resize to width and height)",
                elem_id="img2img-keep-size",
            )
            prompt, negative = prompt_boxes("img2img")
            controls = generation_controls(engine, "img2img", prompt, negative)
        with gr.Column(scale=5):
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="img2img-generate")
                stop = gr.Button("Interrupt", variant="stop", elem_id="img2img-interrupt")
            results = results_panel("img2img")

    def run(image, strength_value, use_image_size, *values, progress=gr.Progress()):
        if image is None:
            raise gr.Error("Upload an init image first (drop a picture on the Init image box).")
        fields = request_fields(list(values))
        if use_image_size:
            fields.update(width=None, height=None)
        request = GenerationRequest(**fields, init_image=image, strength=strength_value)
        yield from runner.generate(engine, request, progress)

    generate.click(
        run,
        inputs=[init_image, strength, keep_size, *controls.inputs()],
        outputs=[job, *results.outputs()],
        api_name="img2img",
        concurrency_id="generate",
    )
    stop.click(runner.interrupt, inputs=job, outputs=results.status, queue=False, api_name="img2img_interrupt")
