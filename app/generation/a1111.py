"""The A1111 field mapping: one table names each request field three ways, as `GenerationRequest`
holds it, as A1111's infotext writes it, and as its `/sdapi/v1` JSON sends it; the conversions
between the three live here and nowhere else.

- request → infotext: `generation_info` (the PNG's `parameters` text, via app.images.metadata);
- infotext → request: `request_fields`, forgiving, since the text may come from A1111, a ComfyUI
  node that writes A1111 text, or Easel itself: a value that does not parse is left out, never
  raised, and `GenerationRequest.validated()` says what is out of range in words a user reads;
- API → request: `api_request_fields`; request → API: `api_fields` (the echo in A1111's `info`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from app.errors import InvalidRequest
from app.generation.fast_mode import INFOTEXT_KEY as FAST_MODE_KEY
from app.generation.fast_mode import read_fast
from app.generation.requests import ONLY_MASKED, GenerationRequest
from app.generation.samplers import resolve_sampler
from app.images.metadata import GenerationInfo


def _number(value: object) -> float | None:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _integer(value: object) -> int | None:
    number = _number(value)
    if number is None or number != int(number):
        return None
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())  # exact even past a float's 53 bits
    return int(number)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Field:
    request: str                          # the GenerationRequest attribute
    infotext: str | None                  # the infotext key it is read back from (None: not written)
    api: str | None                       # the /sdapi/v1 txt2img/img2img field (None: not sent that way)
    read: Callable[[object], object | None] = _integer  # an infotext value → the request's type, or None


# Fields that map one to one. The sampler and its schedule, clip skip, the checkpoint and saving
# are read and written by the functions below, which know their special rules.
FIELDS = (
    Field("prompt", "Prompt", "prompt", _text),
    Field("negative_prompt", "Negative prompt", "negative_prompt", _text),
    Field("steps", "Steps", "steps"),
    Field("cfg_scale", "CFG scale", "cfg_scale", _number),
    Field("seed", "Seed", "seed"),
    Field("width", "Size-1", "width"),     # infotext "Size: WxH", split by the parser
    Field("height", "Size-2", "height"),
    Field("clip_skip", "Clip skip", None),  # API: override_settings.CLIP_stop_at_last_layers
    Field("strength", "Denoising strength", "denoising_strength", _number),
    Field("batch_size", None, "batch_size"),
    Field("batch_count", None, "n_iter"),
    # Variation seeds ("Variation seed" is per image: the runner writes it through `extra`).
    Field("subseed", "Variation seed", "subseed"),
    Field("subseed_strength", "Variation seed strength", "subseed_strength", _number),
    Field("seed_resize_from_w", "Seed resize from-1", "seed_resize_from_w"),
    Field("seed_resize_from_h", "Seed resize from-2", "seed_resize_from_h"),
    # Hires fix; any of its keys in an infotext turns it on (`request_fields`).
    Field("enable_hr", None, "enable_hr"),
    Field("hr_scale", "Hires upscale", "hr_scale", _number),
    Field("hr_resize_x", "Hires resize-1", "hr_resize_x"),
    Field("hr_resize_y", "Hires resize-2", "hr_resize_y"),
    Field("hr_upscaler", "Hires upscaler", "hr_upscaler", _text),
    Field("hr_second_pass_steps", "Hires steps", "hr_second_pass_steps"),
    Field("hr_sampler_name", "Hires sampler", "hr_sampler_name", _text),
    Field("hr_scheduler", "Hires schedule type", "hr_scheduler", _text),
    Field("hr_prompt", "Hires prompt", "hr_prompt", _text),
    Field("hr_negative_prompt", "Hires negative prompt", "hr_negative_prompt", _text),
    # Easel's fast mode; written by the runner (`extra`), since only the run knows its decoder.
    Field("easel_fast", FAST_MODE_KEY, "easel_fast", read_fast),
)
HIRES_KEYS = ("Hires upscale", "Hires resize-1", "Hires upscaler")
CLIP_SKIP_OPTION = "CLIP_stop_at_last_layers"
CHECKPOINT_OPTION = "sd_model_checkpoint"
API_DEFAULT_SAMPLER = "Euler"  # what A1111's API runs when a client names no sampler


# --- request → infotext -----------------------------------------------------------------------


def generation_info(request: GenerationRequest, seed: int, model_name: str | None, model_hash: str | None,
                    vae_name: str | None, version: str, extra: dict[str, object] | None = None) -> GenerationInfo:
    """What to write into the PNG of one image of `request`, made with `seed`.

    `extra`: the keys that only the run knows for this one image (its variation seed, the hashes
    of the LoRA and embedding files it used, ...), written after the request's own."""
    return GenerationInfo(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        steps=request.steps,
        sampler=request.sampler,
        schedule_type=request.schedule,
        cfg_scale=request.cfg_scale,
        seed=seed,
        width=request.width,
        height=request.height,
        model_name=model_name,
        model_hash=model_hash,
        denoising_strength=request.strength if request.is_img2img or request.enable_hr else None,
        clip_skip=request.clip_skip,
        extra={
            "VAE": vae_name,
            **_inpaint_keys(request),
            **_hires_keys(request),
            "RNG": "CPU",  # noise comes from CPU generators, whatever the device
            **(extra or {}),
        },
        version=version,
    )


