"""ESRGAN-family upscalers (tiny random Real-ESRGAN networks, detected by spandrel from their weights)
through the registry, the model manager and the engine: sizes, tiling, seams, metadata, bad files."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from app.errors import EaselError, InvalidRequest, ModelLoadError
from app.generation.networks import network_upscaled, one_tile
from app.generation.requests import GenerationRequest
from app.generation.upscale import UpscaleRequest
from app.images.metadata import parse_infotext, read_parameters
from app.models.upscalers import network_from_state_dict
from tests.conftest import make_engine, make_settings, models_of
from tests.integration.test_model_files import write_evil_ckpt
from tools.tiny_models import tiny_esrgan_state_dict

X4 = "4x-tiny"                 # .safetensors, Real-ESRGAN key names
X2 = "RealESRGAN_x2plus"       # .pth with BasicSR's params_ema wrapper, pixel-unshuffle 2x
X1 = "1x-tiny-restore"         # a 1x restoration model: runs once whatever the scale


@pytest.fixture(scope="module")
def esrgan_models(tiny_models_dir, tmp_path_factory):
    models = tmp_path_factory.mktemp("esrgan-models")
    shutil.copytree(tiny_models_dir / "Stable-diffusion", models / "Stable-diffusion")
    folder = models / "ESRGAN"
    folder.mkdir()
    save_file(tiny_esrgan_state_dict(4, seed=1), str(folder / f"{X4}.safetensors"))
    torch.save({"params_ema": tiny_esrgan_state_dict(2, seed=2)}, folder / f"{X2}.pth")
    save_file(tiny_esrgan_state_dict(1, seed=3), str(folder / f"{X1}.safetensors"))
    (folder / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    save_file({"lora_unet_proj.lora_down.weight": torch.zeros(4, 8)}, str(folder / "not-an-upscaler.safetensors"))
    write_evil_ckpt(folder / "evil.pth", models / "MARKER")
    return models


@pytest.fixture
def esrgan_engine(esrgan_models, tiny_configs_dir, tmp_path):
    engine = make_engine(make_settings(tmp_path, esrgan_models, model_configs_dir=str(tiny_configs_dir)))
    yield engine
    engine.close()


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients plus noise: every tile differs from its neighbours, so a seam would show."""
    rng = np.random.default_rng(seed)
    x, y = np.linspace(0, 255, width), np.linspace(0, 255, height)
    rgb = np.stack([np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)), np.full((height, width), 128.0)], -1)
    return Image.fromarray((rgb + rng.normal(0, 20, rgb.shape)).clip(0, 255).astype(np.uint8))


def test_upscaler_files_are_listed_by_name_with_the_scale_read_from_their_weights(esrgan_engine):
    names = [choice.name for choice in esrgan_engine.upscalers()]
    assert names == ["Lanczos", "Nearest", X1, X4, X2]
    scales = {e.name: (e.scale, e.architecture) for e in models_of(esrgan_engine).registry.networks()}
    assert scales == {X4: (4, "ESRGAN"), X2: (2, "ESRGAN"), X1: (1, "ESRGAN")}


def test_unusable_upscaler_files_say_why_and_a_code_pickle_never_runs(esrgan_engine, esrgan_models):
    problems = {e.name: e.problem for e in models_of(esrgan_engine).registry.upscalers if e.problem}
    assert "damaged or incomplete" in problems["truncated"]
    assert "not an upscaler architecture" in problems["not-an-upscaler"]
    assert "would run Python code" in problems["evil"]
    assert not (esrgan_models / "MARKER").exists()
    with pytest.raises(InvalidRequest, match="Unknown upscaler 'evil'"):
        esrgan_engine.upscale(UpscaleRequest(image=textured(16, 16), upscaler="evil"))


@pytest.mark.parametrize(
    "name, scale, size",
    [
        (X4, 4, (200, 120)),   # the network's own factor
        (X4, 2, (100, 60)),    # smaller: one pass, then resized down
        (X4, 6, (300, 180)),   # larger: a second pass, its input shrunk to land on the target
        (X2, 3, (150, 90)),
        (X1, 2, (100, 60)),    # 1x restoration: once, then resized
    ],
)
def test_output_has_the_chosen_size(esrgan_engine, name, scale, size):
    done = esrgan_engine.upscale(UpscaleRequest(image=textured(50, 30), upscaler=name, scale=scale))
    assert done.image.size == size
    with Image.open(done.path) as saved:
        assert saved.size == size


