"""The web UI, served for real, driven through gradio_client as a remote user would."""

import urllib.request

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app.engine import create_engine
from app.images.metadata import parse_infotext, read_parameters
from server.compose import serve
from tests.conftest import CPU_ONLY, make_settings
from ui.app import build_ui


@pytest.fixture
def served(tiny_models_dir, tmp_path):
    settings = make_settings(tmp_path, tiny_models_dir, port=0, host="127.0.0.1")
    engine = create_engine(settings, CPU_ONLY)
    blocks = build_ui(engine)
    server = serve(blocks, engine, settings)
    url = server.url
    yield url, settings
    server.close()
    engine.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _txt2img_args(prompt: str, seed: int):
    # prompt, negative, sampler, schedule, steps, cfg, width, height, seed, batch count, batch size
    return (prompt, "blurry", "Euler a", "Automatic", 3, 7, 64, 64, seed, 1, 2)


def test_generate_through_the_web_ui_serves_pngs_with_parameters(served, tmp_path):
    url, settings = served
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    gallery, _preview, status, info = client.predict(*_txt2img_args("a red fox", 77), api_name="/txt2img")

    assert "Done: 2 image(s)" in status and "77, 78" in status
    assert len(gallery) == 2
    downloaded = Image.open(gallery[0]["image"])
    assert downloaded.size == (64, 64)
    fields = parse_infotext(read_parameters(downloaded))
    assert fields["Prompt"] == "a red fox" and fields["Seed"] == "77" and fields["Sampler"] == "Euler a"
    assert "Negative prompt: blurry" in info
    saved = sorted((settings.outputs_dir / "txt2img-images").rglob("*.png"))
    assert [p.name for p in saved] == ["00000-77.png", "00001-78.png"]


def test_bad_input_is_a_clear_error_and_the_server_keeps_serving(served, tmp_path):
    url, _ = served
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    bad = list(_txt2img_args("a cat", 1))
    bad[3] = "Karras"  # Euler a has no Karras schedule: the engine refuses, the page says why
    with pytest.raises(Exception, match="The Euler a sampler has no Karras schedule"):
        client.predict(*bad, api_name="/txt2img")
    gallery, *_ = client.predict(*_txt2img_args("a cat", 2), api_name="/txt2img")
    assert len(gallery) == 2


def test_img2img_through_the_web_ui(served, tmp_path):
    url, _ = served
    init = tmp_path / "init.png"
    Image.new("RGBA", (80, 72), (200, 40, 40, 128)).save(init)
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    gallery, _preview, status, info = client.predict(
        # picture, sketch, inpaint editor, strength, keep size, resize mode, mask blur, area, padding, depth map,
        # then prompt, negative, sampler, schedule, steps, cfg, width, height, seed, batch count, batch size
        handle_file(str(init)), None, None, 0.5, True, "Just resize", 4, "Whole picture", 32, None,
        "a cat", "", "DDIM", "Automatic", 4, 7, 512, 512, 9, 1, 1,
        api_name="/img2img",
    )
    assert Image.open(gallery[0]["image"]).size == (80, 72)
    assert "Denoising strength: 0.5" in info


def test_models_and_settings_are_not_served(served):
    url, settings = served
    secret = settings.models_dir / "Stable-diffusion" / "tiny-sd15" / "model_index.json"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}gradio_api/file={secret}")
    assert refused.value.code in (403, 404)
