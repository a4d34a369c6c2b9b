"""The SD x4 diffusion upscaler (tiny model of the real architecture) through the engine:
4x size, tiled equals untiled on one tile, parameters kept, seeds reproduce, memory-aware loading."""

import numpy as np
import pytest
from PIL import Image

import app.generation.upscaling as upscaling_module
from app.errors import EaselError
from app.generation.requests import GenerationRequest
from app.generation.upscale import UpscaleRequest
from app.images.metadata import parse_infotext, read_parameters
from app.images.tiles import tile_grid
from app.models.families import Family
from tests.conftest import TINY_SD1, TINY_SD2_V, make_engine, make_settings, models_of
from tools.tiny_models import save_tiny_model

X4 = "tiny-x4"


@pytest.fixture(scope="module")
def models_with_upscaler(tiny_models_dir, tmp_path_factory):
    """The shared tiny models plus a tiny x4 upscaler (diffusers folder), in a folder of its own."""
    import shutil

    models = tmp_path_factory.mktemp("x4-models")
    shutil.copytree(tiny_models_dir / "Stable-diffusion", models / "Stable-diffusion")
    save_tiny_model(models / "Stable-diffusion" / X4, Family.X4_UPSCALER, seed=3)
    return models


@pytest.fixture
def x4_engine(models_with_upscaler, tiny_configs_dir, tmp_path):
    engine = make_engine(make_settings(tmp_path, models_with_upscaler, model_configs_dir=str(tiny_configs_dir)))
    yield engine
    engine.close()


def x4_request(image, **fields):
    return UpscaleRequest(image=image, upscaler=f"SD x4: {X4}", **{"steps": 2, "seed": 5, **fields})


def test_the_upscaler_is_offered_by_its_title(x4_engine):
    assert [choice.name for choice in x4_engine.upscalers()] == ["Lanczos", "Nearest", f"SD x4: {X4}"]


def test_sd_x4_makes_the_picture_four_times_larger_and_keeps_its_parameters(x4_engine):
    (made,) = x4_engine.generate(GenerationRequest(prompt="a hut", steps=2, width=64, height=64, seed=8)).images
    with Image.open(made.path) as source:
        done = x4_engine.upscale(x4_request(source, prompt="a hut"))
    with Image.open(done.path) as saved:
        assert saved.size == (256, 256)
        fields = parse_infotext(read_parameters(saved))
    assert fields["Prompt"] == "a hut" and fields["Seed"] == "8"
    assert fields["Postprocess upscaler"] == f"SD x4: {X4}" and fields["Upscale seed"] == "5"
    # The base checkpoint stays loaded beside the upscaler when memory allows.
    assert x4_engine.active_checkpoint().title == TINY_SD1


@pytest.fixture
def x4_calls(monkeypatch):
    """Every call of the SD x4 model during a test: (the tile it was given, the picture it made)."""
    calls: list[tuple[Image.Image, Image.Image]] = []

    def recorded(pipe, image, *args, **kwargs):
        made = upscaling_module.run_x4.__wrapped__(pipe, image, *args, **kwargs)
        calls.append((image, made))
        return made

    recorded.__wrapped__ = upscaling_module.run_x4
    monkeypatch.setattr(upscaling_module, "run_x4", recorded)
    return calls


def test_odd_sizes_are_padded_with_the_edge_and_cropped_back_not_resized(x4_engine, x4_calls):
    picture = Image.effect_noise((37, 21), 60).convert("RGB")
    done = x4_engine.upscale(x4_request(picture, scale=4))
    ((given, made),) = x4_calls
    # The model got the picture grown to multiples of 8 by repeating its last column and row ...
    given = np.asarray(given, dtype=int)
    assert given.shape == (24, 40, 3)
    assert np.array_equal(given[:21, :37], np.asarray(picture, dtype=int))
    assert (given[:21, 37:] == given[:21, 36:37]).all() and (given[21:] == given[20:21]).all()
    # ... and its 160x96 result was cropped to 148x84, pixel for pixel: no resize stretched the padding in.
    assert made.size == (160, 96)
    assert np.array_equal(np.asarray(done.image), np.asarray(made.crop((0, 0, 148, 84))))
    # Another scale resizes that same result.
    half = x4_engine.upscale(x4_request(picture, scale=2)).image
    assert half.size == (74, 42)
    assert np.array_equal(np.asarray(half), np.asarray(done.image.resize((74, 42), Image.LANCZOS)))


