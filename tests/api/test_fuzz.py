"""Hostile and broken input, through the API and the page's own API: every case is a 4xx with a
sentence (never a 500), and afterwards a valid request still succeeds."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.api.test_contract import TXT2IMG, b64, png

OK = {**TXT2IMG, "steps": 2}


def encoded(image: Image.Image, format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return base64.b64encode(buffer.getvalue()).decode()


def bomb() -> str:
    """A 20000 x 20000 PNG: a few KB on the wire, 400 million pixels once decoded."""
    return encoded(Image.new("1", (20000, 20000)))


PICTURE = b64(Image.new("RGB", (64, 64), (90, 90, 200)))

# (route, body as JSON-able data or raw bytes, why it is bad)
BAD = [
    ("txt2img", {**OK, "width": 100000}, "huge width"),
    ("txt2img", {**OK, "width": -64}, "negative width"),
    ("txt2img", {**OK, "height": 0}, "zero height"),
    ("txt2img", {**OK, "steps": 0}, "no steps"),
    ("txt2img", {**OK, "steps": 100000}, "absurd steps"),
    ("txt2img", {**OK, "cfg_scale": 1e308}, "huge CFG"),
    ("txt2img", {**OK, "cfg_scale": -3}, "negative CFG"),
    ("txt2img", b'{"prompt": "x", "steps": 2, "cfg_scale": NaN}', "NaN CFG"),
    ("txt2img", b'{"prompt": "x", "steps": 2, "cfg_scale": Infinity}', "infinite CFG"),
    ("txt2img", {**OK, "seed": "lucky"}, "seed as text"),
    ("txt2img", {**OK, "seed": 2**70}, "seed too large"),
    ("txt2img", {**OK, "batch_size": 1000}, "absurd batch size"),
    ("txt2img", {**OK, "n_iter": 1000000}, "absurd batch count"),
    ("txt2img", {**OK, "prompt": "cat, " * 400_000}, "a 2 MB prompt"),
    ("txt2img", {**OK, "prompt": ["a", "list"]}, "prompt as a list"),
    ("txt2img", {**OK, "prompt": None}, "prompt null"),
    ("txt2img", {**OK, "negative_prompt": {"x": 1}}, "negative prompt as an object"),
    ("txt2img", {**OK, "sampler_name": "Turbo Magic"}, "unknown sampler"),
    ("txt2img", {**OK, "scheduler": "Wobbly"}, "unknown schedule"),
    ("txt2img", {**OK, "sampler_name": "Euler a", "scheduler": "Karras"}, "a schedule the sampler lacks"),
    ("txt2img", {**OK, "override_settings": {"sd_model_checkpoint": "missing.safetensors"}}, "unknown model"),
    ("txt2img", {**OK, "override_settings": {"sd_model_checkpoint": 5}}, "model as a number"),
    ("txt2img", {**OK, "override_settings": "yes"}, "override_settings as text"),
    ("txt2img", {**OK, "enable_hr": True, "hr_upscaler": "Magic"}, "an unknown hires upscaler"),
    ("txt2img", {**OK, "enable_hr": True, "hr_scale": 100}, "an absurd hires scale"),
    ("txt2img", {**OK, "subseed_strength": 5}, "variation strength above 1"),
    ("txt2img", {**OK, "subseed": "lucky"}, "variation seed as text"),
    ("txt2img", {**OK, "restore_faces": True}, "face restoration"),
    ("txt2img", {**OK, "styles": ["cinematic"]}, "an unknown style"),
    ("txt2img", {**OK, "styles": "cinematic"}, "styles as text"),
    ("txt2img", [], "a list instead of an object"),
    ("txt2img", "just text", "a string instead of an object"),
    ("txt2img", b"{", "malformed JSON"),
    ("txt2img", b"", "empty body"),
    ("txt2img", b"\x89PNG\r\n\x1a\n\x00\x00garbage", "binary junk"),
    ("img2img", {**OK}, "no init image"),
    ("img2img", {**OK, "init_images": []}, "empty init images"),
    ("img2img", {**OK, "init_images": "not-a-list"}, "init images as text"),
    ("img2img", {**OK, "init_images": ["not base64 at all!!"]}, "invalid base64"),
    ("img2img", {**OK, "init_images": ["aGVsbG8gd29ybGQ="]}, "base64 of non-image bytes"),
    ("img2img", {**OK, "init_images": ["http://169.254.169.254/latest/meta-data/"]}, "a URL (SSRF)"),
    ("img2img", {**OK, "init_images": ["file:///etc/passwd"]}, "a file URL"),
    ("img2img", {**OK, "init_images": [bomb()]}, "decompression bomb"),
    ("img2img", {**OK, "init_images": [PICTURE], "denoising_strength": 5}, "strength above 1"),
    ("img2img", {**OK, "init_images": [PICTURE], "resize_mode": 9}, "unknown resize mode"),
    ("img2img", {**OK, "init_images": [PICTURE], "mask": "%%%"}, "invalid mask"),
    ("img2img", {**OK, "init_images": [PICTURE], "mask": b64(Image.new("L", (64, 64), 0))}, "empty mask"),
    ("extra-single-image", {"upscaler_1": "Lanczos"}, "no image"),
    ("extra-single-image", {"image": PICTURE, "upscaling_resize": 1000}, "absurd scale"),
    ("extra-single-image", b'{"image": "x", "upscaling_resize": NaN}', "NaN scale"),
    ("extra-single-image", {"image": PICTURE, "upscaler_1": "Hyper Zoom"}, "unknown upscaler"),
    ("extra-single-image", {"image": PICTURE, "gfpgan_visibility": 1}, "face restoration"),
    ("extra-single-image", {"image": "////", "upscaler_1": "Lanczos"}, "not a picture"),
    ("png-info", {"image": "garbage"}, "garbage image"),
    ("png-info", {}, "no image"),
    ("options", {"sd_model_checkpoint": ["x"]}, "checkpoint as a list"),
    ("options", {"sd_vae": 5}, "VAE as a number"),
    ("options", {"sd_vae": "no-such-vae.safetensors"}, "unknown VAE"),
    ("options", [], "a list instead of an object"),
]


@pytest.mark.parametrize("route, body, why", BAD, ids=[case[2] for case in BAD])
def test_bad_input_is_a_4xx_with_a_sentence(ann, route, body, why):
    url = f"/sdapi/v1/{route}"
    if isinstance(body, bytes):
        response = ann.post(url, content=body, headers={"content-type": "application/json"})
    else:
        response = ann.post(url, json=body)
    assert 400 <= response.status_code < 500, (why, response.status_code, response.text[:300])
    detail = response.json()["detail"]
    assert isinstance(detail, str) and len(detail) > 10 and detail.rstrip().endswith((".", ")")), detail


def test_a_body_over_the_upload_limit_is_refused_before_it_is_read(ann):
    too_big = b'{"prompt": "' + b"x" * (9 * 2**20) + b'"}'
    response = ann.post("/sdapi/v1/txt2img", content=too_big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than this server accepts" in response.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b"x" * 2**20

    streamed = ann.post("/sdapi/v1/txt2img", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    "picture",
    [
        Image.new("RGB", (1, 1), (255, 0, 0)),
        Image.fromarray(np.full((64, 48), 40000, dtype=np.uint16)),
        Image.new("CMYK", (40, 40), (0, 200, 0, 0)),
        Image.new("P", (30, 20)),
    ],
    ids=["1x1", "16-bit", "CMYK", "palette"],
)
def test_odd_but_real_pictures_work(ann, picture):
    format = "JPEG" if picture.mode == "CMYK" else "PNG"
    response = ann.post("/sdapi/v1/img2img", json={**OK, "init_images": [encoded(picture, format)],
                                                   "width": 64, "height": 64})
    assert response.status_code == 200, response.text
    assert png(response.json()["images"][0]).size == (64, 64)


def test_after_the_fuzz_pass_a_valid_request_still_succeeds(ann):
    for route, body, _ in BAD:
        if isinstance(body, bytes):
            ann.post(f"/sdapi/v1/{route}", content=body, headers={"content-type": "application/json"})
        else:
            ann.post(f"/sdapi/v1/{route}", json=body)
    response = ann.post("/sdapi/v1/txt2img", json=OK)
    assert response.status_code == 200
    assert json.loads(response.json()["info"])["seed"] == OK["seed"]


def test_hostile_input_through_the_page_is_a_clear_error_too(server):
    from gradio_client import Client

    client = Client(server.url, auth=("ann", "ann-pw"), verbose=False, download_files=False)
    # prompt, negative, sampler, schedule, steps, cfg, width, height, seed, batch count, batch size
    good = ["a boat", "", "Euler a", "Automatic", 2, 7, 64, 64, 7, 1, 1]
    cases = {0: "x" * 1_000_000, 4: 100000, 6: 100000, 8: -5, 10: 1000, 2: "Turbo Magic"}
    for index, value in cases.items():
        bad = list(good)
        bad[index] = value
        with pytest.raises(Exception) as refused:
            client.predict(*bad, api_name="/txt2img")
        assert "Something went wrong inside Easel" not in str(refused.value)
    gallery, *_ = client.predict(*good, api_name="/txt2img")
    assert len(gallery) == 1
