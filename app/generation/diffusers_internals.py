"""The diffusers (and accelerate) internals Easel relies on, wrapped in one place: an upgrade that
changes them breaks this module and its test (tests/unit/test_diffusers_internals.py), not
generation in some far corner.

- Where a pipeline runs its modules, `_execution_device`: with offload hooks `pipe.device` says
  "cpu" while the UNet runs on the GPU, and diffusers has no public name for the device it runs on.
- Stopping a pipeline after the step in progress, `_interrupt`: what diffusers' own guide to step
  callbacks tells a callback to set (the public `interrupt` property only reads it). Pipelines
  without that property (depth2img in 0.42) never read it: they are stopped by an exception that
  carries the latents so far out of the loop (`stoppable`).
- Where one module runs under sequential offload, accelerate's `_hf_hook.execution_device`: its
  weights wait on "meta" or the CPU and move layer by layer, so their device says nothing.
- Where a layer's weight really is under sequential offload (LoRA patches it there): accelerate's
  `_hf_hook.weights_map`, while the parameter itself waits on "meta".
- Image-to-image and inpainting with noise of our own (variation seeds), `prepare_latents`: the
  img2img pipeline takes no `latents` (and the inpaint pipeline ignores the strength given them),
  so for one call its instance gets a `prepare_latents` that does what diffusers' does (VAE sample from each image's generator, then noise) with our noise; the
  class, and every other pipeline, is untouched.
"""

from contextlib import contextmanager
from typing import Callable

import torch


def execution_device(pipe) -> torch.device:
    """The device the pipeline's modules run on (the GPU under offload hooks, whatever `pipe.device` says)."""
    return pipe._execution_device


class _StoppedAfterStep(Exception):
    def __init__(self, latents: torch.Tensor):
        super().__init__("stopped after this step")
        self.latents = latents


def stop_after_this_step(pipe, latents: torch.Tensor | None = None) -> None:
    """From a step callback: skip the remaining denoising steps; the latents so far are what the call
    (wrapped in `stoppable`) returns. `latents`: the step's, for pipelines that never read `_interrupt`."""
    if isinstance(getattr(type(pipe), "interrupt", None), property):
        pipe._interrupt = True
    elif latents is not None:
        raise _StoppedAfterStep(latents)


def stoppable(call: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`call()` (a pipeline call with output_type="latent"), or the latents it had when a step
    callback stopped it by `stop_after_this_step`."""
    try:
        return call()
    except _StoppedAfterStep as stop:
        return stop.latents


def module_execution_device(module: torch.nn.Module) -> torch.device:
    """The device a module (the text encoder) runs on, offload hooks included: its inputs go there."""
    for submodule in module.modules():
        hook_device = getattr(getattr(submodule, "_hf_hook", None), "execution_device", None)
        if hook_device is not None:
            return torch.device(hook_device)
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


# Makes a batch's starting noise from its images' generators (already used for the VAE sample),
# in the latents' shape (channels, h, w) and dtype.
NoiseMaker = Callable[[list[torch.Generator], tuple[int, int, int], torch.dtype], torch.Tensor]


@contextmanager
def img2img_noise(pipe, make_noise: NoiseMaker):
    """Within the block, `pipe` (a StableDiffusionImg2ImgPipeline) noises its init latents with
    `make_noise(generators, shape, dtype)` instead of drawing the noise itself. Mirrors diffusers'
    own `prepare_latents` (0.42) step for step, so noise equal to the draw it replaces gives the
    same pixels (tests/unit/test_noise.py checks it)."""

    def prepare_latents(image, timestep, batch_size, num_images_per_prompt, dtype, device, generator=None):
        image = image.to(device=device, dtype=dtype)
        count = batch_size * num_images_per_prompt
        generators = generator if isinstance(generator, list) else [generator] * count
        if image.shape[0] < count:
            image = torch.cat([image] * (count // image.shape[0]), dim=0)
        if image.shape[1] == 4:  # latents already (hires fix)
            init = image
        else:
            # Imported here, not at startup: see app.models.loader.
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

            init = torch.cat([retrieve_latents(pipe.vae.encode(image[i : i + 1]), generator=generators[i]) for i in range(count)])
            init = pipe.vae.config.scaling_factor * init
        noise = make_noise(generators, tuple(init.shape[1:]), dtype).to(device=device, dtype=dtype)
        return pipe.scheduler.add_noise(init, noise, timestep)

    pipe.prepare_latents = prepare_latents  # this instance only
    try:
        yield pipe
    finally:
        del pipe.prepare_latents


@contextmanager
def inpaint_noise(pipe, make_noise: NoiseMaker):
    """As `img2img_noise`, for a StableDiffusionInpaintPipeline: its `prepare_latents` (0.42) also
    serves a strength of 1 and hands back the noise and the picture's latents, which the blend of a
    regular checkpoint's inpainting needs. The VAE sample is drawn first, as diffusers draws it."""

    def prepare_latents(batch_size, num_channels_latents, height, width, dtype, device, generator, latents=None,
                        image=None, timestep=None, is_strength_max=True, return_noise=False, return_image_latents=False):
        generators = generator if isinstance(generator, list) else [generator] * batch_size
        shape = (num_channels_latents, int(height) // pipe.vae_scale_factor, int(width) // pipe.vae_scale_factor)
        image_latents = None
        if return_image_latents or not is_strength_max:
            image = image.to(device=device, dtype=dtype)
            image_latents = image if image.shape[1] == 4 else pipe._encode_vae_image(image=image, generator=generator)
            image_latents = image_latents.repeat(batch_size // image_latents.shape[0], 1, 1, 1)
        noise = make_noise(generators, shape, dtype).to(device=device, dtype=dtype)
        if is_strength_max:
            start = noise * pipe.scheduler.init_noise_sigma
        else:
            start = pipe.scheduler.add_noise(image_latents, noise, timestep)
        return (start, *((noise,) if return_noise else ()), *((image_latents,) if return_image_latents else ()))

    pipe.prepare_latents = prepare_latents  # this instance only
    try:
        yield pipe
    finally:
        del pipe.prepare_latents


def stored_weight(module: torch.nn.Module) -> torch.Tensor:
    """The tensor that holds a layer's weight between runs, to change in place: the parameter, or
    under sequential offload (parameter on "meta") the CPU copy in accelerate's hook."""
    weight = module.weight
    if weight.device.type != "meta":
        return weight
    hook = getattr(module, "_hf_hook", None)
    for each in getattr(hook, "hooks", None) or [hook]:
        weights_map = getattr(each, "weights_map", None)
        if weights_map is not None:
            return weights_map["weight"]
    raise RuntimeError("this layer's weight is on no device and in no offload hook")
