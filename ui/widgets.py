"""Widgets that several tabs share: the generation settings and the results panel."""

from dataclasses import dataclass

import gradio as gr

from app.engine import Engine
from app.generation.fast_mode import LABEL as FAST_MODE_LABEL
from app.generation.requests import MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_CFG, MAX_SEED, MAX_SIZE, MAX_STEPS, MIN_SIZE
from app.generation.samplers import AUTOMATIC, DEFAULT_SAMPLER
from ui import runner
from ui.hires import HIRES_DEFAULTS, HIRES_FIELDS, HiresControls, hires_section

# The fields of the generation settings, in the order their components are passed to handlers.
FIELDS = (
    "prompt", "negative_prompt", "sampler", "schedule", "steps", "cfg_scale",
    "width", "height", "seed", "batch_count", "batch_size",
    "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h",  # the seed's "Extra"
    "easel_fast",
)
DEFAULTS = {
    "prompt": "", "negative_prompt": "", "sampler": DEFAULT_SAMPLER, "schedule": AUTOMATIC, "steps": 20,
    "cfg_scale": 7.0, "width": 512, "height": 512, "seed": -1, "batch_count": 1, "batch_size": 1,
    "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_w": 0, "seed_resize_from_h": 0,
    "easel_fast": False, **HIRES_DEFAULTS,
}
# What pasting parameters (PNG info) sets when the text does not say: off, as A1111 pastes them.
PASTE_DEFAULTS = {key: DEFAULTS[key] for key in ("subseed_strength", "seed_resize_from_w", "seed_resize_from_h",
                                                 "easel_fast", *HIRES_FIELDS) if key != "strength"}
SIZE_PRESETS = ["512x512", "768x768", "512x768", "768x512", "640x448", "448x640", "1024x576", "576x1024"]


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
    subseed: gr.Number
    subseed_strength: gr.Slider
    seed_resize_from_w: gr.Slider
    seed_resize_from_h: gr.Slider
    easel_fast: gr.Checkbox
    reuse_seed: gr.Button      # wired by `wire_reuse_seed`, which knows the results
    hires: HiresControls | None = None  # text to image only
    below_prompts: gr.Column | None = None  # a place right under the prompt boxes, for the tab to fill
    reset: gr.Button | None = None          # "Reset settings to defaults": sections of the tab follow it too

    def names(self) -> tuple[str, ...]:
        """The request field of each of `inputs()`, in order."""
        return FIELDS + (HIRES_FIELDS if self.hires else ())

    def inputs(self) -> list:
        return [getattr(self, name) for name in FIELDS] + (self.hires.inputs() if self.hires else [])


def request_fields(values: list) -> dict:
    """The GenerationRequest fields for the values of `GenerationControls.inputs()` (hires fix's
    come after the common ones, in the tab that has them)."""
    return dict(zip(FIELDS + HIRES_FIELDS, values))


def pasted_values(fields: dict, names: tuple[str, ...]) -> list:
    """One value per control for parameters read from a picture: what it says, else off for hires
    fix and variations (as A1111 pastes), else unchanged."""
    return [fields.get(name, PASTE_DEFAULTS.get(name, gr.skip())) for name in names]


def remembered(saved: dict) -> dict:
    """Saved values over the defaults, dropping any that no longer fit (e.g. a removed sampler)."""
    values = dict(DEFAULTS)
    values.update({key: value for key, value in saved.items() if key in DEFAULTS})
    return values


def prompt_boxes(tab: str, values: dict) -> tuple[gr.Textbox, gr.Textbox]:
    prompt = gr.Textbox(
        value=values["prompt"],
        label="Prompt (Ctrl+Enter to generate)",
        placeholder="Describe the picture: a lighthouse at dusk, oil painting, (warm light:1.2)",
        lines=3,
        elem_id=f"{tab}-prompt",
    )
    negative = gr.Textbox(
        value=values["negative_prompt"],
        label="Negative prompt",
        placeholder="What to keep out: blurry, text, watermark",
        lines=2,
        elem_id=f"{tab}-negative-prompt",
    )
    return prompt, negative


