"""The invisible watermark Stability's reference scripts put on every output.

The reference txt2img scripts mark SD 1.x images with the bytes of "StableDiffusionV1" and SD 2.x
images with "SDV2", using invisible-watermark's `dwtDct` method. Easel does the same, the same
way (uint8 BGR in, uint8 BGR out), so tools that look for the mark find it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.models.families import Family

SD1_MARK = "StableDiffusionV1"
SD2_MARK = "SDV2"
_ORIGINS = {SD1_MARK: "made with an SD 1.x model", SD2_MARK: "made with an SD 2.x model"}
METHOD = "dwtDct"
# The library raises below 256x256 (it checks the area; a side this short cannot hold the mark
# reliably either).
MIN_SIDE = 256


def watermark_for(family: Family) -> str:
    """The text a model family's images are marked with (SD 2.x: "SDV2", everything else SD 1.x's)."""
    return SD2_MARK if family.is_sd2 else SD1_MARK


def watermark_origin(text: str) -> str | None:
    """What a watermark text found in an image says about it, in words."""
    return _ORIGINS.get(text)


def is_too_small(image: Image.Image) -> bool:
    return min(image.size) < MIN_SIDE


def apply_watermark(image: Image.Image, text: str) -> Image.Image:
    """A new RGB image carrying the watermark `text` (see `watermark_for`).

    An image with a side under `MIN_SIDE` pixels is returned as it is (the same object): it is
    too small to carry the mark, and leaving it unmarked beats failing the generation.
    """
    if is_too_small(image):
        return image
    # Imported here, not at the top: invisible-watermark pulls in OpenCV (~50 MB), which a machine
    # running with the watermark off (bench/gpu_check.sh) does not need to have.
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", text.encode("utf-8"))
    marked_bgr = encoder.encode(bgr_array(image), METHOD)
    return Image.fromarray(np.ascontiguousarray(marked_bgr[:, :, ::-1]))


def detect_watermark(image: Image.Image) -> str | None:
    """The watermark text `image` carries ("StableDiffusionV1" or "SDV2"), or None.

    Only an exact match counts: a false "this is AI-generated" is worse than a missed one.
    Images with a side under `MIN_SIDE` pixels give None.
    """
    if is_too_small(image):
        return None
    from imwatermark import WatermarkDecoder  # lazily, as in apply_watermark

    bgr = bgr_array(image)
    # Longest text first: its 136 bits are the least likely to match by chance.
    for text in sorted(_ORIGINS, key=len, reverse=True):
        payload = text.encode("utf-8")
        decoder = WatermarkDecoder("bytes", len(payload) * 8)
        if decoder.decode(bgr, METHOD) == payload:
            return text
    return None


def bgr_array(image: Image.Image) -> np.ndarray:
    """`image` as the contiguous uint8 BGR array OpenCV (and so imwatermark) expects."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])
