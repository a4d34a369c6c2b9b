"""The LoRA and textual-inversion files in the models folder: what each is, its A1111 hash, and its
tensors (read once, kept while the file is unchanged).

LoRAs live in `models/Lora/` (and `models/LyCORIS/`, which A1111 still reads), embeddings in
`models/embeddings/`; subfolders are allowed, and a file is known by its name without extension, as
in A1111. A file that cannot be used is still listed, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from app.models.embedding_files import EMBEDDING_SUFFIXES, EmbeddingData, read_embedding
from app.models.file_facts import HASH_CHUNK, FileFacts, file_sha256
from app.models.lora_files import LORA_SUFFIXES, LoraFile, names_known_layers, read_lora
from app.models.safe_weights import UnreadableWeights, safetensors_metadata, tensor_shapes

LORA_SUBFOLDERS = ("Lora", "LyCORIS")  # A1111's names
EMBEDDINGS_SUBFOLDER = "embeddings"
_SHA256 = re.compile(r"^[0-9a-fA-F]{12,64}$")


@dataclass(frozen=True)
class LoraEntry:
    name: str                 # the file name without extension: what `<lora:name>` says
    alias: str                # kohya's `ss_output_name`, also accepted in a tag (A1111's alias)
    path: Path
    metadata: dict = field(default_factory=dict)  # the safetensors `__metadata__`, JSON values parsed
    problem: str | None = None


@dataclass(frozen=True)
class EmbeddingEntry:
    name: str                 # the file name without extension: the word that uses it in a prompt
    path: Path
    data: EmbeddingData | None = None
    problem: str | None = None


@dataclass(frozen=True)
class EmbeddingsReport:
    """The embeddings for one text-encoder width, as A1111's `GET /sdapi/v1/embeddings` splits them."""

    loaded: list[EmbeddingEntry]      # usable with the active model
    skipped: list[EmbeddingEntry]     # made for another width (another model family)
    unreadable: list[EmbeddingEntry]  # files that are no embedding, each with its problem


@dataclass(frozen=True)
class NetworkFolders:
    """Where users put LoRAs and embeddings (the page names them)."""

    loras: Path
    embeddings: Path


# How many parsed LoRA files stay in memory between jobs (a full SD 1.5 LoRA is 10-200 MB). The ones
# the weights carry are the most recent, so a job asking for them again finds them (lora_patch).
PARSED_LORAS_KEPT = 4


