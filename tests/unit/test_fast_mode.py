"""Fast mode's request rules, its infotext and API field, and the catalog entries that fetch what it
needs (the LCM-LoRA saved under its own name in models/Lora/)."""

import pytest

from app.api import convert
from app.api.schemas import Txt2ImgRequest
from app.errors import EaselError, InvalidRequest
from app.generation.a1111 import api_fields, request_fields
from app.generation.requests import GenerationRequest
from app.models.catalog import load_helpers


@pytest.mark.parametrize("steps, cfg, expected", [
    (20, 7.0, (4, 1.0)),   # a normal run's values: fast mode's defaults
    (8, 2.0, (8, 2.0)),    # inside its ranges: kept
    (3, 1.5, (4, 1.5)),
    (6, 0.5, (6, 1.0)),
])
def test_fast_mode_runs_lcm_with_steps_and_cfg_in_its_ranges(steps, cfg, expected):
    request = GenerationRequest(easel_fast=True, sampler="Euler a", schedule="Karras", steps=steps,
                                cfg_scale=cfg).validated()
    assert (request.sampler, request.schedule, request.easel_fast) == ("LCM", "Automatic", True)
    assert (request.steps, request.cfg_scale) == expected


def test_fast_mode_still_refuses_what_is_out_of_range_and_off_changes_nothing():
    with pytest.raises(InvalidRequest, match="Steps"):
        GenerationRequest(easel_fast=True, steps=0).validated()
    plain = GenerationRequest(sampler="Euler a", steps=20, cfg_scale=7.0).validated()
    assert (plain.sampler, plain.steps, plain.cfg_scale, plain.easel_fast) == ("Euler a", 20, 7.0, False)


def test_the_fast_mode_key_and_the_api_field_turn_it_on():
    fields = request_fields({"Sampler": "LCM", "Steps": "4", "Fast mode": "LCM-LoRA, TAESD"})
    assert fields["easel_fast"] is True and fields["sampler"] == "LCM"
    assert "easel_fast" not in request_fields({"Sampler": "LCM"})
    arrived = convert.generation_request(Txt2ImgRequest(prompt="a cat", easel_fast=True))
    assert arrived.easel_fast is True
    assert api_fields(arrived.validated())["easel_fast"] is True
    assert convert.generation_request(Txt2ImgRequest(prompt="a cat")).easel_fast is False


def test_the_catalog_saves_the_lcm_lora_under_its_name_in_the_lora_folder():
    helpers = {helper.id: helper for helper in load_helpers()}
    (lora,) = helpers["lcm-lora-sd15"].file_entries()
    assert helpers["lcm-lora-sd15"].folder == "Lora" and lora.filename == "lcm-lora-sdv1-5.safetensors"
    assert lora.url == "https://huggingface.co/latent-consistency/lcm-lora-sdv1-5/resolve/main/pytorch_lora_weights.safetensors"
    assert [entry.filename for entry in helpers["taesd"].file_entries()] == \
        ["config.json", "diffusion_pytorch_model.safetensors"]


@pytest.mark.parametrize("files, save_as", [("[a.safetensors]", "../escape.safetensors"),
                                            ("[a.safetensors, b.safetensors]", "one.safetensors")])
def test_a_save_as_that_climbs_out_or_names_several_files_is_refused(tmp_path, files, save_as):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"models: []\nhelpers:\n  - {{id: x, title: X, repository: o/r, folder: Lora, files: {files}, "
                       f"save_as: '{save_as}', licence: MIT, description: d}}\n")
    with pytest.raises(EaselError, match="helper entry"):
        load_helpers(catalog)


def test_installing_the_lcm_lora_by_hand_says_to_save_it_under_its_name(tmp_path):
    from app.models.catalog import offline_instructions

    (lora,) = {helper.id: helper for helper in load_helpers()}["lcm-lora-sd15"].file_entries()
    sentence = offline_instructions(lora, tmp_path / "Lora")
    assert "resolve/main/pytorch_lora_weights.safetensors" in sentence
    assert f"save the file pytorch_lora_weights.safetensors as {tmp_path / 'Lora' / 'lcm-lora-sdv1-5.safetensors'}" in sentence
