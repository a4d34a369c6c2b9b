"""A1111 sampler and schedule names, mapped to diffusers schedulers.

A1111 clients send a sampler name ("DPM++ 2M") and, since A1111 1.9, a separate schedule
("Karras"); older clients send both as one name ("DPM++ 2M Karras"). Both are accepted and
normalised to a `SamplerChoice`.
"""

import importlib
import inspect
from dataclasses import dataclass, field

from app.errors import InvalidRequest

AUTOMATIC = "Automatic"


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    scheduler_class: str
    options: dict = field(default_factory=dict)
    default_schedule: str = "Automatic"  # what "Automatic" means for this sampler (as in A1111)



def scheduler_class_of(spec: SamplerSpec) -> type:
    # diffusers is imported on first use, not at startup: the page answers seconds sooner (launch.py).
    return getattr(importlib.import_module("diffusers"), spec.scheduler_class)


# Order is the order users see them in.
SAMPLERS = (
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "Karras"),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", {}, "Karras"),
    SamplerSpec(
        "DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, "Karras"
    ),
    SamplerSpec(
        "DPM++ 3M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "Exponential"
    ),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler"),
    SamplerSpec("Euler", "EulerDiscreteScheduler"),
    SamplerSpec("LMS", "LMSDiscreteScheduler"),
    SamplerSpec("Heun", "HeunDiscreteScheduler"),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", {}, "Karras"),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, "Karras"),
    SamplerSpec("DDIM", "DDIMScheduler"),
    SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    SamplerSpec("UniPC", "UniPCMultistepScheduler"),
    SamplerSpec("DEIS", "DEISMultistepScheduler"),
    # For LCM models and LCM-LoRAs (fast mode); an ordinary model gives poor pictures with it.
    SamplerSpec("LCM", "LCMScheduler"),
)

# Schedule name -> the scheduler flag that turns it on.
SCHEDULES = {
    AUTOMATIC: None,
    "Karras": "use_karras_sigmas",
    "Exponential": "use_exponential_sigmas",
    "Beta": "use_beta_sigmas",
}

DEFAULT_SAMPLER = "DPM++ 2M"  # with its automatic schedule, Karras: A1111's default


@dataclass(frozen=True)
class SamplerChoice:
    sampler: str
    schedule: str = AUTOMATIC  # resolved: never "Automatic" when the sampler has a default


def sampler_names() -> list[str]:
    return [spec.name for spec in SAMPLERS]


def schedule_names() -> list[str]:
    return list(SCHEDULES)


def _spec(name: str) -> SamplerSpec | None:
    wanted = name.strip().lower()
    return next((s for s in SAMPLERS if s.name.lower() == wanted), None)


def _schedule_name(name: str) -> str | None:
    wanted = name.strip().lower()
    return next((s for s in SCHEDULES if s.lower() == wanted), None)


def resolve_sampler(sampler: str | None, schedule: str | None = None) -> SamplerChoice:
    """Normalise what a user or client sent; legacy "DPM++ 2M Karras" splits into its two parts.

    No schedule, or "Automatic", means the sampler's own default, as in A1111.
    """
    sampler = (sampler or DEFAULT_SAMPLER).strip()
    spec = _spec(sampler)
    legacy_schedule = None
    if spec is None:
        head, _, tail = sampler.rpartition(" ")
        spec, legacy_schedule = _spec(head), _schedule_name(tail)
        if spec is None or legacy_schedule is None:
            raise InvalidRequest(
                f"Unknown sampler '{sampler}'. Choose one of: {', '.join(sampler_names())}."
            )
    chosen_schedule = _schedule_name(schedule) if schedule else None
    if schedule and chosen_schedule is None:
        raise InvalidRequest(f"Unknown schedule type '{schedule}'. Choose one of: {', '.join(SCHEDULES)}.")
    if chosen_schedule in (None, AUTOMATIC) and legacy_schedule:
        chosen_schedule = legacy_schedule
    if chosen_schedule in (None, AUTOMATIC):
        chosen_schedule = spec.default_schedule
    choice = SamplerChoice(spec.name, chosen_schedule)
    _check_schedule_supported(spec, choice.schedule)
    return choice


def _accepted_options(scheduler_class) -> set[str]:
    return set(inspect.signature(scheduler_class.__init__).parameters)


def _check_schedule_supported(spec: SamplerSpec, schedule: str) -> None:
    flag = SCHEDULES[schedule]
    if flag and flag not in _accepted_options(scheduler_class_of(spec)):
        raise InvalidRequest(
            f"The {spec.name} sampler has no {schedule} schedule. Choose the Automatic schedule "
            f"or another sampler."
        )


def build_scheduler(choice: SamplerChoice, model_scheduler_config: dict, seeds: list[int] | None = None):
    """A fresh scheduler for one job.

    Always start from the checkpoint's own scheduler config (never a previously swapped one),
    so prediction type and betas come from the model and no flag of an earlier job leaks in.
    """
    spec = _spec(choice.sampler)
    scheduler_class = scheduler_class_of(spec)
    accepted = _accepted_options(scheduler_class)
    options = dict(spec.options)
    for flag in filter(None, SCHEDULES.values()):
        if flag in accepted:
            options[flag] = flag == SCHEDULES[choice.schedule]
    if "noise_sampler_seed" in accepted and seeds:
        # The SDE sampler's Brownian noise follows the seeds too: one noise tree per image, so
        # image i of a batch is the image a single run with its own seed makes.
        options["noise_sampler_seed"] = seeds[0] if len(seeds) == 1 else list(seeds)
    return scheduler_class.from_config(model_scheduler_config, **options)
