"""Finds the checkpoints in the models folder and tells which family each one is.

Users drop A1111-style single files (`.safetensors`, `.ckpt`) or diffusers folders into
`models/Stable-diffusion/` (subfolders allowed), VAEs into `models/VAE/` and ESRGAN-family
upscalers into `models/ESRGAN/`; `refresh()` picks up
what was added or removed. A file that cannot be used still gets an entry, with the reason, so the
user sees why instead of wondering where it went.
"""

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from app.errors import ModelNotFound
from app.jsonfile import read_json, write_json
from app.models import families
from app.models.detect import (
    SINGLE_FILE_SUFFIXES,
    UnreadableCheckpoint,
    family_from_weights,
    settle_prediction,
    sidecar_prediction,
    weight_shapes,
)
from app.models.upscalers import UPSCALER_SUBFOLDERS, UPSCALER_SUFFIXES, UpscalerEntry, described

CHECKPOINT_SUBFOLDER = "Stable-diffusion"  # A1111's names; users already know them
VAE_SUBFOLDER = "VAE"
DIFFUSERS = "diffusers"
SINGLE_FILE = "single-file"
HASH_CHUNK = 16 * 2**20


@dataclass(frozen=True)
class ModelEntry:
    title: str                  # what the user picks; unique; A1111 clients send it back
    name: str                   # A1111's "Model:" value: the file or folder name without extension
    path: Path
    family: str | None          # one of app.models.families; None when unusable (see problem)
    layout: str = DIFFUSERS     # DIFFUSERS (a folder with model_index.json) or SINGLE_FILE
    model_hash: str | None = None   # A1111 short hash (10 hex of sha256), once computed
    demo: bool = False          # a tiny random model: draws noise, says so
    family_source: str = "weights"  # weights, sidecar, override, default (v-prediction assumed)
    problem: str | None = None  # why this file cannot be loaded, as a sentence


@dataclass(frozen=True)
class VaeEntry:
    title: str
    path: Path


def diffusers_family(folder: Path) -> str:
    """The family of a diffusers folder, read from its configs (no weights loaded)."""
    index = read_json(folder / "model_index.json")
    if index.get("_class_name") == "StableDiffusionUpscalePipeline":
        return families.X4_UPSCALER
    inpaint = read_json(folder / "unet" / "config.json").get("in_channels") == 9
    # OpenAI CLIP (SD 1.x) uses quick_gelu; OpenCLIP ViT-H (SD 2.x) uses gelu.
    sd2 = read_json(folder / "text_encoder" / "config.json").get("hidden_act") == "gelu"
    if not sd2:
        return families.SD1_INPAINT if inpaint else families.SD1
    if inpaint:
        return families.SD2_INPAINT
    v_prediction = read_json(folder / "scheduler" / "scheduler_config.json").get("prediction_type") == "v_prediction"
    return families.SD2_V if v_prediction else families.SD2


