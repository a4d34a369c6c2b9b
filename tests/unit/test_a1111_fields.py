"""The A1111 field mapping round-trips: a request written as infotext reads back as the same request,
and a request sent as /sdapi/v1 JSON arrives as the same request."""

import pytest
from PIL import Image

from app.api import convert
from app.api.schemas import Img2ImgRequest, Txt2ImgRequest
from app.generation.a1111 import CLIP_SKIP_OPTION, FIELDS, api_fields, generation_info, request_fields
from app.generation.requests import GenerationRequest
from app.images.metadata import infotext, parse_infotext

TXT2IMG = GenerationRequest(
    prompt="a lighthouse at dusk, (warm light:1.2)\nsecond line", negative_prompt="blurry, lowres",
    sampler="DPM++ 2M", schedule="Karras", steps=28, cfg_scale=6.5, width=640, height=448, seed=3141592653,
    batch_count=2, batch_size=3, clip_skip=2,
).validated()
IMG2IMG = GenerationRequest(
    prompt="a cat", sampler="Euler a", steps=12, cfg_scale=7.0, width=512, height=512, seed=7, strength=0.35,
    init_image=Image.new("RGB", (64, 64), "grey"),
).validated()
# Hires fix, variation seeds and fast mode are written only when on (tests/unit/test_noise.py and
# tests/integration/test_fast_mode.py round-trip them).
ONLY_WHEN_ON = {field.request for field in FIELDS
                if field.request.startswith(("hr_", "subseed", "seed_resize")) or field.request == "easel_fast"}
READ_BACK = {"sampler", "schedule", *(field.request for field in FIELDS if field.infotext)} - ONLY_WHEN_ON
SENT = {"sampler", "schedule", "clip_skip", *(field.request for field in FIELDS if field.api)}


def values(request: GenerationRequest, names: set[str]) -> dict:
    return {name: getattr(request, name) for name in sorted(names)}


@pytest.mark.parametrize("request_", [TXT2IMG, IMG2IMG], ids=["txt2img", "img2img"])
def test_a_request_written_as_infotext_reads_back_the_same(request_):
    text = infotext(generation_info(request_, request_.seed, "model", "0123456789", None, "Easel test"))
    fields = request_fields(parse_infotext(text))
    if not request_.is_img2img:
        read = READ_BACK - {"strength"}  # denoising strength is written for image-to-image only
        assert "strength" not in fields
    else:
        read = READ_BACK
    assert values(GenerationRequest(**fields), read) == values(request_, read)
    # Every field the table says is written is in the text: none is silently dropped.
    assert set(fields) == read


@pytest.mark.parametrize("request_", [TXT2IMG, IMG2IMG], ids=["txt2img", "img2img"])
def test_a_request_sent_through_the_api_arrives_the_same(request_):
    body = api_fields(request_)
    # A1111 echoes clip skip under its own name, and takes it in override_settings.
    body["override_settings"] = {CLIP_SKIP_OPTION: body.pop("clip_skip")}
    if request_.is_img2img:
        arrived = convert.img2img_request(Img2ImgRequest(**body, init_images=[convert.encoded_png(request_.init_image, None)]))
    else:
        arrived = convert.generation_request(Txt2ImgRequest(**body))
    assert values(arrived.validated(), SENT) == values(request_, SENT)


def test_every_field_has_a_name_somewhere_and_no_name_is_used_twice():
    for names in ([f.request for f in FIELDS], [f.infotext for f in FIELDS if f.infotext], [f.api for f in FIELDS if f.api]):
        assert len(names) == len(set(names))
    assert all(field.infotext or field.api for field in FIELDS)
    assert all(hasattr(TXT2IMG, field.request) for field in FIELDS)
