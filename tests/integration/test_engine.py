"""The Engine end to end on tiny models: pixels, files, infotext, queue behaviour, errors.

The tiny checkpoints are random networks: their images are noise, but deterministic noise, so
everything that must hold for real models (seeds reproduce, settings change the result, files and
metadata are right) holds for them too. Generations are 64x64 (256x256 where the watermark needs
it) with 2-4 steps.
"""

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from app.engine import Engine
from app.errors import InvalidRequest, ModelLoadError, ModelNotFound, NoModelAvailable
from app.generation import samplers
from app.generation.requests import MAX_SEED, GenerationRequest
from app.images.metadata import parse_infotext, read_parameters
from app.images.watermark import SD1_MARK, SD2_MARK, apply_watermark
from app.jobs import Job, JobState
from tests.conftest import TINY_SD1, TINY_SD2_V, make_engine, make_settings

TIMEOUT = 60.0
# A1111's parameters-line pattern, copied from docs/A1111-COMPAT.md (not imported from app/).
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
# Images of one batch and the same seeds generated one by one go through the UNet with a different
# batch size; CPU convolutions then round differently in the last float bits, which can move a
# pixel by one level of 255. Anything beyond that is a real difference (other noise, other seed).
BATCH_TOLERANCE = 2


@pytest.fixture(scope="module")
def shared_engine(tiny_models_dir, tmp_path_factory) -> Engine:
    """One engine for tests that neither swap models nor count output files (saves load time)."""
    engine = make_engine(make_settings(tmp_path_factory.mktemp("shared"), tiny_models_dir))
    engine.select_checkpoint(TINY_SD1)
    yield engine
    engine.close()


def tiny(**fields) -> GenerationRequest:
    values = dict(prompt="a red fox in the snow", steps=2, width=64, height=64, seed=1)
    values.update(fields)
    return GenerationRequest(**values)


def pixels(source) -> np.ndarray:
    image = Image.open(source) if isinstance(source, (str, Path)) else source
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def params_of(path: Path) -> dict:
    with Image.open(path) as image:
        return parse_infotext(read_parameters(image))


def output_files(engine: Engine) -> list[Path]:
    return sorted(path for path in engine.settings.outputs_dir.rglob("*.png"))


def wait_until(job: Job, condition, timeout: float = TIMEOUT) -> None:
    """Follow the job's changes until `condition(job)` holds; fails if the job ends first."""
    version = 0
    while not condition(job):
        assert not job.finished, f"job ended ({job.state}) before the condition held"
        new_version = job.wait_for_change(version, timeout)
        assert new_version != version or condition(job), "no progress within the timeout"
        version = new_version


def gradient(size=(64, 64)) -> Image.Image:
    width, height = size
    x = np.linspace(0, 255, width)
    y = np.linspace(0, 255, height)
    rgb = np.stack([np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)), np.full((height, width), 128.0)], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


# --- seeds and determinism -------------------------------------------------------------------


def test_same_seed_same_pixels_other_seed_other_pixels(shared_engine):
    first = shared_engine.generate(tiny(seed=7), TIMEOUT).images[0]
    again = shared_engine.generate(tiny(seed=7), TIMEOUT).images[0]
    other = shared_engine.generate(tiny(seed=8), TIMEOUT).images[0]
    assert np.array_equal(pixels(first.path), pixels(again.path))
    assert np.array_equal(pixels(first.image), pixels(first.path))  # what is returned is what is saved
    assert first.path != again.path
    assert np.abs(pixels(first.path) - pixels(other.path)).mean() > 1.0


def test_random_seed_is_reported_written_and_reproducible(shared_engine):
    result = shared_engine.generate(tiny(seed=-1), TIMEOUT)
    (seed,) = result.seeds
    assert 0 <= seed <= MAX_SEED
    assert params_of(result.images[0].path)["Seed"] == str(seed)
    assert result.images[0].path.name.endswith(f"-{seed}.png")
    assert f"Seed: {seed}," in result.images[0].parameters

    assert any("demo" in note for note in result.notes)  # the tiny models are marked as demo models

    replay = shared_engine.generate(tiny(seed=seed), TIMEOUT)
    assert replay.seeds == [seed]
    assert np.array_equal(pixels(replay.images[0].path), pixels(result.images[0].path))