def variation_keys(request: GenerationRequest, subseed: int) -> dict[str, object]:
    """A1111's variation keys for one image made with variation seed `subseed` (none when off)."""
    resize = request.seed_resize_from
    return {
        "Variation seed": subseed if request.subseed_strength > 0 else None,
        "Variation seed strength": request.subseed_strength if request.subseed_strength > 0 else None,
        "Seed resize from": f"{resize[0]}x{resize[1]}" if resize else None,
    }


def _hires_keys(request: GenerationRequest) -> dict[str, object]:
    """A1111's hires keys ("Denoising strength" is a GenerationInfo field of its own)."""
    if not request.enable_hr:
        return {}
    resize = request.hr_resize_x > 0 or request.hr_resize_y > 0
    own_sampler = request.hr_sampler_name is not None and request.hr_sampler_name != request.sampler
    own_schedule = request.hr_scheduler is not None and request.hr_scheduler != request.schedule
    return {
        "Hires upscale": None if resize else request.hr_scale,
        "Hires resize": f"{request.hr_resize_x}x{request.hr_resize_y}" if resize else None,
        "Hires steps": request.hr_second_pass_steps or None,
        "Hires upscaler": request.hr_upscaler,
        "Hires sampler": request.hr_sampler_name if own_sampler or own_schedule else None,
        "Hires schedule type": request.hr_scheduler if own_sampler or own_schedule else None,
        "Hires prompt": request.hr_prompt or None,
        "Hires negative prompt": request.hr_negative_prompt or None,
    }


def _inpaint_keys(request: GenerationRequest) -> dict:
    if not request.is_inpaint:
        return {}
    only_masked = request.inpaint_area == ONLY_MASKED
    return {
        "Mask blur": request.mask_blur,
        "Inpaint area": "Only masked" if only_masked else None,
        "Masked area padding": request.masked_padding if only_masked else None,
    }


# --- infotext → request -----------------------------------------------------------------------


def request_fields(fields: dict[str, object]) -> dict[str, object]:
    """`GenerationRequest` keyword arguments for parsed infotext `fields` (see `parse_infotext`).

    Only what the text holds, and parses, is returned. A sampler Easel does not have leaves out
    both sampler and schedule; a schedule it does not have (or one the sampler cannot use) leaves
    out the schedule only. Values are not range-checked here.
    """
    result: dict[str, object] = {}
    for field in FIELDS:
        if field.infotext is not None and field.infotext in fields:
            value = field.read(fields[field.infotext])
            if value is not None:
                result[field.request] = value
    result.update(_sampler_fields(fields.get("Sampler"), _schedule_text(fields)))
    if any(key in fields for key in HIRES_KEYS):
        result["enable_hr"] = True
    return result


