"""Variation noise as A1111 makes it, drawn as diffusers draws it; hires fix's pure decisions
(sizes, latent upscaling, upscaler checks); their infotext keys and the way back."""

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from app.errors import InvalidRequest
from app.generation.a1111 import generation_info, request_fields, variation_keys
from app.generation.hires import (
    LATENT_UPSCALE_MODES,
    check_upscaler,
    cover_size,
    hires_upscaler_names,
    second_pass,
    second_pass_steps,
    upscaled_latents,
)
from app.generation.noise import Variation, noise_maker, pasted_centred, seed_noise, slerp, variation_noise
from app.generation.requests import GenerationRequest, hires_target
from app.generation.upscale import UpscalerChoice, resampler_choices
from app.images.metadata import infotext, parse_infotext
from app.kinds import UpscalerKind

SHAPE = (4, 8, 12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_seeds_noise_is_what_diffusers_draws_for_it(dtype):
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in (5, 6)]
    theirs = randn_tensor((2, *SHAPE), generator=generators, device=torch.device("cpu"), dtype=dtype)
    ours = torch.cat([seed_noise(5, SHAPE, dtype), seed_noise(6, SHAPE, dtype)])
    assert torch.equal(theirs, ours)


def test_slerp_ends_are_the_two_noises_exactly_and_the_middle_keeps_the_scale():
    low, high = seed_noise(1, SHAPE, torch.float32)[0], seed_noise(2, SHAPE, torch.float32)[0]
    assert torch.equal(slerp(0.0, low, high), low)
    assert torch.equal(slerp(1.0, low, high), high)
    middle = slerp(0.5, low, high)
    assert not torch.equal(middle, low) and not torch.equal(middle, high)
    # Spherical, not linear: the mix keeps about unit variance where a lerp would shrink it to ~0.5.
    assert 0.8 < middle.std().item() < 1.2
    assert (0.5 * low + 0.5 * high).std().item() < 0.8


def test_slerp_of_a_noise_with_itself_takes_a1111s_shortcut():
    low = seed_noise(1, SHAPE, torch.float32)[0]
    assert torch.allclose(slerp(0.3, low, low), low)


def test_seed_resize_pastes_the_small_noise_in_the_middle_and_crops_a_large_one():
    small, large = torch.ones(4, 2, 4), torch.zeros(4, 6, 8)
    pasted = pasted_centred(small, large)
    assert pasted[:, 2:4, 2:6].eq(1).all() and pasted.sum() == small.sum()
    cropped = pasted_centred(torch.arange(4 * 10 * 10.0).reshape(4, 10, 10), torch.zeros(4, 6, 6))
    assert torch.equal(cropped, torch.arange(4 * 10 * 10.0).reshape(4, 10, 10)[:, 2:8, 2:8])


def test_variation_noise_follows_a1111():
    seed, sub = seed_noise(3, SHAPE, torch.float32)[0], seed_noise(9, SHAPE, torch.float32)[0]
    mixed = variation_noise(3, 9, Variation(0.4), SHAPE, torch.float32)
    assert torch.equal(mixed[0], slerp(0.4, seed, sub))
    # Resized from the same size: the seed's own noise.
    same = variation_noise(3, 9, Variation(0.0, (96, 64)), SHAPE, torch.float32)
    assert torch.equal(same[0], seed)
    # From 64x64: an 8x8 noise of the seed in the middle of the 8x12 noise of the seed.
    resized = variation_noise(3, 9, Variation(0.0, (64, 64)), SHAPE, torch.float32)[0]
    assert torch.equal(resized[:, :, 2:10], seed_noise(3, (4, 8, 8), torch.float32)[0])
    assert torch.equal(resized[:, :, :2], seed[:, :, :2])


def test_the_noise_maker_makes_one_noise_per_image_from_its_own_seeds():
    make = noise_maker([1, 2], [10, 11], Variation(0.5))
    noise = make([None, None], SHAPE, torch.float32)
    assert noise.shape == (2, *SHAPE)
    assert torch.equal(noise[1], variation_noise(2, 11, Variation(0.5), SHAPE, torch.float32)[0])


# --- hires fix's decisions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "resize", "expected"),
    [
        (2.0, (0, 0), (1024, 768)),
        (1.5, (0, 0), (768, 576)),
        (2.0, (1000, 0), (1000, 744)),            # height in proportion (750), snapped to 8
        (2.0, (0, 600), (800, 600)),
        (2.0, (640, 640), (640, 640)),            # both: exactly that, cropped from a cover
    ],
)
def test_hires_target_sizes_follow_a1111(scale, resize, expected):
    assert hires_target((512, 384), scale, *resize) == expected


def test_the_cover_size_keeps_the_proportions_and_covers_the_target():
    assert cover_size((512, 384), (640, 640)) == (856, 640)
    assert cover_size((64, 64), (128, 96)) == (128, 128)


@pytest.mark.parametrize("name", list(LATENT_UPSCALE_MODES))
def test_latent_upscalers_grow_the_latents_to_the_target(name):
    latents = torch.randn(2, 4, 8, 8)
    grown = upscaled_latents(latents, name, (128, 96))
    assert grown.shape == (2, 4, 12, 16) and grown.dtype == latents.dtype


