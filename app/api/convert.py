"""A1111 API shapes ↔ Easel's requests and results; images in and out as base64 PNG.

Everything a client sends is treated as hostile until proven otherwise: base64 is checked, the
picture's size is read from its header before any pixel is decoded (decompression bombs), and an
address in place of a picture is refused, never fetched.
"""

import base64
import binascii
import io
import json
import re
import time
import warnings

from PIL import Image, UnidentifiedImageError

from app.api.schemas import ExtraSingleImageRequest, Img2ImgRequest, Txt2ImgRequest
from app.errors import InvalidRequest
from app.generation.a1111 import api_fields, api_request_fields
from app.generation.requests import MAX_INIT_PIXELS, MAX_SEED, ONLY_MASKED, WHOLE_PICTURE, GenerationRequest
from app.generation.results import GeneratedImage, GenerationResult
from app.generation.upscale import LANCZOS, UpscaleRequest
from app.images.metadata import png_pnginfo
from app.images.transform import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL

_DATA_URI = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_RESIZE_MODES = {0: JUST_RESIZE, 1: CROP_AND_RESIZE, 2: RESIZE_AND_FILL}
NO_UPSCALER = "None"
# What the shared field mapping reads from a txt2img/img2img body; images are decoded here.
_REQUEST_FIELDS = {
    "prompt", "negative_prompt", "sampler_name", "sampler_index", "scheduler", "steps", "cfg_scale", "width",
    "height", "seed", "n_iter", "batch_size", "override_settings", "save_images",
    "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "easel_fast",
}
# Text to image only; its denoising strength is hires fix's (A1111's default 0.7 when not sent).
_HIRES_FIELDS = {
    "enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_sampler_name",
    "hr_scheduler", "hr_prompt", "hr_negative_prompt", "denoising_strength",
}
HIRES_DENOISING = 0.7


