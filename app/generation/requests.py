"""What a user asks for, validated once, before it is queued.

`GenerationRequest` holds what the UI or a client sent; `validated()` returns a copy that is safe
to run (sizes snapped, ranges checked, sampler resolved, seed chosen, image converted) or raises
`InvalidRequest` with a sentence that says what to change.
"""

import math
import random
from dataclasses import dataclass, field, replace

from PIL import Image, ImageOps

from app.errors import InvalidRequest
from app.generation.depth import validated_depth_map
from app.generation.fast_mode import FAST_SAMPLER, fast_fields
from app.generation.samplers import AUTOMATIC, DEFAULT_SAMPLER, resolve_sampler
from app.images.transform import JUST_RESIZE, RESIZE_MODES, resized
from app.kinds import JobKind
from app.validation import integer, number, shown, text

SIZE_STEP = 8          # the VAE works on 1/8 of the image
MIN_SIZE = 64
MAX_SIZE = 2048
MAX_STEPS = 150
MAX_CFG = 30.0
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_SEED = 2**32 - 1
MAX_INIT_PIXELS = 8192 * 8192
MAX_MASK_BLUR = 64
MAX_MASK_PADDING = 256
MAX_HIRES_SCALE = 4.0
DEFAULT_HIRES_UPSCALER = "Latent"
WHOLE_PICTURE = "whole"   # inpaint at the picture's size
ONLY_MASKED = "masked"    # inpaint a crop around the mask at full resolution, then paste it back


