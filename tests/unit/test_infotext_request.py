"""Infotext from Easel, A1111 (old and new) and ComfyUI exporters, turned into request fields."""

import io

import pytest
from PIL import Image

from app.generation.a1111 import request_fields
from app.generation.requests import GenerationRequest
from app.images.metadata import GenerationInfo, infotext, parse_infotext, png_pnginfo, read_parameters

A1111_19 = (
    "masterpiece, a lighthouse at dusk, (warm light:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, "
    "Clip skip: 2, Hires upscale: 2, Hires upscaler: Latent, Version: v1.9.4"
)
A1111_OLD = (
    "a cat in a hat\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.6.0"
)


def fields_of(text: str) -> dict:
    return request_fields(parse_infotext(text))


def test_easel_infotext_gives_back_every_setting_it_was_made_with():
    text = infotext(
        GenerationInfo(
            prompt="a red fox, (snow:1.2)", negative_prompt="blurry", steps=24, sampler="Euler",
            schedule_type="Karras", cfg_scale=5.5, seed=987654321, width=640, height=448,
            model_name="tiny-sd15", model_hash="0123456789", clip_skip=2,
            extra={"VAE": None, "RNG": "CPU"}, version="Easel 0.1.0",
        )
    )
    fields = fields_of(text)
    assert fields == {
        "prompt": "a red fox, (snow:1.2)", "negative_prompt": "blurry", "sampler": "Euler",
        "schedule": "Karras", "steps": 24, "cfg_scale": 5.5, "seed": 987654321, "width": 640,
        "height": 448, "clip_skip": 2,
    }
    assert isinstance(fields["steps"], int) and isinstance(fields["cfg_scale"], float)
    request = GenerationRequest(**fields).validated()
    assert (request.sampler, request.schedule, request.seed) == ("Euler", "Karras", 987654321)


def test_easel_img2img_infotext_carries_the_denoising_strength():
    text = infotext(
        GenerationInfo(
            prompt="p", negative_prompt="", steps=4, sampler="DDIM", schedule_type="Automatic",
            cfg_scale=7.0, seed=1, width=64, height=64, denoising_strength=0.35,
        )
    )
    fields = fields_of(text)
    assert fields["strength"] == 0.35
    assert (fields["sampler"], fields["schedule"]) == ("DDIM", "Automatic")
    assert fields["negative_prompt"] == ""


def test_a1111_1_9_infotext_with_a_separate_schedule_type():
    fields = fields_of(A1111_19)
    assert fields == {
        "prompt": "masterpiece, a lighthouse at dusk, (warm light:1.2)",
        "negative_prompt": "blurry, lowres",
        "sampler": "DPM++ 2M", "schedule": "Karras", "steps": 28, "cfg_scale": 6.5,
        "seed": 3141592653, "width": 512, "height": 768, "clip_skip": 2, "strength": 0.45,
        "enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent",  # its Hires keys turn hires fix on
    }
    GenerationRequest(**fields).validated()


def test_old_a1111_sampler_with_the_schedule_in_its_name_is_split():
    fields = fields_of(A1111_OLD)
    assert (fields["sampler"], fields["schedule"]) == ("DPM++ 2M", "Karras")
    assert (fields["steps"], fields["cfg_scale"], fields["seed"]) == (20, 7.0, 42)
    assert (fields["width"], fields["height"]) == (512, 512)
    assert fields["clip_skip"] == 1  # not written: A1111's meaning of a missing Clip skip
    assert "strength" not in fields
    GenerationRequest(**fields).validated()


def test_missing_schedule_means_the_samplers_own_default():
    fields = fields_of("p\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512")
    assert (fields["sampler"], fields["schedule"]) == ("Euler a", "Automatic")
    fields = fields_of("p\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 512x512")
    assert (fields["sampler"], fields["schedule"]) == ("DPM++ 2M", "Karras")


