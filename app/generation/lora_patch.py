"""LoRA updates added to a pipeline's UNet and text encoder for one turn of a job, then taken out.

The update of each layer is A1111's (`W += multiplier * alpha/rank * up @ down`, a LoHa's product,
a conv kernel's reshape). Taking it out copies back the original tensors saved before the first
change, so the next job without the tag runs on bit-identical weights: subtracting again would
leave rounding behind in half precision. Works wherever the weights are: on the GPU, on the CPU
between offload hooks, or in accelerate's CPU copy under sequential offload.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from app.generation.diffusers_internals import stored_weight
from app.models.lora_files import Component, LayerKey, LoraFile, ldm_unet_name


@dataclass(frozen=True)
class ActiveLora:
    name: str              # as the prompt names it
    file: LoraFile
    te_multiplier: float
    unet_multiplier: float


def swapped(first: list[ActiveLora], second: list[ActiveLora]) -> list[ActiveLora]:
    """What to add to weights that carry `first` so that they carry `second` instead: `first` taken
    out again (negative multipliers), then `second`; nothing when the two are the same."""
    if _called(first) == _called(second):
        return []
    taken_out = [replace(lora, te_multiplier=-lora.te_multiplier, unet_multiplier=-lora.unet_multiplier)
                 for lora in first]
    return taken_out + second


def _called(loras: list[ActiveLora]) -> list[tuple]:
    return [(lora.name, id(lora.file), lora.te_multiplier, lora.unet_multiplier) for lora in loras]


@contextmanager
def loras_applied(pipe, loras: list[ActiveLora], model_title: str, notes: list[str]):
    """Within the block the pipeline's layers carry the LoRAs' updates; a LoRA that does not fit
    the model is left out with a sentence in `notes`."""
    saved: dict[tuple[Component, str], torch.Tensor] = {}
    try:
        layers = _LayerIndex(pipe) if loras else None
        for lora in loras:
            _apply(layers, lora, model_title, saved, notes)
        yield
    finally:
        _restore(pipe, saved)


class _LayerIndex:
    """The pipeline's layers with a weight, by their dotted path and by kohya's underscored one."""

    def __init__(self, pipe):
        self.modules: dict[Component, dict[str, torch.nn.Module]] = {}
        self.flat: dict[Component, dict[str, str]] = {}
        for component in Component:
            model = getattr(pipe, component.value, None)
            named = {name: m for name, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)} \
                if model is not None else {}
            if component is Component.TEXT_ENCODER and not any(name.startswith("text_model.") for name in named):
                # transformers 5 dropped the `text_model.` level that every LoRA's keys still name
                named.update({f"text_model.{name}": m for name, m in list(named.items())})
            self.modules[component] = named
            self.flat[component] = {name.replace(".", "_"): name for name in named}
            if component is Component.UNET and model is not None:
                self.flat[component] |= _ldm_names(model, named)

    def find(self, key: LayerKey) -> tuple[str, torch.nn.Module] | None:
        name = self.flat[key.component].get(key.name) if key.flat else key.name
        module = self.modules[key.component].get(name) if name else None
        return (name, module) if module is not None else None


def _ldm_names(unet, named: dict[str, torch.nn.Module]) -> dict[str, str]:
    """kohya-style names of the UNet's layers as the original (LDM) UNet names them, which A1111 reads too."""
    per_block = getattr(getattr(unet, "config", None), "layers_per_block", None)
    if not isinstance(per_block, int):
        return {}
    with_attention = {int(name.split(".")[1]) for name in named if name.startswith("up_blocks.") and ".attentions." in name}
    ldm = {name: ldm_unet_name(name, per_block, with_attention) for name in named}
    return {flat.replace(".", "_"): name for name, flat in ldm.items() if flat}


def _apply(layers: _LayerIndex, lora: ActiveLora, model_title: str, saved: dict, notes: list[str]) -> None:
    updates: list[tuple[Component, str, torch.Tensor, torch.Tensor]] = []
    unmatched = list(lora.file.unknown)
    for key, layer in lora.file.layers.items():
        found = layers.find(key)
        if found is None:
            unmatched.append(key.name)
            continue
        name, module = found
        weight = stored_weight(module)
        delta = layer.delta(weight.shape)
        if delta is None:
            notes.append(f"The LoRA '{lora.name}' does not fit '{model_title}': its layers have other sizes, so it "
                         "was made for another model family (SD 1.x and SD 2.x LoRAs do not mix). "
                         "The picture was made without it.")
            return
        updates.append((key.component, name, weight, delta))
    if not updates:
        notes.append(f"None of the layers of the LoRA '{lora.name}' is in '{model_title}': its layout is unknown or "
                     "it is for another kind of model. The picture was made without it.")
        return
    if unmatched:
        notes.append(f"{len(unmatched)} of the layers of the LoRA '{lora.name}' are not in '{model_title}' and were "
                     "left out (A1111 leaves them out too).")
    with torch.no_grad():
        for component, name, weight, delta in updates:
            multiplier = lora.te_multiplier if component is Component.TEXT_ENCODER else lora.unet_multiplier
            if multiplier == 0:
                continue  # weight 0: the layer stays exactly as it was
            if (component, name) not in saved:
                saved[(component, name)] = weight.detach().to("cpu", copy=True)
            updated = weight.float() + delta.to(weight.device) * multiplier
            weight.copy_(updated.to(weight.dtype))


def _restore(pipe, saved: dict[tuple[Component, str], torch.Tensor]) -> None:
    """The saved originals copied back into wherever each layer's weight is now (a step down after
    running out of memory may have moved it)."""
    if not saved:
        return
    layers = _LayerIndex(pipe)
    with torch.no_grad():
        for (component, name), original in saved.items():
            module = layers.modules[component][name]
            weight = stored_weight(module)
            weight.copy_(original.to(weight.device, weight.dtype))