@dataclass
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    schedule: str | None = None  # None/"Automatic": the sampler's default (Karras for DPM++ 2M)
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = 512      # None with an init image: take its size
    height: int | None = 512
    seed: int = -1               # -1: a random seed, reported back
    batch_count: int = 1
    batch_size: int = 1
    clip_skip: int = 1
    init_image: Image.Image | None = None   # set: image-to-image
    strength: float = 0.75                  # img2img denoising strength, 0..1
    resize_mode: str = JUST_RESIZE          # how an init image of another size is fitted
    mask: Image.Image | None = None         # set (with init_image): inpaint where the mask is light
    mask_blur: int = 4                      # soft edge of the mask, in pixels
    inpaint_area: str = WHOLE_PICTURE       # WHOLE_PICTURE or ONLY_MASKED
    masked_padding: int = 32                # context kept around the mask with ONLY_MASKED
    depth_map: Image.Image | None = None    # SD 2 depth models: greyscale, lighter is nearer (None: estimated)
    model: str | None = None                # checkpoint title; None: the active one when the job starts
    save: bool = True                       # write the PNG to the outputs folder (API clients may not want it)
    # Variation seeds (A1111's names): noise slerped towards the subseed's, made at another size.
    subseed: int = -1                       # -1: a random variation seed, reported back
    subseed_strength: float = 0.0           # 0: the seed's own noise (the plain picture)
    seed_resize_from_w: int = 0             # both > 0: the seed's noise is made at this size, centred
    seed_resize_from_h: int = 0
    # Hires fix (A1111's names; text to image only): a second, img2img-like pass at a larger size,
    # with `strength` as its denoising strength (app.generation.hires).
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0                    # 0 (both): scale by hr_scale
    hr_resize_y: int = 0
    hr_upscaler: str = DEFAULT_HIRES_UPSCALER
    hr_second_pass_steps: int = 0           # 0: as many as the first pass
    hr_sampler_name: str | None = None      # None: the first pass's sampler
    hr_scheduler: str | None = None
    hr_prompt: str = ""                     # "": the first pass's prompt
    hr_negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)  # saved styles' names; the Engine expands them into the prompts
    easel_fast: bool = False                # fast mode (app.generation.fast_mode): LCM-LoRA, LCM, few steps

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None

    @property
    def is_inpaint(self) -> bool:
        return self.mask is not None

    @property
    def kind(self) -> JobKind:
        return JobKind.INPAINT if self.is_inpaint else JobKind.IMG2IMG if self.is_img2img else JobKind.TXT2IMG

    @property
    def image_count(self) -> int:
        return self.batch_count * self.batch_size

    def seeds(self) -> list[int]:
        """One seed per image: seed, seed+1, ... (A1111's order), after validation."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.image_count)]

    def subseeds(self) -> list[int]:
        """One variation seed per image: subseed, subseed+1, ..., after validation."""
        return [(self.subseed + i) % (MAX_SEED + 1) for i in range(self.image_count)]

    @property
    def seed_resize_from(self) -> tuple[int, int] | None:
        """(width, height) the seed's noise is made at, when both are set (A1111's rule)."""
        on = self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0
        return (self.seed_resize_from_w, self.seed_resize_from_h) if on else None

    @property
    def hires_size(self) -> tuple[int, int]:
        """The second pass's (width, height), after validation (see `hires_target`)."""
        return hires_target((self.width, self.height), self.hr_scale, self.hr_resize_x, self.hr_resize_y)

    def validated(self) -> "GenerationRequest":
        if self.easel_fast and (self.sampler, self.schedule) != (FAST_SAMPLER, AUTOMATIC):
            # Fast mode runs its own sampler: the page's sampler choice neither matters nor can fail it.
            return replace(self, sampler=FAST_SAMPLER, schedule=AUTOMATIC).validated()
        choice = resolve_sampler(self.sampler, self.schedule)
        init_image = rgb_image(self.init_image) if self.init_image is not None else None
        width, height = self._size(init_image)
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidRequest(f"Unknown resize mode '{self.resize_mode}'. Use one of: {', '.join(RESIZE_MODES)}.")
        if self.inpaint_area not in (WHOLE_PICTURE, ONLY_MASKED):
            raise InvalidRequest(f"Inpaint area must be '{WHOLE_PICTURE}' or '{ONLY_MASKED}'.")
        checked = replace(
            self,
            prompt=text(self.prompt, "prompt"),
            negative_prompt=text(self.negative_prompt, "negative prompt"),
            sampler=choice.sampler,
            schedule=choice.schedule,
            steps=integer(self.steps, "Steps", 1, MAX_STEPS),
            cfg_scale=number(self.cfg_scale, "CFG scale", 0.0, MAX_CFG),
            width=width,
            height=height,
            seed=_seed(self.seed),
            batch_count=integer(self.batch_count, "Batch count", 1, MAX_BATCH_COUNT),
            batch_size=integer(self.batch_size, "Batch size", 1, MAX_BATCH_SIZE),
            clip_skip=integer(self.clip_skip, "Clip skip", 1, 12),
            init_image=resized(init_image, (width, height), self.resize_mode) if init_image else None,
            strength=number(self.strength, "Denoising strength", 0.0, 1.0),
            mask=self._mask(init_image, (width, height)),
            mask_blur=integer(self.mask_blur, "Mask blur", 0, MAX_MASK_BLUR),
            masked_padding=integer(self.masked_padding, "Masked area padding", 0, MAX_MASK_PADDING),
            depth_map=validated_depth_map(self.depth_map, init_image, (width, height), self.resize_mode),
            **self._variation_fields(),
            **self._hires_fields((width, height), init_image is not None),
        )
        fast = fast_fields(checked.steps, checked.cfg_scale) if self.easel_fast else {}  # its steps and CFG ranges
        return replace(checked, easel_fast=bool(self.easel_fast), **fast)

    def _variation_fields(self) -> dict:
        strength = number(self.subseed_strength, "Variation strength", 0.0, 1.0)
        # A1111's API sends -1 for "off"; anything up to 0 is off.
        resize = [max(0, integer(side, what, -1, MAX_SIZE)) for side, what in
                  ((self.seed_resize_from_w, "Resize seed from width"), (self.seed_resize_from_h, "Resize seed from height"))]
        if 0 < min(resize) < SIZE_STEP:
            raise InvalidRequest(f"Resize seed from needs at least {SIZE_STEP} pixels a side, or 0 to turn it off.")
        seed = integer(self.subseed, "Variation seed", -1, MAX_SEED) if self.subseed is not None else -1
        return dict(subseed=_seed(seed), subseed_strength=strength, seed_resize_from_w=resize[0], seed_resize_from_h=resize[1])

    def _hires_fields(self, size: tuple[int, int], img2img: bool) -> dict:
        if not self.enable_hr:
            return dict(enable_hr=False)
        if img2img:
            raise InvalidRequest("Hires fix is for text to image. Turn it off (enable_hr false) for image to image.")
        upscaler = self.hr_upscaler or DEFAULT_HIRES_UPSCALER  # A1111: none named is its default latent mode
        if not isinstance(upscaler, str) or not upscaler.strip():
            raise InvalidRequest("Choose an upscaler for hires fix by name (for example \"Latent\" or \"Lanczos\").")
        sampler, schedule = _own(self.hr_sampler_name), _own(self.hr_scheduler)
        choice = resolve_sampler(sampler or self.sampler, schedule or (None if sampler else self.schedule))
        fields = dict(
            enable_hr=True,
            hr_scale=number(self.hr_scale, "Hires upscale by", 1.0, MAX_HIRES_SCALE),
            hr_resize_x=integer(self.hr_resize_x, "Hires resize width", 0, MAX_SIZE),
            hr_resize_y=integer(self.hr_resize_y, "Hires resize height", 0, MAX_SIZE),
            hr_upscaler=upscaler.strip(),
            hr_second_pass_steps=integer(self.hr_second_pass_steps, "Hires steps", 0, MAX_STEPS),
            hr_sampler_name=choice.sampler if sampler else None,
            hr_scheduler=choice.schedule if sampler or schedule else None,
            hr_prompt=text(self.hr_prompt or "", "hires prompt"),
            hr_negative_prompt=text(self.hr_negative_prompt or "", "hires negative prompt"),
        )
        width, height = hires_target(size, fields["hr_scale"], fields["hr_resize_x"], fields["hr_resize_y"])
        if max(width, height) > MAX_SIZE:
            raise InvalidRequest(f"Hires fix would make {width}x{height} from {size[0]}x{size[1]}; the limit is "
                                 f"{MAX_SIZE} pixels a side. Choose a smaller hires scale or resize.")
        return fields

    def _mask(self, init_image: Image.Image | None, size: tuple[int, int]) -> Image.Image | None:
        """The mask as greyscale at the output size: light means "paint here"."""
        if self.mask is None:
            return None
        if init_image is None:
            raise InvalidRequest("Inpainting needs a picture as well as a mask. Upload the picture to paint on.")
        if not isinstance(self.mask, Image.Image):
            raise InvalidRequest("The mask could not be read. Paint the mask again, or upload a PNG.")
        mask = _mask_values(self.mask)
        if mask.getbbox() is None:
            raise InvalidRequest("The mask is empty. Paint over the part of the picture you want to change.")
        return resized(mask, size, self.resize_mode)

    def _size(self, init_image: Image.Image | None) -> tuple[int, int]:
        width, height = self.width, self.height
        if init_image is not None and (not width or not height):
            width, height = _fit_within(init_image.size, MAX_SIZE)
        return _side(width, "Width"), _side(height, "Height")