def test_negative_prompt_changes_the_result(shared_engine):
    plain = shared_engine.generate(tiny(seed=3, cfg_scale=7), TIMEOUT).images[0]
    negative = shared_engine.generate(tiny(seed=3, cfg_scale=7, negative_prompt="blurry, ugly"), TIMEOUT).images[0]
    assert np.abs(pixels(plain.path) - pixels(negative.path)).mean() > 0.5
    assert params_of(negative.path)["Negative prompt"] == "blurry, ugly"
    assert "Negative prompt" not in plain.parameters


def test_batch_seeds_files_and_per_image_reproducibility(shared_engine):
    result = shared_engine.generate(tiny(seed=100, batch_count=2, batch_size=2), TIMEOUT)
    assert result.seeds == [100, 101, 102, 103]
    paths = [image.path for image in result.images]
    assert len(set(paths)) == 4 and all(path.is_file() for path in paths)
    for image in result.images:
        assert params_of(image.path)["Seed"] == str(image.seed)
        assert image.path.name.endswith(f"-{image.seed}.png")

    batch_pixels = [pixels(path) for path in paths]
    for i, seed in enumerate(result.seeds):
        single = shared_engine.generate(tiny(seed=seed), TIMEOUT).images[0]
        assert np.abs(batch_pixels[i] - pixels(single.path)).max() <= BATCH_TOLERANCE, f"image {i} (seed {seed})"
    # ...and the four images really are different images.
    assert all(np.abs(batch_pixels[0] - other).mean() > 1.0 for other in batch_pixels[1:])


def test_seeds_wrap_around_at_2_to_the_32(shared_engine):
    result = shared_engine.generate(tiny(seed=MAX_SEED, batch_size=2), TIMEOUT)
    assert result.seeds == [MAX_SEED, 0]
    assert [image.path.name.split("-", 1)[1] for image in result.images] == [f"{MAX_SEED}.png", "0.png"]
    single = shared_engine.generate(tiny(seed=0), TIMEOUT).images[0]
    assert np.abs(pixels(result.images[1].path) - pixels(single.path)).max() <= BATCH_TOLERANCE


def test_sde_batch_images_are_reproducible_from_their_own_seed(shared_engine):
    batch = shared_engine.generate(tiny(sampler="DPM++ SDE", steps=3, seed=100, batch_size=2), TIMEOUT)
    for image in batch.images:
        single = shared_engine.generate(tiny(sampler="DPM++ SDE", steps=3, seed=image.seed), TIMEOUT).images[0]
        assert np.abs(pixels(image.path) - pixels(single.path)).max() <= BATCH_TOLERANCE, f"seed {image.seed}"


# --- image to image --------------------------------------------------------------------------


def test_img2img_strength_decides_how_much_of_the_init_image_survives(shared_engine):
    # The tiny VAE is random, so its encode/decode does not give back the init image and "output
    # close to input" cannot be measured in pixels. What can: at low strength the output follows
    # the init image (two different init images give clearly different outputs, same seed); at
    # full strength the init image is (almost) drowned in noise, so the outputs nearly agree.
    init_a = gradient()
    init_b = Image.fromarray(255 - np.asarray(init_a))

    def outputs(strength):
        return [
            shared_engine.generate(tiny(steps=10, seed=5, init_image=init, strength=strength), TIMEOUT).images[0]
            for init in (init_a, init_b)
        ]

    low_a, low_b = outputs(0.2)
    high_a, high_b = outputs(1.0)
    low_gap = np.abs(pixels(low_a.path) - pixels(low_b.path)).mean()
    high_gap = np.abs(pixels(high_a.path) - pixels(high_b.path)).mean()
    assert low_gap > 5.0, low_gap
    assert high_gap < 1.0, high_gap
    assert low_gap > 10 * high_gap
    # Low and high strength from the same init image are far apart: high strength moved away.
    assert np.abs(pixels(low_a.path) - pixels(high_a.path)).mean() > 5.0

    assert params_of(low_a.path)["Denoising strength"] == "0.2"
    assert params_of(high_a.path)["Denoising strength"] == "1"
    assert low_a.path.parent.parent.name == "img2img-images"
    assert "Denoising strength" not in shared_engine.generate(tiny(), TIMEOUT).images[0].parameters


