"""Finds the checkpoints in the models folder and tells which family each one is.

Users drop A1111-style single files (`.safetensors`, `.ckpt`) or diffusers folders into
`models/Stable-diffusion/` (subfolders allowed), VAEs into `models/VAE/` and ESRGAN-family
upscalers into `models/ESRGAN/`; `refresh()` picks up
what was added or removed. A file that cannot be used still gets an entry, with the reason, so the
user sees why instead of wondering where it went.
"""

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from app.errors import ModelNotFound
from app.jsonfile import read_json, write_json
from app.models.detect import (
    SINGLE_FILE_SUFFIXES,
    FamilySource,
    Prediction,
    family_from_weights,
    settle_prediction,
    sidecar_prediction,
)
from app.models.families import Family
from app.models.file_facts import FileFacts, file_sha256
from app.models.safe_weights import UnreadableWeights, tensor_shapes
from app.models.upscalers import UPSCALER_SUBFOLDERS, UPSCALER_SUFFIXES, UpscalerEntry, described

CHECKPOINT_SUBFOLDER = "Stable-diffusion"  # A1111's names; users already know them
VAE_SUBFOLDER = "VAE"


class Layout(str, Enum):
    DIFFUSERS = "diffusers"      # a folder with model_index.json
    SINGLE_FILE = "single-file"  # an A1111-style .safetensors / .ckpt


@dataclass(frozen=True)
class ModelEntry:
    title: str                  # what the user picks; unique; A1111 clients send it back
    name: str                   # A1111's "Model:" value: the file or folder name without extension
    path: Path
    family: Family | None       # None when unusable (see problem)
    layout: Layout = Layout.DIFFUSERS
    model_hash: str | None = None   # A1111 short hash (10 hex of sha256), once computed
    demo: bool = False          # a tiny random model: draws noise, says so
    family_source: FamilySource = FamilySource.WEIGHTS
    problem: str | None = None  # why this file cannot be loaded, as a sentence

    @property
    def a1111_title(self) -> str:
        """A1111's title: "name [hash]" once the hash is known (what its clients and dropdown show)."""
        return f"{self.title} [{self.model_hash}]" if self.model_hash else self.title

    @property
    def usable(self) -> bool:
        return self.problem is None and self.family is not None

    @property
    def prediction_is_a_choice(self) -> bool:
        """An SD 2.x single file: nothing in its weights says v or epsilon, so the user may choose."""
        return self.layout is Layout.SINGLE_FILE and self.family in (Family.SD2, Family.SD2_V)


@dataclass(frozen=True)
class ModelFolders:
    """Where users put each kind of file (the page and the launcher name them)."""

    checkpoints: Path
    vaes: Path
    upscalers: Path


@dataclass(frozen=True)
class VaeEntry:
    title: str
    path: Path


def diffusers_family(folder: Path) -> Family:
    """The family of a diffusers folder, read from its configs (no weights loaded)."""
    index = read_json(folder / "model_index.json")
    if index.get("_class_name") == "StableDiffusionUpscalePipeline":
        return Family.X4_UPSCALER
    if index.get("_class_name") == "StableDiffusionDepth2ImgPipeline":
        return Family.SD2_DEPTH
    inpaint = read_json(folder / "unet" / "config.json").get("in_channels") == 9
    # OpenAI CLIP (SD 1.x) uses quick_gelu; OpenCLIP ViT-H (SD 2.x) uses gelu.
    sd2 = read_json(folder / "text_encoder" / "config.json").get("hidden_act") == "gelu"
    if not sd2:
        return Family.SD1_INPAINT if inpaint else Family.SD1
    if inpaint:
        return Family.SD2_INPAINT
    v_prediction = read_json(folder / "scheduler" / "scheduler_config.json").get("prediction_type") == "v_prediction"
    return Family.SD2_V if v_prediction else Family.SD2


def selectable(entries: list[ModelEntry]) -> list[ModelEntry]:
    """The checkpoints that can be made the active one (every usable one but the x4 upscalers)."""
    return [e for e in entries if e.usable and e.family.is_checkpoint]


def generating(entries: list[ModelEntry]) -> list[ModelEntry]:
    """The checkpoints that make pictures from a prompt (not inpainting-only, not upscalers)."""
    return [e for e in entries if e.usable and e.family.makes_images]


