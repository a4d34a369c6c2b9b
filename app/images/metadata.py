"""A1111 "infotext": the generation parameters stored with every output image.

Image viewers, prompt sites and A1111 clients read one PNG text chunk named `parameters` (or the
EXIF UserComment of a JPEG/WebP) in AUTOMATIC1111's format, so Easel writes and reads exactly that:

    <prompt, possibly several lines>
    Negative prompt: <negative, possibly several lines>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x512, ...

Writing follows A1111's `create_infotext`, reading its `parse_generation_parameters`
(modules/processing.py and modules/infotext_utils.py in stable-diffusion-webui).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from PIL import Image, PngImagePlugin

PARAMETERS_KEY = "parameters"

# A1111's own pattern; keeping it verbatim is what makes our reading agree with theirs.
_PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE_PREFIX = "Negative prompt:"
# A1111 takes the last line as parameters only from this many `Key: value` pairs on; fewer means
# it is a prompt line that merely contains a colon.
_MIN_PARAMETER_PAIRS = 3

_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286
_AUTOMATIC_SCHEDULE = "Automatic"


@dataclass
class GenerationInfo:
    """What produced an image, in the terms A1111 writes into its infotext."""

    prompt: str
    negative_prompt: str
    steps: int
    sampler: str  # A1111 name without the schedule, e.g. "DPM++ 2M"
    schedule_type: str | None  # "Karras", "Exponential", ...; None or "Automatic" is not written
    cfg_scale: float
    seed: int
    width: int
    height: int
    model_name: str | None = None
    model_hash: str | None = None  # first 10 hex digits of the checkpoint's sha256
    denoising_strength: float | None = None
    clip_skip: int = 1  # written only if > 1, as A1111 does
    extra: dict[str, object] = field(default_factory=dict)  # after the known keys, before Version
    version: str | None = None  # e.g. "Easel 0.1.0"


def infotext(info: GenerationInfo) -> str:
    """The A1111 `parameters` string for `info`."""
    schedule = info.schedule_type if info.schedule_type != _AUTOMATIC_SCHEDULE else None
    params: dict[str, object] = {
        "Steps": info.steps,
        "Sampler": info.sampler,
        "Schedule type": schedule,
        "CFG scale": info.cfg_scale,
        "Seed": info.seed,
        "Size": f"{info.width}x{info.height}",
        "Model hash": info.model_hash,
        "Model": info.model_name,
        "Denoising strength": info.denoising_strength,
        "Clip skip": info.clip_skip if info.clip_skip > 1 else None,
    }
    # A dict update, like A1111's `**extra_generation_params`: an extra key that repeats a known
    # one replaces its value in place.
    params.update(info.extra)
    params["Version"] = info.version

    negative = f"\n{_NEGATIVE_PREFIX} {info.negative_prompt}" if info.negative_prompt else ""
    # strip() as A1111 does, so an empty prompt does not leave a blank first line.
    return f"{info.prompt}{negative}\n{parameters_line(params)}".strip()


def parameters_line(params: dict[str, object]) -> str:
    """The `Key: value, Key: value` last line of an infotext; None values are left out."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        text = formatted_value(value)
        # A1111 writes a flag whose value is its own name as the bare name.
        parts.append(key if text == key else f"{key}: {quoted(text)}")
    return ", ".join(parts)


def formatted_value(value: object) -> str:
    """`value` as A1111 prints it: whole floats without a trailing `.0` (CFG 7.0 -> "7")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def quoted(text: str) -> str:
    """`text`, JSON-quoted when a `,` `:` or newline would otherwise break the line apart."""
    if "," in text or ":" in text or "\n" in text:
        # ensure_ascii=False as A1111: non-Latin text stays readable in viewers.
        return json.dumps(text, ensure_ascii=False)
    return text


def unquoted(text: str) -> str:
    """The inverse of `quoted`; text that is not valid JSON is kept as written."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def parse_infotext(text: str) -> dict[str, object]:
    """The fields of an A1111 infotext, read by A1111's `parse_generation_parameters` rules.

    Keys are A1111's: "Prompt", "Negative prompt" (always present, possibly empty), then every
    `Key: value` of the last line ("Steps", "Sampler", "CFG scale", "Seed", ...). Values stay the
    strings written, unquoted; callers convert what they use. A `WxH` value is split as A1111
    does into "<Key>-1" and "<Key>-2" ("Size-1" = width, "Size-2" = height) and, for
    convenience, also kept whole under its own key ("Size": "512x512"). A missing "Clip skip"
    reads as "1", its meaning in A1111; A1111's other defaults are for pasting into its UI
    (Hires, inpaint, RNG...) and are not added. An old client's "Sampler: DPM++ 2M Karras" is returned
    as written; splitting off the schedule is the sampler module's job.
    """
    *lines, last_line = text.strip().split("\n")
    if len(_PARAM_PATTERN.findall(last_line)) < _MIN_PARAMETER_PAIRS:
        lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(_NEGATIVE_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)

    result: dict[str, object] = {
        "Prompt": "\n".join(prompt_lines),
        "Negative prompt": "\n".join(negative_lines),
    }
    for key, raw in _PARAM_PATTERN.findall(last_line):
        value = unquoted(raw)
        size = _SIZE_PATTERN.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        result[key] = value
    result.setdefault("Clip skip", "1")
    return result


def png_pnginfo(parameters: str) -> PngImagePlugin.PngInfo:
    """PNG text chunks carrying `parameters` under A1111's key.

    Pillow writes tEXt for Latin-1 text and switches to UTF-8 iTXt by itself for anything else
    (Japanese, emoji), which A1111 and viewers read back the same way.
    """
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    return info


def read_parameters(image: Image.Image) -> str | None:
    """The infotext stored in `image`, or None if it carries none.

    PNG: the `parameters` text chunk. JPEG/WebP: the EXIF UserComment, where A1111 puts it.
    """
    # Text chunks after the pixel data only reach `info` once the image is loaded.
    image.load()
    text = image.info.get(PARAMETERS_KEY)
    if isinstance(text, str):
        return str(text)  # an iTXt chunk is a str subclass; hand back a plain str
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
    if comment is None:
        return None
    decoded = user_comment_text(comment)
    return decoded or None


def user_comment_text(comment: bytes | str) -> str:
    """The text of an EXIF UserComment: an 8-byte charset code, then the encoded text."""
    if isinstance(comment, str):
        return comment.rstrip("\0")
    code, payload = comment[:8], comment[8:]
    if code == b"UNICODE\0":
        return payload.decode(utf16_codec(payload), errors="replace").rstrip("\0")
    if code in (b"ASCII\0\0\0", b"\0" * 8):
        return payload.decode("utf-8", errors="replace").rstrip("\0")
    # No known charset code: tools that skip it write the text alone.
    return comment.decode("utf-8", errors="replace").rstrip("\0")


def utf16_codec(payload: bytes) -> str:
    """The UTF-16 byte order of `payload`.

    A1111 (piexif) writes big-endian, some tools little-endian, neither with a BOM. Text that is
    mostly ASCII has its zero bytes on the high side, which tells the two apart.
    """
    zeros_even = payload[0::2].count(0)
    zeros_odd = payload[1::2].count(0)
    return "utf-16-le" if zeros_odd > zeros_even else "utf-16-be"
