"""The one place that decides which models are in memory, for every tab and the API.

One checkpoint is active at a time. Its image-to-image and inpainting siblings share its modules
(app.models.loaded), so switching tabs costs nothing and a swap frees everything at once. Upscalers
(app.models.upscaler_slots) stay beside it while memory allows. Swaps release the old model
completely, so memory does not grow; a failed load leaves the previous model working. Out of memory
during a job steps the device plan down one rung for everything loaded.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from app.devices import DevicePlan, MemoryMode, degraded
from app.errors import EaselError, InvalidRequest, ModelLoadError, ModelNotFound, NoModelAvailable
from app.hardware import HardwareFacts, probe_hardware
from app.kinds import JobKind
from app.memory import free_memory
from app.models.compiled import BackgroundCompiler, CompileState, compiles_on
from app.models.depth import attach_estimator
from app.models.families import Family
from app.models.loaded import LoadedModel
from app.models.loader import MODEL_CONFIGS_DIR, load_pipeline, load_vae
from app.models.placement import apply_plan
from app.models.registry import Layout, ModelEntry, ModelRegistry, VaeEntry
from app.models.upscaler_slots import UpscalerSlots

if TYPE_CHECKING:  # diffusers itself is imported only when a checkpoint loads (app.models.loader)
    from diffusers import DiffusionPipeline

# Loading the new model before releasing the old one keeps the old one usable if the load fails,
# but needs room for both; only then do it, with room to spare for the file pages being read
# (measured: SD 2.1 in float32 peaked at 1.49x its weights while loading beside SD 1.5).
_SWAP_HEADROOM = 1.5


def model_bytes(entry: ModelEntry, dtype: torch.dtype) -> int:
    """Roughly what the model takes in memory: files are often float16, float32 doubles that."""
    files = [entry.path] if entry.layout is Layout.SINGLE_FILE else entry.path.rglob("*.safetensors")
    on_disk = sum(path.stat().st_size for path in files)
    return on_disk * 2 if dtype == torch.float32 else on_disk


def load_new_first(available_bytes: int, new_model_bytes: int) -> bool:
    """Whether there is room to hold the new model beside the old one while it loads."""
    return available_bytes > new_model_bytes * _SWAP_HEADROOM


class ModelManager:
    def __init__(
        self,
        registry: ModelRegistry,
        plan: DevicePlan,
        facts: HardwareFacts | None = None,
        config_root: Path = MODEL_CONFIGS_DIR,
        compiler: BackgroundCompiler | None = None,
    ):
        self.registry = registry
        self.compiler = compiler  # None: never compile (the torch_compile setting is off)
        self.config_root = config_root
        self.plan = plan
        self.facts = facts or HardwareFacts()
        self.upscalers = UpscalerSlots()
        self._loaded: LoadedModel | None = None
        self.loading: ModelEntry | None = None  # the checkpoint being loaded now, for the page's status line
        self._vae_choice: VaeEntry | None = None  # from models/VAE/; None: each checkpoint's own
        # Held while a job runs and while loading, so a swap waits for the job in progress.
        self._lock = threading.RLock()

    @property
    def active(self) -> ModelEntry | None:
        return self._loaded.entry if self._loaded else None

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    @property
    def vae_choice(self) -> str | None:
        return self._vae_choice.title if self._vae_choice else None

    # --- the active checkpoint ------------------------------------------------------------

    def load(self, title: str | None = None) -> ModelEntry:
        """Make `title` (default: the first usable checkpoint) the active one; a no-op if it already is."""
        entry = self._entry(title)
        if entry.problem:
            raise ModelLoadError(entry.problem)  # before anything is unloaded
        if not entry.path.exists():
            raise ModelNotFound(f"'{entry.title}' is no longer in the models folder. Press refresh.")
        with self._lock:
            if self._loaded and self._loaded.entry.path == entry.path and self._loaded.entry.family == entry.family:
                return self._loaded.entry
            self.loading = entry
            try:
                return self._swap_to(entry)
            finally:
                self.loading = None

    def _swap_to(self, entry: ModelEntry) -> ModelEntry:
        """Load `entry` in place of the active checkpoint (the lock is held)."""
        if self.upscalers.x4 and not self._room_for(entry):
            self.upscalers.release_x4()  # the SD x4 upscaler gives way to the checkpoint the user chose
        if self._loaded and self._room_for(entry):
            loaded = self._load(entry)  # raises with the old model still in place
            self.unload()
            self._loaded = loaded
        else:
            previous = self._loaded.entry if self._loaded else None
            self.unload()
            try:
                self._loaded = self._load(entry)
            except Exception:
                if previous is not None:
                    self._loaded = self._load(previous)  # a failed swap leaves the old model working
                raise
        return self._loaded.entry

    def unload(self) -> None:
        """Release every module of the active checkpoint, its siblings included."""
        with self._lock:
            if self._loaded is not None:
                self._loaded.detach()
            self._loaded = None  # the last reference: freed here, before the trim
            free_memory()

    def close(self) -> None:
        """Release everything: the active checkpoint and the upscalers."""
        with self._lock:
            self.unload()
            self.upscalers.release()
        if self.compiler is not None:
            self.compiler.close()

    @contextmanager
    def use(self, title: str | None = None):
        """Yields the LoadedModel for one job; no swap can happen until the job is done."""
        with self._lock:
            if title is not None or self._loaded is None:
                self.load(title)
            yield self._loaded

    def pipeline_for(self, kind: JobKind) -> DiffusionPipeline:
        """The active model's pipeline for `kind`, ready in the current memory mode.

        An inpainting checkpoint serves inpainting with its own pipeline, an SD 2 depth checkpoint
        image-to-image with its depth pipeline (with the depth estimator when there is one); a
        regular checkpoint serves all three kinds (inpainting then blends the mask in latent space)."""
        loaded = self._loaded
        family = loaded.entry.family
        own_kind = (kind is JobKind.INPAINT and family.is_inpainting) or (kind is JobKind.IMG2IMG and family.is_depth)
        if not family.makes_images and not own_kind:
            also = ", or use image to image with this one" if family.is_depth else ""
            raise InvalidRequest(
                f"'{loaded.entry.title}' is an {family.label} checkpoint, for {family.use}. "
                f"Choose a regular SD 1.x or 2.x checkpoint at the top of the page for {kind.value}{also}."
            )
        pipe = loaded.pipeline(kind, self.plan)
        if family.is_depth and attach_estimator(pipe, loaded.entry, self.registry.models_dir):
            apply_plan(pipe, self.plan)  # the estimator joins the device plan
        return pipe

    def remember_vae_float32(self) -> None:
        if self._loaded:
            self._loaded.vae_float32 = True

    # --- the VAE ----------------------------------------------------------------------------

    def select_vae(self, title: str | None) -> None:
        """Use a VAE from models/VAE/ with every checkpoint (None: each checkpoint's own)."""
        vae = self.registry.find_vae(title) if title else None  # raises before anything changes
        with self._lock:
            if self._loaded:
                self._use_vae(self._loaded, vae)  # raises with the previous choice still in force
            self._vae_choice = vae

    def _use_vae(self, loaded: LoadedModel, vae: VaeEntry | None) -> None:
        if loaded.vae == vae or not loaded.entry.family.makes_images:
            return
        module = load_vae(vae, loaded.entry.family, self.plan.dtype, self.config_root) if vae else None
        loaded.replace_vae(vae, module, self.plan)

    # --- upscalers --------------------------------------------------------------------------

    @contextmanager
    def use_x4(self, title: str):
        """Yields the SD x4 upscaler pipeline for one job. The active checkpoint stays loaded beside
        it when memory allows, and is released first when it does not."""
        with self._lock:
            entry = self.registry.find(title)
            if entry.family is not Family.X4_UPSCALER:
                raise InvalidRequest(f"'{entry.title}' is not an SD x4 upscaler model.")
            if entry.problem:
                raise ModelLoadError(entry.problem)
            if not self.upscalers.holds_x4(entry):
                self.upscalers.release_x4()
                if self._loaded and not self._room_for(entry):
                    self.unload()
                self.upscalers.hold_x4(self._load(entry))
            yield self.upscalers.x4.base

    @contextmanager
    def use_network(self, name: str):
        """Yields the ESRGAN-family network `name` (a spandrel descriptor) on the plan's device."""
        with self._lock:
            entry = self.registry.find_upscaler(name)
            if entry.problem:
                raise ModelLoadError(entry.problem)
            yield self.upscalers.network(entry, self.plan)

    # --- memory -----------------------------------------------------------------------------

    def degrade(self) -> str:
        """After running out of memory: one memory mode down, for everything loaded.

        Returns a sentence for the user; raises if there is no lower mode to go to.
        """
        with self._lock:
            lower = degraded(self.plan, self.facts)
            if lower is None:
                raise EaselError(
                    "Easel ran out of memory even on the CPU. Close other programs, or choose a smaller "
                    "image size or batch size, and try again."
                )
            self.plan = lower
            self.upscalers.follow(lower)
            if self._loaded:
                self._loaded.follow(lower)
                self._compile(self._loaded)
            return lower.description

    def _room_for(self, entry: ModelEntry) -> bool:
        """Whether `entry` can load beside what is in memory now."""
        return load_new_first(self._available_bytes(), model_bytes(entry, self.plan.dtype))

    def _available_bytes(self) -> int:
        now = probe_hardware()  # memory moves: ask now, not at start-up
        return now.cuda_free_bytes if self.plan.device == "cuda" else now.ram_available_bytes

    # --- loading ----------------------------------------------------------------------------

    def _entry(self, title: str | None) -> ModelEntry:
        if not self.registry.entries:
            self.registry.refresh()
        if title:
            return self.registry.find(title)
        if self._loaded:
            return self._loaded.entry
        # Only an inpainting or depth checkpoint: it is used, and a kind it cannot do says so.
        usable = self.registry.generating() or self.registry.selectable()
        if not usable:
            raise NoModelAvailable(
                f"No checkpoint found. Put a Stable Diffusion model (.safetensors) into "
                f"{self.registry.checkpoint_dir} and press refresh, download one with 'Download a model' "
                f"at the top of the page, or start Easel with --demo to try it with a tiny random model."
            )
        return usable[0]

    def _load(self, entry: ModelEntry) -> LoadedModel:
        entry = self.registry.with_hash(entry) if entry.problem is None else entry
        base = load_pipeline(entry, self.plan.dtype, self.config_root)
        try:
            apply_plan(base, self.plan)
        except Exception as error:
            raise ModelLoadError(f"Could not put '{entry.title}' on {self.plan.device}: {error}") from error
        loaded = LoadedModel(entry=entry, base=base, scheduler_config=dict(base.scheduler.config))
        if self._vae_choice:
            self._use_vae(loaded, self._vae_choice)
        self._compile(loaded)
        return loaded

    # --- compiling --------------------------------------------------------------------------

    def compile_state(self) -> tuple[CompileState | None, str | None]:
        """How far compiling the active model's UNet is, and why it is unavailable (None, None: not compiling)."""
        compiled = self._loaded.compiled if self._loaded else None
        return (compiled.state, compiled.problem) if compiled else (None, None)

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait for the background compiles asked for so far (benches and tests); False on timeout."""
        return self.compiler is None or self.compiler.wait_idle(timeout)

    def _compile(self, loaded: LoadedModel) -> None:
        offloads = self.plan.memory_mode in (MemoryMode.MODEL_OFFLOAD, MemoryMode.SEQUENTIAL_OFFLOAD)
        if self.compiler is not None and loaded.entry.family.makes_images and compiles_on(self.plan.device, offloads):
            self.compiler.prepare()  # the lock is held: no model runs meanwhile
            loaded.compile_unet(self.compiler)