# Sampler names other tools write, lowercased, to A1111's: k-diffusion's `k_` names (old A1111
# and its API clients) and ComfyUI's names (nodes that export A1111-style text).
_SAMPLER_ALIASES = {
    "euler_a": "Euler a",
    "euler_ancestral": "Euler a",
    "euler": "Euler",
    "lms": "LMS",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "dpm2_a": "DPM2 a",
    "dpm_2_a": "DPM2 a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "ddim": "DDIM",
    "plms": "PLMS",
    "uni_pc": "UniPC",
    "unipc": "UniPC",
    "deis": "DEIS",
}
# Suffixes those tools use for a schedule baked into the sampler name ("dpmpp_2m_karras").
_SCHEDULE_SUFFIXES = {"_karras": "Karras", "_exponential": "Exponential"}


def _schedule_text(fields: dict[str, object]) -> str | None:
    """A1111 1.9+ writes "Schedule type"; some ComfyUI exporters write "Scheduler"."""
    for key in ("Schedule type", "Scheduler"):
        value = fields.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _sampler_fields(sampler: object, schedule: str | None) -> dict[str, object]:
    """{"sampler", "schedule"} as Easel names them, what of it resolves; {} for an unknown sampler."""
    if not isinstance(sampler, str) or not sampler.strip():
        return {}
    sampler, suffix_schedule = _a1111_sampler_name(sampler.strip())
    schedule = schedule or suffix_schedule
    if schedule is not None:
        try:
            choice = resolve_sampler(sampler, schedule)
            return {"sampler": choice.sampler, "schedule": choice.schedule}
        except InvalidRequest:
            pass  # try the sampler alone: an unknown schedule should not cost the sampler
    try:
        choice = resolve_sampler(sampler, None)
    except InvalidRequest:
        return {}
    if schedule is not None:
        # The written schedule was refused: keep the sampler, leave the schedule to the user.
        return {"sampler": choice.sampler}
    # No schedule written (A1111 reads that as Automatic), or a legacy "DPM++ 2M Karras" whose
    # name carries it: the resolved schedule is the one the image was made with.
    return {"sampler": choice.sampler, "schedule": choice.schedule}


def _a1111_sampler_name(name: str) -> tuple[str, str | None]:
    """A1111's name for `name`, and a schedule its suffix carries ("dpmpp_2m_karras")."""
    key = name.lower().replace(" ", "_")
    if key.startswith("k_"):
        key = key[2:]
    schedule = None
    for suffix, schedule_name in _SCHEDULE_SUFFIXES.items():
        if key.endswith(suffix) and key[: -len(suffix)] in _SAMPLER_ALIASES:
            key, schedule = key[: -len(suffix)], schedule_name
            break
    alias = _SAMPLER_ALIASES.get(key)
    return (alias, schedule) if alias is not None else (name, None)


# --- API ↔ request ----------------------------------------------------------------------------


def api_request_fields(body: dict) -> dict[str, object]:
    """`GenerationRequest` keyword arguments for an /sdapi/v1 txt2img or img2img body (its fields
    already type-checked by app.api.schemas). Image fields are the API module's to decode."""
    result = {field.request: body[field.api] for field in FIELDS if field.api is not None and field.api in body}
    options = body.get("override_settings") or {}
    model = options.get(CHECKPOINT_OPTION)
    if model is not None and not isinstance(model, str):
        raise InvalidRequest(f"override_settings.{CHECKPOINT_OPTION} must be a checkpoint title (text).")
    result.update(
        sampler=body.get("sampler_name") or body.get("sampler_index") or API_DEFAULT_SAMPLER,
        schedule=body.get("scheduler"),
        clip_skip=options.get(CLIP_SKIP_OPTION, 1),
        model=model or None,
        save=bool(body.get("save_images", False)),
    )
    return result


def api_fields(request: GenerationRequest) -> dict[str, object]:
    """The request's fields under A1111's API names, as its `info` JSON echoes them."""
    fields = {field.api: getattr(request, field.request) for field in FIELDS if field.api is not None}
    fields.update(
        sampler_name=request.sampler,
        scheduler=request.schedule,
        clip_skip=request.clip_skip,
        denoising_strength=request.strength if request.is_img2img or request.enable_hr else None,
    )
    return fields