def test_img2img_strength_zero_still_runs_one_step(shared_engine):
    job = shared_engine.submit(tiny(steps=4, init_image=gradient(), strength=0.0))
    (image,) = job.wait(TIMEOUT).images
    assert job.progress.step == job.progress.steps == 1
    assert params_of(image.path)["Denoising strength"] == "0"


def test_img2img_without_size_takes_the_init_images_size(shared_engine):
    result = shared_engine.generate(tiny(init_image=gradient((90, 70)), width=None, height=None, strength=0.5), TIMEOUT)
    (image,) = result.images
    with Image.open(image.path) as saved:
        assert saved.size == (88, 72)
    assert params_of(image.path)["Size"] == "88x72"


def _init_in_mode(mode: str) -> Image.Image:
    base = gradient()
    if mode == "RGBA":
        image = base.convert("RGBA")
        image.putalpha(Image.linear_gradient("L").resize((64, 64)))
        return image
    if mode == "P":
        image = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        image.info["transparency"] = 0
        return image
    if mode == "I;16":
        grey = np.asarray(base.convert("L"), dtype=np.uint16) * 200 + 1000
        image = Image.fromarray(grey)
        assert image.mode.startswith("I;16")
        return image
    return base.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "CMYK", "LA", "1"])
def test_img2img_accepts_every_image_mode(shared_engine, mode):
    init = _init_in_mode(mode)
    result = shared_engine.generate(tiny(init_image=init, width=None, height=None, strength=0.5), TIMEOUT)
    (image,) = result.images
    with Image.open(image.path) as saved:
        assert (saved.size, saved.mode) == ((64, 64), "RGB")
    assert params_of(image.path)["Denoising strength"] == "0.5"


# --- metadata --------------------------------------------------------------------------------


def test_infotext_round_trip_through_the_saved_png(shared_engine):
    prompt = "a red fox, (masterpiece:1.2)\nsecond line"
    result = shared_engine.generate(
        tiny(prompt=prompt, negative_prompt="blurry\nugly", steps=3, cfg_scale=6.5, seed=42), TIMEOUT
    )
    (image,) = result.images
    with Image.open(image.path) as saved:
        text = read_parameters(saved)
    assert text == image.parameters
    fields = parse_infotext(text)
    assert fields["Prompt"] == prompt
    assert fields["Negative prompt"] == "blurry\nugly"
    assert fields["Steps"] == "3"
    assert fields["Sampler"] == "DPM++ 2M"
    assert fields["Schedule type"] == "Karras"
    assert fields["CFG scale"] == "6.5"
    assert fields["Seed"] == "42"
    assert (fields["Size"], fields["Size-1"], fields["Size-2"]) == ("64x64", "64", "64")
    assert fields["Model"] == TINY_SD1
    assert fields["Version"].startswith("Easel ")

    last_line = text.strip().split("\n")[-1]
    assert last_line.startswith("Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 42")
    pairs = A1111_PARAM.findall(last_line)
    assert len(pairs) >= 3
    assert dict(pairs)["Seed"] == "42"


# --- watermark -------------------------------------------------------------------------------


def test_watermark_is_applied_from_256_pixels_and_only_there(engine, tiny_models_dir, tmp_path):
    assert engine.settings.watermark is True  # the default
    plain_engine = make_engine(make_settings(tmp_path / "plain", tiny_models_dir, watermark=False))
    try:
        big = dict(width=256, height=256, seed=9)
        marked = engine.generate(tiny(**big), TIMEOUT).images[0]
        plain = plain_engine.generate(tiny(**big), TIMEOUT).images[0]
        marked_pixels, plain_pixels = pixels(marked.path), pixels(plain.path)
        assert not np.array_equal(marked_pixels, plain_pixels)
        # Invisible: a small change (about 5 levels of 255 on this noise; a channel mix-up gives tens).
        assert np.abs(marked_pixels - plain_pixels).mean() < 10.0
        # Exactly the SD 1.x mark, applied to the image the model made.
        assert np.array_equal(marked_pixels, pixels(apply_watermark(Image.open(plain.path), SD1_MARK)))

        small_marked = engine.generate(tiny(seed=9), TIMEOUT).images[0]
        small_plain = plain_engine.generate(tiny(seed=9), TIMEOUT).images[0]
        assert np.array_equal(pixels(small_marked.path), pixels(small_plain.path))

        # SD 2.x models get their own mark ("SDV2"), as in Stability's reference scripts.
        engine.select_checkpoint(TINY_SD2_V)
        plain_engine.select_checkpoint(TINY_SD2_V)
        marked_sd2 = pixels(engine.generate(tiny(**big), TIMEOUT).images[0].path)
        plain_sd2 = Image.open(plain_engine.generate(tiny(**big), TIMEOUT).images[0].path)
        assert np.array_equal(marked_sd2, pixels(apply_watermark(plain_sd2, SD2_MARK)))
        assert not np.array_equal(marked_sd2, pixels(apply_watermark(plain_sd2, SD1_MARK)))
    finally:
        plain_engine.close()


