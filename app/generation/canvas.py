"""What each kind of request paints on, and how its output becomes the final picture.

Text-to-image paints on nothing; image-to-image on the init picture; inpainting on the picture
with a soft mask, either at the picture's size (then the original is kept outside the mask,
pixel for pixel) or, with "only masked", on a crop around the mask at the full output size
(more detail for small areas), scaled back and blended in.
"""

from dataclasses import dataclass
from typing import Callable

from PIL import Image

from app.generation.diffusion import Canvas
from app.generation.requests import ONLY_MASKED, GenerationRequest
from app.images.transform import blurred_mask, composited, masked_box, pasted_back


@dataclass
class Prepared:
    canvas: Canvas
    finish: Callable[[Image.Image], Image.Image]  # a generated picture → what the user gets


def _unchanged(picture: Image.Image) -> Image.Image:
    return picture


def prepared(request: GenerationRequest) -> Prepared:
    if not request.is_inpaint:
        return Prepared(Canvas(image=request.init_image, depth_map=request.depth_map), _unchanged)
    original, soft = request.init_image, blurred_mask(request.mask, request.mask_blur)
    size = (request.width, request.height)
    box = masked_box(request.mask, request.masked_padding, size[0] / size[1]) if request.inpaint_area == ONLY_MASKED else None
    if box is None:
        return Prepared(Canvas(image=original, mask=soft), lambda picture: composited(original, picture, soft))
    canvas = Canvas(
        image=original.crop(box).resize(size, Image.LANCZOS),
        mask=soft.crop(box).resize(size, Image.LANCZOS),
    )
    return Prepared(canvas, lambda picture: pasted_back(original, picture, box, soft))
