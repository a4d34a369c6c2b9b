"""Hires fix, as A1111 does it: a first pass at the request's size, an upscale, then an
image-to-image pass at the larger size with the request's denoising strength.

The upscale is either in latent space (A1111's "Latent" upscalers: torch interpolation of the
first pass's latents, no decode) or on the decoded pictures with any upscaler the Upscale tab
offers but the SD x4 diffusion model (a second diffusion model inside a diffusion pass: too heavy,
refused with a sentence). The second pass runs on the checkpoint's image-to-image pipeline, with
latents as its `image` for the latent upscalers (diffusers' img2img skips the VAE encode for a
4-channel tensor). A large second pass decodes with VAE tiling, so it fits small GPUs and the CPU.
"""

from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

import torch
from PIL import Image

from app.errors import InvalidRequest
from app.generation import samplers
from app.generation.diffusers_internals import NoiseMaker
from app.generation.diffusion import BatchImages, Canvas, StepCallback, decoded, denoised_latents
from app.generation.networks import network_upscaled
from app.generation.prompts import PromptEmbeddings
from app.generation.requests import SIZE_STEP, GenerationRequest
from app.generation.upscale import (
    NETWORK_OVERLAP,
    NETWORK_TILE,
    RESAMPLERS,
    UpscalerChoice,
    lanczos,
    network_pass_sizes,
    resampled,
)
from app.jobs import Job
from app.kinds import JobKind, UpscalerKind
from app.models.loaded import LoadedModel
from app.models.manager import ModelManager

# A1111's `shared.latent_upscale_modes`: name → (torch interpolate mode, antialias).
LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
TILED_VAE_AREA = 1024 * 1024  # pixels: a larger second pass encodes and decodes in VAE tiles

# (picture size, done before, steps still to come after this pass) → the step callback of one pass.
StepReporter = Callable[[tuple[int, int], int, int], StepCallback]
# (prompt, negative prompt) → their embeddings.
Encoder = Callable[[str, str], PromptEmbeddings]


def hires_upscaler_names(choices: list[UpscalerChoice]) -> list[str]:
    """What hires fix can upscale with: the latent upscalers, then the Upscale tab's but SD x4."""
    return [*LATENT_UPSCALE_MODES, *(c.name for c in choices if c.kind is not UpscalerKind.DIFFUSION)]


def check_upscaler(request: GenerationRequest, choices: list[UpscalerChoice]) -> None:
    """Raises InvalidRequest when hires fix is on with an upscaler it cannot use."""
    if not request.enable_hr or request.hr_upscaler in LATENT_UPSCALE_MODES:
        return
    choice = next((c for c in choices if c.name == request.hr_upscaler), None)
    if choice is not None and choice.kind is UpscalerKind.DIFFUSION:
        raise InvalidRequest(
            f"'{request.hr_upscaler}' is a diffusion upscaler, too heavy for hires fix. Choose a Latent "
            "upscaler, Lanczos or an ESRGAN network, or upscale the result in the Upscale tab."
        )
    if choice is None:
        names = ", ".join(hires_upscaler_names(choices))
        raise InvalidRequest(f"Unknown hires upscaler '{request.hr_upscaler}'. Choose one of: {names}.")


def second_pass(request: GenerationRequest) -> GenerationRequest:
    """The second pass as a request of its own: the target size, its steps, sampler and prompts."""
    width, height = request.hires_size
    own_sampler = request.hr_sampler_name is not None or request.hr_scheduler is not None
    return replace(
        request,
        width=width,
        height=height,
        steps=request.hr_second_pass_steps or request.steps,
        sampler=request.hr_sampler_name or request.sampler,
        schedule=request.hr_scheduler if own_sampler else request.schedule,
        prompt=request.hr_prompt or request.prompt,
        negative_prompt=request.hr_negative_prompt or request.negative_prompt,
        enable_hr=False,
    )


def second_pass_steps(second: GenerationRequest) -> int:
    """The denoising steps the second pass runs: diffusers' img2img runs `steps * strength` of them."""
    strength = max(second.strength, 1.0 / second.steps)  # as diffusion.denoised_latents asks
    return max(1, min(int(second.steps * strength), second.steps))


