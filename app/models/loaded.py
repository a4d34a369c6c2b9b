"""A checkpoint in memory: its pipeline, the sibling pipelines that share its modules, the VAE in
use, and how to let go of all of it at once (`detach`)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.devices import DevicePlan, MemoryMode
from app.kinds import JobKind
from app.models.compiled import BackgroundCompiler, CompiledUnet
from app.models.placement import apply_plan
from app.models.registry import ModelEntry, VaeEntry

# diffusers and transformers are imported on first use, not at startup: the page answers seconds sooner
# (launch.py serves it before the first checkpoint loads).
if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

_SIBLINGS = {JobKind.IMG2IMG: "StableDiffusionImg2ImgPipeline", JobKind.INPAINT: "StableDiffusionInpaintPipeline"}
_OFFLOAD_MODES = (MemoryMode.MODEL_OFFLOAD, MemoryMode.SEQUENTIAL_OFFLOAD)


@dataclass
class LoadedModel:
    entry: ModelEntry
    base: DiffusionPipeline
    scheduler_config: dict          # the checkpoint's own; each job builds its sampler from it
    siblings: dict[JobKind, DiffusionPipeline] = field(default_factory=dict)
    hooked: JobKind = JobKind.TXT2IMG  # which pipeline carries the offload hooks (offload modes)
    vae_float32: bool = False       # half-precision decodes gave NaN once: decode in float32 from now on
    vae: VaeEntry | None = None     # a VAE from models/VAE/ in place of the checkpoint's own
    own_vae: object = None          # the checkpoint's own VAE while another one is in use
    lora_weights: object = None     # app.generation.lora_patch.LoraWeights: the LoRAs its weights carry
                                    # between jobs and their originals (dropped with the model)
    compiled: CompiledUnet | None = None  # the UNet's compiled graphs (app.models.compiled), when compiling

    def unet_weights_token(self) -> object:
        """None while LoRAs are patched into the weights; else a count that changes at every patch and
        restore (what a compiled graph, frozen from the weights, must check)."""
        weights = self.lora_weights
        if weights is None:
            return 0
        return None if weights.patched else weights.changes

    def compile_unet(self, compiler: BackgroundCompiler) -> None:
        """From now on the UNet's calls take compiled graphs as they become ready."""
        if self.compiled is None and getattr(self.base, "unet", None) is not None:
            self.compiled = CompiledUnet(self.base.unet, self.unet_weights_token, compiler)

    def drop_compiled(self) -> None:
        if self.compiled is not None:
            self.compiled.release()
            self.compiled = None

    @property
    def text_width(self) -> int | None:
        """The width of the text encoder's token embeddings (768 SD 1.x, 1024 SD 2.x): what an
        embedding's vectors must have; None for a model without a text encoder."""
        width = getattr(getattr(getattr(self.base, "text_encoder", None), "config", None), "hidden_size", None)
        return width if isinstance(width, int) else None

    def pipelines(self) -> list[DiffusionPipeline]:
        return [self.base, *self.siblings.values()]

    def pipeline(self, kind: JobKind, plan: DevicePlan) -> DiffusionPipeline:
        """The pipeline for `kind`: the base for text-to-image (and an inpainting or depth checkpoint's
        own kind), else a sibling sharing the base's modules, made on first use."""
        if kind is JobKind.TXT2IMG or not self.entry.family.makes_images:
            kind = JobKind.TXT2IMG  # the base pipeline
        elif kind not in self.siblings:
            # Without dtype=, from_pipe casts the shared modules (the base's too) to float32.
            sibling_class = getattr(importlib.import_module("diffusers"), _SIBLINGS[kind])
            self.siblings[kind] = sibling_class.from_pipe(self.base, dtype=self.base.unet.dtype)
            self.siblings[kind].set_progress_bar_config(disable=True)
        pipe = self.base if kind is JobKind.TXT2IMG else self.siblings[kind]
        if plan.memory_mode in _OFFLOAD_MODES and self.hooked is not kind:
            apply_plan(pipe, plan)  # offload hooks follow the pipeline that runs
            self.hooked = kind
        return pipe

    def replace_vae(self, vae: VaeEntry | None, module, plan: DevicePlan) -> None:
        """Use `module` (loaded from `vae`) in place of the VAE; None and None: the checkpoint's own again."""
        if self.own_vae is None:
            self.own_vae = self.base.vae
        self.base.register_modules(vae=module if vae else self.own_vae)
        self.siblings.clear()  # rebuilt from the base on next use, with the new VAE
        self.vae, self.vae_float32, self.hooked = vae, False, JobKind.TXT2IMG
        if vae is None:
            self.own_vae = None
        apply_plan(self.base, plan)

    def detach(self) -> None:
        """Drop every reference this model holds to its modules from elsewhere (offload hooks, siblings,
        the set-aside VAE), so that dropping the LoadedModel itself frees them all.

        The owner then drops its own reference and only then calls `free_memory()`: a trim while
        any name still holds the model gives nothing back, and the freed pages then stay resident."""
        self.drop_compiled()
        for pipe in self.pipelines():
            pipe.remove_all_hooks()
        self.siblings.clear()
        self.own_vae = None

    def follow(self, plan: DevicePlan) -> None:
        """Move to another device plan (a step down after running out of memory)."""
        self.drop_compiled()  # its graphs are for the old device and precision
        apply_plan(self.base, plan)
        self.hooked = JobKind.TXT2IMG
