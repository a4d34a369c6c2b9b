"""The text-to-image tab."""

from dataclasses import dataclass

import gradio as gr

from app.engine import Engine
from app.generation.requests import GenerationRequest
from app.preferences import Preferences
from ui import runner
from ui.networks import networks_section
from ui.styles import StylesSection, remember_styles, styles_section
from ui.widgets import GenerationControls, ResultsPanel, remembered, request_fields, results_column, settings_column

SECTION = "txt2img"


@dataclass
class Txt2ImgTab:
    controls: GenerationControls
    results: ResultsPanel
    styles: StylesSection


def build_txt2img_tab(engine: Engine, preferences: Preferences) -> Txt2ImgTab:
    values = remembered(preferences.section(SECTION))
    job = gr.State(None)
    with gr.Row():
        with gr.Column(scale=5):
            controls = settings_column(engine, SECTION, values, preferences, hires=True)
            with controls.below_prompts:
                styles = styles_section(engine, SECTION, controls, preferences)
                networks_section(engine, SECTION, controls)
        with gr.Column(scale=5):
            generate, results = results_column(SECTION, job, controls)

    def run(*values, progress=gr.Progress(), request: gr.Request = None):
        *values, chosen_styles = values  # the styles come last: API callers of the page may leave them out
        fields = request_fields(list(values))
        preferences.remember(SECTION, fields)
        remember_styles(preferences, SECTION, chosen_styles)
        generation = GenerationRequest(**fields, styles=list(chosen_styles or []))
        yield from runner.generate(engine, generation, progress, runner.owner_of(request))

    generate.click(
        run,
        inputs=[*controls.inputs(), styles.chosen],
        outputs=[job, *results.outputs()],
        api_name="txt2img",
        concurrency_id="generate",
    )
    return Txt2ImgTab(controls, results, styles)