def decoded_image(data: object, what: str = "image") -> Image.Image:
    """A picture from a base64 string (a `data:` URI too), fully loaded, or InvalidRequest."""
    if not isinstance(data, str) or not data.strip():
        raise InvalidRequest(f"The {what} is missing: send a PNG, JPEG or WebP picture as base64 text.")
    text = data.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.IGNORECASE):
        raise InvalidRequest(
            f"The {what} is an address ({text[:60]}); Easel does not fetch pictures from addresses. "
            "Send the picture itself, base64-encoded."
        )
    text = _DATA_URI.sub("", text)
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"The {what} is not valid base64. Send the picture's bytes base64-encoded.") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > MAX_INIT_PIXELS:  # read from the header: nothing decoded yet
                raise InvalidRequest(
                    f"The {what} is {image.width}x{image.height}; the limit is {MAX_INIT_PIXELS:,} pixels. "
                    "Send a smaller picture."
                )
            image.load()
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(f"The {what} is too large to decode safely. Send a smaller picture.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise InvalidRequest(f"The {what} is not a picture Easel can read. Send a PNG, JPEG or WebP.") from None
    except Exception:  # Pillow's decoders meet malformed files with many exception types
        raise InvalidRequest(f"The {what} is damaged and could not be read. Send it again.") from None
    return image


def encoded_png(image: Image.Image, parameters: str | None) -> str:
    """base64 of a PNG carrying `parameters` as its A1111 text."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_pnginfo(parameters) if parameters else None)
    return base64.b64encode(buffer.getvalue()).decode()


def unsupported(request: Txt2ImgRequest) -> None:
    """Refuse what A1111 would do and Easel does not, rather than return a different picture."""
    refusals = {
        "restore_faces": "Face restoration (restore_faces) is not available in Easel.",
        "tiling": "Tiling (seamless textures) is not available in Easel yet.",
        "script_name": "Scripts are not available in Easel.",
        "alwayson_scripts": "Extensions' scripts (alwayson_scripts) are not available in Easel.",
    }
    for name, message in refusals.items():
        if getattr(request, name, None):
            raise InvalidRequest(message)


def generation_request(request: Txt2ImgRequest) -> GenerationRequest:
    unsupported(request)
    if isinstance(request, Img2ImgRequest):
        fields = _REQUEST_FIELDS | {"denoising_strength", "enable_hr"}  # enable_hr: refused with a sentence
    elif request.enable_hr:
        fields = _REQUEST_FIELDS | _HIRES_FIELDS
        if request.denoising_strength is None:
            request = request.model_copy(update={"denoising_strength": HIRES_DENOISING})
    else:
        fields = _REQUEST_FIELDS
    base = GenerationRequest(**api_request_fields(request.model_dump(include=fields)))
    base.styles = list(request.styles or [])  # names from /sdapi/v1/prompt-styles; the Engine expands them
    return base


def img2img_request(request: Img2ImgRequest) -> GenerationRequest:
    if not request.init_images:
        raise InvalidRequest("init_images is empty: send the picture to start from, base64-encoded.")
    if request.resize_mode not in _RESIZE_MODES:
        raise InvalidRequest("resize_mode must be 0 (just resize), 1 (crop and resize) or 2 (resize and fill).")
    base = generation_request(request)
    base.init_image = decoded_image(request.init_images[0], "init image")
    base.resize_mode = _RESIZE_MODES[request.resize_mode]
    if request.mask:
        mask = decoded_image(request.mask, "mask").convert("L")
        if request.inpainting_mask_invert:
            mask = Image.eval(mask, lambda value: 255 - value)
        base.mask = mask
        base.mask_blur = request.mask_blur if request.mask_blur is not None else max(request.mask_blur_x, request.mask_blur_y)
        base.inpaint_area = ONLY_MASKED if request.inpaint_full_res else WHOLE_PICTURE
        base.masked_padding = request.inpaint_full_res_padding
    return base


def upscale_request(request: ExtraSingleImageRequest) -> UpscaleRequest:
    if request.gfpgan_visibility or request.codeformer_visibility:
        raise InvalidRequest("Face restoration (GFPGAN, CodeFormer) is not available in Easel. Send 0 visibility.")
    if request.upscaler_2 not in (NO_UPSCALER, None, "") and request.extras_upscaler_2_visibility:
        raise InvalidRequest("A second upscaler (upscaler_2) is not available in Easel. Send extras_upscaler_2_visibility 0.")
    image = decoded_image(request.image)
    name = LANCZOS if request.upscaler_1 in (NO_UPSCALER, None, "") else request.upscaler_1
    if request.resize_mode == 1:
        if not isinstance(request.upscaling_resize_w, int) or request.upscaling_resize_w < 1 or image.width < 1:
            raise InvalidRequest("upscaling_resize_w must be a positive number of pixels.")
        scale = request.upscaling_resize_w / image.width
    elif request.resize_mode == 0:
        scale = request.upscaling_resize
    else:
        raise InvalidRequest("resize_mode must be 0 (scale by upscaling_resize) or 1 (to upscaling_resize_w).")
    return UpscaleRequest(image=image, scale=scale, upscaler=name, save=False)


def generation_info(result: GenerationResult, request: GenerationRequest, model_name: str | None,
                    styles: list[str] | None = None) -> str:
    """A1111's `info` JSON for a generation; `styles`: the names the client chose (the prompts are
    already expanded)."""
    count = len(result.images)
    return json.dumps({
        **api_fields(request),
        "all_prompts": [request.prompt] * count,
        "all_negative_prompts": [request.negative_prompt] * count,
        "seed": result.images[0].seed if result.images else request.seed,
        "all_seeds": result.seeds,
        "subseed": request.subseed,
        # Each image's variation seed goes with its seed (subseed + i with seed + i), skipped images too.
        "all_subseeds": [(request.subseed + seed - request.seed) % (MAX_SEED + 1) for seed in result.seeds],
        "subseed_strength": request.subseed_strength,
        "restore_faces": False,
        "sd_model_name": model_name,
        "index_of_first_image": 0,
        "infotexts": [image.parameters for image in result.images],
        "styles": list(styles or []),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "is_using_inpainting_conditioning": False,
        "interrupted": result.interrupted,
        "notes": result.notes,
        "version": "Easel",
    })


def images_of(result: GenerationResult) -> list[str]:
    return [encoded_png(image.image, image.parameters) for image in result.images]


def upscaled_image(done: GeneratedImage) -> str:
    return encoded_png(done.image, done.parameters)
