"""Hires fix and variation seeds through the Engine, on the tiny SD 1 model (64x64 first passes,
few steps): sizes, pixels, progress, interrupts, infotext and its round trip."""

import io

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from app.engine import Engine
from app.errors import InvalidRequest
from app.generation.a1111 import request_fields
from app.generation.requests import GenerationRequest
from app.images.metadata import parse_infotext, png_pnginfo
from app.jobs import Job
from tests.conftest import TINY_SD1, make_engine, make_settings
from tools.tiny_models import tiny_esrgan_state_dict

TIMEOUT = 120.0
ESRGAN = "tiny-x2"


@pytest.fixture(scope="module")
def hires_engine(tiny_models_dir, tiny_configs_dir, tmp_path_factory) -> Engine:
    """One engine for the module; the models folder has the tiny checkpoints and a 2x ESRGAN network."""
    models = tmp_path_factory.mktemp("hires-models")
    for child in tiny_models_dir.iterdir():
        (models / child.name).symlink_to(child, target_is_directory=True)
    (models / "ESRGAN").mkdir()
    save_file(tiny_esrgan_state_dict(2, seed=2), str(models / "ESRGAN" / f"{ESRGAN}.safetensors"))
    settings = make_settings(tmp_path_factory.mktemp("hires"), models, model_configs_dir=str(tiny_configs_dir))
    engine = make_engine(settings)
    engine.select_checkpoint(TINY_SD1)
    yield engine
    engine.close()


def tiny(**fields) -> GenerationRequest:
    values = dict(prompt="a lighthouse at dusk", steps=3, width=64, height=64, seed=7, sampler="Euler", save=False)
    values.update(fields)
    return GenerationRequest(**values)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def first_image(engine: Engine, request: GenerationRequest):
    result = engine.generate(request, timeout=TIMEOUT)
    assert result.images, result.notes
    return result.images[0]


# --- hires fix ------------------------------------------------------------------------------


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos", ESRGAN])
def test_hires_makes_the_larger_picture_with_latent_and_picture_upscalers(hires_engine, upscaler):
    plain = first_image(hires_engine, tiny())
    hires = first_image(hires_engine, tiny(enable_hr=True, hr_scale=2, hr_upscaler=upscaler, strength=0.6))
    assert plain.image.size == (64, 64)
    assert hires.image.size == (128, 128)
    small = pixels(hires.image.resize((64, 64), Image.LANCZOS))
    assert np.abs(small - pixels(plain.image)).mean() > 1  # the second pass repainted it
    fields = parse_infotext(hires.parameters)
    assert fields["Size"] == "64x64"  # the first pass's size, as A1111 writes it
    assert fields["Hires upscale"] == "2" and fields["Hires upscaler"] == upscaler
    assert fields["Denoising strength"] == "0.6"
    assert "Hires steps" not in fields  # 0: the same as the first pass, not written


def test_hires_resize_to_other_proportions_crops_to_the_exact_size(hires_engine):
    done = first_image(hires_engine, tiny(enable_hr=True, hr_resize_x=128, hr_resize_y=96, hr_upscaler="Lanczos"))
    assert done.image.size == (128, 96)
    assert parse_infotext(done.parameters)["Hires resize"] == "128x96"


def test_hires_infotext_reads_back_to_the_same_request_and_the_same_pixels(hires_engine):
    request = tiny(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (bicubic)", hr_second_pass_steps=4,
                   strength=0.5, hr_sampler_name="DDIM", hr_prompt="a lighthouse at night",
                   hr_negative_prompt="fog", subseed=11, subseed_strength=0.3)
    first = first_image(hires_engine, request)
    fields = parse_infotext(first.parameters)
    assert fields["Hires steps"] == "4" and fields["Hires sampler"] == "DDIM"
    assert fields["Hires prompt"] == "a lighthouse at night" and fields["Hires negative prompt"] == "fog"
    restored = GenerationRequest(**request_fields(fields), save=False)
    assert restored.validated() == request.validated()
    again = first_image(hires_engine, restored)
    assert first.image.size == again.image.size == (96, 96)
    assert np.array_equal(pixels(first.image), pixels(again.image))


