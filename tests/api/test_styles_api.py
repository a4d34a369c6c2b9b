"""Saved styles over HTTP as A1111 serves them: /sdapi/v1/prompt-styles, and `styles` in txt2img
expanded into the prompts the infotext records (the same pixels as the expanded prompt typed in)."""

import json

import numpy as np
from PIL import Image

from app.generation.requests import GenerationRequest
from app.images.metadata import parse_infotext, read_parameters
from tests.api.test_contract import TXT2IMG, b64, png


def test_prompt_styles_lists_the_saved_styles(server, ann):
    server.engine.save_style("Film look", "{prompt}, 35mm film, grain", "digital, cgi")
    response = ann.get("/sdapi/v1/prompt-styles")
    assert response.status_code == 200
    assert {"name": "Film look", "prompt": "{prompt}, 35mm film, grain", "negative_prompt": "digital, cgi"} in response.json()


def test_styles_in_txt2img_are_expanded_into_the_infotext_and_the_pixels(server, ann):
    server.engine.save_style("Film look", "{prompt}, 35mm film, grain", "digital, cgi")
    server.engine.save_style("Moody", "dark mood", "")
    response = ann.post("/sdapi/v1/txt2img", json={**TXT2IMG, "styles": ["Film look", "Moody"]})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    fields = parse_infotext(read_parameters(png(response.json()["images"][0])))
    assert fields["Prompt"] == "a red barn, 35mm film, grain, dark mood"
    assert fields["Negative prompt"] == "fog, digital, cgi"
    assert info["styles"] == ["Film look", "Moody"] and info["prompt"] == "a red barn, 35mm film, grain, dark mood"
    typed = server.engine.generate(GenerationRequest(
        prompt="a red barn, 35mm film, grain, dark mood", negative_prompt="fog, digital, cgi", seed=1234, steps=3,
        cfg_scale=6, width=64, height=64, sampler="Euler a", save=False)).images[0].image
    assert np.array_equal(np.asarray(png(response.json()["images"][0]).convert("RGB")), np.asarray(typed))


def test_an_unknown_style_is_a_422_with_a_sentence(ann):
    response = ann.post("/sdapi/v1/txt2img", json={**TXT2IMG, "styles": ["No such style"]})
    assert response.status_code == 422
    assert "no saved style called 'No such style'" in response.json()["detail"]


def test_styles_in_img2img_are_expanded_too(server, ann):
    server.engine.save_style("Moody", "dark mood", "")
    body = {**TXT2IMG, "init_images": [b64(Image.new("RGB", (64, 64), (90, 30, 30)))], "denoising_strength": 0.5,
            "styles": ["Moody"]}
    response = ann.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    assert parse_infotext(read_parameters(png(response.json()["images"][0])))["Prompt"] == "a red barn, dark mood"
