"""LoRA updates in a pipeline's UNet and text encoder: added for the jobs that ask for them, taken
out before a job that asks for others or none (`LoraWeights`).

The update of each layer is A1111's (`W += multiplier * alpha/rank * up @ down`, a LoHa's product,
a conv kernel's reshape). Taking it out copies back the original tensors saved before the first
change, so the next job without the tag runs on bit-identical weights: subtracting again would
leave rounding behind in half precision. Works wherever the weights are: on the GPU, on the CPU
between offload hooks, or in accelerate's CPU copy under sequential offload.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from app.generation.diffusers_internals import stored_weight
from app.models.lora_files import Component, LayerKey, LoraFile, LoraLayer, ldm_unet_name


@dataclass(frozen=True)
class ActiveLora:
    name: str              # as the prompt names it
    file: LoraFile
    te_multiplier: float
    unet_multiplier: float


@dataclass
class LoraWeights:
    """The LoRAs a model's weights carry between jobs, and the originals that give them back exactly.

    Each job asks for its LoRAs (`carry`). The same ones as the last job's cost nothing, as in A1111
    (adding a full LoRA to a full-size model moves gigabytes); other ones are swapped in: every saved
    original copied back first, then the new updates added. Asking for none gives the checkpoint's
    own weights back, bit for bit. Lives on the LoadedModel (`carried_loras`), so it goes with it.
    """

    saved: dict[tuple[Component, str], torch.Tensor] = field(default_factory=dict)
    carried: list[ActiveLora] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what adding them said (misfits), repeated to every job
    changes: int = 0       # counts every patch and restore: a compiled graph (app.models.compiled) built from the
                           # weights is valid only if they did not change while it was built

    @property
    def patched(self) -> bool:
        """Whether some weight differs from the checkpoint's own now."""
        return bool(self.saved)

    def carry(self, pipe, loras: list[ActiveLora], model_title: str, notes: list[str]) -> None:
        """From now on the pipeline's layers carry exactly `loras` (a LoRA that does not fit the model is
        left out with a sentence in `notes`)."""
        if not _same(loras, self.carried):
            self.release(pipe)
            self.changes += 1
            added: list[str] = []
            try:
                layers = _LayerIndex(pipe) if loras else None
                for lora in loras:
                    _apply(layers, lora, model_title, self.saved, added)
            except BaseException:
                self.release(pipe)  # never half a LoRA in the weights
                raise
            self.carried, self.notes = list(loras), added
        notes.extend(note for note in self.notes if note not in notes)

    def release(self, pipe) -> None:
        """The checkpoint's own weights back."""
        self.changes += 1
        _restore(pipe, self.saved)
        self.saved, self.carried, self.notes = {}, [], []


def carried_loras(loaded) -> LoraWeights:
    """The LoRA state of a LoadedModel (made on first use)."""
    if loaded.lora_weights is None:
        loaded.lora_weights = LoraWeights()
    return loaded.lora_weights


def _same(wanted: list[ActiveLora], carried: list[ActiveLora]) -> bool:
    """The same files (the same parsed objects: a changed file is parsed anew) with the same multipliers."""
    return len(wanted) == len(carried) and all(
        a.name == b.name and a.file is b.file and (a.te_multiplier, a.unet_multiplier) == (b.te_multiplier, b.unet_multiplier)
        for a, b in zip(wanted, carried))


@contextmanager
def loras_applied(pipe, loras: list[ActiveLora], model_title: str, notes: list[str]):
    """Within the block the pipeline's layers carry the LoRAs' updates (then exactly the original
    weights again): `LoraWeights` for one block."""
    weights = LoraWeights()
    try:
        weights.carry(pipe, loras, model_title, notes)
        yield
    finally:
        weights.release(pipe)


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
    updates: list[tuple[Component, str, torch.Tensor, LoraLayer]] = []
    unmatched = list(lora.file.unknown)
    for key, layer in lora.file.layers.items():
        found = layers.find(key)
        if found is None:
            unmatched.append(key.name)
            continue
        name, module = found
        weight = stored_weight(module)
        if layer.delta(weight.shape, meta=True) is None:  # sizes only: the real update is made layer by layer below
            notes.append(f"The LoRA '{lora.name}' does not fit '{model_title}': its layers have other sizes, so it "
                         "was made for another model family (SD 1.x and SD 2.x LoRAs do not mix). "
                         "The picture was made without it.")
            return
        updates.append((key.component, name, weight, layer))
    if not updates:
        notes.append(f"None of the layers of the LoRA '{lora.name}' is in '{model_title}': its layout is unknown or "
                     "it is for another kind of model. The picture was made without it.")
        return
    if unmatched:
        notes.append(f"{len(unmatched)} of the layers of the LoRA '{lora.name}' are not in '{model_title}' and were "
                     "left out (A1111 leaves them out too).")
    with torch.no_grad():
        for component, name, weight, layer in updates:
            multiplier = lora.te_multiplier if component is Component.TEXT_ENCODER else lora.unet_multiplier
            if multiplier == 0:
                continue  # weight 0: the layer stays exactly as it was
            if (component, name) not in saved:
                saved[(component, name)] = weight.detach().to("cpu", copy=True)
            # One layer's float32 update at a time: all of a full LoRA's at once would be gigabytes.
            updated = weight.float() + layer.delta(weight.shape).to(weight.device) * multiplier
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
