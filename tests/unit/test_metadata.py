"""A1111 infotext: written as A1111 writes it, read back as A1111 reads it, through real files."""

import io

import pytest
from PIL import Image

from app.images.metadata import (
    GenerationInfo,
    infotext,
    parse_infotext,
    png_pnginfo,
    read_parameters,
)


def full_info(**changes) -> GenerationInfo:
    values = dict(
        prompt="a castle on a hill, (masterpiece:1.2)",
        negative_prompt="blurry, lowres",
        steps=20,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        cfg_scale=7.0,
        seed=1234567890,
        width=512,
        height=768,
        model_name="v1-5-pruned-emaonly",
        model_hash="6ce0161689",
        denoising_strength=0.75,
        clip_skip=2,
        extra={"Hires upscale": 2.0, "Lora hashes": "add_detail: 7c6bad76eb54, style: 0123456789ab"},
        version="Easel 0.1.0",
    )
    values.update(changes)
    return GenerationInfo(**values)


def png_round_trip(parameters: str) -> Image.Image:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "teal").save(buffer, format="PNG", pnginfo=png_pnginfo(parameters))
    buffer.seek(0)
    return Image.open(buffer)


def test_infotext_is_written_exactly_as_a1111_writes_it():
    assert infotext(full_info()) == (
        "a castle on a hill, (masterpiece:1.2)\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
        "Denoising strength: 0.75, Clip skip: 2, Hires upscale: 2, "
        'Lora hashes: "add_detail: 7c6bad76eb54, style: 0123456789ab", Version: Easel 0.1.0'
    )


def test_optional_fields_are_left_out():
    text = infotext(
        full_info(
            negative_prompt="",
            schedule_type="Automatic",
            cfg_scale=7.5,
            model_name=None,
            model_hash=None,
            denoising_strength=None,
            clip_skip=1,
            extra={},
            version=None,
        )
    )
    assert text == (
        "a castle on a hill, (masterpiece:1.2)\n"
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 1234567890, Size: 512x768"
    )
    assert "Negative prompt" not in text
    assert infotext(full_info(schedule_type=None)) == infotext(full_info(schedule_type="Automatic"))


def test_round_trip_through_a_png_file_gives_back_every_field():
    info = full_info()
    image = png_round_trip(infotext(info))
    parsed = parse_infotext(read_parameters(image))

    assert parsed["Prompt"] == info.prompt
    assert parsed["Negative prompt"] == info.negative_prompt
    assert int(parsed["Steps"]) == info.steps
    assert parsed["Sampler"] == info.sampler
    assert parsed["Schedule type"] == info.schedule_type
    assert float(parsed["CFG scale"]) == info.cfg_scale
    assert int(parsed["Seed"]) == info.seed
    assert (int(parsed["Size-1"]), int(parsed["Size-2"])) == (info.width, info.height)
    assert parsed["Size"] == "512x768"
    assert parsed["Model hash"] == info.model_hash
    assert parsed["Model"] == info.model_name
    assert float(parsed["Denoising strength"]) == info.denoising_strength
    assert int(parsed["Clip skip"]) == info.clip_skip
    assert parsed["Hires upscale"] == "2"
    assert parsed["Lora hashes"] == info.extra["Lora hashes"]
    assert parsed["Version"] == info.version


def test_missing_clip_skip_reads_as_one_like_a1111():
    parsed = parse_infotext(infotext(full_info(clip_skip=1)))
    assert parsed["Clip skip"] == "1"


def test_multi_line_prompt_and_negative_survive():
    info = full_info(prompt="line one\nline two, with comma\nline three", negative_prompt="bad\nworse")
    text = infotext(info)
    assert text.startswith("line one\nline two, with comma\nline three\nNegative prompt: bad\nworse\n")
    parsed = parse_infotext(read_parameters(png_round_trip(text)))
    assert parsed["Prompt"] == info.prompt
    assert parsed["Negative prompt"] == info.negative_prompt
    assert parsed["Steps"] == "20"


@pytest.mark.parametrize(
    "value",
    ["model, with comma", "name: with colon", "two\nlines", 'has "quotes", and comma', "a, b: c\nd"],
)
def test_values_with_separators_are_quoted_and_come_back_unquoted(value):
    text = infotext(full_info(model_name=value, extra={"Note": value}))
    last_line = text.split("\n")[-1]
    # The whole value stays on the last line, as one JSON string.
    assert "\n" not in last_line.split("Steps:", 1)[0]
    assert '"' in last_line
    parsed = parse_infotext(text)
    assert parsed["Model"] == value
    assert parsed["Note"] == value
    assert parsed["Seed"] == "1234567890"


def test_plain_values_are_not_quoted():
    text = infotext(full_info(model_name="sd-v1.5 (pruned)"))
    assert "Model: sd-v1.5 (pruned)," in text


def test_last_line_with_fewer_than_three_pairs_is_part_of_the_prompt():
    text = "a portrait\nstyle: oil painting, mood: calm"
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a portrait\nstyle: oil painting, mood: calm"
    assert parsed["Negative prompt"] == ""
    assert "style" not in parsed and "mood" not in parsed


