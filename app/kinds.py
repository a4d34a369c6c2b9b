"""The kinds of work Easel does: what a job is, and what kind of upscaler a name stands for."""

from enum import Enum


class JobKind(str, Enum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    UPSCALE = "upscale"

    @property
    def output_category(self) -> str:
        """The outputs subfolder, A1111's name for it (users and their tools know these)."""
        return _CATEGORIES[self]


_CATEGORIES = {
    JobKind.TXT2IMG: "txt2img-images",
    JobKind.IMG2IMG: "img2img-images",
    JobKind.INPAINT: "img2img-images",
    JobKind.UPSCALE: "extras-images",
}


class UpscalerKind(str, Enum):
    RESAMPLER = "resampler"  # Lanczos, Nearest: no model, instant
    NETWORK = "network"      # an ESRGAN-family file in models/ESRGAN/
    DIFFUSION = "diffusion"  # the SD x4 upscaler, a checkpoint
