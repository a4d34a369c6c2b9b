"""The PNG Info tab: drop a picture, see how it was made, send its settings to another tab.

Presentation only: reading the text and the watermark is `app.generation.infotext`'s job.
"""

from dataclasses import dataclass

import gradio as gr
from PIL import Image

from app.engine import Engine
from app.images.watermark import MIN_SIDE, is_too_small

NO_PARAMETERS = (
    "This image carries no generation parameters (maybe it was edited or converted to JPEG by "
    "another app)."
)
INTRO = (
    "Drop a picture made by Easel, AUTOMATIC1111 or another Stable Diffusion app to see how it "
    "was made."
)
NO_WATERMARK = "No invisible watermark found."
TOO_SMALL = f"Too small to carry the watermark (under {MIN_SIDE} px)."
TABLE_HEADERS = ["Setting", "Value"]


@dataclass
class PngInfoTab:
    image: gr.Image
    fields: gr.State                 # request_fields(...) of the dropped image, for the send buttons
    send_to_txt2img: gr.Button
    send_to_img2img: gr.Button


def build_pnginfo_tab(engine: Engine) -> PngInfoTab:
    with gr.Row():
        with gr.Column(scale=5):
            # image_mode=None: the file as dropped, so a JPEG's EXIF and every PNG text chunk
            # are still there to read (uploads keep them; Gradio only re-encodes what it shows).
            image = gr.Image(
                label="Image", type="pil", image_mode=None, sources=("upload", "clipboard"),
                format="png", height=420, elem_id="pnginfo-image",
            )
            with gr.Row():
                send_txt2img = gr.Button(
                    "Send to text to image", interactive=False, elem_id="pnginfo-send-txt2img"
                )
                send_img2img = gr.Button(
                    "Send to image to image", interactive=False, elem_id="pnginfo-send-img2img"
                )
        with gr.Column(scale=5):
            message = gr.Markdown(INTRO, elem_id="pnginfo-message")
            parameters = gr.Textbox(
                label="Parameters", lines=6, max_lines=20, interactive=False, buttons=["copy"],
                elem_id="pnginfo-parameters",
            )
            table = gr.Dataframe(
                headers=TABLE_HEADERS, value=[], interactive=False, wrap=True, label="Settings",
                column_widths=["30%", "70%"], elem_id="pnginfo-fields",
            )
            watermark = gr.Markdown("", elem_id="pnginfo-watermark")
    fields = gr.State({})

    def show(picture):
        text, rows, mark, note, request = pnginfo_outputs(engine, picture)
        return (
            text, rows, mark, note, request,
            gr.update(interactive=bool(request)), gr.update(interactive=picture is not None),
        )

    image.change(
        show,
        inputs=image,
        outputs=[parameters, table, watermark, message, fields, send_txt2img, send_img2img],
        api_visibility="private",
    )
    return PngInfoTab(image=image, fields=fields, send_to_txt2img=send_txt2img, send_to_img2img=send_img2img)


def pnginfo_outputs(engine: Engine, image: Image.Image | None) -> tuple:
    """(parameters text, table rows, watermark line, message line, request fields) for `image`."""
    if image is None:
        return "", [], "", INTRO, {}
    info = engine.read_png_info(image)
    mark = watermark_line(image, info.watermark, info.watermark_origin)
    if info.parameters is None:
        return "", [], mark, NO_PARAMETERS, {}
    return info.parameters, field_rows(info.fields), mark, "", info.request


def field_rows(fields: dict[str, object]) -> list[list[str]]:
    """The parsed infotext as [setting, value] rows, without the split "Size-1"/"Size-2" copies."""
    rows = []
    for key, value in fields.items():
        base, _, part = key.rpartition("-")
        if part in ("1", "2") and base in fields:
            continue
        rows.append([key, str(value)])
    return rows


def watermark_line(image: Image.Image, watermark: str | None, origin: str | None) -> str:
    if watermark is not None:
        return f"Invisible watermark: {watermark}" + (f" ({origin})." if origin else ".")
    if is_too_small(image):
        return TOO_SMALL
    return NO_WATERMARK
