"""What an image says about how it was made, and how to make it again.

`png_info` reads an image's A1111 infotext and invisible watermark (the PNG Info tab and the API's
png-info show both) and the request fields to make it again, so a picture from A1111, from a ComfyUI
node that writes A1111 text, or from Easel itself can be sent back to txt2img or img2img.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from PIL import Image

from app.generation.a1111 import request_fields
from app.images.metadata import parse_infotext, read_parameters
from app.images.watermark import detect_watermark, watermark_origin

log = logging.getLogger(__name__)

@dataclass
class PngInfo:
    parameters: str | None        # the raw A1111 text, None if the image has none
    fields: dict[str, object]     # parse_infotext(parameters), {} without
    watermark: str | None         # "StableDiffusionV1", "SDV2" or None (also for images under 256 px)
    request: dict[str, object] = field(default_factory=dict)  # GenerationRequest fields to make it again

    @property
    def watermark_origin(self) -> str | None:
        """What the watermark says about the image, in words ("made with an SD 2.x model")."""
        return watermark_origin(self.watermark) if self.watermark else None


def png_info(image: Image.Image) -> PngInfo:
    """The infotext and watermark of `image` (a PNG's text chunk, or a JPEG/WebP's EXIF comment).

    A damaged or unusual file reads as "nothing found" rather than failing: this is a viewer.
    """
    try:
        parameters = read_parameters(image)
    except Exception:  # truncated file, broken chunk or EXIF: Pillow raises many kinds
        log.warning("Could not read the parameters of an image", exc_info=True)
        parameters = None
    if parameters is not None and not parameters.strip():
        parameters = None
    fields = parse_infotext(parameters) if parameters is not None else {}
    try:
        watermark = detect_watermark(image)
    except Exception:  # an image mode or size the decoder cannot take
        log.warning("Could not check an image for the invisible watermark", exc_info=True)
        watermark = None
    return PngInfo(parameters=parameters, fields=fields, watermark=watermark, request=request_fields(fields))
