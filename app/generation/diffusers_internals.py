"""The diffusers (and accelerate) internals Easel relies on, wrapped in one place: an upgrade that
changes them breaks this module and its test (tests/unit/test_diffusers_internals.py), not
generation in some far corner.

- Where a pipeline runs its modules, `_execution_device`: with offload hooks `pipe.device` says
  "cpu" while the UNet runs on the GPU, and diffusers has no public name for the device it runs on.
- Stopping a pipeline after the step in progress, `_interrupt`: what diffusers' own guide to step
  callbacks tells a callback to set (the public `interrupt` property only reads it).
- Where one module runs under sequential offload, accelerate's `_hf_hook.execution_device`: its
  weights wait on "meta" or the CPU and move layer by layer, so their device says nothing.
"""

import torch


def execution_device(pipe) -> torch.device:
    """The device the pipeline's modules run on (the GPU under offload hooks, whatever `pipe.device` says)."""
    return pipe._execution_device


def stop_after_this_step(pipe) -> None:
    """From a step callback: skip the remaining denoising steps (the latents so far are returned)."""
    pipe._interrupt = True


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
