"""Issue 11's fields as an existing A1111 client library sends them: webuiapi (its full default
payload, HTTP Basic) for hires fix, variation seeds, styles and a LoRA tag, and its list calls."""

import pytest

from app.images.metadata import parse_infotext, read_parameters
from app.models.families import Family
from tools.tiny_models import tiny_pipeline
from tools.tiny_networks import kohya_lora, save_lora

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture
def client(server):
    host, port = server.url.split("//")[1].rstrip("/").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    api.set_auth("ann", "ann-pw")
    return api


def test_webuiapi_runs_hires_fix_variations_styles_and_a_lora(server, client, ann):
    save_lora(server.root / "models" / "Lora" / "client-ink.safetensors", kohya_lora(tiny_pipeline(Family.SD1), seed=8))
    assert ann.post("/sdapi/v1/refresh-loras").status_code == 200  # webuiapi has no call for it
    server.engine.save_style("Client ink", "{prompt}, ink drawing", "colour")

    assert "client-ink" in [lora["name"] for lora in client.get_loras()]
    assert {"name": "Client ink", "prompt": "{prompt}, ink drawing", "negative_prompt": "colour"} in \
        client.get_prompt_styles()
    assert set(client.get_embeddings()) == {"loaded", "skipped"}

    result = client.txt2img(
        prompt="a fox <lora:client-ink:0.7>", styles=["Client ink"], seed=5, steps=2, width=64, height=64,
        sampler_name="Euler", enable_hr=True, hr_scale=1.5, hr_upscaler=webuiapi.HiResUpscaler.Latent,
        hr_second_pass_steps=2, denoising_strength=0.5, subseed=3, subseed_strength=0.2,
    )
    assert result.image.size == (96, 96)
    assert result.info["subseed"] == 3 and result.info["subseed_strength"] == 0.2
    assert result.info["styles"] == ["Client ink"]
    fields = parse_infotext(read_parameters(result.image))
    assert fields["Prompt"] == "a fox <lora:client-ink:0.7>, ink drawing"
    assert fields["Negative prompt"] == "colour"
    assert (fields["Hires upscale"], fields["Hires steps"], fields["Denoising strength"]) == ("1.5", "2", "0.5")
    assert (fields["Variation seed"], fields["Variation seed strength"]) == ("3", "0.2")
    assert fields["Lora hashes"].startswith("client-ink: ")

    info = client.png_info(result.image).info
    assert "Hires upscale: 1.5" in info and "Lora hashes" in info