def _side(value, what: str) -> int:
    """Sizes snap to the nearest multiple of 8, as the model needs; out of range is refused."""
    message = f"{what} must be between {MIN_SIZE} and {MAX_SIZE} pixels; got {shown(value)}."
    try:
        side = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(message) from None
    if not math.isfinite(side):
        raise InvalidRequest(message)
    snapped = int(round(side / SIZE_STEP) * SIZE_STEP)
    if not MIN_SIZE <= snapped <= MAX_SIZE:
        raise InvalidRequest(message)
    return snapped


def hires_target(size: tuple[int, int], scale: float, resize_x: int, resize_y: int) -> tuple[int, int]:
    """Hires fix's output size, as A1111 computes it: the first pass times `scale`, or the resize
    size (one side 0: kept in proportion), each side snapped down to a multiple of 8 for the VAE."""
    width, height = size
    if resize_x <= 0 and resize_y <= 0:
        target = (int(width * scale), int(height * scale))
    elif resize_y <= 0:
        target = (resize_x, resize_x * height // width)
    elif resize_x <= 0:
        target = (resize_y * width // height, resize_y)
    else:
        target = (resize_x, resize_y)
    return tuple(max(MIN_SIZE, side // SIZE_STEP * SIZE_STEP) for side in target)


def _own(choice) -> str | None:
    """A hires sampler or schedule of its own; None for none or A1111's "Use same sampler"."""
    own = isinstance(choice, str) and choice.strip() and not choice.strip().lower().startswith("use same")
    return choice.strip() if own else None


def _seed(value) -> int:
    seed = integer(value, "Seed", -1, MAX_SEED) if value is not None else -1
    return random.randrange(MAX_SEED + 1) if seed == -1 else seed


def _fit_within(size: tuple[int, int], limit: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, limit / max(width, height))
    return max(MIN_SIZE, round(width * scale)), max(MIN_SIZE, round(height * scale))


def _mask_values(mask: Image.Image) -> Image.Image:
    """Painted pixels of a mask as L: an RGBA layer counts where it is opaque, anything else by brightness."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        return mask.convert("RGBA").getchannel("A")
    return mask.convert("L")


def rgb_image(image) -> Image.Image:
    """Any image a user can drop (RGBA, LA, P, L, 1, CMYK, 16-bit, EXIF-rotated) as plain RGB.

    Transparency is composited over white, which is what a sketch or a cut-out looks like on the page.
    """
    if not isinstance(image, Image.Image):
        raise InvalidRequest("The init image could not be read. Upload a PNG, JPEG or WebP image.")
    if image.width < 1 or image.height < 1:
        raise InvalidRequest("The init image is empty (0 pixels). Upload another image.")
    if image.width * image.height > MAX_INIT_PIXELS:
        raise InvalidRequest(
            f"The init image is {image.width}x{image.height}; the limit is {MAX_INIT_PIXELS:,} pixels. "
            "Resize it first."
        )
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _eight_bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale scaled to 0..255 by its own range (Pillow would clip instead)."""
    import numpy as np

    data = np.asarray(image, dtype=np.float64)
    low, high = float(np.nanmin(data)), float(np.nanmax(data))
    scaled = np.zeros_like(data) if high <= low else (data - low) / (high - low) * 255.0
    return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), "L")
