"""Fast mode through the Engine on the tiny models: the LCM-LoRA (in latent-consistency's key layout)
changes the pixels, the LCM sampler runs 4-8 steps at CFG 1-2, the PNG says so and pasting it back
makes the same picture; TAESD decodes fast pictures and previews when present; without the LoRA a
sentence says what to download."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from app.errors import InvalidRequest
from app.generation.previews import latent_preview, tiny_decoded, tiny_preview
from app.generation.requests import GenerationRequest
from app.images.metadata import parse_infotext
from app.models.families import Family
from app.models.taesd import TaesdSlot
from tests.conftest import TINY_SD1, TINY_SD2_V, make_engine, make_settings
from tools.tiny_models import save_tiny_taesd, tiny_pipeline
from tools.tiny_networks import lcm_lora, save_lora

TIMEOUT = 120


@pytest.fixture(scope="module")
def fast_models(tiny_models_dir, tmp_path_factory):
    models = tmp_path_factory.mktemp("fast") / "models"
    models.mkdir()
    (models / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion", target_is_directory=True)
    save_lora(models / "Lora" / "lcm-lora-sdv1-5.safetensors", lcm_lora(tiny_pipeline(Family.SD1), seed=5))
    return models


@pytest.fixture(scope="module")
def fast_engine(fast_models, tiny_configs_dir):
    settings = make_settings(fast_models.parent, fast_models, model_configs_dir=str(tiny_configs_dir), preview_every=1)
    engine = make_engine(settings)
    engine.select_checkpoint(TINY_SD1)
    yield engine
    engine.close()


def _request(**fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a lighthouse", "width": 64, "height": 64, "seed": 7, **fields})


def _made(engine, request):
    image = engine.generate(request, TIMEOUT).images[0]
    with Image.open(image.path) as saved:
        return np.asarray(saved.convert("RGB")), parse_infotext(saved.info["parameters"]), saved.copy()


def test_fast_mode_runs_lcm_with_the_lora_and_the_png_records_it(fast_engine):
    result = fast_engine.generate(_request(easel_fast=True), TIMEOUT)
    assert any("TAESD" in note and "Download list" in note for note in result.notes)
    fast, fields, _ = _made(fast_engine, _request(easel_fast=True))  # steps 20 and CFG 7 become 4 and 1
    assert (fields["Sampler"], fields["Steps"], fields["CFG scale"]) == ("LCM", "4", "1")
    assert fields["Fast mode"] == "LCM-LoRA"  # no TAESD in this folder yet: the full VAE decoded it
    assert fields["Lora hashes"].startswith("lcm-lora-sdv1-5: ")
    assert "<lora:" not in fields["Prompt"]  # the LoRA is the mode's, not written into the user's prompt
    # The same sampler, steps and CFG without the LoRA: other pixels, so the LoRA was applied.
    plain, plain_fields, _ = _made(fast_engine, _request(sampler="LCM", steps=4, cfg_scale=1.0))
    assert "Fast mode" not in plain_fields and "Lora hashes" not in plain_fields
    assert not np.array_equal(fast, plain)
    # The prompt naming the LCM-LoRA itself: applied once, not twice.
    tagged, _, _ = _made(fast_engine, _request(easel_fast=True, prompt="a lighthouse <lora:lcm-lora-sdv1-5:1>"))
    assert np.array_equal(tagged, fast)
    # Steps and CFG inside fast mode's ranges are kept.
    _, kept, _ = _made(fast_engine, _request(easel_fast=True, steps=6, cfg_scale=1.5))
    assert (kept["Steps"], kept["CFG scale"]) == ("6", "1.5")


def test_fast_mode_works_in_image_to_image(fast_engine):
    init = Image.new("RGB", (64, 64), (120, 80, 40))
    _, fields, _ = _made(fast_engine, _request(easel_fast=True, init_image=init, strength=0.75, steps=8))
    assert (fields["Sampler"], fields["Steps"], fields["Denoising strength"]) == ("LCM", "8", "0.75")
    assert fields["Fast mode"].startswith("LCM-LoRA")


def test_pasting_a_fast_png_back_makes_the_same_picture(fast_engine):
    first, _, saved = _made(fast_engine, _request(easel_fast=True, steps=5, cfg_scale=2.0))
    request = fast_engine.read_png_info(saved).request
    assert request["easel_fast"] is True and request["sampler"] == "LCM" and request["steps"] == 5
    again, _, _ = _made(fast_engine, GenerationRequest(**request))
    assert np.array_equal(first, again)


def test_taesd_decodes_fast_pictures_and_previews_every_job(fast_engine, fast_models):
    vae_decoded, _, _ = _made(fast_engine, _request(easel_fast=True))
    save_tiny_taesd(fast_models / "taesd", seed=3)
    try:
        tiny, fields, _ = _made(fast_engine, _request(easel_fast=True))
        assert fields["Fast mode"] == "LCM-LoRA, TAESD"
        assert not any("TAESD" in note for note in fast_engine.generate(_request(easel_fast=True), TIMEOUT).notes)
        assert not np.array_equal(tiny, vae_decoded)  # the same latents, through the other decoder
        # A normal job still decodes with the full VAE, and its live preview comes from TAESD.
        job = fast_engine.submit(_request(steps=2))
        job.watch()
        result = job.wait(TIMEOUT)
        assert "Fast mode" not in result.images[0].parameters
        assert job.progress.preview is not None and job.progress.preview.size == (64, 64)
    finally:
        shutil.rmtree(fast_models / "taesd")


def test_a_taesd_preview_is_the_tiny_decoders_picture(tmp_path):
    decoder = TaesdSlot(save_tiny_taesd(tmp_path / "taesd", seed=1)).decoder()
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    preview = np.asarray(tiny_preview(decoder, latents, (64, 64)), dtype=np.int16)
    expected = ((tiny_decoded(decoder, latents)[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).round().numpy()
    assert np.abs(preview - expected).max() <= 1
    assert not np.array_equal(preview, np.asarray(latent_preview(latents, (64, 64))))


def test_taesd_slot_is_empty_without_its_files_and_says_why_a_broken_one_fails(tmp_path):
    assert TaesdSlot(tmp_path / "none").decoder() is None
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    slot = TaesdSlot(folder)
    assert slot.decoder() is None and "could not be loaded" in slot.problem


def test_without_the_lcm_lora_fast_mode_says_what_to_download(tiny_models_dir, tiny_configs_dir, tmp_path):
    engine = make_engine(make_settings(tmp_path, tiny_models_dir, model_configs_dir=str(tiny_configs_dir)))
    try:
        engine.select_checkpoint(TINY_SD1)
        with pytest.raises(InvalidRequest) as missing:
            engine.submit(_request(easel_fast=True))
        assert "LCM-LoRA for SD 1.5" in missing.value.message and "Download list" in missing.value.message
        assert "lcm-lora-sdv1-5.safetensors" in missing.value.message
        with pytest.raises(InvalidRequest) as sd2:
            engine.submit(_request(easel_fast=True, model=TINY_SD2_V))
        assert "SD 1.5 checkpoint" in sd2.value.message
        assert engine.generate(_request(steps=2), TIMEOUT).images  # a normal job still runs
    finally:
        engine.close()