@pytest.mark.parametrize(
    "line, expected",
    [
        # A schedule Easel does not have: keep the sampler, leave the schedule out.
        ("Sampler: Euler, Schedule type: SGM Uniform", {"sampler": "Euler"}),
        # A schedule this sampler cannot use.
        ("Sampler: DDIM, Schedule type: Karras", {"sampler": "DDIM"}),
        # A sampler Easel does not have: neither.
        ("Sampler: DPM++ 2S a, Schedule type: Karras", {}),
        ("Sampler: Restart", {}),
        ("Sampler: LCM Karras", {}),
        # ComfyUI exporters' names.
        ("Sampler: dpmpp_2m_karras", {"sampler": "DPM++ 2M", "schedule": "Karras"}),
        ("Sampler: euler_ancestral, Scheduler: normal", {"sampler": "Euler a"}),
        ("Sampler: dpmpp_2m_sde, Scheduler: karras", {"sampler": "DPM++ 2M SDE", "schedule": "Karras"}),
        ("Sampler: k_euler_a", {"sampler": "Euler a", "schedule": "Automatic"}),
        ("Sampler: uni_pc, Scheduler: exponential", {"sampler": "UniPC", "schedule": "Exponential"}),
    ],
)
def test_sampler_and_schedule_names_from_other_tools(line, expected):
    fields = fields_of(f"a prompt\nSteps: 20, {line}, CFG scale: 7, Seed: 5")
    assert {k: v for k, v in fields.items() if k in ("sampler", "schedule")} == expected
    GenerationRequest(**fields).validated()


def test_values_that_do_not_parse_are_left_out():
    text = (
        "a prompt\n"
        "Steps: many, Sampler: Fancy Sampler, CFG scale: high, Seed: 12.5, Size: big, "
        "Clip skip: x, Denoising strength: nan, Model: whatever"
    )
    fields = fields_of(text)
    assert fields == {"prompt": "a prompt", "negative_prompt": ""}
    GenerationRequest(**fields).validated()


@pytest.mark.parametrize("value", [None, 3.5, [20], {"x": 1}, True, "", " ", "inf", "1e999", b"20"])
def test_odd_value_types_are_skipped_not_raised(value):
    keys = ("Steps", "Seed", "CFG scale", "Sampler", "Schedule type", "Size-1", "Clip skip", "Denoising strength")
    fields = request_fields(dict.fromkeys(keys, value))
    assert fields == ({"cfg_scale": 3.5, "strength": 3.5} if value == 3.5 else {})


def test_a_prompt_must_be_text():
    assert request_fields({"Prompt": None, "Negative prompt": 5}) == {}
    assert request_fields({"Prompt": "", "Negative prompt": "inf"}) == {"prompt": "", "negative_prompt": "inf"}


def test_whole_numbers_written_as_floats_are_read():
    fields = request_fields({"Steps": "20.0", "Seed": " 7 ", "Size-1": "512", "Size-2": "768.0"})
    assert fields == {"steps": 20, "seed": 7, "width": 512, "height": 768}


def test_missing_size_leaves_width_and_height_out():
    fields = fields_of("a prompt\nSteps: 12, Sampler: Euler, CFG scale: 4, Seed: 99")
    assert "width" not in fields and "height" not in fields
    request = GenerationRequest(**fields).validated()
    assert (request.width, request.height, request.steps) == (512, 512, 12)


def test_only_what_the_text_holds_is_returned():
    assert request_fields({}) == {}
    # A prompt-only text (no parameters line): the prompt, and A1111's default Clip skip.
    assert fields_of("just a prompt: with a colon") == {
        "prompt": "just a prompt: with a colon", "negative_prompt": "", "clip_skip": 1,
    }


def test_non_ascii_prompt_survives_a_png_round_trip():
    text = (
        "富士山の夕焼け, 🌅, café\n"
        "Negative prompt: ぼやけた, низкое качество\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 11, Size: 512x512, Model: モデル"
    )
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=png_pnginfo(text))
    buffer.seek(0)
    fields = request_fields(parse_infotext(read_parameters(Image.open(buffer))))
    assert fields["prompt"] == "富士山の夕焼け, 🌅, café"
    assert fields["negative_prompt"] == "ぼやけた, низкое качество"
    assert fields["seed"] == 11
    GenerationRequest(**fields).validated()


def test_multi_line_prompt_and_negative():
    text = (
        "line one of the prompt\n"
        "line two, (detail:1.1)\n"
        "Negative prompt: blurry,\n"
        "lowres, jpeg artifacts\n"
        "Steps: 30, Sampler: Heun, CFG scale: 8, Seed: 2, Size: 768x512"
    )
    fields = fields_of(text)
    assert fields["prompt"] == "line one of the prompt\nline two, (detail:1.1)"
    assert fields["negative_prompt"] == "blurry,\nlowres, jpeg artifacts"
    assert (fields["sampler"], fields["width"], fields["height"]) == ("Heun", 768, 512)
    GenerationRequest(**fields).validated()


def test_quoted_values_are_read_unquoted():
    text = 'p\nSteps: 20, Sampler: "Euler", Schedule type: "Karras", CFG scale: "7.5", Seed: 3, Size: 64x64'
    fields = fields_of(text)
    assert (fields["sampler"], fields["schedule"], fields["cfg_scale"]) == ("Euler", "Karras", 7.5)
