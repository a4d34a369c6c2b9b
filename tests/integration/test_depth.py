"""SD 2 depth (512-depth-ema): detected as its own family, image to image conditioned on an uploaded
depth map or on one the DPT estimator makes, and clear sentences when neither is there or when
text to image is asked of it.

The checkpoints are a tiny random depth model (SD 2 base with a 5-channel UNet) as an A1111-style
single file (with a `depth_model.*` tensor, as the real file carries MiDaS weights) and as a
diffusers folder; the estimator is a tiny random DPT saved as Intel/dpt-hybrid-midas is laid out.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from app.api.routes import install_api
from app.auth import Access, LoginLimiter
from app.errors import InvalidRequest
from app.generation.depth import depth_tensor, validated_depth_map
from app.generation.requests import GenerationRequest
from app.images.transform import JUST_RESIZE
from app.models.detect import CLIP_KEYS, OPEN_CLIP_KEYS, UNET_INPUT, family_from_weights
from app.models.families import Family
from app.models.registry import ModelRegistry
from app.models.safe_weights import UnreadableWeights
from tests.conftest import make_engine, make_settings, models_of
from tools.ldm_convert import ldm_state_dict
from tools.tiny_models import save_tiny_depth_estimator, save_tiny_model, tiny_pipeline

SINGLE = "512-depth-tiny.safetensors"
FOLDER = "depth-folder"
ESTIMATOR = "dpt-hybrid-midas"  # the catalog helper's folder
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def depth_models(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("depth-models")
    (models / "Stable-diffusion").mkdir()
    state = ldm_state_dict(tiny_pipeline(Family.SD2_DEPTH, seed=3))
    state["depth_model.scratch.output_conv.4.weight"] = torch.zeros(1, 32, 1, 1)  # MiDaS weights: ignored
    save_file(state, str(models / "Stable-diffusion" / SINGLE))
    save_tiny_model(models / "Stable-diffusion" / FOLDER, Family.SD2_DEPTH, seed=3)
    return models


@pytest.fixture(scope="module")
def depth_engine(depth_models, tiny_configs_dir, tmp_path_factory):
    """No estimator anywhere: depth maps must be uploaded."""
    settings = make_settings(tmp_path_factory.mktemp("depth-run"), depth_models, model_configs_dir=str(tiny_configs_dir))
    engine = make_engine(settings)
    engine.select_checkpoint(SINGLE)
    yield engine
    engine.close()


def picture() -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)),
                                     np.full((64, 64), 90, np.uint8)], axis=-1))


def depth(vertical: bool) -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.tile(ramp[:, None], (1, 64)) if vertical else np.tile(ramp, (64, 1)), "L")


def img2img(engine, **fields):
    values = dict(prompt="a room", steps=4, width=64, height=64, seed=5, init_image=picture(), strength=0.8)
    values.update(fields)
    return engine.generate(GenerationRequest(**values), TIMEOUT)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_five_channel_sd2_state_dict_is_sd2_depth():
    shapes = {UNET_INPUT: (320, 5, 3, 3), OPEN_CLIP_KEYS + "ln_final.weight": (1024,),
              "depth_model.scratch.output_conv.4.weight": (1, 32, 1, 1)}
    assert family_from_weights(shapes) is Family.SD2_DEPTH
    with pytest.raises(UnreadableWeights, match="5 input channels"):  # no SD 1 depth model exists
        family_from_weights({UNET_INPUT: (320, 5, 3, 3), CLIP_KEYS + "x": (768,)})


def test_single_files_and_folders_are_the_depth_family(depth_models):
    registry = ModelRegistry(depth_models)
    registry.refresh()
    families = {entry.title: entry.family for entry in registry.entries}
    assert families == {SINGLE: Family.SD2_DEPTH, FOLDER: Family.SD2_DEPTH}
    assert {e.title for e in registry.selectable()} == {SINGLE, FOLDER}
    assert registry.generating() == []  # like inpainting checkpoints: not for text to image


def test_uploaded_depth_maps_steer_the_picture(depth_engine):
    first = img2img(depth_engine, depth_map=depth(vertical=False)).images[0].image
    again = img2img(depth_engine, depth_map=depth(vertical=False)).images[0].image
    other = img2img(depth_engine, depth_map=depth(vertical=True)).images[0].image
    assert first.size == (64, 64)
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).max() > 0
    loaded = models_of(depth_engine).loaded
    assert loaded.base.unet.config.in_channels == 5 and loaded.base.depth_estimator is None


def test_the_folder_gives_the_single_files_pixels(depth_engine):
    """Same weights, two layouts: the single file was loaded with the depth config folder's 5 channels."""
    from_file = img2img(depth_engine, model=SINGLE, depth_map=depth(True)).images[0].image
    from_folder = img2img(depth_engine, model=FOLDER, depth_map=depth(True)).images[0].image
    assert np.array_equal(pixels(from_file), pixels(from_folder))