def generation_controls(engine: Engine, tab: str, prompt, negative, values: dict, hires: bool = False) -> GenerationControls:
    samplers = engine.sampler_names()
    fast = gr.Checkbox(value=bool(values["easel_fast"]), label="Fast mode", info=FAST_MODE_LABEL,
                       elem_id=f"{tab}-fast-mode")
    with gr.Row():
        sampler = gr.Dropdown(
            samplers, value=values["sampler"] if values["sampler"] in samplers else DEFAULT_SAMPLER,
            label="Sampler", elem_id=f"{tab}-sampler",
        )
        schedule = gr.Dropdown(
            engine.schedule_names(), value=values["schedule"], label="Schedule type",
            info="Automatic: the sampler's usual schedule", elem_id=f"{tab}-schedule",
        )
    with gr.Row():
        steps = gr.Slider(1, MAX_STEPS, value=values["steps"], step=1, label="Sampling steps", elem_id=f"{tab}-steps")
        cfg = gr.Slider(
            1, MAX_CFG, value=values["cfg_scale"], step=0.5, label="CFG scale",
            info="How closely to follow the prompt", elem_id=f"{tab}-cfg",
        )
    with gr.Row(equal_height=True):
        width = gr.Slider(MIN_SIZE, MAX_SIZE, value=values["width"], step=8, label="Width", elem_id=f"{tab}-width")
        height = gr.Slider(MIN_SIZE, MAX_SIZE, value=values["height"], step=8, label="Height", elem_id=f"{tab}-height")
        swap = gr.Button("⇅ Swap", scale=0, min_width=80, elem_id=f"{tab}-swap-size")
        preset = gr.Dropdown(SIZE_PRESETS, value=None, label="Size preset", scale=1, min_width=120, elem_id=f"{tab}-size-preset")
    with gr.Row(equal_height=True):
        seed = gr.Number(value=values["seed"], precision=0, label="Seed", info="-1 picks a random seed", elem_id=f"{tab}-seed")
        random_seed = gr.Button("Random", scale=0, min_width=80, elem_id=f"{tab}-seed-random")
        reuse_seed = gr.Button("Reuse last", scale=0, min_width=100, elem_id=f"{tab}-seed-reuse")
    with gr.Accordion("Extra", open=bool(values["subseed_strength"]), elem_id=f"{tab}-seed-extra"):
        with gr.Row(equal_height=True):
            subseed = gr.Number(value=values["subseed"], precision=0, minimum=-1, maximum=MAX_SEED,
                                label="Variation seed", info="-1 picks a random one", elem_id=f"{tab}-subseed")
            subseed_strength = gr.Slider(0, 1, value=values["subseed_strength"], step=0.01, label="Variation strength",
                                         info="0: the seed's picture; 1: the variation seed's", elem_id=f"{tab}-subseed-strength")
        with gr.Row():
            resize_w = gr.Slider(0, MAX_SIZE, value=values["seed_resize_from_w"], step=8, label="Resize seed from width",
                                 info="0: off. The seed's noise as at this size", elem_id=f"{tab}-seed-resize-w")
            resize_h = gr.Slider(0, MAX_SIZE, value=values["seed_resize_from_h"], step=8, label="Resize seed from height",
                                 info="0: off", elem_id=f"{tab}-seed-resize-h")
    with gr.Row():
        batch_count = gr.Slider(
            1, MAX_BATCH_COUNT, value=values["batch_count"], step=1, label="Batch count",
            info="Batches one after another", elem_id=f"{tab}-batch-count",
        )
        batch_size = gr.Slider(
            1, MAX_BATCH_SIZE, value=values["batch_size"], step=1, label="Batch size",
            info="Images per batch (more memory)", elem_id=f"{tab}-batch-size",
        )
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], queue=False, api_visibility="private")
    preset.input(_preset_size, inputs=preset, outputs=[width, height], queue=False, api_visibility="private")
    hires_controls = hires_section(engine, tab, values) if hires else None
    random_seed.click(lambda: -1, outputs=seed, queue=False, api_visibility="private")
    return GenerationControls(
        prompt, negative, sampler, schedule, steps, cfg, width, height, seed, batch_count, batch_size,
        subseed, subseed_strength, resize_w, resize_h, fast, reuse_seed, hires_controls,
    )


def _preset_size(preset: str | None):
    if not preset:
        return gr.skip(), gr.skip()
    width, height = (int(side) for side in preset.split("x"))
    return width, height


