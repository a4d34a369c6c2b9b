"""The one place that loads checkpoints and hands out pipelines, for every tab and the API.

One checkpoint is active at a time. Its image-to-image sibling shares the same modules (built
with `from_pipe`), so switching tabs costs nothing and a swap frees everything at once.
"""

import gc
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from app.devices import DevicePlan
from app.errors import ModelLoadError, NoModelAvailable
from app.models.registry import ModelEntry, ModelRegistry

TXT2IMG = "txt2img"
IMG2IMG = "img2img"
_SIBLINGS = {IMG2IMG: StableDiffusionImg2ImgPipeline}


@dataclass
class LoadedModel:
    entry: ModelEntry
    base: StableDiffusionPipeline
    scheduler_config: dict          # the checkpoint's own; each job builds its sampler from it
    siblings: dict[str, DiffusionPipeline] = field(default_factory=dict)


def _load_diffusers_folder(entry: ModelEntry, plan: DevicePlan) -> StableDiffusionPipeline:
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            entry.path,
            dtype=plan.dtype,
            local_files_only=True,
            use_safetensors=True,  # never unpickle a download: .bin weights can run code
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError, EnvironmentError, KeyError, RuntimeError) as error:
        raise ModelLoadError(
            f"Could not load the checkpoint '{entry.title}' ({error}). Check that the folder is complete "
            f"and holds .safetensors weights, or remove it from the models folder."
        ) from error
    pipe.set_progress_bar_config(disable=True)  # progress is reported through the job instead
    return pipe.to(plan.device)


class ModelManager:
    def __init__(self, registry: ModelRegistry, plan: DevicePlan):
        self.registry = registry
        self.plan = plan
        self._loaded: LoadedModel | None = None
        # Held while a job runs and while loading, so a swap waits for the job in progress.
        self._lock = threading.RLock()

    @property
    def active(self) -> ModelEntry | None:
        return self._loaded.entry if self._loaded else None

    def entries(self) -> list[ModelEntry]:
        return self.registry.entries

    def refresh(self) -> list[ModelEntry]:
        return self.registry.refresh()

    def load(self, title: str | None = None) -> ModelEntry:
        """Make `title` (default: the first checkpoint) the active one; a no-op if it already is."""
        entry = self._entry(title)
        with self._lock:
            if self._loaded and self._loaded.entry == entry:
                return entry
            previous = self._loaded.entry if self._loaded else None
            self.unload()
            try:
                self._loaded = self._load(entry)
            except ModelLoadError:
                if previous is not None:
                    self._loaded = self._load(previous)  # a failed swap leaves the old model working
                raise
            return entry

    def unload(self) -> None:
        """Release every module of the active checkpoint, its siblings included."""
        with self._lock:
            loaded, self._loaded = self._loaded, None
            if loaded is None:
                return
            for pipe in (loaded.base, *loaded.siblings.values()):
                pipe.remove_all_hooks()
            del loaded, pipe
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @contextmanager
    def pipeline(self, kind: str, title: str | None = None):
        """Yields (pipeline, LoadedModel) for one job; the model cannot be swapped meanwhile."""
        with self._lock:
            if title is not None or self._loaded is None:
                self.load(title)
            yield self._pipeline(kind), self._loaded

    def _pipeline(self, kind: str) -> DiffusionPipeline:
        loaded = self._loaded
        if kind == TXT2IMG:
            return loaded.base
        if kind not in loaded.siblings:
            # Without dtype=, from_pipe casts the shared modules (the base's too) to float32.
            loaded.siblings[kind] = _SIBLINGS[kind].from_pipe(loaded.base, dtype=loaded.base.unet.dtype)
            loaded.siblings[kind].set_progress_bar_config(disable=True)
        return loaded.siblings[kind]

    def _entry(self, title: str | None) -> ModelEntry:
        if not self.registry.entries:
            self.registry.refresh()
        if title:
            return self.registry.find(title)
        if self._loaded:
            return self._loaded.entry
        if not self.registry.entries:
            raise NoModelAvailable(
                f"No checkpoint found. Put a Stable Diffusion model folder (diffusers format) into "
                f"{self.registry.checkpoint_dir} and press refresh, or start Easel with --demo to try it "
                f"with a tiny random model."
            )
        return self.registry.entries[0]

    def _load(self, entry: ModelEntry) -> LoadedModel:
        base = _load_diffusers_folder(entry, self.plan)
        return LoadedModel(entry=entry, base=base, scheduler_config=dict(base.scheduler.config))