# --- output files ----------------------------------------------------------------------------


def test_outputs_are_numbered_and_never_overwritten(engine):
    first = engine.generate(tiny(seed=5), TIMEOUT).images[0]
    first_bytes = first.path.read_bytes()
    second = engine.generate(tiny(seed=5), TIMEOUT).images[0]
    assert (first.path.name, second.path.name) == ("00000-5.png", "00001-5.png")
    assert first.path.parent == second.path.parent
    assert first.path.parent.parent == engine.settings.outputs_dir / "txt2img-images"
    assert first.path.read_bytes() == first_bytes
    assert output_files(engine) == [first.path, second.path]


# --- samplers --------------------------------------------------------------------------------


def test_engine_lists_the_sampler_and_schedule_names(shared_engine):
    assert shared_engine.sampler_names() == samplers.sampler_names()
    assert shared_engine.schedule_names() == samplers.schedule_names()


@pytest.mark.parametrize("sampler", samplers.sampler_names())
def test_every_sampler_generates_and_is_deterministic(shared_engine, sampler):
    first = shared_engine.generate(tiny(sampler=sampler, steps=3, seed=11), TIMEOUT).images[0]
    again = shared_engine.generate(tiny(sampler=sampler, steps=3, seed=11), TIMEOUT).images[0]
    with Image.open(first.path) as saved:
        assert saved.size == (64, 64)
    assert params_of(first.path)["Sampler"] == sampler
    assert np.array_equal(pixels(first.path), pixels(again.path))  # noise comes from the seed only