def test_a_picture_that_fits_one_tile_gives_the_same_pixels_tiled_or_not(esrgan_engine):
    picture = textured(40, 30)
    small_tile = esrgan_engine.upscale(UpscaleRequest(image=picture, upscaler=X4, tile=64, overlap=8)).image
    default_tile = esrgan_engine.upscale(UpscaleRequest(image=picture, upscaler=X4)).image
    with models_of(esrgan_engine).use_network(X4) as network:
        direct = one_tile(network, picture)
    assert np.array_equal(np.asarray(small_tile), np.asarray(default_tile))
    assert np.array_equal(np.asarray(small_tile), np.asarray(direct))
    assert np.asarray(direct).std() > 5  # the network's output is a picture, not a flat colour


def test_a_tiled_run_has_no_visible_seams(esrgan_engine):
    picture = textured(96, 96, seed=4)
    with models_of(esrgan_engine).use_network(X4) as network:
        whole = np.asarray(one_tile(network, picture), dtype=int)
        blended = np.abs(np.asarray(network_upscaled(network, picture, 48, 16), dtype=int) - whole)
        butted = np.abs(np.asarray(network_upscaled(network, picture, 48, 0), dtype=int) - whole)
    # Tiles butted together without overlap differ from the whole picture along the seams (the
    # measure can fail); overlapping tiles blended with feathering stay within a few levels of it.
    worst_column = lambda diff: max(diff.mean(axis=(0, 2)).max(), diff.mean(axis=(1, 2)).max())  # noqa: E731
    assert worst_column(butted) > 10 and butted.max() > 50
    assert worst_column(blended) < 3 and blended.max() <= 16


def test_upscaling_a_result_keeps_its_parameters_and_names_the_upscaler(esrgan_engine):
    (made,) = esrgan_engine.generate(GenerationRequest(prompt="a hut", steps=2, width=64, height=64, seed=8)).images
    with Image.open(made.path) as source:
        done = esrgan_engine.upscale(UpscaleRequest(image=source, upscaler=X4, scale=4))
    with Image.open(done.path) as saved:
        fields = parse_infotext(read_parameters(saved))
    assert fields["Prompt"] == "a hut" and fields["Seed"] == "8"
    assert fields["Postprocess upscaler"] == X4 and fields["Postprocess upscale by"] == "4"


def test_pictures_of_any_mode_come_out_rgb_and_bad_ones_are_clear_errors(esrgan_engine):
    for picture in (
        Image.new("RGBA", (9, 7), (10, 200, 30, 0)),
        Image.new("L", (1, 1), 128),
        Image.new("CMYK", (12, 10), (0, 255, 0, 0)),
        Image.new("I;16", (12, 10), 40000),
    ):
        done = esrgan_engine.upscale(UpscaleRequest(image=picture, upscaler=X4, scale=4))
        assert done.image.mode == "RGB" and done.image.size == (picture.width * 4, picture.height * 4)
    with pytest.raises(InvalidRequest, match="empty"):
        esrgan_engine.upscale(UpscaleRequest(image=Image.new("RGB", (0, 0)), upscaler=X4))
    with pytest.raises(InvalidRequest, match="limit is 8192"):
        esrgan_engine.upscale(UpscaleRequest(image=Image.new("RGB", (2100, 16)), upscaler=X4, scale=4))
    with pytest.raises(InvalidRequest, match="at most half the tile"):
        esrgan_engine.upscale(UpscaleRequest(image=textured(16, 16), upscaler=X4, tile=64, overlap=40))


