"""GenerationRequest.validated(): sizes snapped, ranges refused with a sentence, seeds, init images."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidRequest
from app.generation import requests as requests_module
from app.generation.requests import MAX_SEED, GenerationRequest, rgb_image


def valid(**fields) -> GenerationRequest:
    return GenerationRequest(**fields).validated()


def refused(**fields) -> str:
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(**fields).validated()
    assert caught.value.message
    return caught.value.message


# --- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked, snapped",
    [(512, 512), (100, 96), (101, 104), (99.9, 96), (60, 64), (63, 64), (2052, 2048), ("768", 768), (1023.6, 1024)],
)
def test_sizes_snap_to_the_nearest_multiple_of_8(asked, snapped):
    request = valid(width=asked, height=asked)
    assert (request.width, request.height) == (snapped, snapped)
    assert request.width % 8 == 0


@pytest.mark.parametrize("bad", [10, 0, -512, 59, 2053, 100000, math.nan, math.inf, None, "wide", [512]])
def test_sizes_out_of_range_or_not_numbers_are_refused(bad):
    message = refused(width=bad)
    assert "Width" in message and "64" in message and "2048" in message
    assert "Height" in refused(height=bad)


# --- ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, bad, word",
    [
        ("steps", 0, "Steps"),
        ("steps", 151, "Steps"),
        ("steps", 2.5, "whole number"),
        ("steps", "many", "Steps"),
        ("cfg_scale", math.nan, "CFG scale"),
        ("cfg_scale", -1, "CFG scale"),
        ("cfg_scale", 31, "CFG scale"),
        ("cfg_scale", math.inf, "CFG scale"),
        ("batch_size", 0, "Batch size"),
        ("batch_size", 9, "Batch size"),
        ("batch_count", 0, "Batch count"),
        ("batch_count", 101, "Batch count"),
        ("clip_skip", 0, "Clip skip"),
        ("clip_skip", 13, "Clip skip"),
        ("strength", 1.5, "Denoising strength"),
        ("strength", -0.1, "Denoising strength"),
        ("seed", "abc", "Seed"),
        ("seed", -2, "Seed"),
        ("seed", MAX_SEED + 1, "Seed"),
        ("seed", 1.5, "whole number"),
        ("sampler", "Euler b", "Unknown sampler"),
        ("schedule", "Fancy", "Unknown schedule"),
        ("prompt", "x" * 20_001, "20,000"),
        ("negative_prompt", "x" * 100_000, "negative prompt"),
        ("prompt", 42, "text"),
    ],
)
def test_out_of_range_values_are_refused_with_a_sentence(field, bad, word):
    assert word in refused(**{field: bad})


def test_limits_themselves_are_accepted():
    request = valid(
        steps=150, cfg_scale=30, batch_size=8, batch_count=100, clip_skip=12, strength=1.0,
        seed=MAX_SEED, width=2048, height=64, prompt="x" * 20_000, negative_prompt=None,
    )
    assert (request.steps, request.cfg_scale, request.batch_size, request.batch_count) == (150, 30.0, 8, 100)
    assert request.negative_prompt == ""
    low = valid(steps=1, cfg_scale=0, strength=0.0, seed=0)
    assert (low.steps, low.cfg_scale, low.strength, low.seed) == (1, 0.0, 0.0, 0)


def test_numbers_given_as_text_or_floats_become_the_right_types():
    request = valid(steps="20", cfg_scale="7.5", seed="1234", batch_size=2.0)
    assert request.steps == 20 and type(request.steps) is int
    assert request.cfg_scale == 7.5
    assert request.seed == 1234 and type(request.seed) is int
    assert request.batch_size == 2 and type(request.batch_size) is int


def test_sampler_names_are_normalised():
    request = valid(sampler="dpm++ 2m karras")
    assert (request.sampler, request.schedule) == ("DPM++ 2M", "Karras")
    assert valid(sampler="Euler a").schedule == "Automatic"


def test_validated_returns_a_copy():
    original = GenerationRequest(width=100, seed=-1)
    checked = original.validated()
    assert (original.width, original.seed) == (100, -1)
    assert (checked.width, checked.seed) != (100, -1)


# --- seeds ---------------------------------------------------------------------------------


def test_seeds_count_up_in_a1111_order():
    request = valid(seed=100, batch_count=2, batch_size=3)
    assert request.seeds() == [100, 101, 102, 103, 104, 105]
    assert request.image_count == 6


def test_seeds_wrap_at_2_to_the_32():
    request = valid(seed=MAX_SEED - 1, batch_size=4)
    assert request.seeds() == [MAX_SEED - 1, MAX_SEED, 0, 1]


def test_random_seed_is_chosen_once_and_in_range():
    chosen = {valid(seed=-1).seed for _ in range(20)}
    assert all(0 <= seed <= MAX_SEED for seed in chosen)
    assert len(chosen) > 1  # 20 draws from 2**32 values: a repeat means no randomness
    request = valid(seed=-1, batch_size=3)
    assert request.seeds() == [(request.seed + i) % 2**32 for i in range(3)]
    assert valid(seed=None).seed >= 0


# --- init images ---------------------------------------------------------------------------


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def reopened(image: Image.Image, **save_args) -> Image.Image:
    """The image as it arrives from an upload: saved to PNG and opened again."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_args)
    buffer.seek(0)
    return Image.open(buffer)


