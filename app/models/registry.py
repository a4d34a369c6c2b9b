"""Finds the checkpoints in the models folder and tells which family each one is."""

import json
from dataclasses import dataclass
from pathlib import Path

from app.errors import ModelNotFound
from app.models import families

CHECKPOINT_SUBFOLDER = "Stable-diffusion"  # A1111's name; users already know it


@dataclass(frozen=True)
class ModelEntry:
    title: str                # what the user picks; unique; A1111 clients send it back
    name: str                 # A1111's "Model:" value: the folder or file name without extension
    path: Path
    family: str               # one of app.models.families
    layout: str = "diffusers"  # "diffusers" (a folder with model_index.json)
    model_hash: str | None = None
    demo: bool = False        # a tiny random model: draws noise, says so


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def diffusers_family(folder: Path) -> str:
    """The family of a diffusers folder, read from its configs (no weights loaded)."""
    index = _read_json(folder / "model_index.json")
    if index.get("_class_name") == "StableDiffusionUpscalePipeline":
        return families.X4_UPSCALER
    inpaint = _read_json(folder / "unet" / "config.json").get("in_channels") == 9
    # OpenAI CLIP (SD 1.x) uses quick_gelu; OpenCLIP ViT-H (SD 2.x) uses gelu.
    sd2 = _read_json(folder / "text_encoder" / "config.json").get("hidden_act") == "gelu"
    if not sd2:
        return families.SD1_INPAINT if inpaint else families.SD1
    if inpaint:
        return families.SD2_INPAINT
    v_prediction = _read_json(folder / "scheduler" / "scheduler_config.json").get("prediction_type") == "v_prediction"
    return families.SD2_V if v_prediction else families.SD2


def _diffusers_entry(folder: Path, root: Path) -> ModelEntry:
    relative = folder.relative_to(root).as_posix()
    marker = _read_json(folder / "easel_demo.json")
    return ModelEntry(
        title=relative,
        name=folder.name,
        path=folder,
        family=diffusers_family(folder),
        demo=bool(marker.get("demo")),
    )


class ModelRegistry:
    """The checkpoints under `<models_dir>/Stable-diffusion/` (and any extra folders, e.g. the demo)."""

    def __init__(self, models_dir: Path, extra_roots: tuple[Path, ...] = ()):
        self.checkpoint_dir = Path(models_dir) / CHECKPOINT_SUBFOLDER
        self._roots = (self.checkpoint_dir, *map(Path, extra_roots))
        self._entries: list[ModelEntry] = []

    @property
    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def refresh(self) -> list[ModelEntry]:
        """Scan again: files added or removed since the last scan appear or disappear."""
        found: dict[str, ModelEntry] = {}
        for root in self._roots:
            if not root.is_dir():
                continue
            for index in sorted(root.rglob("model_index.json")):
                entry = _diffusers_entry(index.parent, root)
                found.setdefault(entry.title, entry)
        self._entries = sorted(found.values(), key=lambda e: (e.demo, e.title.lower()))
        return self.entries

    def find(self, title: str) -> ModelEntry:
        for entry in self._entries:
            if title in (entry.title, entry.name):
                return entry
        names = ", ".join(e.title for e in self._entries) or "none"
        raise ModelNotFound(
            f"There is no checkpoint named '{title}'. Available: {names}. Press refresh after adding files."
        )
