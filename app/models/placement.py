"""Putting a diffusers pipeline into a device plan: its device, precision and memory mode. Works on
a pipeline that is already placed (with offload hooks), so it can move down the ladder after it
ran out of memory."""

import torch

from app.devices import DevicePlan, MemoryMode

# The convolution-heavy modules. channels_last is what oneDNN's and cuDNN's fast convolutions use, so
# they skip a layout change around every convolution (measured on a Xeon with AMX, bf16: VAE decode
# 5.29 s -> 2.33 s, UNet step 2.19 s -> 1.91 s; see bench/RESULTS.md). Same maths, same pixels within
# float rounding.
_CONVOLUTIONAL = ("unet", "vae")


def apply_plan(pipe, plan: DevicePlan) -> None:
    """Put a diffusers pipeline on the plan's device, precision and memory mode.

    Works on a pipeline that is already placed: offload hooks come off first, so the same pipeline
    can move down the ladder after running out of memory.
    """
    if hasattr(pipe, "remove_all_hooks"):
        pipe.remove_all_hooks()  # .to() refuses (or misplaces) modules that still carry offload hooks
    for name in _CONVOLUTIONAL:  # before offloading: the offload hooks keep the weights as they find them
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.to(memory_format=torch.channels_last)
    if plan.memory_mode is MemoryMode.MODEL_OFFLOAD:
        pipe.to(dtype=plan.dtype)
        pipe.enable_model_cpu_offload(device=plan.device)
    elif plan.memory_mode is MemoryMode.SEQUENTIAL_OFFLOAD:
        pipe.to(dtype=plan.dtype)
        pipe.enable_sequential_cpu_offload(device=plan.device)
    else:  # FULL, or CPU (whose plan.device is "cpu")
        pipe.to(plan.device, plan.dtype)
    if plan.attention_slicing and hasattr(pipe, "enable_attention_slicing"):
        pipe.enable_attention_slicing()
    elif not plan.attention_slicing and hasattr(pipe, "disable_attention_slicing"):
        pipe.disable_attention_slicing()
    vae = getattr(pipe, "vae", None)
    if plan.vae_tiling and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    elif not plan.vae_tiling and hasattr(vae, "disable_tiling"):
        vae.disable_tiling()