class FileFacts:
    """What was learnt about each checkpoint file (sha256, family), cached on disk by path,
    size and modification time, so a start does not re-read gigabytes."""

    def __init__(self, cache_file: Path | None):
        self._file = cache_file
        self._facts: dict[str, dict] = read_json(cache_file) if cache_file else {}

    def get(self, path: Path, key: str):
        record = self._facts.get(str(path))
        return record.get(key) if record and record.get("stamp") == _stamp(path) else None

    def put(self, path: Path, key: str, value) -> None:
        stamp = _stamp(path)
        record = self._facts.get(str(path))
        if not record or record.get("stamp") != stamp:
            record = self._facts[str(path)] = {"stamp": stamp}
        record[key] = value
        self._save()

    def _save(self) -> None:
        if self._file is None:
            return
        try:
            write_json(self._file, self._facts)
        except OSError:
            pass  # a cache: losing it costs time, not correctness


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ModelRegistry:
    """The checkpoints under `<models_dir>/Stable-diffusion/` (and any extra folders, e.g. the demo)."""

    def __init__(self, models_dir: Path, extra_roots: tuple[Path, ...] = (), cache_file: Path | None = None):
        self.models_dir = Path(models_dir)
        self.checkpoint_dir = self.models_dir / CHECKPOINT_SUBFOLDER
        self.vae_dir = self.models_dir / VAE_SUBFOLDER
        self.upscaler_dirs = tuple(self.models_dir / name for name in UPSCALER_SUBFOLDERS)
        self._roots = (self.checkpoint_dir, *map(Path, extra_roots))
        self._facts = FileFacts(cache_file)
        self._overrides_file = self.models_dir / "model-settings.json"
        self._entries: list[ModelEntry] = []
        self._vaes: list[VaeEntry] = []
        self._upscalers: list[UpscalerEntry] = []

    @property
    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    @property
    def vaes(self) -> list[VaeEntry]:
        return list(self._vaes)

    @property
    def upscalers(self) -> list[UpscalerEntry]:
        """The ESRGAN-family upscaler files, usable ones first."""
        return list(self._upscalers)

    def find_upscaler(self, name: str) -> UpscalerEntry:
        for entry in self._upscalers:
            if name in (entry.name, entry.path.name):
                return entry
        names = ", ".join(e.name for e in self._upscalers) or "none"
        raise ModelNotFound(f"There is no upscaler named '{name}' in {self.upscaler_dirs[0]}. Available: {names}.")

    def refresh(self) -> list[ModelEntry]:
        """Scan again: files added or removed since the last scan appear or disappear."""
        found: dict[str, ModelEntry] = {}
        for root in self._roots:
            for entry in self._scan(root):
                found.setdefault(entry.title, entry)
        # Usable real models first, then the demo, then files that cannot be used.
        self._entries = sorted(found.values(), key=lambda e: (e.problem is not None, e.demo, e.title.lower()))
        self._vaes = [
            VaeEntry(path.relative_to(self.vae_dir).as_posix(), path)
            for path in sorted(self.vae_dir.rglob("*")) if path.suffix in SINGLE_FILE_SUFFIXES
        ] if self.vae_dir.is_dir() else []
        self._upscalers = self._scan_upscalers()
        return self.entries

    def find(self, title: str) -> ModelEntry:
        """By title, name or file name; A1111 clients may add " [hash]" to a title."""
        wanted = title.strip()
        bare = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
        for entry in self._entries:
            if bare in (entry.title, entry.name, entry.path.name):
                return entry
        names = ", ".join(e.title for e in self._entries) or "none"
        raise ModelNotFound(
            f"There is no checkpoint named '{title}'. Available: {names}. Press refresh after adding files."
        )

    def with_hash(self, entry: ModelEntry) -> ModelEntry:
        """The entry with its A1111 short hash, hashing the file once (cached on disk)."""
        if entry.layout != SINGLE_FILE or entry.model_hash:
            return entry
        sha256 = self._facts.get(entry.path, "sha256")
        if sha256 is None:
            sha256 = file_sha256(entry.path)
            self._facts.put(entry.path, "sha256", sha256)
        hashed = replace(entry, model_hash=sha256[:10])
        self._entries = [hashed if e.title == entry.title else e for e in self._entries]
        return hashed

    def set_prediction(self, title: str, prediction: str | None) -> ModelEntry:
        """Remember the user's v-prediction ("v") or epsilon ("epsilon") choice for an SD 2.x model."""
        entry = self.find(title)
        overrides = read_json(self._overrides_file)
        overrides.setdefault(entry.title, {})["prediction"] = prediction
        write_json(self._overrides_file, overrides)
        self.refresh()
        return self.find(title)

    # --- scanning ------------------------------------------------------------------------

    def _scan(self, root: Path) -> list[ModelEntry]:
        if not root.is_dir():
            return []
        folders = sorted(index.parent for index in root.rglob("model_index.json"))
        entries = [self._diffusers_entry(folder, root) for folder in folders]
        for path in sorted(root.rglob("*")):
            inside_a_folder_model = any(folder in path.parents for folder in folders)
            if path.suffix in SINGLE_FILE_SUFFIXES and path.is_file() and not inside_a_folder_model:
                entries.append(self._single_file_entry(path, root))
        return entries

    def _diffusers_entry(self, folder: Path, root: Path) -> ModelEntry:
        return ModelEntry(
            title=folder.relative_to(root).as_posix(),
            name=folder.name,
            path=folder,
            family=diffusers_family(folder),
            demo=bool(read_json(folder / "easel_demo.json").get("demo")),
        )

    def _single_file_entry(self, path: Path, root: Path) -> ModelEntry:
        title = path.relative_to(root).as_posix()
        entry = ModelEntry(title=title, name=path.stem, path=path, family=None, layout=SINGLE_FILE)
        sha256 = self._facts.get(path, "sha256")
        if sha256:
            entry = replace(entry, model_hash=sha256[:10])
        try:
            weights_family = self._weights_family(path)
        except UnreadableCheckpoint as unreadable:
            return replace(entry, problem=f"Easel cannot use '{title}': {unreadable.reason}")
        override = read_json(self._overrides_file).get(title, {}).get("prediction")
        detection = settle_prediction(weights_family, sidecar_prediction(path), override)
        return replace(entry, family=detection.family, family_source=detection.source)

    def _weights_family(self, path: Path) -> str:
        cached = self._facts.get(path, "family")
        if cached:
            return cached
        family = family_from_weights(weight_shapes(path))
        self._facts.put(path, "family", family)
        return family

    def _scan_upscalers(self) -> list[UpscalerEntry]:
        found: dict[str, UpscalerEntry] = {}
        for folder in self.upscaler_dirs:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix in UPSCALER_SUFFIXES and path.is_file() and path.stem not in found:
                    found[path.stem] = self._upscaler_entry(path)
        return sorted(found.values(), key=lambda e: (e.problem is not None, e.name.lower()))

    def _upscaler_entry(self, path: Path) -> UpscalerEntry:
        """Reading an upscaler's weights takes a moment: what they are is cached like the checkpoints'."""
        cached = self._facts.get(path, "upscaler")
        if cached:
            return UpscalerEntry(name=path.stem, path=path, **cached)
        entry = described(path)
        self._facts.put(path, "upscaler", {"scale": entry.scale, "architecture": entry.architecture, "problem": entry.problem})
        return entry
