"""The A1111 API contract over real HTTP: fields, types, base64 PNGs with parameters, `info` JSON,
the same pixels as the engine (and so the page) for the same seed, and every listed route."""

import base64
import io
import json
import threading
import time

import numpy as np
from PIL import Image

from app.generation.requests import GenerationRequest
from app.images.metadata import parse_infotext, read_parameters
from tests.api.conftest import ESRGAN
from tests.conftest import TINY_SD1, TINY_SD2_V

TXT2IMG = {"prompt": "a red barn", "negative_prompt": "fog", "seed": 1234, "steps": 3, "cfg_scale": 6,
           "width": 64, "height": 64, "sampler_name": "Euler a"}


def png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_txt2img_answers_as_a1111_does_with_the_engines_pixels(server, ann):
    response = ann.post("/sdapi/v1/txt2img", json={**TXT2IMG, "batch_size": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 2 and body["parameters"]["prompt"] == "a red barn"
    info = json.loads(body["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235] and info["prompt"] == "a red barn"
    assert len(info["infotexts"]) == 2 and info["sd_model_name"] == TINY_SD1
    first = png(body["images"][0])
    assert first.format == "PNG" and first.size == (64, 64)
    fields = parse_infotext(read_parameters(first))
    assert fields["Seed"] == "1234" and fields["Sampler"] == "Euler a" and fields["Negative prompt"] == "fog"
    assert read_parameters(first) == info["infotexts"][0]
    direct = server.engine.generate(GenerationRequest(
        prompt="a red barn", negative_prompt="fog", seed=1234, steps=3, cfg_scale=6, width=64, height=64,
        sampler="Euler a", batch_size=2, save=False)).images[0].image
    assert np.array_equal(np.asarray(first.convert("RGB")), np.asarray(direct))


def test_save_images_decides_whether_the_outputs_folder_gets_the_picture(server, ann):
    before = set(server.settings.outputs_dir.rglob("*.png"))
    ann.post("/sdapi/v1/txt2img", json={**TXT2IMG, "seed": 5}).raise_for_status()
    assert set(server.settings.outputs_dir.rglob("*.png")) == before
    ann.post("/sdapi/v1/txt2img", json={**TXT2IMG, "seed": 6, "save_images": True}).raise_for_status()
    new = set(server.settings.outputs_dir.rglob("*.png")) - before
    assert len(new) == 1 and new.pop().name.endswith("-6.png")


def test_img2img_with_a_mask_changes_only_the_masked_part(ann):
    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    response = ann.post("/sdapi/v1/img2img", json={
        **TXT2IMG, "init_images": [b64(picture)], "mask": b64(mask), "denoising_strength": 0.9,
        "mask_blur": 0, "inpaint_full_res": False, "inpainting_fill": 1,
    })
    assert response.status_code == 200, response.text
    result = np.asarray(png(response.json()["images"][0]).convert("RGB"), dtype=int)
    assert np.abs(result[:, 40:] - [200, 30, 30]).max() <= 2   # kept outside the mask
    assert np.abs(result[:, :24] - [200, 30, 30]).mean() > 10  # repainted inside
    assert "Denoising strength: 0.9" in json.loads(response.json()["info"])["infotexts"][0]


def test_extra_single_image_upscales_with_a_file_from_the_esrgan_folder(ann):
    source = Image.new("RGB", (20, 16), (10, 120, 200))
    response = ann.post("/sdapi/v1/extra-single-image", json={
        "image": "data:image/png;base64," + b64(source), "upscaling_resize": 4, "upscaler_1": ESRGAN,
    })
    assert response.status_code == 200, response.text
    body = response.json()
    assert png(body["image"]).size == (80, 64)
    assert f"Postprocess upscaler: {ESRGAN}" in body["html_info"]
    lanczos = ann.post("/sdapi/v1/extra-single-image", json={"image": b64(source), "resize_mode": 1,
                                                             "upscaling_resize_w": 50, "upscaler_1": "None"})
    assert png(lanczos.json()["image"]).size == (50, 40)


def test_lists_of_models_samplers_schedulers_and_upscalers(ann):
    models = ann.get("/sdapi/v1/sd-models").json()
    assert {m["model_name"] for m in models} == {TINY_SD1, TINY_SD2_V}
    assert set(models[0]) >= {"title", "model_name", "hash", "sha256", "filename", "config"}
    samplers = {s["name"] for s in ann.get("/sdapi/v1/samplers").json()}
    assert {"Euler a", "DPM++ 2M", "DDIM", "UniPC"} <= samplers
    schedulers = {s["label"] for s in ann.get("/sdapi/v1/schedulers").json()}
    assert {"Automatic", "Karras"} <= schedulers
    upscalers = [u["name"] for u in ann.get("/sdapi/v1/upscalers").json()]
    assert upscalers[:3] == ["None", "Lanczos", "Nearest"] and ESRGAN in upscalers


def test_setting_the_checkpoint_option_swaps_the_model(server, ann):
    try:
        assert ann.post("/sdapi/v1/options", json={"sd_model_checkpoint": TINY_SD2_V}).status_code == 200
        assert ann.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(TINY_SD2_V)
        assert server.engine.active_checkpoint().title == TINY_SD2_V
        info = json.loads(ann.post("/sdapi/v1/txt2img", json=TXT2IMG).json()["info"])
        assert info["sd_model_name"] == TINY_SD2_V
        missing = ann.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors"})
        assert missing.status_code == 404 and "no checkpoint named 'nope.safetensors'" in missing.json()["detail"]
    finally:
        ann.post("/sdapi/v1/options", json={"sd_model_checkpoint": TINY_SD1})
    # A per-request override uses that checkpoint for the job (A1111's override_settings).
    override = {**TXT2IMG, "override_settings": {"sd_model_checkpoint": TINY_SD2_V}}
    assert json.loads(ann.post("/sdapi/v1/txt2img", json=override).json()["info"])["sd_model_name"] == TINY_SD2_V


def test_png_info_reads_the_parameters_back(ann):
    made = ann.post("/sdapi/v1/txt2img", json=TXT2IMG).json()["images"][0]
    body = ann.post("/sdapi/v1/png-info", json={"image": made}).json()
    assert body["info"].startswith("a red barn\nNegative prompt: fog\nSteps: 3")
    assert body["parameters"]["Seed"] == "1234"
    assert ann.post("/sdapi/v1/refresh-checkpoints").status_code == 200


def test_progress_shows_the_callers_own_job_and_interrupt_stops_only_their_own(server):
    long = {**TXT2IMG, "steps": 40, "width": 128, "height": 128, "n_iter": 3}
    answers = {}
    with server.client("ann") as ann, server.client("bob") as bob:
        worker = threading.Thread(target=lambda: answers.update(ann=ann.post("/sdapi/v1/txt2img", json=long)))
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            progress = ann.get("/sdapi/v1/progress").json()
            if progress["state"]["sampling_step"] >= 3:
                break
            time.sleep(0.05)
        assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 40
        assert progress["state"]["job_count"] == 1
        while progress["current_image"] is None and time.monotonic() < deadline:
            progress = ann.get("/sdapi/v1/progress").json()
        assert png(progress["current_image"]).size == (128, 128)  # the live preview of Ann's own job
        other = bob.get("/sdapi/v1/progress").json()
        assert other["progress"] == 0 and other["current_image"] is None and other["state"]["job_count"] == 0
        assert bob.post("/sdapi/v1/interrupt").status_code == 200  # not Bob's job: it runs on
        time.sleep(0.3)
        assert ann.get("/sdapi/v1/progress").json()["state"]["interrupted"] is False
        assert ann.post("/sdapi/v1/interrupt").status_code == 200
        worker.join(60)
    body = answers["ann"].json()
    assert answers["ann"].status_code == 200 and json.loads(body["info"])["interrupted"] is True
    assert len(body["images"]) < 3


def test_openapi_docs_describe_the_routes(ann):
    spec = ann.get("/sdapi/v1/openapi.json").json()
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/extra-single-image", "/sdapi/v1/progress"} <= set(
        spec["paths"])
    assert "prompt" in spec["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    page = ann.get("/docs")
    assert page.status_code == 200 and "/sdapi/v1/txt2img" in page.text and "negative_prompt" in page.text
    # Self-contained: no scripts, nothing fetched from elsewhere (an offline LAN sees it all).
    assert "<script" not in page.text and "http://" not in page.text and "https://" not in page.text