def test_progress_counts_both_passes_with_the_second_pass_steps(hires_engine):
    # Euler, 3 steps, then 4 hires steps at strength 0.5: diffusers' img2img runs int(4 * 0.5) = 2.
    job = hires_engine.submit(tiny(enable_hr=True, hr_second_pass_steps=4, strength=0.5))
    job.wait(TIMEOUT)
    assert (job.progress.step, job.progress.steps) == (5, 5)
    job = hires_engine.submit(tiny(enable_hr=True, hr_second_pass_steps=0, strength=0.5))
    job.wait(TIMEOUT)
    assert (job.progress.step, job.progress.steps) == (4, 4)  # 0: the first pass's 3, so int(1.5) = 1


def watch_reports(monkeypatch, prompt: str, react) -> None:
    """Calls `react(job, changes)` after every progress report of the jobs with `prompt`, from the
    start (patched before the job is queued, so no step is missed)."""
    real_report = Job.report

    def report(job, **changes):
        real_report(job, **changes)
        if job.request.prompt == prompt:
            react(job, changes)

    monkeypatch.setattr(Job, "report", report)


def test_an_interrupt_during_the_second_pass_saves_nothing(hires_engine, monkeypatch):
    outputs = hires_engine.outputs_folder()
    before = set(outputs.rglob("*.png")) if outputs.exists() else set()
    # Past the first pass's 3 steps: in the second pass.
    watch_reports(monkeypatch, "stop me", lambda job, changes: changes.get("step", 0) > 3 and job.cancel())
    result = hires_engine.generate(tiny(prompt="stop me", enable_hr=True, hr_second_pass_steps=8, strength=1.0,
                                        save=True, batch_count=2), timeout=TIMEOUT)
    assert result.interrupted
    assert result.images == []
    after = set(outputs.rglob("*.png")) if outputs.exists() else set()
    assert after == before


def test_skip_during_a_hires_batch_drops_that_batch_and_runs_the_next(hires_engine, monkeypatch):
    def skip_first_batch(job, changes):
        if job.progress.batch == 0 and changes.get("step") == 2:
            job.skip()

    watch_reports(monkeypatch, "skip me", skip_first_batch)
    result = hires_engine.generate(tiny(prompt="skip me", enable_hr=True, batch_count=2, strength=0.5), timeout=TIMEOUT)
    assert not result.interrupted
    assert result.seeds == [8]  # the first batch (seed 7) was skipped half-done; the second ran in full
    assert result.images[0].image.size == (128, 128)


def test_hires_refuses_what_it_cannot_do_with_a_sentence(hires_engine):
    with pytest.raises(InvalidRequest, match="Unknown hires upscaler"):
        hires_engine.submit(tiny(enable_hr=True, hr_upscaler="Magic"))
    with pytest.raises(InvalidRequest, match="limit is 2048"):
        hires_engine.submit(tiny(width=1024, height=1024, enable_hr=True, hr_scale=4))
    assert "Latent (nearest)" in hires_engine.hires_upscalers() and ESRGAN in hires_engine.hires_upscalers()


# --- variation seeds ------------------------------------------------------------------------


def test_variation_strength_0_is_the_plain_picture_pixel_for_pixel(hires_engine):
    plain = first_image(hires_engine, tiny())
    zero = first_image(hires_engine, tiny(subseed=123, subseed_strength=0.0))
    assert np.array_equal(pixels(plain.image), pixels(zero.image))
    assert "Variation seed" not in parse_infotext(zero.parameters)


def test_variation_strength_1_is_the_picture_of_the_variation_seed(hires_engine):
    of_subseed = first_image(hires_engine, tiny(seed=123))
    full = first_image(hires_engine, tiny(seed=7, subseed=123, subseed_strength=1.0))
    assert np.array_equal(pixels(of_subseed.image), pixels(full.image))


def test_with_hires_fix_strength_1_is_still_the_picture_of_the_variation_seed(hires_engine):
    # A latent upscaler: a picture upscaler's second pass also samples the VAE's encoding from the seed.
    hires = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", strength=0.6)
    of_subseed = first_image(hires_engine, tiny(seed=123, **hires))
    full = first_image(hires_engine, tiny(seed=7, subseed=123, subseed_strength=1.0, **hires))
    assert np.array_equal(pixels(of_subseed.image), pixels(full.image))  # both passes' noise is the subseed's


