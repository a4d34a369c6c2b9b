"""One batch through a diffusers pipeline: our embeddings, our sampler, our step callback,
and our own VAE decode with a guard against half-precision NaNs."""

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from app.generation.depth import depth_arguments
from app.generation.diffusers_internals import (
    NoiseMaker,
    execution_device,
    img2img_noise,
    inpaint_noise,
    stop_after_this_step,
    stoppable,
)
from app.generation.prompts import PromptEmbeddings
from app.generation.requests import GenerationRequest

# Called after every denoising step with (step done, steps in total, latents); returns True to stop.
StepCallback = Callable[[int, int, torch.Tensor], bool]


@dataclass
class BatchImages:
    images: list[Image.Image]
    vae_float32: bool  # the decode needed float32 (half precision gave NaN)


def generators_for(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same seed gives the same noise on every device."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


@dataclass
class Canvas:
    """What the pipeline paints on: the init picture and the inpainting mask, at the size to run."""

    image: Image.Image | list[Image.Image] | torch.Tensor | None = None  # a tensor: latents (hires fix)
    mask: Image.Image | None = None
    depth_map: Image.Image | None = None  # SD 2 depth models: the user's depth map (None: estimated)


def run_batch(
    pipe,
    request: GenerationRequest,
    embeddings: PromptEmbeddings,
    seeds: list[int],
    on_step: StepCallback,
    vae_float32: bool = False,
    canvas: Canvas | None = None,
    noise: NoiseMaker | None = None,
) -> BatchImages:
    """Images for `seeds` (one batch), with the pipeline's scheduler already set for this job.

    `noise`: the starting noise (variation seeds); None lets diffusers draw it from the seeds."""
    latents = denoised_latents(pipe, request, embeddings, seeds, on_step, canvas or Canvas(), noise)
    return decoded(pipe, latents, vae_float32)


def denoised_latents(pipe, request, embeddings, seeds, on_step, canvas: Canvas, noise: NoiseMaker | None = None) -> torch.Tensor:
    def step_end(pipeline, step: int, timestep, tensors: dict) -> dict:
        if on_step(step + 1, pipeline.num_timesteps, tensors["latents"]):
            stop_after_this_step(pipeline, tensors["latents"])
        return tensors

    device = execution_device(pipe)
    arguments = dict(
        prompt_embeds=embeddings.positive.to(device),
        negative_prompt_embeds=embeddings.negative.to(device),
        num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale,
        num_images_per_prompt=len(seeds),
        generator=generators_for(seeds),
        callback_on_step_end=step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        output_type="latent",  # we decode ourselves, to catch half-precision NaNs
    )
    if canvas.image is not None:
        # At least one step runs, so strength 0 returns the init image through the model, not an error.
        arguments.update(image=canvas.image, strength=max(request.strength, 1.0 / request.steps))
        arguments.update(depth_arguments(pipe, canvas.depth_map))
    if canvas.mask is not None:
        # The inpaint pipeline ignores the input's size unless told.
        arguments.update(mask_image=canvas.mask, width=canvas.image.width, height=canvas.image.height)
    elif canvas.image is None:
        arguments.update(width=request.width, height=request.height)
    if noise is not None and canvas.image is None:
        # What diffusers would draw: (1, 4, h/8, w/8) per seed, in the text encoder's dtype.
        shape = (4, request.height // 8, request.width // 8)
        arguments.update(latents=noise(arguments["generator"], shape, embeddings.positive.dtype
                                       if pipe.text_encoder is None else pipe.text_encoder.dtype))
    # no_grad, not inference_mode: offload hooks move weights during the call, and weights
    # touched in inference mode cannot be moved back to normal use (a step down the ladder).
    with torch.no_grad():
        if noise is not None and canvas.image is not None:
            with (inpaint_noise if canvas.mask is not None else img2img_noise)(pipe, noise):
                return stoppable(lambda: pipe(**arguments).images)
        return stoppable(lambda: pipe(**arguments).images)


def decoded(pipe, latents: torch.Tensor, vae_float32: bool = False) -> BatchImages:
    """Latents to pictures. A half-precision VAE can overflow to NaN (black images, notably SD 2.1
    at 768 px); then decode again in float32 and report it so the model keeps float32 for its VAE."""
    if not vae_float32:
        pixels = _vae_decode(pipe, latents)
        if torch.isfinite(pixels).all():
            return BatchImages(_pictures(pipe, pixels), vae_float32=False)
    pipe.vae.to(dtype=torch.float32)
    return BatchImages(_pictures(pipe, _vae_decode(pipe, latents)), vae_float32=True)


def _vae_decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    vae = pipe.vae
    with torch.no_grad():
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


def _pictures(pipe, pixels: torch.Tensor) -> list[Image.Image]:
    return pipe.image_processor.postprocess(pixels.float(), output_type="pil")


def run_x4(pipe, image: Image.Image, request, embeddings: PromptEmbeddings, on_step) -> Image.Image:
    """One picture (a tile) through the SD x4 upscaler: 4x its size. The upscaler pipeline still
    takes diffusers' older `callback` argument; `on_step(step, timestep, latents)` may raise to stop."""
    device = execution_device(pipe)
    with torch.no_grad():
        return pipe(
            prompt_embeds=embeddings.positive.to(device),
            negative_prompt_embeds=embeddings.negative.to(device),
            image=image,
            num_inference_steps=request.steps,
            guidance_scale=request.cfg_scale,
            noise_level=request.noise_level,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            callback=on_step,
            callback_steps=1,
            output_type="pil",
        ).images[0]
