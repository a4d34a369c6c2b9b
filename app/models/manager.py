"""The one place that loads checkpoints and hands out pipelines, for every tab and the API.

One checkpoint is active at a time. Its image-to-image sibling shares the same modules (built
with `from_pipe`), so switching tabs costs nothing and a swap frees everything at once. Swaps
release the old model completely (hooks, siblings, caches) so memory does not grow; a failed load
leaves the previous model working. Out of memory during a job steps the device plan down one rung.
"""

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

from app.devices import DevicePlan, HardwareFacts, MemoryMode, apply_plan, degraded, free_memory, probe_hardware
from app.errors import EaselError, InvalidRequest, ModelLoadError, ModelNotFound, NoModelAvailable
from app.models import families
from app.models.detect import UnreadableCheckpoint
from app.models.loader import MODEL_CONFIGS_DIR, load_pipeline, load_vae
from app.models.registry import SINGLE_FILE, ModelEntry, ModelRegistry, VaeEntry
from app.models.upscalers import UpscalerEntry, load_network

TXT2IMG = "txt2img"
IMG2IMG = "img2img"
INPAINT = "inpaint"
_SIBLINGS = {IMG2IMG: StableDiffusionImg2ImgPipeline, INPAINT: StableDiffusionInpaintPipeline}
_GENERATING_FAMILIES = (families.SD1, families.SD2, families.SD2_V)
_INPAINTING_FAMILIES = (families.SD1_INPAINT, families.SD2_INPAINT)
# Loading the new model before releasing the old one keeps the old one usable if the load fails,
# but needs room for both; only then do it, with room to spare for the file pages being read
# (measured: SD 2.1 in float32 peaked at 1.49x its weights while loading beside SD 1.5).
_SWAP_HEADROOM = 1.5


@dataclass
class LoadedModel:
    entry: ModelEntry
    base: DiffusionPipeline
    scheduler_config: dict          # the checkpoint's own; each job builds its sampler from it
    siblings: dict[str, DiffusionPipeline] = field(default_factory=dict)
    hooked: str = TXT2IMG           # which pipeline carries the offload hooks (offload modes)
    vae_float32: bool = False       # fp16 decodes gave NaN once: decode this model in fp32 from now on
    vae: VaeEntry | None = None     # a VAE from models/VAE/ in place of the checkpoint's own
    own_vae: object = None          # the checkpoint's own VAE while another one is in use

    def pipelines(self) -> list[DiffusionPipeline]:
        return [self.base, *self.siblings.values()]


def _release(loaded: "LoadedModel | None") -> None:
    """Drop every reference a loaded model holds (hooks, siblings), then give the memory back."""
    if loaded is None:
        return
    for pipe in loaded.pipelines():
        pipe.remove_all_hooks()
    loaded.siblings.clear()
    del loaded
    free_memory()


