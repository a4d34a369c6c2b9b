"""A1111 sampler/schedule names resolved and turned into diffusers schedulers."""

import copy

import diffusers
import pytest

from app.errors import InvalidRequest
from app.generation.samplers import (
    AUTOMATIC,
    DEFAULT_SAMPLER,
    SAMPLERS,
    SCHEDULES,
    SamplerChoice,
    build_scheduler,
    resolve_sampler,
    sampler_names,
    schedule_names,
)

# A v-prediction model's scheduler config, as a diffusers checkpoint (SD 2.1-768) ships it.
V_CONFIG = dict(
    diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    ).config
)


def choice(sampler, schedule=None) -> tuple[str, str]:
    resolved = resolve_sampler(sampler, schedule)
    return resolved.sampler, resolved.schedule


# --- resolve_sampler -----------------------------------------------------------------------


def test_names_lists_are_a1111s():
    assert sampler_names()[0] == DEFAULT_SAMPLER == "DPM++ 2M"
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "Heun", "LMS", "DDIM", "PLMS", "UniPC", "DPM2", "DPM2 a"} <= set(sampler_names())
    assert schedule_names()[0] == AUTOMATIC
    assert {"Karras", "Exponential"} <= set(schedule_names())


@pytest.mark.parametrize(
    "sent, name",
    [("dpm++ 2m", "DPM++ 2M"), ("EULER A", "Euler a"), ("  Euler  ", "Euler"), ("unipc", "UniPC"), ("dpm2 A", "DPM2 a")],
)
def test_sampler_names_are_case_insensitive(sent, name):
    assert resolve_sampler(sent).sampler == name


@pytest.mark.parametrize(
    "legacy, expected",
    [
        ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
        ("dpm++ 2m karras", ("DPM++ 2M", "Karras")),
        ("Euler Karras", ("Euler", "Karras")),
        ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
        ("DPM2 a Karras", ("DPM2 a", "Karras")),
        ("LMS Karras", ("LMS", "Karras")),
    ],
)
def test_legacy_names_split_into_sampler_and_schedule(legacy, expected):
    assert choice(legacy) == expected
    assert choice(legacy, AUTOMATIC) == expected  # "Automatic" does not undo the name's schedule


def test_a_sampler_whose_name_ends_like_another_is_not_split():
    assert choice("DPM++ 2M SDE") == ("DPM++ 2M SDE", "Karras")
    assert choice("DPM2 a") == ("DPM2 a", "Karras")


@pytest.mark.parametrize(
    "sampler, schedule",
    [
        ("DPM++ 2M", "Karras"),
        ("DPM++ SDE", "Karras"),
        ("DPM++ 3M SDE", "Exponential"),
        ("DPM2", "Karras"),
        ("Euler a", AUTOMATIC),
        ("Euler", AUTOMATIC),
        ("DDIM", AUTOMATIC),
        ("PLMS", AUTOMATIC),
    ],
)
def test_default_schedule_per_sampler(sampler, schedule):
    assert choice(sampler) == (sampler, schedule)
    assert choice(sampler, AUTOMATIC) == (sampler, schedule)
    assert choice(sampler, "automatic") == (sampler, schedule)
    assert choice(sampler, "") == (sampler, schedule)


def test_no_sampler_means_the_default():
    assert choice(None) == ("DPM++ 2M", "Karras")
    assert choice("") == ("DPM++ 2M", "Karras")


def test_explicit_schedule_is_used_case_insensitively():
    assert choice("Euler", "karras") == ("Euler", "Karras")
    assert choice("DPM++ 2M", "EXPONENTIAL") == ("DPM++ 2M", "Exponential")
    assert choice("Euler", "Beta") == ("Euler", "Beta")


@pytest.mark.parametrize("sampler, schedule", [("Euler a", "Karras"), ("Euler a Karras", None), ("DDIM", "Exponential"), ("PLMS", "Karras")])
def test_a_schedule_the_sampler_lacks_is_refused(sampler, schedule):
    with pytest.raises(InvalidRequest) as caught:
        resolve_sampler(sampler, schedule)
    assert "has no" in caught.value.message
    assert "Automatic" in caught.value.message


