"""Upscaling through the engine: size, parameters kept with A1111's postprocess keys, bad input."""

import pytest
from PIL import Image

from app.errors import InvalidRequest
from app.generation.requests import GenerationRequest
from app.generation.upscale import UpscaleRequest
from app.images.metadata import parse_infotext, read_parameters


def test_upscaling_a_result_keeps_its_parameters_and_adds_the_postprocess_keys(engine):
    (made,) = engine.generate(GenerationRequest(prompt="a hut", steps=2, width=64, height=64, seed=8)).images
    with Image.open(made.path) as source:
        done = engine.upscale(UpscaleRequest(image=source, scale=4))
    with Image.open(done.path) as saved:
        assert saved.size == (256, 256)
        fields = parse_infotext(read_parameters(saved))
    assert fields["Prompt"] == "a hut" and fields["Seed"] == "8"
    assert fields["Postprocess upscale by"] == "4" and fields["Postprocess upscaler"] == "Lanczos"
    assert done.path.parent.parent.name == "extras-images" and done.path.name == "00000.png"


def test_a_picture_without_parameters_gets_just_the_postprocess_keys(engine):
    done = engine.upscale(UpscaleRequest(image=Image.new("RGBA", (30, 20), (1, 2, 3, 0)), scale=2.5))
    assert done.image.size == (75, 50)
    assert done.parameters == "Postprocess upscale by: 2.5, Postprocess upscaler: Lanczos"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"scale": 0.5}, "between 1 and 8"),
        ({"scale": float("nan")}, "between 1 and 8"),
        ({"scale": "big"}, "must be a number"),
        ({"upscaler": "Magic"}, "Unknown upscaler"),
        ({"upscaler": "SD x4: nothing-here"}, "Unknown upscaler"),
        ({"noise_level": 351}, "Noise level"),
        ({"image": Image.new("RGB", (3000, 10)), "scale": 4}, "limit is 8192"),
        ({"image": b"not an image"}, "could not be read"),
    ],
)
def test_bad_upscale_requests_are_clear_errors(engine, fields, message):
    request = UpscaleRequest(**{"image": Image.new("RGB", (16, 16)), **fields})
    with pytest.raises(InvalidRequest, match=message):
        engine.upscale(request)