def test_without_an_estimator_or_a_depth_map_the_job_says_what_to_fetch(depth_engine):
    with pytest.raises(InvalidRequest) as raised:
        img2img(depth_engine, model=SINGLE)
    message = raised.value.message
    assert "DPT hybrid MiDaS (depth estimator)" in message and "Intel/dpt-hybrid-midas" in message
    assert f"'{ESTIMATOR}'" in message and "upload" in message


def test_text_to_image_on_a_depth_model_says_to_use_image_to_image(depth_engine):
    with pytest.raises(InvalidRequest, match="SD 2 depth checkpoint.*or use image to image"):
        depth_engine.generate(GenerationRequest(prompt="a room", steps=2, width=64, height=64, model=SINGLE), TIMEOUT)


def test_sixteen_bit_depth_maps_are_stretched_to_greyscale():
    values = np.tile(np.linspace(1000, 3000, 32, dtype=np.uint16), (32, 1))
    fitted = validated_depth_map(Image.fromarray(values, "I;16"), picture(), (64, 64), JUST_RESIZE)
    assert fitted.mode == "L" and fitted.size == (64, 64) and fitted.getextrema() == (0, 255)
    tensor = depth_tensor(fitted)
    assert tensor.shape == (1, 64, 64) and float(tensor.min()) == 0.0 and float(tensor.max()) == 1.0


def test_a_flat_depth_map_is_refused_with_a_sentence(depth_engine):
    with pytest.raises(InvalidRequest, match="one flat shade"):
        depth_engine.submit(GenerationRequest(prompt="x", init_image=picture(), depth_map=Image.new("L", (64, 64), 128)))


def test_with_the_estimator_in_the_models_folder_no_upload_is_needed(depth_models, tiny_configs_dir, tmp_path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    shutil.copy2(depth_models / "Stable-diffusion" / SINGLE, models / "Stable-diffusion" / SINGLE)
    save_tiny_depth_estimator(models / ESTIMATOR)
    engine = make_engine(make_settings(tmp_path / "run", models, model_configs_dir=str(tiny_configs_dir)))
    try:
        estimated = img2img(engine).images[0].image
        uploaded = img2img(engine, depth_map=depth(vertical=True)).images[0].image
        assert estimated.size == (64, 64)
        assert pixels(estimated).std() > 0  # a flat (or NaN) estimate would give one flat colour
        assert type(models_of(engine).loaded.base.depth_estimator).__name__ == "DPTForDepthEstimation"
        assert np.abs(pixels(estimated) - pixels(uploaded)).max() > 0  # the upload wins over the estimate
    finally:
        engine.close()


def test_the_api_lists_depth_checkpoints(depth_engine):
    app = FastAPI()
    install_api(app, depth_engine, Access(page=None, api=None), LoginLimiter())
    with TestClient(app) as client:
        listed = client.get("/sdapi/v1/sd-models")
    assert listed.status_code == 200
    assert {model["model_name"] for model in listed.json()} >= {"512-depth-tiny", FOLDER}


def test_a_diffusers_depth_folder_uses_its_own_estimator(depth_models, tiny_configs_dir, tmp_path):
    """Stability's diffusers repository ships the estimator as depth_estimator/ + feature_extractor/."""
    models = tmp_path / "models"
    folder = models / "Stable-diffusion" / FOLDER
    shutil.copytree(depth_models / "Stable-diffusion" / FOLDER, folder)
    save_tiny_depth_estimator(folder / "depth_estimator")
    (folder / "feature_extractor").mkdir()
    shutil.move(folder / "depth_estimator" / "preprocessor_config.json", folder / "feature_extractor")
    engine = make_engine(make_settings(tmp_path / "run", models, model_configs_dir=str(tiny_configs_dir)))
    try:
        assert pixels(img2img(engine).images[0].image).std() > 0
        assert models_of(engine).loaded.base.depth_estimator is not None
    finally:
        engine.close()