def test_second_pass_takes_its_own_steps_sampler_and_prompts():
    request = GenerationRequest(prompt="a", negative_prompt="b", steps=10, width=64, height=64, enable_hr=True,
                                hr_second_pass_steps=6, hr_sampler_name="DDIM", hr_prompt="c", strength=0.5).validated()
    second = second_pass(request)
    assert (second.width, second.height, second.steps, second.sampler) == (128, 128, 6, "DDIM")
    assert (second.prompt, second.negative_prompt) == ("c", "b")
    assert second_pass_steps(second) == 3


def test_the_sd_x4_upscaler_and_unknown_names_are_refused_for_hires():
    x4 = UpscalerChoice("SD x4: big", UpscalerKind.DIFFUSION, "big", 4)
    choices = [*resampler_choices(), x4]
    assert hires_upscaler_names(choices)[-1] == "Nearest"
    check_upscaler(GenerationRequest(enable_hr=True, hr_upscaler="Lanczos"), choices)
    with pytest.raises(InvalidRequest, match="too heavy for hires fix"):
        check_upscaler(GenerationRequest(enable_hr=True, hr_upscaler="SD x4: big"), choices)
    with pytest.raises(InvalidRequest, match="Unknown hires upscaler"):
        check_upscaler(GenerationRequest(enable_hr=True, hr_upscaler="Magic"), choices)


def test_hires_and_variation_requests_are_validated_with_sentences():
    with pytest.raises(InvalidRequest, match="limit is 2048"):
        GenerationRequest(width=1024, height=1024, enable_hr=True, hr_scale=3).validated()
    with pytest.raises(InvalidRequest, match="Variation strength"):
        GenerationRequest(subseed_strength=2).validated()
    with pytest.raises(InvalidRequest, match="for text to image"):
        GenerationRequest(init_image=torch_free_picture(), enable_hr=True).validated()
    request = GenerationRequest(subseed=-1, seed_resize_from_w=-1, seed_resize_from_h=-1,
                                hr_upscaler=None, enable_hr=True, hr_sampler_name="Use same sampler").validated()
    assert request.subseed >= 0 and request.seed_resize_from is None
    assert request.hr_upscaler == "Latent" and request.hr_sampler_name is None


def torch_free_picture():
    from PIL import Image

    return Image.new("RGB", (64, 64))


# --- infotext and back ----------------------------------------------------------------------


def written(request: GenerationRequest, subseed: int) -> dict:
    info = generation_info(request, request.seed, "m", "0123456789", None, "Easel", variation_keys(request, subseed))
    return parse_infotext(infotext(info))


def test_hires_and_variation_keys_round_trip_to_the_same_request():
    request = GenerationRequest(prompt="p", seed=3, width=64, height=96, enable_hr=True, hr_resize_x=128,
                                hr_resize_y=0, hr_upscaler="Latent (antialiased)", hr_second_pass_steps=5,
                                strength=0.45, hr_sampler_name="Euler", hr_scheduler="Karras", hr_negative_prompt="n",
                                subseed=8, subseed_strength=0.75, seed_resize_from_w=64, seed_resize_from_h=64,
                                sampler="Euler a").validated()
    fields = written(request, request.subseed)
    assert fields["Size"] == "64x96" and fields["Denoising strength"] == "0.45"
    assert fields["Hires resize"] == "128x0" and "Hires upscale" not in fields
    assert fields["Hires sampler"] == "Euler" and fields["Hires schedule type"] == "Karras"
    assert fields["Variation seed"] == "8" and fields["Variation seed strength"] == "0.75"
    assert fields["Seed resize from"] == "64x64"
    back = GenerationRequest(**request_fields(fields)).validated()
    assert back == request


def test_plain_requests_write_no_hires_or_variation_keys():
    fields = written(GenerationRequest(seed=3, subseed=99).validated(), 99)
    assert not [key for key in fields if key.startswith(("Hires", "Variation", "Seed resize"))]
    assert "Denoising strength" not in fields
    assert "enable_hr" not in request_fields(fields)


class _FakeVae:
    def __init__(self, tiling: bool):
        self.use_tiling = tiling
        self.calls: list[str] = []

    def enable_tiling(self):
        self.calls.append("on")
        self.use_tiling = True

    def disable_tiling(self):
        self.calls.append("off")
        self.use_tiling = False


def test_vae_tiling_is_switched_on_for_a_large_second_pass_and_put_back():
    from app.generation.hires import vae_tiling

    vae = _FakeVae(False)
    with vae_tiling(vae, True):
        assert vae.use_tiling
    assert vae.calls == ["on", "off"] and not vae.use_tiling
    already = _FakeVae(True)
    with vae_tiling(already, True):
        pass
    assert already.calls == [] and already.use_tiling  # the user's own tiling stays on
    with vae_tiling(vae, False):
        assert not vae.use_tiling


def test_img2img_noise_touches_only_the_instance_for_the_block():
    from app.generation.diffusers_internals import img2img_noise

    class Pipe:
        def prepare_latents(self, *args):
            return "diffusers'"

    pipe, other = Pipe(), Pipe()
    with img2img_noise(pipe, lambda generators, shape, dtype: None):
        assert pipe.prepare_latents is not Pipe.prepare_latents and "prepare_latents" in vars(pipe)
        assert other.prepare_latents() == "diffusers'"
    assert "prepare_latents" not in vars(pipe) and pipe.prepare_latents() == "diffusers'"
