"""Upscaling a finished picture ("extras"), keeping its generation parameters.

Three kinds of upscaler:
- resamplers (Lanczos, Nearest): always there, no model, instant;
- ESRGAN-family networks (files in models/ESRGAN/, read by spandrel): fast, a fixed factor each;
- the SD x4 diffusion upscaler (a checkpoint in models/Stable-diffusion/, guided by a prompt, with
  a noise level): slow, invents detail.
Both model kinds work in overlapping tiles, so any picture fits the memory the device plan allows;
a scale other than the model's own resizes afterwards.
"""

import random
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from app.errors import InvalidRequest
from app.generation.requests import MAX_SEED, MAX_STEPS, rgb_image
from app.images.metadata import parameters_line, read_parameters
from app.kinds import UpscalerKind
from app.validation import integer, number, text

LANCZOS = "Lanczos"
NEAREST = "Nearest"
RESAMPLERS = {LANCZOS: Image.LANCZOS, NEAREST: Image.NEAREST}
SD_X4_PREFIX = "SD x4: "      # + the checkpoint's title: the name the SD x4 upscalers are listed by
MAX_SCALE = 8.0
MAX_OUTPUT_SIDE = 8192
MAX_NOISE_LEVEL = 350
X4_FACTOR = 4
X4_TILE = 128                 # input pixels a side per tile: 512 out, what the model was trained at
X4_OVERLAP = 32
NETWORK_TILE = 256            # input pixels a side: a 4x RRDBNet tile then needs ~1 GiB in float32
NETWORK_OVERLAP = 16
MAX_TILE = 1024
MAX_NETWORK_PASSES = 3        # a 4x network reaches 8x in two passes; 1x restoration models run once


@dataclass(frozen=True)
class UpscalerChoice:
    """One upscaler the user can pick: its name (what the list shows and A1111 clients send) and what it is."""

    name: str
    kind: UpscalerKind
    model: str | None = None          # the network's file name (stem) or the SD x4 checkpoint's title
    scale: int | None = None          # the model's own factor (None for resamplers: any scale)
    architecture: str | None = None   # spandrel's name for a network ("ESRGAN"); "SD x4" for the diffusion model
    path: Path | None = None


def resampler_choices() -> list[UpscalerChoice]:
    return [UpscalerChoice(name, UpscalerKind.RESAMPLER) for name in RESAMPLERS]


@dataclass
class UpscaleRequest:
    image: Image.Image
    scale: float = 4.0
    upscaler: str = LANCZOS
    # The diffusion upscaler's own settings; Lanczos ignores them.
    prompt: str = ""
    negative_prompt: str = ""
    noise_level: int = 20
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    tile: int | None = None       # input pixels a side per tile; None: the upscaler's own default
    overlap: int | None = None
    source_parameters: str | None = None  # the picture's own infotext, read before it is converted
    save: bool = True             # write the PNG to the outputs folder
    choice: UpscalerChoice | None = None  # what `upscaler` names, set by validated()

    @property
    def kind(self) -> UpscalerKind:
        return self.choice.kind

    @property
    def is_diffusion(self) -> bool:
        return self.kind is UpscalerKind.DIFFUSION

    def validated(self, choices: list[UpscalerChoice]) -> "UpscaleRequest":
        # Read the parameters first: converting the picture may drop its PNG text.
        source = read_parameters(self.image) if isinstance(self.image, Image.Image) else None
        image = rgb_image(self.image)
        scale = number(self.scale, "The scale", 1.0, MAX_SCALE)
        choice = next((choice for choice in choices if choice.name == self.upscaler), None)
        if choice is None:
            names = ", ".join(choice.name for choice in choices)
            raise InvalidRequest(f"Unknown upscaler '{self.upscaler}'. Choose one of: {names}.")
        width, height = output_size(image.size, scale)
        if max(width, height) > MAX_OUTPUT_SIDE:
            raise InvalidRequest(
                f"{image.width}x{image.height} scaled by {scale:g} would be {width}x{height}; the limit is "
                f"{MAX_OUTPUT_SIDE} pixels a side. Choose a smaller scale."
            )
        seed = integer(self.seed, "Seed", -1, MAX_SEED)
        diffusion = choice.kind is UpscalerKind.DIFFUSION
        default_tile, default_overlap = (X4_TILE, X4_OVERLAP) if diffusion else (NETWORK_TILE, NETWORK_OVERLAP)
        tile = default_tile if self.tile is None else integer(self.tile, "Tile size", 32, MAX_TILE)
        overlap = default_overlap if self.overlap is None else integer(self.overlap, "Tile overlap", 0, 128)
        if overlap * 2 > tile:
            raise InvalidRequest(f"The tile overlap ({overlap}) must be at most half the tile size ({tile}).")
        return replace(
            self,
            image=image,
            source_parameters=self.source_parameters or source,
            scale=scale,
            choice=choice,
            prompt=text(self.prompt, "prompt"),
            negative_prompt=text(self.negative_prompt, "negative prompt"),
            noise_level=integer(self.noise_level, "Noise level", 0, MAX_NOISE_LEVEL),
            steps=integer(self.steps, "Steps", 1, MAX_STEPS),
            cfg_scale=number(self.cfg_scale, "CFG scale", 0.0, 30.0),
            seed=random.randrange(MAX_SEED + 1) if seed == -1 else seed,
            tile=tile,
            overlap=overlap,
        )


def output_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def lanczos(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return resampled(image, size, LANCZOS)


def resampled(image: Image.Image, size: tuple[int, int], resampler: str = LANCZOS) -> Image.Image:
    return image if image.size == size else image.resize(size, RESAMPLERS[resampler])


def network_pass_sizes(size: tuple[int, int], target: tuple[int, int], factor: int) -> list[tuple[int, int]]:
    """The input size of each pass of a `factor`x network towards `target`.

    The first pass takes the picture as it is (a smaller target is resized down after it). Passes
    go on while the result is still smaller than the target, the input of a later pass shrunk to
    what lands on the target, so no pass makes pixels that are thrown away."""
    sizes = [size]
    current = (size[0] * factor, size[1] * factor)
    while factor > 1 and len(sizes) < MAX_NETWORK_PASSES and (current[0] < target[0] or current[1] < target[1]):
        needed = (-(-target[0] // factor), -(-target[1] // factor))
        sizes.append((min(current[0], needed[0]), min(current[1], needed[1])))
        current = (sizes[-1][0] * factor, sizes[-1][1] * factor)
    return sizes


def padded(image: Image.Image, multiple: int) -> Image.Image:
    """The picture grown to a multiple of `multiple` a side by repeating its edge (cropped off later)."""
    width, height = (-(-side // multiple) * multiple for side in image.size)
    if (width, height) == image.size:
        return image
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, (0, 0))
    canvas.paste(image.crop((image.width - 1, 0, image.width, image.height)).resize((width - image.width, image.height)), (image.width, 0))
    canvas.paste(canvas.crop((0, image.height - 1, width, image.height)).resize((width, height - image.height)), (0, image.height))
    return canvas


def postprocess_parameters(request: UpscaleRequest) -> str:
    """The source's A1111 infotext with A1111's postprocessing keys added to its last line."""
    keys = {"Postprocess upscale by": request.scale, "Postprocess upscaler": request.upscaler}
    if request.is_diffusion:
        keys.update({"Upscale noise level": request.noise_level, "Upscale steps": request.steps, "Upscale seed": request.seed})
    keys = parameters_line(keys)  # quotes values such as "SD x4: name" as A1111 readers expect
    if not request.source_parameters:
        return keys
    return f"{request.source_parameters}, {keys}"
