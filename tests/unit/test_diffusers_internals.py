"""The diffusers and accelerate internals Easel relies on still mean what app.generation.diffusers_internals
takes them to mean. If one of these fails after an upgrade, fix that module, nothing else."""

from types import SimpleNamespace

import torch
from accelerate.hooks import AlignDevicesHook, ModelHook, add_hook_to_module

from app.generation.diffusers_internals import (
    execution_device,
    module_execution_device,
    stop_after_this_step,
    stoppable,
)
from app.models.families import Family
from tools.tiny_models import tiny_pipeline


def test_execution_device_is_where_the_pipeline_runs():
    assert execution_device(tiny_pipeline()) == torch.device("cpu")


def test_stopping_from_a_step_callback_skips_the_remaining_steps():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    steps_seen = []

    def on_step_end(pipeline, step, timestep, tensors):
        steps_seen.append(step)
        if step == 1:
            stop_after_this_step(pipeline)
        return tensors

    with torch.no_grad():
        pipe(prompt="a fox", num_inference_steps=6, width=64, height=64, output_type="latent",
             callback_on_step_end=on_step_end, generator=torch.Generator().manual_seed(0))
    assert steps_seen == [0, 1]
    assert pipe.interrupt is True  # diffusers' own public view of the same flag


def test_a_pipeline_that_never_reads_interrupt_is_stopped_with_its_latents_so_far():
    pipe = tiny_pipeline(Family.SD2_DEPTH)  # diffusers 0.42's depth2img loop has no interrupt check
    pipe.set_progress_bar_config(disable=True)
    assert not isinstance(getattr(type(pipe), "interrupt", None), property)
    steps_seen, kept = [], []

    def on_step_end(pipeline, step, timestep, tensors):
        steps_seen.append(step)
        if step == 1:
            kept.append(tensors["latents"])
            stop_after_this_step(pipeline, tensors["latents"])
        return tensors

    from PIL import Image

    with torch.no_grad():
        latents = stoppable(lambda: pipe(
            prompt="a fox", image=Image.new("RGB", (64, 64), "grey"), depth_map=torch.rand(1, 64, 64),
            num_inference_steps=6, strength=1.0, output_type="latent", callback_on_step_end=on_step_end,
            generator=torch.Generator().manual_seed(0)).images)
    assert steps_seen == [0, 1]
    assert latents is kept[0]


def test_a_modules_execution_device_comes_from_its_offload_hook():
    module = torch.nn.Linear(2, 2)
    assert module_execution_device(module) == torch.device("cpu")
    add_hook_to_module(module, ModelHook())
    assert hasattr(module, "_hf_hook")  # where accelerate keeps a module's hook
    assert AlignDevicesHook(execution_device="cuda:1").execution_device == "cuda:1"
    module._hf_hook = SimpleNamespace(execution_device="cuda:1")  # as offload hooks carry it
    assert module_execution_device(module) == torch.device("cuda:1")
