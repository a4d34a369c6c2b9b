"""The text-to-image tab."""

import gradio as gr

from app.engine import Engine
from app.generation.requests import GenerationRequest
from ui import runner
from ui.widgets import generation_controls, prompt_boxes, request_fields, results_panel


def build_txt2img_tab(engine: Engine) -> None:
    job = gr.State(None)
    with gr.Row():
        with gr.Column(scale=5):
            prompt, negative = prompt_boxes("txt2img")
            controls = generation_controls(engine, "txt2img", prompt, negative)
        with gr.Column(scale=5):
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="txt2img-generate")
                stop = gr.Button("Interrupt", variant="stop", elem_id="txt2img-interrupt")
            results = results_panel("txt2img")

    def run(*values, progress=gr.Progress()):
        request = GenerationRequest(**request_fields(list(values)))
        yield from runner.generate(engine, request, progress)

    generate.click(
        run,
        inputs=controls.inputs(),
        outputs=[job, *results.outputs()],
        api_name="txt2img",
        concurrency_id="generate",
    )
    stop.click(runner.interrupt, inputs=job, outputs=results.status, queue=False, api_name="txt2img_interrupt")
