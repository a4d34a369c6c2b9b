"""The invisible watermark Stability's reference scripts put on every output.

The reference txt2img scripts mark SD 1.x images with the bytes of "StableDiffusionV1" and SD 2.x
images with "SDV2", using invisible-watermark's `dwtDct` method. Easel does the same, the same
way (uint8 BGR in, uint8 BGR out), so tools that look for the mark find it.
"""

from __future__ import annotations

import numpy as np
from imwatermark import WatermarkDecoder, WatermarkEncoder
from PIL import Image

WATERMARK_TEXTS = {"sd1": "StableDiffusionV1", "sd2": "SDV2"}
DEFAULT_FAMILY = "sd1"
METHOD = "dwtDct"
# The library raises below 256x256 (it checks the area; a side this short cannot hold the mark
# reliably either).
MIN_SIDE = 256


def watermark_text(family: str) -> str:
    """The text a model family is marked with; an unknown family gets SD 1.x's."""
    return WATERMARK_TEXTS.get(family, WATERMARK_TEXTS[DEFAULT_FAMILY])


def is_too_small(image: Image.Image) -> bool:
    return min(image.size) < MIN_SIDE


def apply_watermark(image: Image.Image, family: str) -> Image.Image:
    """A new RGB image carrying the family's watermark.

    An image with a side under `MIN_SIDE` pixels is returned as it is (the same object): it is
    too small to carry the mark, and leaving it unmarked beats failing the generation.
    """
    if is_too_small(image):
        return image
    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", watermark_text(family).encode("utf-8"))
    marked_bgr = encoder.encode(bgr_array(image), METHOD)
    return Image.fromarray(np.ascontiguousarray(marked_bgr[:, :, ::-1]))


def detect_watermark(image: Image.Image) -> str | None:
    """The watermark text `image` carries ("StableDiffusionV1" or "SDV2"), or None.

    Only an exact match counts: a false "this is AI-generated" is worse than a missed one.
    Images with a side under `MIN_SIDE` pixels give None.
    """
    if is_too_small(image):
        return None
    bgr = bgr_array(image)
    # Longest text first: its 136 bits are the least likely to match by chance.
    for text in sorted(set(WATERMARK_TEXTS.values()), key=len, reverse=True):
        payload = text.encode("utf-8")
        decoder = WatermarkDecoder("bytes", len(payload) * 8)
        if decoder.decode(bgr, METHOD) == payload:
            return text
    return None


def bgr_array(image: Image.Image) -> np.ndarray:
    """`image` as the contiguous uint8 BGR array OpenCV (and so imwatermark) expects."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])