def test_progress_counts_tiles_and_an_interrupt_saves_nothing(esrgan_engine, tmp_path):
    job = esrgan_engine.submit_upscale(UpscaleRequest(image=textured(200, 200), upscaler=X4, tile=32, overlap=8))
    seen = job.wait_for_change(-1, timeout=30)
    while job.progress.step < 2 and not job.finished:
        seen = job.wait_for_change(seen, timeout=30)
    assert job.progress.steps == 64  # 8 x 8 tiles of 32 px overlapping by >= 8 over 200 px
    esrgan_engine.interrupt()
    with pytest.raises(EaselError, match="interrupted"):
        job.wait(timeout=60)
    assert not list((tmp_path / "outputs").rglob("*.png"))


def test_the_network_is_loaded_once_and_released_with_the_upscaler(esrgan_engine):
    with models_of(esrgan_engine).use_network(X4) as first:
        pass
    with models_of(esrgan_engine).use_network(X4) as again:
        assert again is first
    with models_of(esrgan_engine).use_network(X2) as other:
        assert other is not first and other.scale == 2
    models_of(esrgan_engine).upscalers.release()
    with models_of(esrgan_engine).use_network(X2) as reloaded:
        assert reloaded is not other


def test_a_file_broken_after_listing_is_a_clear_error_not_a_crash(esrgan_engine, esrgan_models, tmp_path):
    broken = esrgan_models / "ESRGAN" / f"{X4}.safetensors"
    saved = broken.read_bytes()
    try:
        broken.write_bytes(saved[:100])
        with pytest.raises(ModelLoadError, match="damaged or incomplete"):
            esrgan_engine.upscale(UpscaleRequest(image=textured(16, 16), upscaler=X4))
        assert esrgan_engine.upscale(UpscaleRequest(image=textured(16, 16), upscaler=X2)).image.size == (64, 64)
    finally:
        broken.write_bytes(saved)


def test_out_of_memory_on_the_cpu_says_what_to_do(esrgan_engine, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("app.generation.upscaling.network_upscaled", no_memory)
    with pytest.raises(EaselError, match="ran out of memory even on the CPU"):
        esrgan_engine.upscale(UpscaleRequest(image=textured(16, 16), upscaler=X4))


def test_a_half_precision_overflow_reruns_the_tile_in_float32():
    state = tiny_esrgan_state_dict(4, seed=1)
    for name in ("conv_first.weight", "conv_body.weight"):
        state[name] *= 1e4  # activations beyond float16's 65504
    network = network_from_state_dict(state, "hot").to(dtype=torch.float16)
    picture = textured(12, 12)
    with torch.inference_mode():
        raw = network.model(torch.rand(1, 3, 12, 12, dtype=torch.float16))
    assert not torch.isfinite(raw).all()  # the case is real: float16 overflows here
    result = one_tile(network, picture)
    assert network.dtype == torch.float32  # remembered for the next tiles
    assert np.array_equal(np.asarray(result), np.asarray(one_tile(network, picture)))


def test_the_upscale_tab_offers_the_files_and_upscales_with_them(esrgan_models, tiny_configs_dir, tmp_path):
    from gradio_client import Client, handle_file

    from server.compose import serve
    from tests.integration.test_gradio_app import _free_port
    from ui.app import build_ui

    settings = make_settings(tmp_path, esrgan_models, host="127.0.0.1", model_configs_dir=str(tiny_configs_dir))
    settings.port = _free_port()
    engine = make_engine(settings)
    blocks = build_ui(engine)
    server = None
    try:
        server = serve(blocks, engine, settings)
        url = server.url
        source = tmp_path / "source.png"
        textured(24, 20).save(source)
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        # picture, upscaler, scale, prompt, negative, noise, steps, cfg, seed
        status, result, info = client.predict(
            handle_file(str(source)), X4, 4, "", "", 20, 20, 7, -1, api_name="/upscale"
        )
        assert "96x80" in status and "Postprocess upscaler: 4x-tiny" in info
        assert Image.open(result).size == (96, 80)
        config = blocks.config
        dropdown = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "upscale-upscaler")
        assert [choice[0] for choice in dropdown["props"]["choices"]] == ["Lanczos", "Nearest", X1, X4, X2]
        problems = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "upscale-problems")
        assert "evil.pth" in problems["props"]["value"] and "would run Python code" in problems["props"]["value"]
    finally:
        if server is not None:
            server.close()
        engine.close()
