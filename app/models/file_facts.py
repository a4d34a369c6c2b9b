"""What was learnt about each model file (sha256, family, an upscaler's scale), cached on disk by
path, size and modification time, so a start does not re-read gigabytes."""

import hashlib
from pathlib import Path

from app.jsonfile import read_json, write_json

HASH_CHUNK = 16 * 2**20


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
