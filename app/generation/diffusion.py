"""One batch through a diffusers pipeline: our embeddings, our sampler, our step callback."""

from typing import Callable

import torch
from PIL import Image

from app.generation.prompts import PromptEmbeddings
from app.generation.requests import GenerationRequest

# Called after every denoising step with (step done, steps in total, latents); returns True to stop.
StepCallback = Callable[[int, int, torch.Tensor], bool]


def generators_for(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same seed gives the same noise on every device."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def run_batch(
    pipe,
    request: GenerationRequest,
    embeddings: PromptEmbeddings,
    seeds: list[int],
    on_step: StepCallback,
) -> list[Image.Image]:
    """Images for `seeds` (one batch), with the pipeline's scheduler already set for this job."""

    def step_end(pipeline, step: int, timestep, tensors: dict) -> dict:
        if on_step(step + 1, pipeline.num_timesteps, tensors["latents"]):
            pipeline._interrupt = True  # diffusers skips the remaining steps, then decodes
        return tensors

    device = pipe._execution_device
    arguments = dict(
        prompt_embeds=embeddings.positive.to(device),
        negative_prompt_embeds=embeddings.negative.to(device),
        num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale,
        num_images_per_prompt=len(seeds),
        generator=generators_for(seeds),
        callback_on_step_end=step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        output_type="pil",
    )
    if request.is_img2img:
        # At least one step runs, so strength 0 returns the init image through the model, not an error.
        arguments.update(
            image=request.init_image,
            strength=max(request.strength, 1.0 / request.steps),
        )
    else:
        arguments.update(width=request.width, height=request.height)
    with torch.inference_mode():
        return pipe(**arguments).images