def test_a_variation_changes_the_pixels_and_is_written_per_image(hires_engine):
    plain = pixels(first_image(hires_engine, tiny()).image)
    result = hires_engine.generate(tiny(subseed=40, subseed_strength=0.2, batch_size=2), timeout=TIMEOUT)
    varied = pixels(result.images[0].image)
    assert 0 < np.abs(varied - plain).mean()
    fields = [parse_infotext(image.parameters) for image in result.images]
    assert [f["Variation seed"] for f in fields] == ["40", "41"]
    assert fields[0]["Variation seed strength"] == "0.2"


def test_a_random_variation_seed_is_chosen_and_reported(hires_engine):
    job = hires_engine.submit(tiny(subseed=-1, subseed_strength=0.5))
    job.wait(TIMEOUT)
    assert job.request.subseed >= 0
    assert parse_infotext(job.result.images[0].parameters)["Variation seed"] == str(job.request.subseed)


def test_seed_resize_runs_and_is_recorded(hires_engine):
    plain = pixels(first_image(hires_engine, tiny(width=96)).image)
    resized = first_image(hires_engine, tiny(width=96, seed_resize_from_w=64, seed_resize_from_h=64))
    assert resized.image.size == (96, 64)
    assert np.abs(pixels(resized.image) - plain).mean() > 0
    fields = parse_infotext(resized.parameters)
    assert fields["Seed resize from"] == "64x64"
    assert request_fields(fields)["seed_resize_from_w"] == 64


def test_image_to_image_variation_0_noise_path_is_exact_and_strength_changes_it(hires_engine):
    start = first_image(hires_engine, tiny()).image
    img2img = dict(init_image=start, strength=0.7)
    plain = pixels(first_image(hires_engine, tiny(**img2img)).image)
    # seed resize from the same size: the variation path with the seed's own noise.
    same = first_image(hires_engine, tiny(**img2img, seed_resize_from_w=64, seed_resize_from_h=64))
    assert np.array_equal(plain, pixels(same.image))
    varied = first_image(hires_engine, tiny(**img2img, subseed=5, subseed_strength=0.5))
    assert np.abs(pixels(varied.image) - plain).mean() > 0


@pytest.mark.parametrize("strength", [0.7, 1.0])
def test_inpaint_variation_0_noise_path_is_exact_and_strength_changes_it(hires_engine, strength):
    start = first_image(hires_engine, tiny()).image
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpaint = dict(init_image=start, mask=mask, strength=strength)
    plain = pixels(first_image(hires_engine, tiny(**inpaint)).image)
    # seed resize from the same size: the variation path with the seed's own noise.
    same = first_image(hires_engine, tiny(**inpaint, seed_resize_from_w=64, seed_resize_from_h=64))
    assert np.array_equal(plain, pixels(same.image))
    varied = first_image(hires_engine, tiny(**inpaint, subseed=5, subseed_strength=0.5))
    assert np.abs(pixels(varied.image) - plain).mean() > 0
    assert parse_infotext(varied.parameters)["Variation seed strength"] == "0.5"


def test_png_info_fields_paste_into_the_page_with_hires_and_variations_off_when_not_written(hires_engine):
    import gradio as gr

    from ui.widgets import FIELDS, HIRES_FIELDS, pasted_values

    def read_back(done) -> dict:
        buffer = io.BytesIO()
        done.image.save(buffer, format="PNG", pnginfo=png_pnginfo(done.parameters))
        return hires_engine.read_png_info(Image.open(buffer)).request

    request = tiny(enable_hr=True, hr_upscaler="Lanczos", strength=0.4, subseed=3, subseed_strength=0.5)
    fields = read_back(first_image(hires_engine, request))
    names = FIELDS + HIRES_FIELDS
    values = dict(zip(names, pasted_values(fields, names)))
    assert values["enable_hr"] is True and values["hr_upscaler"] == "Lanczos" and values["strength"] == 0.4
    assert values["subseed"] == 3 and values["subseed_strength"] == 0.5
    plain = read_back(first_image(hires_engine, tiny()))
    values = dict(zip(names, pasted_values(plain, names)))
    assert values["enable_hr"] is False and values["subseed_strength"] == 0.0 and values["hr_sampler_name"] == "Use same sampler"
    assert isinstance(values["cfg_scale"], (int, float)) and type(values["batch_count"]) is type(gr.skip())
