"""The optional safety filter (setting `safety_filter`, off by default): every generated picture is
shown to the CompVis safety checker, and the ones it flags are blurred beyond recognition, as Easy
Diffusion does, before they are watermarked and saved. The infotext stays as it was.

When the filter is on and the checker cannot be had (offline, not downloaded), the job fails with a
sentence saying what to fetch and where: a picture is never returned unfiltered without a word.
"""

import threading

import numpy as np
import torch
from PIL import Image, ImageFilter

from app.models.safety_checker import SafetyCheckerSlot

BLUR_FRACTION = 1 / 16   # blur radius per pixel of the picture's longer side: 32 px at 512


def blurred(picture: Image.Image) -> Image.Image:
    """So strong a blur that only the colours are left."""
    return picture.filter(ImageFilter.GaussianBlur(radius=max(8.0, max(picture.size) * BLUR_FRACTION)))


class SafetyFilter:
    def __init__(self, slot: SafetyCheckerSlot, enabled: bool = False):
        self._slot = slot
        self._enabled = enabled
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def set_enabled(self, enabled: bool) -> None:
        if enabled and not self._enabled:
            self._slot.release()  # switched on again: a download that failed before is tried again
        self._enabled = bool(enabled)

    def flags(self, pictures: list[Image.Image]) -> list[bool]:
        """For each picture, whether the checker flags it (loading, or fetching, it on first use)."""
        checker = self._slot.checker()
        with self._lock, torch.no_grad():
            pixels = checker.processor(images=[p.convert("RGB") for p in pictures], return_tensors="pt").pixel_values
            # The checker blacks out what it flags in `images`; these stand-ins take that, ours stay.
            stand_ins = [np.zeros((1, 1, 3)) for _ in pictures]
            _, flagged = checker.model(clip_input=pixels.to(checker.device, checker.dtype), images=stand_ins)
        return [bool(flag) for flag in flagged]

    def filtered(self, pictures: list[Image.Image]) -> tuple[list[Image.Image], list[str]]:
        """The pictures, the flagged ones blurred, and a note saying how many were (none when off)."""
        if not self._enabled or not pictures:
            return pictures, []
        flags = self.flags(pictures)
        count = sum(flags)
        if not count:
            return pictures, []
        which = f"{count} of these {len(pictures)} pictures" if len(pictures) > 1 else "this picture"
        note = f"The safety filter blurred {which}: the safety checker flagged {'it' if count == 1 else 'them'} as not safe for work."
        return [blurred(p) if flag else p for p, flag in zip(pictures, flags)], [note]

    def release(self) -> None:
        self._slot.release()
