"""The text-to-image tab."""

from dataclasses import dataclass

import gradio as gr

from app.engine import Engine
from app.generation.requests import GenerationRequest
from app.preferences import Preferences
from ui import runner
from ui.widgets import (
    GenerationControls,
    ResultsPanel,
    generation_controls,
    prompt_boxes,
    remembered,
    request_fields,
    reset_button,
    results_panel,
    wire_reuse_seed,
)

SECTION = "txt2img"


@dataclass
class Txt2ImgTab:
    controls: GenerationControls
    results: ResultsPanel


def build_txt2img_tab(engine: Engine, preferences: Preferences) -> Txt2ImgTab:
    values = remembered(preferences.section(SECTION))
    job = gr.State(None)
    with gr.Row():
        with gr.Column(scale=5):
            prompt, negative = prompt_boxes(SECTION, values)
            controls = generation_controls(engine, SECTION, prompt, negative, values)
            reset_button(controls, preferences, SECTION)
        with gr.Column(scale=5):
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="txt2img-generate", elem_classes="easel-generate")
                skip = gr.Button("Skip", elem_id="txt2img-skip")
                stop = gr.Button("Interrupt", variant="stop", elem_id="txt2img-interrupt")
            results = results_panel(SECTION)
    wire_reuse_seed(controls, results)

    def run(*values, progress=gr.Progress()):
        fields = request_fields(list(values))
        preferences.remember(SECTION, fields)
        yield from runner.generate(engine, GenerationRequest(**fields), progress)

    generate.click(
        run,
        inputs=controls.inputs(),
        outputs=[job, *results.outputs()],
        api_name="txt2img",
        concurrency_id="generate",
    )
    skip.click(runner.skip, inputs=job, outputs=results.status, queue=False, api_visibility="private")
    stop.click(runner.interrupt, inputs=job, outputs=results.status, queue=False, api_name="txt2img_interrupt")
    return Txt2ImgTab(controls, results)
