"""Upscaling a finished picture ("extras"), keeping its generation parameters.

Lanczos is always there. The SD x4 diffusion upscaler and ESRGAN-family models plug in here as
further upscalers (their own issue); the request, the metadata and the saving stay the same.
"""

import math
from dataclasses import dataclass, replace

from PIL import Image

from app.errors import InvalidRequest
from app.generation.requests import rgb_image

LANCZOS = "Lanczos"
UPSCALERS = (LANCZOS,)
MAX_SCALE = 8.0
MAX_OUTPUT_SIDE = 8192


@dataclass
class UpscaleRequest:
    image: Image.Image
    scale: float = 4.0
    upscaler: str = LANCZOS

    def validated(self) -> "UpscaleRequest":
        image = rgb_image(self.image)
        try:
            scale = float(self.scale)
        except (TypeError, ValueError, OverflowError):
            raise InvalidRequest(f"The scale must be a number from 1 to {MAX_SCALE:g}.") from None
        if not math.isfinite(scale) or not 1.0 <= scale <= MAX_SCALE:
            raise InvalidRequest(f"The scale must be from 1 to {MAX_SCALE:g}; got {self.scale}.")
        if self.upscaler not in UPSCALERS:
            raise InvalidRequest(f"Unknown upscaler '{self.upscaler}'. Choose one of: {', '.join(UPSCALERS)}.")
        width, height = output_size(image.size, scale)
        if max(width, height) > MAX_OUTPUT_SIDE:
            raise InvalidRequest(
                f"{image.width}x{image.height} scaled by {scale:g} would be {width}x{height}; the limit is "
                f"{MAX_OUTPUT_SIDE} pixels a side. Choose a smaller scale."
            )
        return replace(self, image=image, scale=scale)


def output_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def upscaled(request: UpscaleRequest) -> Image.Image:
    return request.image.resize(output_size(request.image.size, request.scale), Image.LANCZOS)


def postprocess_parameters(source_parameters: str | None, request: UpscaleRequest) -> str:
    """The source's A1111 infotext with A1111's postprocessing keys added to its last line."""
    keys = f"Postprocess upscale by: {request.scale:g}, Postprocess upscaler: {request.upscaler}"
    if not source_parameters:
        return keys
    return f"{source_parameters}, {keys}"
