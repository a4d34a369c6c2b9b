"""The image-to-image tab: start from a picture you upload, a sketch you draw, or paint a mask
over a picture to regenerate just that part (inpainting)."""

from dataclasses import dataclass

import gradio as gr
from PIL import Image

from app.engine import Engine
from app.generation.requests import ONLY_MASKED, WHOLE_PICTURE, GenerationRequest
from app.images.transform import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL, mask_from_layer
from app.preferences import Preferences
from ui import runner
from ui.networks import networks_section
from ui.styles import StylesSection, remember_styles, styles_section
from ui.widgets import GenerationControls, ResultsPanel, remembered, request_fields, results_column, settings_column

SECTION = "img2img"
UPLOAD, SKETCH, INPAINT = "upload", "sketch", "inpaint"
RESIZE_LABELS = {"Just resize": JUST_RESIZE, "Crop and resize": CROP_AND_RESIZE, "Resize and fill": RESIZE_AND_FILL}
AREA_LABELS = {"Whole picture": WHOLE_PICTURE, "Only masked": ONLY_MASKED}
SKETCH_COLOURS = ["#000000", "#ffffff", "#e03131", "#f08c00", "#fcc419", "#2f9e44", "#1971c2", "#7048e8", "#8d6e63"]


@dataclass
class Img2ImgTab:
    modes: gr.Tabs
    mode: gr.State
    upload: gr.Image
    sketch: gr.ImageEditor
    inpaint: gr.ImageEditor
    controls: GenerationControls
    strength: gr.Slider
    results: ResultsPanel
    depth: gr.Accordion        # shown while an SD 2 depth checkpoint is active (see `depth_section_visible`)
    styles: StylesSection


def depth_section_visible(engine: Engine) -> bool:
    """The depth map upload matters only while an SD 2 depth checkpoint is active."""
    active = engine.active_checkpoint()
    return active is not None and active.family.is_depth


def blank_canvas(width: int, height: int) -> dict:
    """An editor value with a white background: the brush is active at once (see STACK-NOTES)."""
    white = Image.new("RGB", (int(width), int(height)), "white")
    return {"background": white, "layers": [], "composite": white}


def editor_value(picture: Image.Image) -> dict:
    return {"background": picture, "layers": [], "composite": picture}