def test_tiles_are_the_models_own_output_where_they_do_not_overlap_and_blended_where_they_do(x4_engine, x4_calls):
    picture = Image.effect_noise((96, 40), 60).convert("RGB")
    result = np.asarray(x4_engine.upscale(x4_request(picture, tile=48, overlap=16)).image, dtype=int)
    tiles = tile_grid(picture.size, 48, 16)
    assert len(tiles) == len(x4_calls) == 3  # 96 px wide in 48 px tiles overlapping by at least 16
    outputs = [np.asarray(made, dtype=int)[: tile.size[1] * 4, : tile.size[0] * 4] for tile, (_, made) in zip(tiles, x4_calls)]
    for tile, (given, _) in zip(tiles, x4_calls):  # each tile is the picture's own crop
        crop = np.asarray(picture.crop((tile.left, tile.top, tile.right, tile.bottom)), dtype=int)
        assert np.array_equal(np.asarray(given, dtype=int)[: crop.shape[0], : crop.shape[1]], crop)
    first, second = tiles[0], tiles[1]
    # Columns only the first tile covers are exactly its output.
    alone = second.left * 4
    assert np.array_equal(result[:, :alone], outputs[0][:, :alone])
    # Where the first two overlap, every pixel is a mix of the two tiles' outputs (within rounding).
    overlap = slice(second.left * 4, first.right * 4)
    a, b = outputs[0][:, overlap], outputs[1][:, : first.right * 4 - second.left * 4]
    assert (result[:, overlap] >= np.minimum(a, b) - 1).all() and (result[:, overlap] <= np.maximum(a, b) + 1).all()
    assert not np.array_equal(result[:, overlap], a)  # blended, not one tile pasted over the other
    # The same seed gives the same pixels again.
    again = x4_engine.upscale(x4_request(picture, tile=48, overlap=16)).image
    assert np.array_equal(np.asarray(again, dtype=int), result)


def test_a_tiled_run_covers_the_picture_without_seams(x4_engine):
    flat = Image.new("RGB", (96, 40), (120, 120, 120))
    result = np.asarray(x4_engine.upscale(x4_request(flat, tile=48, overlap=16)).image, dtype=int)
    assert result.shape == (160, 384, 3)
    columns = result.mean(axis=(0, 2))
    # The largest jump between neighbouring columns stays within the picture's own texture.
    inner = np.abs(np.diff(columns))
    assert inner.max() <= 4 * np.median(inner) + 8


def test_interrupting_an_upscale_saves_nothing(x4_engine):
    job = x4_engine.submit_upscale(x4_request(Image.new("RGB", (96, 96)), tile=32, overlap=8, steps=20))
    seen = job.wait_for_change(-1, timeout=30)
    while not job.progress.steps and not job.finished:
        seen = job.wait_for_change(seen, timeout=30)
    job.cancel()
    with pytest.raises(EaselError, match="interrupted"):
        job.wait(timeout=60)
    assert not list((x4_engine.settings.outputs_dir / "extras-images").rglob("*.png"))


def test_closing_the_engine_releases_the_upscaler(x4_engine):
    import weakref

    x4_engine.upscale(x4_request(Image.new("RGB", (32, 32))))
    with models_of(x4_engine).use_x4(X4) as pipe:
        unet = weakref.ref(pipe.unet)
    del pipe
    x4_engine.close()
    assert unet() is None


@pytest.mark.parametrize("available, kept", [(0, False), (2**40, True)])
def test_choosing_another_checkpoint_releases_the_upscaler_only_when_memory_is_short(x4_engine, monkeypatch,
                                                                                    available, kept):
    import weakref

    x4_engine.upscale(x4_request(Image.new("RGB", (32, 32))))
    with models_of(x4_engine).use_x4(X4) as pipe:
        unet = weakref.ref(pipe.unet)
    del pipe
    monkeypatch.setattr(models_of(x4_engine), "_available_bytes", lambda: available)
    x4_engine.select_checkpoint(TINY_SD2_V)
    assert x4_engine.active_checkpoint().title == TINY_SD2_V
    assert (unet() is not None) == kept
