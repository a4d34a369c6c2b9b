"""What an image says about how it was made, and how to make it again.

`png_info` reads an image's A1111 infotext and invisible watermark (the PNG Info tab shows both);
`request_fields` turns the parsed infotext into `GenerationRequest` keyword arguments, so a
picture from A1111, from a ComfyUI node that writes A1111 text, or from Easel itself can be sent
back to txt2img or img2img. Reading is forgiving: a value that does not parse is left out, never
raised, because the image came from somewhere else and the user can fix the rest by hand.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from PIL import Image

from app.errors import InvalidRequest
from app.generation.samplers import resolve_sampler
from app.images.metadata import parse_infotext, read_parameters
from app.images.watermark import detect_watermark

log = logging.getLogger(__name__)

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


@dataclass
class PngInfo:
    parameters: str | None        # the raw A1111 text, None if the image has none
    fields: dict[str, object]     # parse_infotext(parameters), {} without
    watermark: str | None         # "StableDiffusionV1", "SDV2" or None (also for images under 256 px)


def png_info(image: Image.Image) -> PngInfo:
    """The infotext and watermark of `image` (a PNG's text chunk, or a JPEG/WebP's EXIF comment).

    A damaged or unusual file reads as "nothing found" rather than failing: this is a viewer.
    """
    try:
        parameters = read_parameters(image)
    except Exception:  # truncated file, broken chunk or EXIF: Pillow raises many kinds
        log.warning("Could not read the parameters of an image", exc_info=True)
        parameters = None
    if parameters is not None and not parameters.strip():
        parameters = None
    fields = parse_infotext(parameters) if parameters is not None else {}
    try:
        watermark = detect_watermark(image)
    except Exception:  # an image mode or size the decoder cannot take
        log.warning("Could not check an image for the invisible watermark", exc_info=True)
        watermark = None
    return PngInfo(parameters=parameters, fields=fields, watermark=watermark)


def request_fields(fields: dict[str, object]) -> dict[str, object]:
    """`GenerationRequest` keyword arguments for parsed infotext `fields` (see `parse_infotext`).

    Only what the text holds, and parses, is returned: prompt, negative_prompt, steps, sampler
    and schedule, cfg_scale, seed, width, height, clip_skip, strength. A sampler Easel does not
    have leaves out both sampler and schedule; a schedule it does not have (or one the sampler
    cannot use) leaves out the schedule only. Values are not range-checked here:
    `GenerationRequest.validated()` says what is out of range in words a user understands.
    """
    result: dict[str, object] = {}
    for key, name in (("Prompt", "prompt"), ("Negative prompt", "negative_prompt")):
        value = fields.get(key)
        if isinstance(value, str):
            result[name] = value

    result.update(_sampler_fields(fields.get("Sampler"), _schedule_text(fields)))

    for key, name, convert in (
        ("Steps", "steps", _integer),
        ("CFG scale", "cfg_scale", _number),
        ("Seed", "seed", _integer),
        ("Size-1", "width", _integer),
        ("Size-2", "height", _integer),
        ("Clip skip", "clip_skip", _integer),
        ("Denoising strength", "strength", _number),
    ):
        if key in fields:
            value = convert(fields[key])
            if value is not None:
                result[name] = value
    return result


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
