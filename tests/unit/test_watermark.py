"""The invisible watermark: marked images read back with their family's text, others do not."""

import cv2
import numpy as np
import pytest
from imwatermark import WatermarkDecoder
from PIL import Image, ImageFilter

from app.images.watermark import (
    MIN_SIDE,
    SD1_MARK,
    SD2_MARK,
    apply_watermark,
    detect_watermark,
    watermark_for,
    watermark_origin,
)
from app.models.families import Family


def flat_image(size=(512, 512), color=(128, 128, 128)) -> Image.Image:
    # dwtDct keeps a bit only where the image's own coefficients let it: on a flat image some
    # colours (e.g. (200, 60, 60)) read back all ones whatever was written. Mid grey holds it.
    return Image.new("RGB", size, color)


def blurred_image(size=(512, 512)) -> Image.Image:
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(noise).filter(ImageFilter.GaussianBlur(4))


@pytest.mark.parametrize("make_image", [flat_image, blurred_image])
@pytest.mark.parametrize("text", [SD1_MARK, SD2_MARK])
def test_watermark_round_trips_for_each_text(make_image, text):
    image = make_image()
    marked = apply_watermark(image, text)
    assert marked is not image
    assert marked.mode == "RGB" and marked.size == image.size
    assert detect_watermark(marked) == text


def test_the_mark_is_invisible_and_the_input_untouched():
    image = blurred_image()
    before = np.asarray(image).copy()
    marked = apply_watermark(image, SD1_MARK)
    assert np.array_equal(np.asarray(image), before)
    difference = np.abs(np.asarray(marked, dtype=int) - before)
    assert difference.mean() < 2
    assert difference.max() > 0


def test_channels_are_not_swapped():
    # A red image must stay red: a missed RGB<->BGR conversion would turn it blue.
    marked = np.asarray(apply_watermark(flat_image(color=(220, 30, 30)), SD1_MARK), dtype=int)
    red, green, blue = marked[..., 0].mean(), marked[..., 1].mean(), marked[..., 2].mean()
    assert red > 200 and blue < 50 and green < 50


@pytest.mark.parametrize("text", [SD1_MARK, SD2_MARK])
def test_reference_tools_reading_the_file_with_opencv_find_the_mark(tmp_path, text):
    # Stability's scripts and checkers read files with cv2.imread (BGR): our mark must be
    # where they look, not only where our own detector looks.
    path = tmp_path / "marked.png"
    apply_watermark(blurred_image(), text).save(path)
    decoder = WatermarkDecoder("bytes", len(text) * 8)
    assert decoder.decode(cv2.imread(str(path)), "dwtDct") == text.encode()


def test_rgba_input_gives_rgb_output_with_the_mark():
    marked = apply_watermark(flat_image().convert("RGBA"), SD2_MARK)
    assert marked.mode == "RGB"
    assert detect_watermark(marked) == "SDV2"


@pytest.mark.parametrize("family", list(Family))
def test_each_family_is_marked_as_the_reference_scripts_mark_it(family):
    # The reference scripts mark SD 2.x "SDV2" (depth2img too) and everything else (the x4 upscaler too)
    # SD 1.x's text.
    expected = "SDV2" if family in (Family.SD2, Family.SD2_V, Family.SD2_INPAINT, Family.SD2_DEPTH) else "StableDiffusionV1"
    assert watermark_for(family) == expected
    assert watermark_origin(expected) == f"made with an SD {'2' if expected == 'SDV2' else '1'}.x model"


def test_non_square_image_round_trips():
    assert detect_watermark(apply_watermark(flat_image((768, 320)), SD2_MARK)) == "SDV2"


@pytest.mark.parametrize("make_image", [flat_image, blurred_image])
def test_unmarked_image_gives_none(make_image):
    assert detect_watermark(make_image()) is None


@pytest.mark.parametrize("size", [(255, 512), (512, 128), (64, 64)])
def test_small_image_is_returned_unchanged_and_not_detected(size):
    image = flat_image(size)
    assert min(size) < MIN_SIDE
    assert apply_watermark(image, SD1_MARK) is image
    assert detect_watermark(image) is None
