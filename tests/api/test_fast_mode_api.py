"""`easel_fast` through /sdapi/v1 and the page: refused with the sentence saying what to download while
the LCM-LoRA is missing; with it, an LCM picture whose PNG, read by /png-info and sent back, makes the
same pixels, as the page's "Fast mode" switch does."""

import base64
import io

import numpy as np
from PIL import Image

from app.models.families import Family
from tests.conftest import TINY_SD1
from tools.tiny_models import tiny_pipeline
from tools.tiny_networks import lcm_lora, save_lora
from ui.hires import HIRES_FIELDS
from ui.widgets import DEFAULTS, FIELDS

BODY = {"prompt": "a harbour", "width": 64, "height": 64, "seed": 21, "save_images": False}
# What a client maps back from /png-info's parameters (A1111's names, and Easel's fast mode).
API_NAMES = {"Prompt": "prompt", "Steps": "steps", "Sampler": "sampler_name", "CFG scale": "cfg_scale",
             "Seed": "seed", "Size-1": "width", "Size-2": "height"}


def _picture(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_easel_fast_needs_the_lcm_lora_then_runs_lcm_and_pastes_back(server, ann, tmp_path):
    from gradio_client import Client

    lora = server.root / "models" / "Lora" / "lcm-lora-sdv1-5.safetensors"
    lora.unlink(missing_ok=True)
    assert ann.post("/sdapi/v1/options", json={"sd_model_checkpoint": TINY_SD1}).status_code == 200  # an SD 1.5
    missing = ann.post("/sdapi/v1/txt2img", json={**BODY, "easel_fast": True})
    assert missing.status_code == 422
    assert "LCM-LoRA for SD 1.5" in missing.json()["detail"] and "Download list" in missing.json()["detail"]

    save_lora(lora, lcm_lora(tiny_pipeline(Family.SD1), seed=9))
    try:
        made = ann.post("/sdapi/v1/txt2img", json={**BODY, "easel_fast": True})
        assert made.status_code == 200
        info = made.json()["info"]
        assert "Sampler: LCM" in info and "Steps: 4" in info and "Fast mode: LCM-LoRA" in info
        plain = ann.post("/sdapi/v1/txt2img", json={**BODY, "sampler_name": "LCM", "steps": 4, "cfg_scale": 1})
        assert not np.array_equal(_picture(made.json()["images"][0]), _picture(plain.json()["images"][0]))

        read = ann.post("/sdapi/v1/png-info", json={"image": made.json()["images"][0]})
        parameters = read.json()["parameters"]
        assert parameters["Fast mode"] == "LCM-LoRA" and parameters["Sampler"] == "LCM"
        body = {api: parameters[key] for key, api in API_NAMES.items() if key in parameters}
        again = ann.post("/sdapi/v1/txt2img", json={**body, "easel_fast": "Fast mode" in parameters,
                                                    "save_images": False})
        assert again.status_code == 200
        assert np.array_equal(_picture(made.json()["images"][0]), _picture(again.json()["images"][0]))

        # The page's "Fast mode" switch makes the same picture as the API's field.
        page = {**DEFAULTS, "prompt": BODY["prompt"], "width": 64, "height": 64, "seed": 21, "easel_fast": True}
        client = Client(server.url, auth=("ann", "ann-pw"), verbose=False, download_files=str(tmp_path))
        gallery, *_, info = client.predict(*[page[name] for name in FIELDS + HIRES_FIELDS], [], api_name="/txt2img")
        assert "Fast mode: LCM-LoRA" in info
        page_picture = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
        assert np.array_equal(page_picture, _picture(made.json()["images"][0]))
    finally:
        lora.unlink(missing_ok=True)