def build_img2img_tab(engine: Engine, preferences: Preferences) -> Img2ImgTab:
    values = remembered(preferences.section(SECTION))
    job = gr.State(None)
    mode = gr.State(UPLOAD)
    with gr.Row():
        with gr.Column(scale=5):
            with gr.Tabs(selected=UPLOAD, elem_id="img2img-modes") as modes:
                with gr.Tab("Upload", id=UPLOAD, elem_id="img2img-mode-upload") as upload_tab:
                    upload = gr.Image(
                        label="Init image", type="pil", image_mode=None, sources=("upload", "clipboard"),
                        height=400, elem_id="img2img-init-image",
                    )
                with gr.Tab("Sketch", id=SKETCH, elem_id="img2img-mode-sketch") as sketch_tab:
                    sketch = gr.ImageEditor(
                        value=blank_canvas(values["width"], values["height"]),
                        type="pil", image_mode="RGBA", label="Sketch", height=480,
                        canvas_size=(values["width"], values["height"]),
                        brush=gr.Brush(colors=SKETCH_COLOURS, default_color="#000000", color_mode="defaults", default_size=8),
                        eraser=gr.Eraser(default_size=24), layers=False, transforms=(),
                        sources=("upload", "clipboard"), format="png", elem_id="img2img-sketch",
                    )
                    new_canvas = gr.Button("New blank canvas (width x height below)", size="sm", elem_id="img2img-new-canvas")
                with gr.Tab("Inpaint", id=INPAINT, elem_id="img2img-mode-inpaint") as inpaint_tab:
                    inpaint = gr.ImageEditor(
                        type="pil", image_mode="RGBA", label="Picture: paint over what should change", height=480,
                        brush=gr.Brush(colors=["#ff3d7f"], default_color="#ff3d7f", color_mode="fixed", default_size=32),
                        eraser=gr.Eraser(default_size=32), layers=False, transforms=(),
                        sources=("upload", "clipboard"), format="png", elem_id="img2img-inpaint",
                    )
                    with gr.Row():
                        mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img-mask-blur")
                        area = gr.Radio(list(AREA_LABELS), value="Whole picture", label="Inpaint area", elem_id="img2img-inpaint-area")
                        padding = gr.Slider(0, 256, value=32, step=4, label="Padding (only masked)", elem_id="img2img-mask-padding")
            strength = gr.Slider(
                0, 1, value=0.75, step=0.01, label="Denoising strength",
                info="Low keeps the picture, high follows the prompt", elem_id="img2img-strength",
            )
            with gr.Row():
                keep_size = gr.Checkbox(value=True, label="Keep the picture's size", elem_id="img2img-keep-size")
                resize_mode = gr.Radio(
                    list(RESIZE_LABELS), value="Just resize", label="Otherwise, to width x height:",
                    elem_id="img2img-resize-mode",
                )
            with gr.Accordion("Depth map (SD 2 depth models only)", open=False, elem_id="img2img-depth",
                              visible=depth_section_visible(engine)) as depth:
                depth_map = gr.Image(
                    label="Depth map: greyscale, lighter is nearer. Empty: estimated from the picture",
                    type="pil", image_mode=None, sources=("upload", "clipboard"), height=240,
                    elem_id="img2img-depth-map",
                )
            controls = settings_column(engine, SECTION, values, preferences)
            with controls.below_prompts:
                styles = styles_section(engine, SECTION, controls, preferences)
                networks_section(engine, SECTION, controls)
        with gr.Column(scale=5):
            generate, results = results_column(SECTION, job, controls)

    for tab, name in ((upload_tab, UPLOAD), (sketch_tab, SKETCH), (inpaint_tab, INPAINT)):
        tab.select(lambda name=name: name, outputs=mode, queue=False, api_visibility="private")
    new_canvas.click(blank_canvas, inputs=[controls.width, controls.height], outputs=sketch, queue=False, api_visibility="private")

    def run(chosen, uploaded, drawn, painted, strength_value, use_picture_size, resize_label, blur, area_label,
            padding_value, depth_picture, *values, progress=gr.Progress(), request: gr.Request = None):
        *values, chosen_styles = values  # the styles come last: API callers of the page may leave them out
        fields = request_fields(list(values))
        preferences.remember(SECTION, fields)
        remember_styles(preferences, SECTION, chosen_styles)
        fields["styles"] = list(chosen_styles or [])
        picture, mask = _picture_and_mask(chosen, uploaded, drawn, painted)
        if use_picture_size:
            fields.update(width=None, height=None)
        generation = GenerationRequest(
            **fields, init_image=picture, strength=strength_value, resize_mode=RESIZE_LABELS[resize_label],
            mask=mask, mask_blur=blur, inpaint_area=AREA_LABELS[area_label], masked_padding=padding_value,
            depth_map=depth_picture if mask is None else None,  # inpainting paints without one
        )
        yield from runner.generate(engine, generation, progress, runner.owner_of(request))

    generate.click(
        run,
        inputs=[mode, upload, sketch, inpaint, strength, keep_size, resize_mode, mask_blur, area, padding, depth_map,
                *controls.inputs(), styles.chosen],
        outputs=[job, *results.outputs()],
        api_name="img2img",
        concurrency_id="generate",
    )
    return Img2ImgTab(modes, mode, upload, sketch, inpaint, controls, strength, results, depth, styles)


def _picture_and_mask(mode: str, uploaded, drawn: dict | None, painted: dict | None):
    """The init picture (and mask) of the chosen mode, or a sentence saying what is missing."""
    if mode == SKETCH:
        if not drawn or drawn.get("composite") is None:
            raise runner.page_error("Draw something on the sketch canvas first.")
        return drawn["composite"], None
    if mode == INPAINT:
        if not painted or painted.get("background") is None:
            raise runner.page_error("Upload the picture to inpaint first, then paint over the part to change.")
        layers = [layer for layer in painted.get("layers") or [] if layer is not None]
        if not layers:
            raise runner.page_error("Paint over the part of the picture that should change (the brush), then generate.")
        return painted["background"], mask_from_layer(layers[0])
    if uploaded is None:
        raise runner.page_error("Upload a picture first (drop it on the Init image box).")
    return uploaded, None