def cover_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The smallest size of `size`'s proportions that covers `target` (then cropped to it, as A1111
    does for a hires resize of other proportions), in multiples of 8."""
    scale = max(target[0] / size[0], target[1] / size[1])
    return tuple(max(t, -(-round(side * scale) // SIZE_STEP) * SIZE_STEP) for side, t in zip(size, target))


def upscaled_latents(latents: torch.Tensor, upscaler: str, target: tuple[int, int]) -> torch.Tensor:
    """The first pass's latents at the target size (a latent is 1/8 of a pixel a side)."""
    mode, antialias = LATENT_UPSCALE_MODES[upscaler]
    first = (latents.shape[3] * SIZE_STEP, latents.shape[2] * SIZE_STEP)
    width, height = cover_size(first, target)
    grown = torch.nn.functional.interpolate(
        latents.float(), size=(height // SIZE_STEP, width // SIZE_STEP), mode=mode, antialias=antialias
    ).to(latents.dtype)
    top, left = (grown.shape[2] - target[1] // SIZE_STEP) // 2, (grown.shape[3] - target[0] // SIZE_STEP) // 2
    return grown[:, :, top : top + target[1] // SIZE_STEP, left : left + target[0] // SIZE_STEP]


def _centre_crop(picture: Image.Image, target: tuple[int, int]) -> Image.Image:
    left, top = (picture.width - target[0]) // 2, (picture.height - target[1]) // 2
    return picture.crop((left, top, left + target[0], top + target[1]))


@contextmanager
def vae_tiling(vae, on: bool):
    """VAE tiling for the block when `on`, then as it was."""
    before = getattr(vae, "use_tiling", False)
    if on and not before:
        vae.enable_tiling()
    try:
        yield
    finally:
        if on and not before:
            vae.disable_tiling()


class HiresFix:
    def __init__(self, models: ModelManager):
        self._models = models

    def run(self, job: Job, loaded: LoadedModel, pipe, embeddings: PromptEmbeddings, seeds: list[int],
            noise: NoiseMaker | None, reporter: StepReporter, encode: Encoder,
            second_pass_loras: Callable[[], None]) -> BatchImages | None:
        """Both passes for one batch; None when the job was interrupted or skipped in either
        (a half-done hires picture is never handed on to be saved). `second_pass_loras()`: has the
        weights carry the hires prompts' LoRAs (when they name others) from then on."""
        request: GenerationRequest = job.request
        second = second_pass(request)
        target = (second.width, second.height)
        steps_after = second_pass_steps(second)
        on_first = reporter((request.width, request.height), 0, steps_after)
        latents = denoised_latents(pipe, request, embeddings, seeds, on_first, Canvas(), noise)
        if _stopped(job):
            return None
        vae_float32 = loaded.vae_float32
        if request.hr_upscaler in LATENT_UPSCALE_MODES:
            image = upscaled_latents(latents, request.hr_upscaler, target)
        else:
            first = decoded(pipe, latents, vae_float32)
            vae_float32 = first.vae_float32
            image = [self._upscaled_picture(picture, request.hr_upscaler, target) for picture in first.images]
        img2img = self._models.pipeline_for(JobKind.IMG2IMG)
        img2img.scheduler = samplers.build_scheduler(
            samplers.SamplerChoice(second.sampler, second.schedule), loaded.scheduler_config, seeds
        )
        same_prompts = (second.prompt, second.negative_prompt) == (request.prompt, request.negative_prompt)
        second_pass_loras()
        with vae_tiling(img2img.vae, target[0] * target[1] > TILED_VAE_AREA):
            second_embeddings = embeddings if same_prompts else encode(second.prompt, second.negative_prompt)
            # The second pass's noise has the variation too, made at its size, as A1111's hires pass does.
            latents = denoised_latents(img2img, second, second_embeddings, seeds, reporter(target, request.steps, 0),
                                       Canvas(image=image), noise)
            if _stopped(job):
                return None
            return decoded(img2img, latents, vae_float32)

    def _upscaled_picture(self, picture: Image.Image, upscaler: str, target: tuple[int, int]) -> Image.Image:
        size = cover_size(picture.size, target)
        if upscaler in RESAMPLERS:
            return _centre_crop(resampled(picture, size, upscaler), target)
        with self._models.use_network(upscaler) as network:
            for pass_size in network_pass_sizes(picture.size, size, network.scale):
                picture = network_upscaled(network, lanczos(picture, pass_size), NETWORK_TILE, NETWORK_OVERLAP,
                                           lambda done, total: None)
        return _centre_crop(lanczos(picture, size), target)


def _stopped(job: Job) -> bool:
    return job.cancelled or job.skipping
