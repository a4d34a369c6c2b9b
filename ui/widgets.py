"""Widgets that several tabs share: the generation settings and the results panel."""

from dataclasses import dataclass

import gradio as gr

from app.engine import Engine
from app.generation.requests import MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_CFG, MAX_SIZE, MAX_STEPS, MIN_SIZE
from app.generation.samplers import AUTOMATIC, DEFAULT_SAMPLER


@dataclass
class GenerationControls:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    batch_count: gr.Slider
    batch_size: gr.Slider

    def inputs(self) -> list:
        """In the order `request_fields` reads them."""
        return [
            self.prompt, self.negative_prompt, self.sampler, self.schedule, self.steps, self.cfg_scale,
            self.width, self.height, self.seed, self.batch_count, self.batch_size,
        ]


def request_fields(values: list) -> dict:
    """The GenerationRequest fields for the values of `GenerationControls.inputs()`."""
    names = (
        "prompt", "negative_prompt", "sampler", "schedule", "steps", "cfg_scale",
        "width", "height", "seed", "batch_count", "batch_size",
    )
    return dict(zip(names, values))


def prompt_boxes(tab: str) -> tuple[gr.Textbox, gr.Textbox]:
    prompt = gr.Textbox(
        label="Prompt",
        placeholder="Describe the picture: a lighthouse at dusk, oil painting, (warm light:1.2)",
        lines=3,
        elem_id=f"{tab}-prompt",
    )
    negative = gr.Textbox(
        label="Negative prompt",
        placeholder="What to keep out: blurry, text, watermark",
        lines=2,
        elem_id=f"{tab}-negative-prompt",
    )
    return prompt, negative


def generation_controls(engine: Engine, tab: str, prompt: gr.Textbox, negative: gr.Textbox) -> GenerationControls:
    with gr.Row():
        sampler = gr.Dropdown(engine.sampler_names(), value=DEFAULT_SAMPLER, label="Sampler", elem_id=f"{tab}-sampler")
        schedule = gr.Dropdown(
            engine.schedule_names(), value=AUTOMATIC, label="Schedule type",
            info="Automatic: the sampler's usual schedule", elem_id=f"{tab}-schedule",
        )
    with gr.Row():
        steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Sampling steps", elem_id=f"{tab}-steps")
        cfg = gr.Slider(1, MAX_CFG, value=7, step=0.5, label="CFG scale", info="How closely to follow the prompt", elem_id=f"{tab}-cfg")
    with gr.Row():
        width = gr.Slider(MIN_SIZE, MAX_SIZE, value=512, step=8, label="Width", elem_id=f"{tab}-width")
        height = gr.Slider(MIN_SIZE, MAX_SIZE, value=512, step=8, label="Height", elem_id=f"{tab}-height")
    with gr.Row():
        seed = gr.Number(value=-1, precision=0, label="Seed", info="-1 picks a random seed", elem_id=f"{tab}-seed")
        batch_count = gr.Slider(1, MAX_BATCH_COUNT, value=1, step=1, label="Batch count", info="Batches one after another", elem_id=f"{tab}-batch-count")
        batch_size = gr.Slider(1, MAX_BATCH_SIZE, value=1, step=1, label="Batch size", info="Images per batch (more memory)", elem_id=f"{tab}-batch-size")
    return GenerationControls(prompt, negative, sampler, schedule, steps, cfg, width, height, seed, batch_count, batch_size)


@dataclass
class ResultsPanel:
    gallery: gr.Gallery
    preview: gr.Image
    status: gr.Markdown
    info: gr.Textbox
    parameters: gr.State       # the infotext of each image in the gallery, for the info box

    def outputs(self) -> list:
        return [self.gallery, self.preview, self.status, self.info, self.parameters]


def results_panel(tab: str) -> ResultsPanel:
    status = gr.Markdown("", elem_id=f"{tab}-status")
    preview = gr.Image(label="Live preview", visible=False, interactive=False, format="png", elem_id=f"{tab}-preview")
    # format="png": Gradio's default (WebP) would drop the parameters text from the images.
    gallery = gr.Gallery(
        label="Results", format="png", columns=2, height=520, interactive=False, elem_id=f"{tab}-gallery"
    )
    info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id=f"{tab}-info")
    parameters = gr.State([])
    gallery.select(_selected_parameters, inputs=parameters, outputs=info, queue=False, api_visibility="private")
    return ResultsPanel(gallery, preview, status, info, parameters)


def _selected_parameters(parameters: list[str], event: gr.SelectData) -> str:
    index = event.index if isinstance(event.index, int) else 0
    return parameters[index] if 0 <= index < len(parameters) else ""