def test_rgba_is_composited_over_white():
    image = Image.new("RGBA", (4, 1))
    image.putdata([(255, 0, 0, 0), (0, 0, 0, 128), (0, 0, 255, 255), (10, 20, 30, 255)])
    out = rgb_image(image)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # fully transparent red: white, not red or black
    assert all(126 <= c <= 129 for c in out.getpixel((1, 0)))  # half-transparent black: grey
    assert out.getpixel((2, 0)) == (0, 0, 255)
    assert out.getpixel((3, 0)) == (10, 20, 30)


def test_la_is_composited_over_white():
    image = Image.new("LA", (2, 1))
    image.putdata([(0, 0), (40, 255)])
    out = rgb_image(image)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (40, 40, 40)


def test_palette_image_with_a_transparent_index():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * (256 * 3 - 6))
    image.putdata([0, 1])
    upload = reopened(image, transparency=0)
    assert upload.mode == "P" and "transparency" in upload.info
    out = rgb_image(upload)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # the transparent index
    assert out.getpixel((1, 0)) == (200, 10, 10)


def test_greyscale_with_a_transparent_value():
    image = Image.new("L", (2, 1))
    image.putdata([7, 90])
    upload = reopened(image, transparency=7)
    assert upload.mode == "L" and "transparency" in upload.info
    out = rgb_image(upload)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (90, 90, 90)


def test_16_bit_greyscale_is_scaled_to_the_full_range():
    data = np.array([[1000, 2000, 3000]], dtype=np.uint16)
    image = Image.fromarray(data)
    assert image.mode.startswith("I;16")
    out = rgb_image(reopened(image))
    values = [out.getpixel((x, 0)) for x in range(3)]
    assert values[0] == (0, 0, 0)
    assert values[2] == (255, 255, 255)  # Pillow's own convert would clip 3000 to 255 everywhere
    assert 126 <= values[1][0] <= 128 and len(set(values[1])) == 1


def test_flat_16_bit_image_does_not_divide_by_zero():
    out = rgb_image(Image.fromarray(np.full((2, 2), 5000, dtype=np.uint16)))
    assert out.getpixel((0, 0)) == (0, 0, 0)


def test_cmyk_becomes_rgb():
    image = Image.new("CMYK", (2, 1))
    image.putdata([(0, 0, 0, 0), (0, 255, 255, 0)])
    out = rgb_image(image)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "YCbCr", "I", "F", "I;16B", "PA"])
def test_other_modes_become_rgb(mode):
    out = rgb_image(Image.new(mode, (3, 2)))
    assert out.mode == "RGB" and out.size == (3, 2)


def test_exif_orientation_is_applied():
    # Stored landscape 40x20 with its left half red; orientation 6 means "rotate 90 deg clockwise to view".
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    upload = reopened(image, exif=exif.tobytes())
    out = rgb_image(upload)
    assert out.size == (20, 40)
    assert out.getpixel((10, 5)) == (255, 0, 0)  # the stored left half is now on top
    assert out.getpixel((10, 35)) == (0, 0, 255)


def test_not_an_image_and_empty_images_are_refused():
    for bad in (b"\x89PNG not really", "picture.png", np.zeros((8, 8, 3), np.uint8)):
        with pytest.raises(InvalidRequest, match="could not be read"):
            rgb_image(bad)
    with pytest.raises(InvalidRequest, match="empty"):
        rgb_image(Image.new("RGB", (0, 0)))
    with pytest.raises(InvalidRequest, match="empty"):
        rgb_image(Image.new("RGB", (10, 0)))


def test_huge_images_are_refused_before_anything_is_done(monkeypatch):
    monkeypatch.setattr(requests_module, "MAX_INIT_PIXELS", 100)
    assert rgb_image(Image.new("RGB", (10, 10))).size == (10, 10)
    with pytest.raises(InvalidRequest) as caught:
        rgb_image(Image.new("RGB", (11, 10)))
    assert "11x10" in caught.value.message and "Resize" in caught.value.message
    assert "11x10" in refused(init_image=Image.new("RGB", (11, 10)), width=None, height=None)


def test_init_image_takes_its_own_size_when_none_is_given():
    request = valid(init_image=Image.new("RGBA", (90, 70)), width=None, height=None)
    assert (request.width, request.height) == (88, 72)
    assert request.init_image.size == (88, 72) and request.init_image.mode == "RGB"
    assert request.is_img2img


def test_large_init_image_is_fitted_within_the_maximum_size():
    request = valid(init_image=Image.new("RGB", (3000, 1000)), width=None, height=None)
    assert (request.width, request.height) == (2048, 680)
    small = valid(init_image=Image.new("RGB", (10, 20)), width=None, height=None)
    assert (small.width, small.height) == (64, 64)


def test_init_image_is_resized_to_an_explicit_size():
    request = valid(init_image=Image.new("RGB", (90, 70), (9, 8, 7)), width=128, height=64)
    assert request.init_image.size == (128, 64)
    assert request.init_image.getpixel((100, 30)) == (9, 8, 7)


def test_without_init_image_the_size_is_required():
    assert "Width" in refused(width=None)
    assert not valid().is_img2img


# --- known bugs ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["seed", "width", "steps", "cfg_scale"])
def test_huge_integers_are_refused_not_crashing(field):
    refused(**{field: 10**400})


def test_seed_range_message_names_the_exact_limit():
    assert "4294967295" in refused(seed=MAX_SEED + 1)