def test_prompt_only_text_is_all_prompt():
    assert parse_infotext("just a cat")["Prompt"] == "just a cat"
    assert parse_infotext("a cat\nNegative prompt: dogs")["Negative prompt"] == "dogs"


@pytest.mark.parametrize(
    "prompt",
    ["桜の木の下の猫、夕焼け", "a fox 🦊 in the snow ❄️", "Ωμέγα, кошка: 猫"],
)
def test_non_latin_prompt_survives_the_png_round_trip(prompt):
    info = full_info(prompt=prompt, negative_prompt="ぼやけた 🙈")
    image = png_round_trip(infotext(info))
    parsed = parse_infotext(read_parameters(image))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == "ぼやけた 🙈"


def test_latin1_and_non_latin1_both_read_back_as_plain_str():
    for prompt in ("café", "猫"):
        text = infotext(full_info(prompt=prompt))
        value = read_parameters(png_round_trip(text))
        assert value == text
        assert type(value) is str


def test_parses_a1111_docstring_sample():
    # The sample in A1111's parse_generation_parameters docstring (modules/infotext_utils.py).
    sample = (
        "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, "
        "heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), "
        "detailed, intricate\n"
        "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, "
        "disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), "
        "(poorly drawn hands), messy drawing\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, "
        "Model hash: 45dee52b"
    )
    parsed = parse_infotext(sample)
    assert parsed["Prompt"].startswith("girl with an artist's beret")
    assert parsed["Prompt"].endswith("detailed, intricate")
    assert parsed["Negative prompt"].startswith("ugly, fat")
    assert parsed["Negative prompt"].endswith("messy drawing")
    assert parsed["Steps"] == "20"
    assert parsed["Sampler"] == "Euler a"
    assert parsed["CFG scale"] == "7"
    assert parsed["Seed"] == "965400086"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "512")
    assert parsed["Model hash"] == "45dee52b"


def test_parses_an_a1111_1_9_infotext_with_quoted_hashes():
    sample = (
        "1girl,A superstar on stage.,, <lora:LCM_15:1>\n"
        "Negative prompt: MajicNegative_V2,badhandv4,\n"
        "Steps: 6, Sampler: LCM, Schedule type: Automatic, CFG scale: 1.5, Seed: 3748719078, "
        "Size: 768x1024, Model hash: 19bbe9faa4, Model: fantasticmix_k2, VAE hash: 07af11b95c, "
        "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Clip skip: 2, "
        'Lora hashes: "LCM_15: aaebf6360f7d, ip-adapter-faceid-plusv2_sd15_lora: a95a0f4bdcb9", '
        'TI hashes: "MajicNegative_V2: a53884ef726b, badhandv4: 5e40d722fc3d", '
        "Downcast alphas_cumprod: True, Version: v1.9.4"
    )
    parsed = parse_infotext(sample)
    assert parsed["Prompt"] == "1girl,A superstar on stage.,, <lora:LCM_15:1>"
    assert parsed["Negative prompt"] == "MajicNegative_V2,badhandv4,"
    assert parsed["Schedule type"] == "Automatic"
    assert parsed["CFG scale"] == "1.5"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("768", "1024")
    assert parsed["VAE"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert parsed["Clip skip"] == "2"
    assert parsed["Lora hashes"] == (
        "LCM_15: aaebf6360f7d, ip-adapter-faceid-plusv2_sd15_lora: a95a0f4bdcb9"
    )
    assert parsed["TI hashes"] == "MajicNegative_V2: a53884ef726b, badhandv4: 5e40d722fc3d"
    assert parsed["Downcast alphas_cumprod"] == "True"
    assert parsed["Version"] == "v1.9.4"


def test_old_client_sampler_with_schedule_is_left_as_written():
    parsed = parse_infotext("cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1")
    assert parsed["Sampler"] == "DPM++ 2M Karras"
    assert "Schedule type" not in parsed


def test_read_parameters_is_none_without_metadata():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    buffer.seek(0)
    assert read_parameters(Image.open(buffer)) is None


def test_read_parameters_finds_text_written_after_the_pixels():
    # Some writers put text chunks after IDAT; they only appear once the image is loaded.
    text = infotext(full_info())
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    chunk = png_chunk(b"tEXt", b"parameters\0" + text.encode("latin-1"))
    iend = data.rindex(b"IEND") - 4
    image = Image.open(io.BytesIO(data[:iend] + chunk + data[iend:]))
    assert read_parameters(image) == text


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    import struct
    import zlib

    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP"])
@pytest.mark.parametrize("encoding", ["utf-16-be", "utf-16-le"])
def test_read_parameters_from_exif_user_comment(image_format, encoding):
    text = infotext(full_info(prompt="夜の街, neon"))
    exif = Image.Exif()
    # A1111 writes it through piexif: "UNICODE\0" then UTF-16 without a BOM.
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode(encoding)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format=image_format, exif=exif.tobytes())
    buffer.seek(0)
    assert read_parameters(Image.open(buffer)) == text