class NetworkLibrary:
    def __init__(self, models_dir: Path, cache_file: Path | None = None):
        self.lora_dirs = tuple(Path(models_dir) / name for name in LORA_SUBFOLDERS)
        self.embeddings_dir = Path(models_dir) / EMBEDDINGS_SUBFOLDER
        self._facts = FileFacts(cache_file)
        self._lock = threading.RLock()  # the worker and the page's or API's threads read and refresh
        self._loras: list[LoraEntry] = []
        self._embeddings: list[EmbeddingEntry] = []
        self._embedding_stamps: dict[Path, list[int]] = {}
        # The LoRAs parsed last, most recent last: a few, not every file a long session ever used.
        self._parsed: OrderedDict[Path, tuple[list[int], LoraFile]] = OrderedDict()

    @property
    def folders(self) -> NetworkFolders:
        return NetworkFolders(self.lora_dirs[0], self.embeddings_dir)

    # --- LoRAs ---------------------------------------------------------------------------

    @property
    def loras(self) -> list[LoraEntry]:
        return list(self._loras)

    def refresh_loras(self) -> list[LoraEntry]:
        with self._lock:
            found: dict[str, LoraEntry] = {}
            for folder in self.lora_dirs:
                for path in _files(folder, LORA_SUFFIXES):
                    if path.stem not in found:
                        found[path.stem] = _lora_entry(path)
            self._loras = sorted(found.values(), key=lambda e: (e.problem is not None, e.name.lower()))
            self._parsed = OrderedDict((path, parsed) for path, parsed in self._parsed.items() if path.is_file())
            return self.loras

    def find_lora(self, name: str) -> LoraEntry | None:
        """By file name first, then by alias, as A1111 looks a tag's name up."""
        for entry in self._loras:
            if entry.name == name:
                return entry
        return next((entry for entry in self._loras if entry.alias == name), None)

    def lora_file(self, entry: LoraEntry) -> LoraFile:
        """The file's layers, parsed once while the file is unchanged. Raises UnreadableWeights."""
        stamp = _stamp(entry.path)
        with self._lock:
            cached = self._parsed.get(entry.path)
            if cached and cached[0] == stamp:
                self._parsed.move_to_end(entry.path)
                return cached[1]
        parsed = read_lora(entry.path)
        with self._lock:
            self._parsed[entry.path] = (stamp, parsed)
            self._parsed.move_to_end(entry.path)
            while len(self._parsed) > PARSED_LORAS_KEPT:
                self._parsed.popitem(last=False)
        return parsed

    def lora_hash(self, entry: LoraEntry) -> str:
        """A1111's short hash: 12 hex of the kohya `sshs_model_hash`, else of the sha256 of the
        tensor data ("addnet hash") of a safetensors file, or of the whole file otherwise."""
        declared = entry.metadata.get("sshs_model_hash")
        if isinstance(declared, str) and _SHA256.match(declared):  # never markup from a file into the page
            return declared[:12].lower()
        safetensors = entry.path.suffix == ".safetensors"
        return self._sha256(entry.path, "addnet_sha256" if safetensors else "sha256",
                            addnet_sha256 if safetensors else file_sha256)[:12]

    # --- embeddings ----------------------------------------------------------------------

    @property
    def embeddings(self) -> list[EmbeddingEntry]:
        return list(self._embeddings)

    def refresh_embeddings(self) -> list[EmbeddingEntry]:
        """Read the folder again; only new or changed files are read (A1111 looks before each job too)."""
        with self._lock:
            previous = {entry.path: entry for entry in self._embeddings}
            found: dict[str, EmbeddingEntry] = {}
            stamps: dict[Path, list[int]] = {}
            for path in _files(self.embeddings_dir, EMBEDDING_SUFFIXES):
                if path.stem in found:
                    continue
                stamps[path] = _stamp(path)
                unchanged = path in previous and self._embedding_stamps.get(path) == stamps[path]
                found[path.stem] = previous[path] if unchanged else _embedding_entry(path)
            self._embeddings = sorted(found.values(), key=lambda e: e.name.lower())
            self._embedding_stamps = stamps
            return self.embeddings

    def embeddings_for(self, width: int | None) -> EmbeddingsReport:
        """Split by the active text encoder's width (None, no model: all are loaded, as in A1111)."""
        readable = [e for e in self._embeddings if e.data is not None]
        return EmbeddingsReport(
            loaded=[e for e in readable if width is None or e.data.width == width],
            skipped=[e for e in readable if width is not None and e.data.width != width],
            unreadable=[e for e in self._embeddings if e.data is None],
        )

    def embedding_hash(self, entry: EmbeddingEntry) -> str:
        """A1111's short hash of an embedding: 12 hex of the whole file's sha256."""
        return self._sha256(entry.path, "sha256", file_sha256)[:12]

    def _sha256(self, path: Path, key: str, compute) -> str:
        with self._lock:
            digest = self._facts.get(path, key)
            if digest is None:
                digest = compute(path)
                self._facts.put(path, key, digest)
            return digest


def addnet_sha256(path: Path) -> str:
    """sha256 of a safetensors file after its JSON header (A1111's `addnet_hash_safetensors`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_length)
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def parsed_metadata(path: Path) -> dict:
    """`__metadata__`, with values that hold JSON objects parsed (A1111's `read_metadata_from_safetensors`)."""
    metadata: dict = {}
    for key, value in safetensors_metadata(path).items():
        metadata[key] = value
        if isinstance(value, str) and value.startswith("{"):
            try:
                metadata[key] = json.loads(value)
            except ValueError:
                pass
    return metadata


def _lora_entry(path: Path) -> LoraEntry:
    try:
        metadata = parsed_metadata(path) if path.suffix == ".safetensors" else {}
        keys = list(tensor_shapes(path))
    except UnreadableWeights as unreadable:
        return LoraEntry(path.stem, path.stem, path, problem=f"Easel cannot use the LoRA '{path.name}': {unreadable.reason}")
    alias = metadata.get("ss_output_name")
    entry = LoraEntry(path.stem, alias if isinstance(alias, str) and alias else path.stem, path, metadata)
    if not names_known_layers(keys):
        problem = (f"Easel does not know the layout of '{path.name}': none of its keys names a UNet or text-encoder "
                   "layer as kohya, LyCORIS, diffusers or PEFT write them.")
        return LoraEntry(entry.name, entry.alias, path, metadata, problem)
    return entry


def _embedding_entry(path: Path) -> EmbeddingEntry:
    try:
        return EmbeddingEntry(path.stem, path, data=read_embedding(path))
    except UnreadableWeights as unreadable:
        return EmbeddingEntry(path.stem, path, problem=f"Easel cannot use the embedding '{path.name}': {unreadable.reason}")


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    return [path for path in sorted(folder.rglob("*")) if path.suffix.lower() in suffixes and path.is_file()]


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]