@dataclass
class ResultsPanel:
    gallery: gr.Gallery
    preview: gr.Image
    status: gr.Markdown
    info: gr.Textbox
    parameters: gr.State       # the infotext of each image in the gallery
    paths: gr.State            # the saved file of each image in the gallery
    seeds: gr.State            # the seed of each image
    selected: gr.State         # index of the image the user clicked (0 before any click)
    send_img2img: gr.Button
    send_sketch: gr.Button
    send_inpaint: gr.Button
    send_upscale: gr.Button

    def outputs(self) -> list:
        return [self.gallery, self.preview, self.status, self.info, self.parameters, self.paths, self.seeds, self.selected]


def results_panel(tab: str) -> ResultsPanel:
    status = gr.Markdown("", elem_id=f"{tab}-status")
    preview = gr.Image(label="Live preview", visible=False, interactive=False, format="png", elem_id=f"{tab}-preview")
    # format="png": Gradio's default (WebP) would drop the parameters text from the images.
    gallery = gr.Gallery(
        label="Results", format="png", columns=2, height=520, interactive=False, elem_id=f"{tab}-gallery"
    )
    with gr.Row():
        send_img2img = gr.Button("Send to image to image", size="sm", elem_id=f"{tab}-send-img2img")
        send_sketch = gr.Button("Send to sketch", size="sm", elem_id=f"{tab}-send-sketch")
        send_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{tab}-send-inpaint")
        send_upscale = gr.Button("Send to upscale", size="sm", elem_id=f"{tab}-send-upscale")
    info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id=f"{tab}-info")
    parameters, paths, seeds, selected = gr.State([]), gr.State([]), gr.State([]), gr.State(0)
    gallery.select(_selected, inputs=parameters, outputs=[info, selected], queue=False, api_visibility="private")
    return ResultsPanel(
        gallery, preview, status, info, parameters, paths, seeds, selected, send_img2img, send_sketch, send_inpaint, send_upscale
    )


def _selected(parameters: list[str], event: gr.SelectData):
    index = event.index if isinstance(event.index, int) else 0
    return (parameters[index] if 0 <= index < len(parameters) else ""), index


def wire_reuse_seed(controls: GenerationControls, results: ResultsPanel) -> None:
    """"Reuse last" puts the seed of the selected (or first) result back into the seed box."""

    def last_seed(seeds: list[int], selected: int):
        if not seeds:
            raise runner.page_error("Generate something first: there is no seed to reuse yet.")
        return seeds[selected if 0 <= selected < len(seeds) else 0]

    controls.reuse_seed.click(
        last_seed, inputs=[results.seeds, results.selected], outputs=controls.seed, queue=False, api_visibility="private"
    )


def reset_button(controls: GenerationControls, preferences, section: str) -> gr.Button:
    """A button that puts every setting back to Easel's defaults and forgets the remembered ones."""
    button = gr.Button("Reset settings to defaults", size="sm", elem_id=f"{section}-reset")

    def reset():
        preferences.forget(section)
        return [DEFAULTS[name] for name in controls.names()]

    button.click(reset, outputs=controls.inputs(), queue=False, api_visibility="private")
    return button


def settings_column(engine: Engine, section: str, values: dict, preferences, hires: bool = False) -> GenerationControls:
    """Prompt boxes, generation settings (with hires fix's when `hires`) and the reset button of a tab."""
    prompt, negative = prompt_boxes(section, values)
    below_prompts = gr.Column()  # filled by the tab (styles, LoRAs): `with controls.below_prompts:`
    controls = generation_controls(engine, section, prompt, negative, values, hires)
    controls.below_prompts = below_prompts
    controls.reset = reset_button(controls, preferences, section)
    return controls


def results_column(section: str, job: gr.State, controls: GenerationControls) -> tuple[gr.Button, ResultsPanel]:
    """Generate / Skip / Interrupt and the results panel; returns the Generate button for the tab to wire."""
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id=f"{section}-generate", elem_classes="easel-generate")
        skip = gr.Button("Skip", elem_id=f"{section}-skip")
        stop = gr.Button("Interrupt", variant="stop", elem_id=f"{section}-interrupt")
    results = results_panel(section)
    wire_reuse_seed(controls, results)
    skip.click(runner.skip, inputs=job, outputs=results.status, queue=False, api_visibility="private")
    stop.click(runner.interrupt, inputs=job, outputs=results.status, queue=False, api_name=f"{section}_interrupt")
    return generate, results
