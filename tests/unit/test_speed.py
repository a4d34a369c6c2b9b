"""SpeedMeter's arithmetic: figures per pixel and per UNet pass scale to any job; a new checkpoint or
device plan starts afresh; a calibration is replaced by the first job's figures."""

import pytest
from PIL import Image

from app.generation.requests import GenerationRequest
from app.generation.speed import SpeedMeter, StepTimer, passes_of, speed_sentence, unet_passes


def meter(step: float = 1.0, decode: float = 0.5, calibration: bool = False) -> SpeedMeter:
    """Measured at 512x512: `step` seconds per CFG step of one image, `decode` seconds per decode."""
    speed = SpeedMeter()
    speed.follow("model")
    speed.learn_step(step, 512, 512, 2, calibration=calibration)
    speed.learn_decode(decode, 512, 512, 1, calibration=calibration)
    return speed


def test_cfg_above_one_runs_the_unet_twice_per_step():
    assert [unet_passes(cfg) for cfg in (0.0, 1.0, 1.5, 7.0)] == [1, 1, 2, 2]


def test_the_estimate_scales_with_steps_size_batch_and_cfg():
    speed = meter()
    assert speed.job_seconds(GenerationRequest(steps=20)) == pytest.approx(20 * 1.0 + 0.5)
    assert speed.job_seconds(GenerationRequest(steps=4, cfg_scale=1.0)) == pytest.approx(4 * 0.5 + 0.5)
    assert speed.job_seconds(GenerationRequest(steps=10, width=768, height=768, batch_size=2, batch_count=3)) == \
        pytest.approx(3 * (10 * 2.25 * 2 + 2.25 * 0.5 * 2))
    img2img = GenerationRequest(steps=20, strength=0.5, init_image=Image.new("RGB", (512, 512)))
    assert speed.batch(img2img).steps_seconds == pytest.approx(10.0)  # diffusers runs steps x strength


def test_hires_fix_adds_its_second_pass_at_the_bigger_size():
    request = GenerationRequest(steps=10, enable_hr=True, hr_scale=2.0, strength=0.5)
    first, second = passes_of(request)
    assert (first.width, second.width, first.latents, second.latents) == (512, 1024, 2, 2)
    assert meter().batch(request).steps_seconds == pytest.approx(10 * 1.0 + second.steps * 4.0)


def test_fast_mode_is_estimated_with_taesd_once_a_fast_job_measured_it():
    speed = meter(decode=2.0)
    fast = GenerationRequest(steps=4, cfg_scale=1.0, easel_fast=True)
    assert speed.batch(fast).decode_seconds == pytest.approx(2.0)  # not measured yet: the VAE's
    speed.learn_decode(0.1, 512, 512, 1, tiny=True)
    assert speed.batch(fast).decode_seconds == pytest.approx(0.1)
    assert speed.batch(GenerationRequest()).decode_seconds == pytest.approx(2.0)


def test_a_new_checkpoint_or_plan_starts_afresh_and_nothing_is_guessed():
    speed = meter()
    assert speed.follow("model") is False          # the same: measured already
    assert speed.follow("another model") is True   # another: calibrate again
    assert speed.job_seconds(GenerationRequest()) is None
    assert "measured when a checkpoint loads" in speed_sentence(speed, 512)


def test_the_first_job_replaces_the_calibration_then_recent_jobs_weigh_most():
    speed = meter(step=4.0, calibration=True)      # a cold first call: slow
    speed.learn_step(1.0, 512, 512, 2)
    assert speed.batch(GenerationRequest(steps=1)).steps_seconds == pytest.approx(1.0)
    speed.learn_step(2.0, 512, 512, 2)
    assert 1.0 < speed.batch(GenerationRequest(steps=1)).steps_seconds < 2.0


def test_the_header_sentence_says_what_a_default_image_takes():
    speed = meter(step=2.0, decode=5.0)
    speed.learn_overhead(1.0)
    assert speed_sentence(speed, 512) == \
        f"On this machine: about {20 * 2 + 5 + 0.5:.0f} s per 512x512 image at 20 steps (measured)."


def test_the_step_timer_leaves_out_the_first_step_which_carries_the_set_up():
    now = [0.0]
    timer = StepTimer(lambda: now[0])
    for seconds in (9.0, 1.0, 2.0):
        now[0] += seconds
        per_step = timer.stepped()
    assert per_step == pytest.approx(1.5)
