"""A1111's extra-network tags in a prompt: `<lora:name:weight>` (and `<lyco:…>`, its older name).

Follows A1111's `modules/extra_networks.py`: every `<kind:arg:arg…>` tag is cut out of the text
that CLIP sees (an unknown kind too, which A1111 skips with a warning); the prompt itself keeps
the tags, so the infotext does and a pasted PNG applies them again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraCall:
    """One `<lora:…>` tag: the name as written, and its text-encoder and UNet multipliers."""

    name: str
    te_multiplier: float
    unet_multiplier: float


@dataclass(frozen=True)
class PromptNetworks:
    loras: tuple[LoraCall, ...]
    notes: tuple[str, ...]  # tags that could not be read, as sentences


def without_extra_networks(prompt: str) -> str:
    """The prompt as CLIP sees it: every extra-network tag removed."""
    return EXTRA_NETWORK_TAG.sub("", prompt)


def prompt_networks(*prompts: str) -> PromptNetworks:
    """The LoRA tags of the prompts (the positive one and the negative one), in order."""
    loras: list[LoraCall] = []
    notes: list[str] = []
    for prompt in prompts:
        for match in EXTRA_NETWORK_TAG.finditer(prompt):
            kind, args = match.group(1), match.group(2)
            if kind not in LORA_KINDS:
                notes.append(f"Easel has no extra networks of the kind '{kind}': the tag {match.group(0)} was ignored.")
                continue
            call = lora_call(args.split(":"))
            if call is None:
                notes.append(f"The tag {match.group(0)} could not be read: write it as <lora:name:weight>, "
                             "with a number for the weight. It was ignored.")
            else:
                loras.append(call)
    return PromptNetworks(tuple(loras), tuple(notes))


def lora_call(items: list[str]) -> LoraCall | None:
    """A1111's reading of a tag's items: name, text-encoder weight (default 1), UNet weight (default:
    the text encoder's); `te=` and `unet=` override them. None when a weight is not a number."""
    positional = [item for item in items if "=" not in item]
    named = dict(item.split("=", 1) for item in items if "=" in item)
    if not positional or not positional[0].strip():
        return None
    try:
        te = float(positional[1]) if len(positional) > 1 else 1.0
        te = float(named.get("te", te))
        unet = float(positional[2]) if len(positional) > 2 else te
        unet = float(named.get("unet", unet))
    except ValueError:
        return None
    if not (math.isfinite(te) and math.isfinite(unet)):
        return None
    return LoraCall(positional[0].strip(), te, unet)