def model_bytes(entry: ModelEntry, dtype: torch.dtype) -> int:
    """Roughly what the model takes in memory: files are often float16, float32 doubles that."""
    files = [entry.path] if entry.layout == SINGLE_FILE else entry.path.rglob("*.safetensors")
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
    ):
        self.registry = registry
        self.config_root = config_root
        self.plan = plan
        self.facts = facts or HardwareFacts()
        self._loaded: LoadedModel | None = None
        self._upscaler: LoadedModel | None = None  # the SD x4 upscaler, beside the active checkpoint
        # An ESRGAN-family network (tens of MB): kept beside everything else until another is chosen.
        self._network: tuple[UpscalerEntry, object] | None = None
        self._vae_choice: str | None = None  # title in models/VAE/, or None for the checkpoint's own
        # Held while a job runs and while loading, so a swap waits for the job in progress.
        self._lock = threading.RLock()

    @property
    def active(self) -> ModelEntry | None:
        return self._loaded.entry if self._loaded else None

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def entries(self) -> list[ModelEntry]:
        return self.registry.entries

    def refresh(self) -> list[ModelEntry]:
        return self.registry.refresh()

    def generating_entries(self) -> list[ModelEntry]:
        """The checkpoints that can make images from a prompt (not inpainting-only, not upscalers)."""
        return [e for e in self.registry.entries if e.problem is None and e.family in _GENERATING_FAMILIES]

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
            if self._upscaler and not load_new_first(self._available_bytes(), model_bytes(entry, self.plan.dtype)):
                self.unload_upscaler()  # the SD x4 upscaler gives way to the checkpoint the user chose
            if self._loaded and load_new_first(self._available_bytes(), model_bytes(entry, self.plan.dtype)):
                loaded = self._load(entry)  # raises with the old model still in place
                self.unload()
                self._loaded = loaded
                return entry
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
            loaded, self._loaded = self._loaded, None
            _release(loaded)

    def unload_upscaler(self) -> None:
        """Release the SD x4 upscaler and the ESRGAN-family network, whichever are loaded."""
        with self._lock:
            loaded, self._upscaler, self._network = self._upscaler, None, None
            _release(loaded)

    def upscalers(self) -> list[ModelEntry]:
        """The SD x4 upscaler checkpoints in the models folder."""
        return [e for e in self.registry.entries if e.problem is None and e.family == families.X4_UPSCALER]

    @contextmanager
    def use_upscaler(self, title: str):
        """Yields the loaded SD x4 upscaler pipeline for one job. The active checkpoint stays
        loaded beside it when memory allows, and is released first when it does not."""
        with self._lock:
            entry = self.registry.find(title)
            if entry.family != families.X4_UPSCALER:
                raise InvalidRequest(f"'{entry.title}' is not an SD x4 upscaler model.")
            if entry.problem:
                raise ModelLoadError(entry.problem)
            if self._upscaler is None or self._upscaler.entry.path != entry.path:
                self.unload_upscaler()
                if self._loaded and not load_new_first(self._available_bytes(), model_bytes(entry, self.plan.dtype)):
                    self.unload()
                self._upscaler = self._load(entry)
            yield self._upscaler.base

    def network_upscalers(self) -> list[UpscalerEntry]:
        """The usable ESRGAN-family upscalers in the models folder."""
        return [e for e in self.registry.upscalers if e.problem is None]

    @contextmanager
    def use_network(self, name: str):
        """Yields the ESRGAN-family network `name` (a spandrel descriptor) on the plan's device."""
        with self._lock:
            entry = self.registry.find_upscaler(name)
            if entry.problem:
                raise ModelLoadError(entry.problem)
            if self._network is None or self._network[0].path != entry.path:
                self._network = None
                free_memory()
                try:
                    self._network = (entry, load_network(entry, self.plan.device, self.plan.dtype))
                except UnreadableCheckpoint as unreadable:  # changed on disk since the last refresh
                    raise ModelLoadError(f"Easel cannot use '{entry.path.name}': {unreadable.reason}") from None
            yield self._network[1]

    def degrade(self) -> str:
        """After running out of memory: one memory mode down, applied to the loaded model.

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
            self._network = None  # reloaded on the new device by its next job
            free_memory()
            for loaded in (self._loaded, self._upscaler):
                if loaded:
                    apply_plan(loaded.base, lower)
                    loaded.hooked = TXT2IMG
            return lower.description

    @property
    def vae_choice(self) -> str | None:
        return self._vae_choice

    def select_vae(self, title: str | None) -> None:
        """Use a VAE from models/VAE/ with every checkpoint (None: each checkpoint's own)."""
        vae = self._vae_entry(title)  # raises before anything changes
        with self._lock:
            if self._loaded:
                self._use_vae(self._loaded, vae)  # raises with the previous choice still in force
            self._vae_choice = vae.title if vae else None

    def _vae_entry(self, title: str | None) -> VaeEntry | None:
        if not title:
            return None
        for vae in self.registry.vaes:
            if title in (vae.title, vae.path.name):
                return vae
        names = ", ".join(v.title for v in self.registry.vaes) or "none"
        raise ModelNotFound(f"There is no VAE named '{title}' in {self.registry.vae_dir}. Available: {names}.")

    def _use_vae(self, loaded: LoadedModel, vae: VaeEntry | None) -> None:
        if loaded.vae == vae or loaded.entry.family not in _GENERATING_FAMILIES:
            return
        if loaded.own_vae is None:
            loaded.own_vae = loaded.base.vae
        module = load_vae(vae, loaded.entry.family, self.plan.dtype, self.config_root) if vae else loaded.own_vae
        loaded.base.register_modules(vae=module)
        loaded.siblings.clear()  # rebuilt from the base on next use, with the new VAE
        loaded.vae, loaded.vae_float32, loaded.hooked = vae, False, TXT2IMG
        if vae is None:
            loaded.own_vae = None
        apply_plan(loaded.base, self.plan)

    def remember_vae_float32(self) -> None:
        if self._loaded:
            self._loaded.vae_float32 = True

    @contextmanager
    def use(self, title: str | None = None):
        """Yields the LoadedModel for one job; no swap can happen until the job is done."""
        with self._lock:
            if title is not None or self._loaded is None:
                self.load(title)
            yield self._loaded

    def pipeline_for(self, kind: str) -> DiffusionPipeline:
        """The active model's pipeline for `kind`, ready in the current memory mode.

        An inpainting checkpoint serves inpainting with its own pipeline; a regular checkpoint
        serves all three kinds (inpainting then blends the mask in latent space)."""
        loaded = self._loaded
        family = loaded.entry.family
        if kind == INPAINT and family in _INPAINTING_FAMILIES:
            return loaded.base
        if family not in _GENERATING_FAMILIES:
            use = "inpainting only" if family in _INPAINTING_FAMILIES else "upscaling only"
            raise InvalidRequest(
                f"'{loaded.entry.title}' is a {families.LABELS[family]} checkpoint, for {use}. "
                f"Choose a regular SD 1.x or 2.x checkpoint at the top of the page for {kind}."
            )
        if kind != TXT2IMG and kind not in loaded.siblings:
            # Without dtype=, from_pipe casts the shared modules (the base's too) to float32.
            loaded.siblings[kind] = _SIBLINGS[kind].from_pipe(loaded.base, dtype=loaded.base.unet.dtype)
            loaded.siblings[kind].set_progress_bar_config(disable=True)
        pipe = loaded.base if kind == TXT2IMG else loaded.siblings[kind]
        if self.plan.memory_mode in (MemoryMode.MODEL_OFFLOAD, MemoryMode.SEQUENTIAL_OFFLOAD) and loaded.hooked != kind:
            apply_plan(pipe, self.plan)  # offload hooks follow the pipeline that runs
            loaded.hooked = kind
        return pipe

    def _entry(self, title: str | None) -> ModelEntry:
        if not self.registry.entries:
            self.registry.refresh()
        if title:
            return self.registry.find(title)
        if self._loaded:
            return self._loaded.entry
        usable = self.generating_entries()
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
            self._use_vae(loaded, self._vae_entry(self._vae_choice))
        return loaded

    def _available_bytes(self) -> int:
        now = probe_hardware()  # memory moves: ask now, not at start-up
        return now.cuda_free_bytes if self.plan.device == "cuda" else now.ram_available_bytes
