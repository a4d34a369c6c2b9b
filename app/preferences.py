"""What the user chose last time (prompt, sampler, size, ...), kept in a small JSON file so the page
opens the way they left it. Written atomically; an unreadable file is set aside, never fatal."""

import json
import os
import threading
from pathlib import Path

from app.jsonfile import write_json


class Preferences:
    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._data = self._read()

    def section(self, name: str) -> dict:
        """The remembered values of one part of the page (e.g. "txt2img"); {} if none."""
        return dict(self._data.get(name, {}))

    def remember(self, name: str, values: dict) -> None:
        plain = {key: value for key, value in values.items() if _storable(value)}
        with self._lock:
            self._data[name] = plain
            self._write()

    def forget(self, name: str) -> None:
        with self._lock:
            self._data.pop(name, None)
            self._write()

    def _read(self) -> dict:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            # Keep the damaged file for the curious, start clean.
            try:
                os.replace(self.path, self.path.with_suffix(".damaged.json"))
            except OSError:
                pass
            return {}

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            write_json(self.path, self._data)
        except OSError:
            pass  # not remembering a slider is no reason to fail a generation


def _storable(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