def find_checkpoint(entries: list[ModelEntry], title: str) -> ModelEntry:
    """By title, name or file name; A1111 clients may add " [hash]" to a title."""
    wanted = title.strip()
    bare = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
    for entry in entries:
        if bare in (entry.title, entry.name, entry.path.name):
            return entry
    names = ", ".join(e.title for e in entries) or "none"
    raise ModelNotFound(f"There is no checkpoint named '{title}'. Available: {names}. Press refresh after adding files.")


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
    def folders(self) -> ModelFolders:
        return ModelFolders(checkpoints=self.checkpoint_dir, vaes=self.vae_dir, upscalers=self.upscaler_dirs[0])

    @property
    def entries(self) -> list[ModelEntry]:
        """Every checkpoint file, usable ones first; unusable ones carry the reason."""
        return list(self._entries)

    def selectable(self) -> list[ModelEntry]:
        return selectable(self._entries)

    def generating(self) -> list[ModelEntry]:
        return generating(self._entries)

    def x4_upscalers(self) -> list[ModelEntry]:
        """The SD x4 diffusion upscaler checkpoints."""
        return [e for e in self._entries if e.usable and e.family is Family.X4_UPSCALER]

    @property
    def vaes(self) -> list[VaeEntry]:
        return list(self._vaes)

    @property
    def upscalers(self) -> list[UpscalerEntry]:
        """The ESRGAN-family upscaler files, usable ones first; unusable ones carry the reason."""
        return list(self._upscalers)

    def networks(self) -> list[UpscalerEntry]:
        """The usable ESRGAN-family upscalers."""
        return [e for e in self._upscalers if e.problem is None]

    def find_upscaler(self, name: str) -> UpscalerEntry:
        for entry in self._upscalers:
            if name in (entry.name, entry.path.name):
                return entry
        names = ", ".join(e.name for e in self._upscalers) or "none"
        raise ModelNotFound(f"There is no upscaler named '{name}' in {self.upscaler_dirs[0]}. Available: {names}.")

    def find_vae(self, title: str) -> VaeEntry:
        for vae in self._vaes:
            if title in (vae.title, vae.path.name):
                return vae
        names = ", ".join(v.title for v in self._vaes) or "none"
        raise ModelNotFound(f"There is no VAE named '{title}' in {self.vae_dir}. Available: {names}.")

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
        return find_checkpoint(self._entries, title)

    def with_hash(self, entry: ModelEntry) -> ModelEntry:
        """The entry with its A1111 short hash, hashing the file once (cached on disk)."""
        if entry.layout is not Layout.SINGLE_FILE or entry.model_hash:
            return entry
        sha256 = self._facts.get(entry.path, "sha256")
        if sha256 is None:
            sha256 = file_sha256(entry.path)
            self._facts.put(entry.path, "sha256", sha256)
        hashed = replace(entry, model_hash=sha256[:10])
        self._entries = [hashed if e.title == entry.title else e for e in self._entries]
        return hashed

    def set_prediction(self, title: str, prediction: Prediction | None) -> ModelEntry:
        """Remember the user's v-prediction or epsilon choice for an SD 2.x model (None: forget it)."""
        entry = self.find(title)
        overrides = read_json(self._overrides_file)
        overrides.setdefault(entry.title, {})["prediction"] = prediction.value if prediction else None
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
        entry = ModelEntry(title=title, name=path.stem, path=path, family=None, layout=Layout.SINGLE_FILE)
        sha256 = self._facts.get(path, "sha256")
        if sha256:
            entry = replace(entry, model_hash=sha256[:10])
        try:
            weights_family = self._weights_family(path)
        except UnreadableWeights as unreadable:
            return replace(entry, problem=f"Easel cannot use '{title}': {unreadable.reason}")
        override = read_json(self._overrides_file).get(title, {}).get("prediction")
        detection = settle_prediction(weights_family, sidecar_prediction(path), Prediction(override) if override else None)
        return replace(entry, family=detection.family, family_source=detection.source)

    def _weights_family(self, path: Path) -> Family:
        cached = self._facts.get(path, "family")
        if cached in {family.value for family in Family}:
            return Family(cached)
        family = family_from_weights(tensor_shapes(path))
        self._facts.put(path, "family", family.value)
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
