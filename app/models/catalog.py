"""The checkpoints Easel offers to download (configs/catalog.yaml): what each is, where it comes
from, its size and sha256, and how to install it by hand when Easel cannot reach the internet."""

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from app.errors import EaselError
from app.models.families import Family
from app.settings import APP_DIR

CATALOG_FILE = APP_DIR / "configs" / "catalog.yaml"


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    title: str                # shown to users
    family: Family | None     # None: one file of a helper model (see HelperEntry), not a checkpoint
    repository: str           # Hugging Face "owner/name"
    filename: str             # the file in the repository, and its name in the models folder
    size: int | None          # bytes; None where it could not be verified
    sha256: str | None        # lowercase hex; None where it could not be verified
    licence: str
    description: str
    source_name: str | None = None  # the file's name in the repository when it is saved under another

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repository}/resolve/main/{self.source_name or self.filename}"

    @property
    def page_url(self) -> str:
        return f"https://huggingface.co/{self.repository}"


_CATALOG_KEYS = ("id", "title", "family", "repository", "file", "size", "sha256", "licence", "description")


def _catalog_entry(raw: dict, path: Path) -> CatalogEntry:
    def invalid(problem: str) -> EaselError:
        return EaselError(f"The model catalog {path} is invalid: {problem}. Fix the file or restore the original.")

    missing = [key for key in _CATALOG_KEYS if key not in raw]
    if missing:
        raise invalid(f"{raw.get('id', 'an entry')} lacks {', '.join(missing)}")
    if raw["family"] not in {family.value for family in Family}:
        raise invalid(f"{raw['id']} has the unknown family '{raw['family']}'")
    filename = str(raw["file"])
    # The name becomes a path in the models folder: it must not climb out of it.
    if Path(filename).name != filename or filename in ("", ".", ".."):
        raise invalid(f"{raw['id']} has the file name '{filename}', which is not a plain file name")
    size = raw["size"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise invalid(f"{raw['id']} has the size '{size}'; write a number of bytes or null")
    sha256 = raw["sha256"]
    if sha256 is not None:
        sha256 = str(sha256).lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise invalid(f"{raw['id']} has the sha256 '{raw['sha256']}'; write 64 hex digits or null")
    return CatalogEntry(
        id=str(raw["id"]),
        title=str(raw["title"]),
        family=Family(raw["family"]),
        repository=str(raw["repository"]),
        filename=filename,
        size=size,
        sha256=sha256,
        licence=str(raw["licence"]),
        description=str(raw["description"]),
    )


def _catalog_data(path: Path) -> object:
    """The catalog file's content (checked by each reader for the part it reads)."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as error:  # omegaconf/yaml raise many types; all mean "this file cannot be read"
        raise EaselError(f"The model catalog {path} could not be read ({error}). Restore the original file.") from error


def load_catalog(path: Path = CATALOG_FILE) -> list[CatalogEntry]:
    """The downloads Easel offers, in the catalog's order."""
    path = Path(path)
    data = _catalog_data(path)
    raw_entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(raw_entries, list) or not all(isinstance(raw, dict) for raw in raw_entries):
        raise EaselError(f"The model catalog {path} has no 'models' list. Restore the original file.")
    entries = [_catalog_entry(raw, path) for raw in raw_entries]
    ids = [entry.id for entry in entries]
    if len(set(ids)) != len(ids):
        raise EaselError(f"The model catalog {path} lists an id twice. Fix the file or restore the original.")
    return entries


@dataclass(frozen=True)
class HelperEntry:
    """A model a feature needs beside the checkpoints (the safety checker...): a few files of one
    repository, fetched on first use into `models/<folder>/`."""

    id: str
    title: str
    repository: str
    folder: str               # under the models folder
    files: tuple[str, ...]
    licence: str
    description: str
    # One-file helpers only: the name the file is saved under. A LoRA is known by its file name, and
    # every LCM-LoRA repository calls its file pytorch_lora_weights.safetensors.
    save_as: str | None = None

    def file_entries(self) -> list[CatalogEntry]:
        """Each file as a download (sizes and hashes unverified: the log says so when it is kept)."""
        return [CatalogEntry(f"{self.id}/{name}", f"{self.title} ({name})", None, self.repository,
                             self.save_as or name, None, None, self.licence, self.description,
                             source_name=name if self.save_as else None) for name in self.files]


_HELPER_KEYS = ("id", "title", "repository", "folder", "files", "licence", "description")


def load_helpers(path: Path = CATALOG_FILE) -> list[HelperEntry]:
    """The helper models of the catalog's `helpers` list."""
    path = Path(path)
    data = _catalog_data(path)
    helpers = []
    for raw in (data.get("helpers") or []) if isinstance(data, dict) else []:
        missing = [key for key in _HELPER_KEYS if not isinstance(raw, dict) or key not in raw]
        names = [str(name) for name in raw.get("files") or []] if not missing else []
        save_as = str(raw["save_as"]) if not missing and raw.get("save_as") else None
        checked = names + [str(raw["folder"])] + ([save_as] if save_as else []) if not missing else []
        # Each name becomes a path in the models folder: none may climb out of it.
        if missing or not names or (save_as and len(names) != 1) or any(
                Path(name).name != name or name in (".", "..") for name in checked):
            raise EaselError(f"The model catalog {path} has a helper entry that is incomplete or names a path "
                             "outside its folder. Restore the original file.")
        helpers.append(HelperEntry(str(raw["id"]), str(raw["title"]), str(raw["repository"]), str(raw["folder"]),
                                   tuple(names), str(raw["licence"]), str(raw["description"]), save_as))
    return helpers


def offline_instructions(entry: CatalogEntry, dest_dir: Path) -> str:
    """How to install the file without Easel's help: a browser, then the right folder."""
    return (
        f"To install {entry.title} by hand, open {entry.url} in a web browser (on any computer with "
        f"internet access), save the file {entry.filename} into the folder {dest_dir}, then press refresh."
        if entry.source_name is None else
        f"To install {entry.title} by hand, open {entry.url} in a web browser (on any computer with "
        f"internet access) and save the file {entry.source_name} as {Path(dest_dir) / entry.filename}."
    )