@pytest.mark.parametrize("name", ["Euler b", "DPM++ 4M", "Karras", "Euler a Fancy", "k_euler"])
def test_unknown_sampler_is_refused_listing_every_name(name):
    with pytest.raises(InvalidRequest) as caught:
        resolve_sampler(name)
    assert f"'{name}'" in caught.value.message
    for known in sampler_names():
        assert known in caught.value.message


def test_unknown_schedule_is_refused_listing_every_schedule():
    with pytest.raises(InvalidRequest) as caught:
        resolve_sampler("Euler", "Polyexponential")
    assert "'Polyexponential'" in caught.value.message
    for known in SCHEDULES:
        assert known in caught.value.message


# --- build_scheduler -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", SAMPLERS, ids=[spec.name for spec in SAMPLERS])
def test_each_sampler_builds_its_class_and_keeps_the_models_prediction_type(spec):
    scheduler = build_scheduler(resolve_sampler(spec.name), V_CONFIG, seeds=[3])
    assert type(scheduler).__name__ == spec.scheduler_class
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.num_train_timesteps == 1000
    for option, value in spec.options.items():
        assert scheduler.config[option] == value
    scheduler.set_timesteps(3)  # usable as built
    assert len(scheduler.timesteps) >= 3


def test_karras_schedule_sets_only_its_flag():
    scheduler = build_scheduler(SamplerChoice("DPM++ 2M", "Karras"), V_CONFIG)
    assert scheduler.config.use_karras_sigmas is True
    assert scheduler.config.use_exponential_sigmas is False
    assert scheduler.config.use_beta_sigmas is False
    assert scheduler.config.algorithm_type == "dpmsolver++"


def test_exponential_schedule_for_dpmpp_3m_sde():
    scheduler = build_scheduler(resolve_sampler("DPM++ 3M SDE"), V_CONFIG)
    assert scheduler.config.use_exponential_sigmas is True
    assert scheduler.config.use_karras_sigmas is False
    assert (scheduler.config.algorithm_type, scheduler.config.solver_order) == ("sde-dpmsolver++", 3)


def test_a_later_automatic_build_does_not_inherit_karras():
    base = copy.deepcopy(V_CONFIG)
    karras = build_scheduler(SamplerChoice("Euler", "Karras"), base)
    assert karras.config.use_karras_sigmas is True
    assert base == V_CONFIG  # the model's config is not modified

    automatic = build_scheduler(SamplerChoice("Euler", AUTOMATIC), base)
    assert automatic.config.use_karras_sigmas is False

    # Even from a config that already carries the flag (a previously swapped scheduler's).
    leaked = build_scheduler(SamplerChoice("Euler", AUTOMATIC), dict(karras.config))
    assert leaked.config.use_karras_sigmas is False
    assert leaked.config.prediction_type == "v_prediction"


def test_karras_and_automatic_give_different_sigmas():
    karras = build_scheduler(SamplerChoice("Euler", "Karras"), V_CONFIG)
    plain = build_scheduler(SamplerChoice("Euler", AUTOMATIC), V_CONFIG)
    karras.set_timesteps(10)
    plain.set_timesteps(10)
    karras_sigmas, plain_sigmas = karras.sigmas.tolist(), plain.sigmas.tolist()
    assert karras_sigmas[0] == pytest.approx(plain_sigmas[0], rel=1e-3)  # the same range...
    middle = zip(karras_sigmas[1:-1], plain_sigmas[1:-1])
    assert max(abs(a - b) for a, b in middle) > 0.1  # ...spaced differently


def test_sde_sampler_noise_follows_the_seed():
    assert build_scheduler(resolve_sampler("DPM++ SDE"), V_CONFIG, seeds=[1234]).noise_sampler_seed == 1234


def test_epsilon_models_stay_epsilon():
    epsilon = dict(V_CONFIG, prediction_type="epsilon")
    for name in ("DPM++ 2M", "DPM++ SDE", "Euler a", "DDIM", "PLMS", "UniPC"):
        assert build_scheduler(resolve_sampler(name), epsilon).config.prediction_type == "epsilon"
