"""Hires fix and variation seeds over the A1111 API: accepted (no more 422), echoed in `info`,
written in the infotext, and the same pixels as the engine (which the page calls) for the same fields."""

import base64
import io
import json

import numpy as np
from PIL import Image

from app.generation.requests import GenerationRequest
from app.images.metadata import parse_infotext, read_parameters

BASE = {"prompt": "a stone bridge", "seed": 77, "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler"}


def png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def test_hires_fix_over_the_api_matches_the_engine_and_echoes_its_fields(server, ann):
    body = {**BASE, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent (nearest)", "hr_second_pass_steps": 2,
            "denoising_strength": 0.55, "subseed": 9, "subseed_strength": 0.25}
    response = ann.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    info = json.loads(answer["info"])
    assert info["enable_hr"] is True and info["hr_scale"] == 2 and info["hr_upscaler"] == "Latent (nearest)"
    assert info["denoising_strength"] == 0.55
    assert info["subseed"] == 9 and info["all_subseeds"] == [9] and info["subseed_strength"] == 0.25
    picture = png(answer["images"][0])
    assert picture.size == (128, 128)
    fields = parse_infotext(read_parameters(picture))
    assert fields["Hires upscaler"] == "Latent (nearest)" and fields["Hires steps"] == "2"
    assert fields["Variation seed"] == "9" and fields["Variation seed strength"] == "0.25"
    direct = server.engine.generate(GenerationRequest(
        prompt="a stone bridge", seed=77, steps=3, width=64, height=64, sampler="Euler", enable_hr=True, hr_scale=2,
        hr_upscaler="Latent (nearest)", hr_second_pass_steps=2, strength=0.55, subseed=9, subseed_strength=0.25,
        save=False)).images[0].image
    assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(direct))


def test_hires_fix_without_a_strength_uses_a1111s_0_7_and_a_random_subseed_is_reported(ann):
    response = ann.post("/sdapi/v1/txt2img", json={**BASE, "enable_hr": True, "hr_scale": 1.5, "subseed": -1,
                                                  "subseed_strength": 0.1, "batch_size": 2})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["denoising_strength"] == 0.7
    assert info["subseed"] >= 0 and info["all_subseeds"] == [info["subseed"], info["subseed"] + 1]
    fields = parse_infotext(info["infotexts"][1])
    assert fields["Variation seed"] == str(info["subseed"] + 1) and fields["Size"] == "64x64"


def test_png_info_returns_the_hires_and_variation_keys(ann):
    answer = ann.post("/sdapi/v1/txt2img", json={**BASE, "enable_hr": True, "hr_resize_x": 96, "hr_resize_y": 96,
                                                "seed_resize_from_w": 64, "seed_resize_from_h": 48}).json()
    items = ann.post("/sdapi/v1/png-info", json={"image": answer["images"][0]}).json()
    assert "Hires resize: 96x96" in items["info"] and "Seed resize from: 64x48" in items["info"]


def test_the_page_and_the_api_give_the_same_pixels_for_hires_and_variation(server, ann, tmp_path):
    from gradio_client import Client

    body = {**BASE, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.6,
            "subseed": 21, "subseed_strength": 0.4, "hr_sampler_name": "DDIM"}
    api_picture = png(ann.post("/sdapi/v1/txt2img", json=body).json()["images"][0])
    client = Client(server.url, auth=("ann", "ann-pw"), verbose=False, download_files=str(tmp_path))
    gallery, _preview, status, info = client.predict(
        # the common settings, the seed's Extra, fast mode, then Hires fix, then the styles
        "a stone bridge", "", "Euler", "Automatic", 3, 7.0, 64, 64, 77, 1, 1,
        21, 0.4, 0, 0, False,  # ... and fast mode off
        True, "Lanczos", 0, 0.6, 1.5, 0, 0, "DDIM", "Use same scheduler", "", "",
        [],
        api_name="/txt2img",
    )
    page_picture = Image.open(gallery[0]["image"])
    assert page_picture.size == api_picture.size == (96, 96)
    assert np.array_equal(np.asarray(page_picture.convert("RGB")), np.asarray(api_picture.convert("RGB")))
    assert "Hires upscaler: Lanczos" in info and "Variation seed: 21" in info