def test_legacy_sampler_name_is_split_in_the_infotext(shared_engine):
    image = shared_engine.generate(tiny(sampler="DPM++ 2M Karras"), TIMEOUT).images[0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in image.parameters
    fields = params_of(image.path)
    assert (fields["Sampler"], fields["Schedule type"]) == ("DPM++ 2M", "Karras")


def test_schedule_changes_the_pixels(shared_engine):
    karras = shared_engine.generate(tiny(sampler="Euler", schedule="Karras", steps=4, seed=2), TIMEOUT).images[0]
    automatic = shared_engine.generate(tiny(sampler="Euler", schedule="Automatic", steps=4, seed=2), TIMEOUT).images[0]
    assert np.abs(pixels(karras.path) - pixels(automatic.path)).mean() > 0.5
    assert params_of(karras.path)["Schedule type"] == "Karras"
    assert "Schedule type" not in params_of(automatic.path)


# --- progress, interrupt, cancel -------------------------------------------------------------


def test_progress_reaches_the_last_step_with_a_preview(shared_engine):
    assert shared_engine.settings.preview_every == 2
    job = shared_engine.submit(tiny(steps=4, batch_count=2, seed=4))
    seen_versions = []
    version = 0
    while not job.finished:
        job.watch()  # previews are made only while someone reads them
        version = job.wait_for_change(version, TIMEOUT)
        seen_versions.append(version)
    result = job.wait(TIMEOUT)
    assert len(result.images) == 2
    assert seen_versions == sorted(seen_versions) and len(seen_versions) >= 1
    final = job.progress
    assert (final.step, final.steps, final.batch, final.batches) == (4, 4, 1, 2)
    assert final.fraction == 1.0
    assert isinstance(final.preview, Image.Image)
    assert final.preview.size == (64, 64)
    assert job.state is JobState.DONE
    assert job.wait_for_change(job.version, timeout=0.01) == job.version  # finished: returns at once


def test_no_previews_when_they_are_switched_off(tiny_models_dir, tmp_path):
    engine = make_engine(make_settings(tmp_path, tiny_models_dir, preview_every=0))
    try:
        job = engine.submit(tiny(steps=4, seed=4))
        job.wait(TIMEOUT)
    finally:
        engine.close()
    assert job.progress.step == 4
    assert job.progress.preview is None


def test_interrupt_keeps_what_was_made_and_the_engine_goes_on(engine):
    job = engine.submit(tiny(steps=30, batch_count=3, seed=31))
    wait_until(job, lambda j: j.progress.step >= 1)
    assert engine.status().running
    engine.interrupt()
    result = job.wait(TIMEOUT)
    assert result.interrupted is True
    assert len(result.images) < 3
    assert job.state is JobState.DONE
    assert job.progress.step < 30 and job.progress.batch == 0
    assert len(output_files(engine)) == len(result.images)

    after = engine.submit(tiny(steps=2, seed=32))
    follow_up = after.wait(TIMEOUT)
    assert follow_up.interrupted is False
    assert follow_up.seeds == [32]
    assert after.progress.step == 2  # all steps ran: the interrupt did not stick to the pipeline
    assert not engine.status().running


def test_job_cancel_interrupts_like_the_engine(engine):
    job = engine.submit(tiny(steps=30, batch_count=3, seed=33))
    wait_until(job, lambda j: j.progress.step >= 1)
    job.cancel()
    result = job.wait(TIMEOUT)
    assert result.interrupted and len(result.images) < 3


def test_cancelled_queued_job_never_runs(engine):
    first = engine.submit(tiny(steps=30, batch_count=3, seed=41))
    wait_until(first, lambda j: j.progress.step >= 1)
    second = engine.submit(tiny(seed=42))
    assert engine.position(first) == 0
    assert engine.position(second) == 2
    assert engine.status().queued == 1
    second.cancel()
    assert first.state is JobState.RUNNING and second.state is JobState.QUEUED
    engine.interrupt()
    first.wait(TIMEOUT)

    assert second.wait(TIMEOUT) is None
    assert second.state is JobState.CANCELLED
    names = [path.name for path in output_files(engine)]
    assert names and all(name.endswith("-41.png") for name in names)


# --- bad requests ----------------------------------------------------------------------------

BAD_REQUESTS = {
    "width 10": dict(width=10),
    "width 100000": dict(width=100000),
    "height nan": dict(height=math.nan),
    "cfg nan": dict(cfg_scale=math.nan),
    "steps 0": dict(steps=0),
    "steps 1000": dict(steps=1000),
    "batch_size 0": dict(batch_size=0),
    "strength 1.5": dict(init_image=gradient(), strength=1.5),
    "unknown sampler": dict(sampler="Euler z"),
    "unknown schedule": dict(schedule="Wobbly"),
    "prompt 100k": dict(prompt="fox " * 25_000),
    "seed abc": dict(seed="abc"),
    "init image bytes": dict(init_image=b"\x89PNG\r\n\x1a\n not an image"),
    "init image 0x0": dict(init_image=Image.new("RGB", (0, 0))),
}


@pytest.mark.parametrize("fields", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_bad_requests_are_refused_at_submit(shared_engine, fields):
    with pytest.raises(InvalidRequest) as caught:
        shared_engine.submit(tiny(**fields))
    assert len(caught.value.message) > 20
    assert shared_engine.status().queued == 0


def test_engine_keeps_working_after_bad_requests(shared_engine):
    for fields in BAD_REQUESTS.values():
        with pytest.raises(InvalidRequest):
            shared_engine.submit(tiny(**fields))
    result = shared_engine.generate(tiny(seed=77), TIMEOUT)
    assert result.seeds == [77] and result.images[0].path.is_file()


def test_odd_sizes_snap_to_multiples_of_8(shared_engine):
    (image,) = shared_engine.generate(tiny(width=100, height=130), TIMEOUT).images
    with Image.open(image.path) as saved:
        width, height = saved.size
    assert width in (96, 104) and height == 128
    assert params_of(image.path)["Size"] == f"{width}x{height}"


# --- models ----------------------------------------------------------------------------------


def test_model_swap_and_back_reproduces_and_bad_names_keep_the_model(engine):
    sd15 = engine.generate(tiny(seed=3), TIMEOUT).images[0]
    sd15_img2img = engine.generate(tiny(seed=3, init_image=gradient(), strength=0.6), TIMEOUT).images[0]

    engine.select_checkpoint(TINY_SD2_V)
    assert engine.status().model.title == TINY_SD2_V
    sd21 = engine.generate(tiny(seed=3), TIMEOUT).images[0]
    assert params_of(sd21.path)["Model"] == TINY_SD2_V
    assert not np.array_equal(pixels(sd21.path), pixels(sd15.path))
    sd21_img2img = engine.generate(tiny(seed=3, init_image=gradient(), strength=0.6), TIMEOUT).images[0]
    assert params_of(sd21_img2img.path)["Model"] == TINY_SD2_V
    assert not np.array_equal(pixels(sd21_img2img.path), pixels(sd15_img2img.path))  # not a stale sibling

    engine.select_checkpoint(TINY_SD1)
    back = engine.generate(tiny(seed=3), TIMEOUT).images[0]
    assert params_of(back.path)["Model"] == TINY_SD1
    assert np.array_equal(pixels(back.path), pixels(sd15.path))

    with pytest.raises(ModelNotFound) as caught:
        engine.select_checkpoint("nope")
    assert "nope" in caught.value.message
    assert engine.active_checkpoint().title == TINY_SD1
    still = engine.generate(tiny(seed=3), TIMEOUT).images[0]
    assert np.array_equal(pixels(still.path), pixels(sd15.path))


def test_a_broken_or_pickled_checkpoint_is_refused_and_the_old_model_stays(tiny_models_dir, tmp_path):
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    good = tiny_models_dir / "Stable-diffusion" / TINY_SD1
    shutil.copytree(good, checkpoints / TINY_SD1)
    (checkpoints / "only-index").mkdir()
    shutil.copy(good / "model_index.json", checkpoints / "only-index")
    # The same model with pickled .bin weights only (diffusers would load it with
    # use_safetensors=False): a download's pickle must never be unpickled.
    pickled = checkpoints / "pickled"
    shutil.copytree(good, pickled)
    for weights in pickled.rglob("*.safetensors"):
        name = "pytorch_model.bin" if weights.name == "model.safetensors" else weights.with_suffix(".bin").name
        torch.save(load_file(weights), weights.with_name(name))
        weights.unlink()

    engine = make_engine(make_settings(tmp_path, tmp_path / "models"))
    try:
        engine.select_checkpoint(TINY_SD1)
        before = engine.generate(tiny(seed=8), TIMEOUT).images[0]
        for broken in ("only-index", "pickled"):
            with pytest.raises(ModelLoadError) as caught:
                engine.select_checkpoint(broken)
            assert f"'{broken}'" in caught.value.message and ".safetensors" in caught.value.message
            assert engine.active_checkpoint().title == TINY_SD1
        after = engine.generate(tiny(seed=8), TIMEOUT).images[0]
        assert np.array_equal(pixels(before.path), pixels(after.path))
    finally:
        engine.close()


def test_demo_mode_without_models_draws_with_the_demo_model(tmp_path):
    empty = tmp_path / "empty-models"
    empty.mkdir()
    engine = make_engine(make_settings(tmp_path, empty, demo=True))
    try:
        (entry,) = engine.checkpoints()
        assert entry.demo is True
        result = engine.generate(tiny(seed=6), TIMEOUT)
        assert result.images[0].path.is_file()
        assert params_of(result.images[0].path)["Model"] == entry.name
        assert result.notes and "demo" in result.notes[0] and "noise" in result.notes[0]
    finally:
        engine.close()


def test_no_models_fails_the_job_naming_the_folder(tmp_path):
    empty = tmp_path / "empty-models"
    empty.mkdir()
    engine = make_engine(make_settings(tmp_path, empty, demo=False))
    try:
        assert engine.checkpoints() == []
        job = engine.submit(tiny())
        with pytest.raises(NoModelAvailable) as caught:
            job.wait(TIMEOUT)
        assert job.state is JobState.FAILED
        assert str(empty / "Stable-diffusion") in caught.value.message
        assert "--demo" in caught.value.message
        assert output_files(engine) == []
    finally:
        engine.close()
