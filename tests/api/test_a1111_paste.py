"""The issue's "done when": a prompt copied from an A1111 PNG, with a LoRA, an embedding, hires fix and
a variation seed, runs through the page and through the API with the same pixels; the new PNG records
what A1111 would write; and pasting that PNG back reproduces it pixel for pixel."""

import base64
import io

import numpy as np
from PIL import Image

from app.images.metadata import parse_infotext, png_pnginfo, read_parameters
from app.models.families import Family
from tools.tiny_models import tiny_pipeline
from tools.tiny_networks import embedding_vectors, kohya_lora, save_a1111_embedding, save_lora
from ui.hires import HIRES_FIELDS
from ui.widgets import DEFAULTS, FIELDS

# As A1111 1.10 writes it (its hashes are of its own files: Easel records those of the files it used).
A1111_TEXT = (
    "a lighthouse at dusk <lora:paste-lora:0.8>, paste-emb, (warm light:1.2)\n"
    "Negative prompt: blurry, text\n"
    "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6, Seed: 1234, Size: 64x64, "
    "Model hash: 0123456789, Model: tiny, Variation seed: 99, Variation seed strength: 0.35, "
    "Denoising strength: 0.55, Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent, "
    'Lora hashes: "paste-lora: 0a1b2c3d4e5f", TI hashes: "paste-emb: 0a1b2c3d4e5f", Version: v1.10.1'
)
# What a webuiapi-style client sends for each infotext key (A1111's own mapping, infotext_utils.py).
API_NAMES = {
    "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "Sampler": "sampler_name",
    "CFG scale": "cfg_scale", "Seed": "seed", "Size-1": "width", "Size-2": "height", "Variation seed": "subseed",
    "Variation seed strength": "subseed_strength", "Denoising strength": "denoising_strength",
    "Hires upscale": "hr_scale", "Hires steps": "hr_second_pass_steps", "Hires upscaler": "hr_upscaler",
}


def _png_with(text: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 60, 80)).save(buffer, format="PNG", pnginfo=png_pnginfo(text))
    return base64.b64encode(buffer.getvalue()).decode()


def _picture(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def _api_body(parameters: dict) -> dict:
    """A txt2img body from /png-info's `parameters`, as a client maps A1111's keys back."""
    body = {api: parameters[key] for key, api in API_NAMES.items() if key in parameters}
    body["enable_hr"] = "Hires upscaler" in parameters
    return {**body, "save_images": False}


def _page_values(fields: dict) -> list:
    """The page's txt2img inputs, in order, for the request fields PNG info read (others at their defaults)."""
    return [fields.get(name, DEFAULTS[name]) for name in FIELDS + HIRES_FIELDS] + [[]]  # no styles


def _page_picture(server, values: list, tmp_path) -> Image.Image:
    from gradio_client import Client

    client = Client(server.url, auth=("ann", "ann-pw"), verbose=False, download_files=str(tmp_path))
    gallery, *_ = client.predict(*values, api_name="/txt2img")
    return Image.open(gallery[0]["image"])


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_an_a1111_prompt_with_lora_embedding_hires_and_variation_runs_and_round_trips(server, ann, tmp_path):
    models = server.root / "models"
    save_lora(models / "Lora" / "paste-lora.safetensors", kohya_lora(tiny_pipeline(Family.SD1), seed=11))
    save_a1111_embedding(models / "embeddings" / "paste-emb.pt", embedding_vectors(32, 2, seed=5))
    assert ann.post("/sdapi/v1/refresh-loras").status_code == 200

    pasted = ann.post("/sdapi/v1/png-info", json={"image": _png_with(A1111_TEXT)})
    assert pasted.status_code == 200, pasted.text
    body = _api_body(pasted.json()["parameters"])
    assert body["enable_hr"] and body["subseed"] == "99" and "<lora:paste-lora:0.8>" in body["prompt"]

    made = ann.post("/sdapi/v1/txt2img", json=body)
    assert made.status_code == 200, made.text
    picture = _picture(made.json()["images"][0])
    assert picture.size == (96, 96)  # hires fix's 1.5x of 64x64
    assert made.json()["info"] and "Couldn't find" not in made.json()["info"]

    written = parse_infotext(read_parameters(picture))
    assert written["Prompt"] == "a lighthouse at dusk <lora:paste-lora:0.8>, paste-emb, (warm light:1.2)"
    assert written["Size"] == "64x64" and written["Seed"] == "1234"
    assert written["Variation seed"] == "99" and written["Variation seed strength"] == "0.35"
    assert written["Hires upscale"] == "1.5" and written["Hires steps"] == "2" and written["Hires upscaler"] == "Latent"
    assert written["Denoising strength"] == "0.55"
    assert written["Lora hashes"].startswith("paste-lora: ") and written["TI hashes"].startswith("paste-emb: ")
    assert written["Lora hashes"] != "paste-lora: 0a1b2c3d4e5f"  # the hash of the file used, not the pasted one

    # Each feature counts: without the LoRA, the embedding, the variation or hires, the picture differs.
    for changed in ({"prompt": body["prompt"].replace("<lora:paste-lora:0.8>", "")},
                    {"prompt": body["prompt"].replace("paste-emb", "")},
                    {"subseed_strength": 0}, {"hr_upscaler": "Latent (nearest)"}):
        other = ann.post("/sdapi/v1/txt2img", json={**body, **changed})
        assert other.status_code == 200, other.text
        assert not np.array_equal(_pixels(_picture(other.json()["images"][0])), _pixels(picture)), changed

    # The page, given what its PNG info read from the A1111 text, makes the same picture.
    page_fields = server.engine.read_png_info(_picture(_png_with(A1111_TEXT))).request
    page_picture = _page_picture(server, _page_values(page_fields), tmp_path)
    assert np.array_equal(_pixels(page_picture), _pixels(picture))

    # Pasting the new PNG back (API and page) reproduces it pixel for pixel.
    again = _api_body(ann.post("/sdapi/v1/png-info", json={"image": made.json()["images"][0]}).json()["parameters"])
    remade = ann.post("/sdapi/v1/txt2img", json=again)
    assert remade.status_code == 200, remade.text
    assert np.array_equal(_pixels(_picture(remade.json()["images"][0])), _pixels(picture))
    page_again = _page_picture(server, _page_values(server.engine.read_png_info(picture).request), tmp_path)
    assert np.array_equal(_pixels(page_again), _pixels(picture))
