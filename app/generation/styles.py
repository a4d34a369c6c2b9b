"""Saved styles, as A1111 keeps them: a `styles.csv` of `name,prompt,negative_prompt`, and their
application to a prompt (A1111's modules/styles.py).

A style's text with `{prompt}` in it has the user's prompt put there; any other style text is
appended after ", " (and an empty one adds nothing). The negative prompt works the same way, and
several styles apply in the order chosen.

A malformed file (an unclosed quote, no header line, bytes that are not UTF-8) is reported once,
with its line, and gives no styles: the app still starts, and a save never overwrites the file
the user has to fix.
"""

import csv
import io
import logging
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from app.errors import EaselError, InvalidRequest
from app.validation import text

log = logging.getLogger(__name__)

PROMPT_SLOT = "{prompt}"
COLUMNS = ("name", "prompt", "negative_prompt")
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


class StylesFileError(EaselError):
    """The styles file cannot be read; `message` names the line to fix."""


def merged(style_text: str, prompt: str) -> str:
    """One style applied to one prompt, as A1111's merge_prompts does."""
    if PROMPT_SLOT in style_text:
        return style_text.replace(PROMPT_SLOT, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def expanded(prompt: str, negative_prompt: str, styles: list[Style]) -> tuple[str, str]:
    """The prompt and negative prompt with `styles` applied in order."""
    for style in styles:
        prompt = merged(style.prompt, prompt)
        negative_prompt = merged(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def with_styles(request, book: "StyleBook"):
    """A GenerationRequest with its chosen styles expanded into its prompts. The names are consumed,
    so a request is never expanded twice; the infotext records the expanded prompts, as A1111's."""
    names = request.styles
    if not names:
        return request
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise InvalidRequest("styles must be a list of saved styles' names, e.g. [\"Cinematic\"].")
    chosen = book.chosen(list(names))
    prompt, negative = expanded(text(request.prompt, "prompt"), text(request.negative_prompt, "negative prompt"), chosen)
    changes = dict(prompt=prompt, negative_prompt=negative, styles=[])
    # Hires fix's own prompts are styled too, as A1111 does; left empty, they take the styled ones.
    hr_prompt, hr_negative = getattr(request, "hr_prompt", ""), getattr(request, "hr_negative_prompt", "")
    if hr_prompt or hr_negative:
        hr_prompt, hr_negative = expanded(text(hr_prompt, "hires prompt"), text(hr_negative, "hires negative prompt"), chosen)
        changes.update(hr_prompt=hr_prompt if request.hr_prompt else "",
                       hr_negative_prompt=hr_negative if request.hr_negative_prompt else "")
    return replace(request, **changes)


def parsed_styles(text: str, path: Path) -> list[Style]:
    """The styles in a styles.csv's text; StylesFileError naming the line for a malformed one."""
    if not text.strip():
        return []
    try:
        rows = _rows(text, strict=True)
    except _RowError as strict_error:
        if strict_error.unclosed:
            raise _file_error(path, strict_error.line, "has a quote \" that is never closed") from None
        try:  # A1111 reads `"a"b` as `ab`: so does Easel; only what the lenient reader refuses is fatal
            rows = _rows(text, strict=False)
        except _RowError as error:
            raise _file_error(path, error.line, f"cannot be read ({error.reason})") from None
    rows = [(line, row) for line, row in rows if row]  # blank lines, as A1111's reader skips them
    if not rows:
        return []
    header_line, header = rows[0]
    names = [column.strip().lower() for column in header]
    if "name" not in names:
        raise _file_error(path, header_line, "is not the header line name,prompt,negative_prompt that the file must start with")
    prompt_column = "prompt" if "prompt" in names else "text"  # A1111's oldest files call it "text"
    styles: dict[str, Style] = {}
    for _, row in rows[1:]:
        values = dict(zip(names, row))
        name = values.get("name", "").strip()
        if not name or name.startswith("#"):  # blank rows and comments, as A1111 skips them
            continue
        styles[name] = Style(name, values.get(prompt_column, ""), values.get("negative_prompt", ""))
    return list(styles.values())


class _RowError(Exception):
    def __init__(self, line: int, reason: str):
        self.line, self.reason = line, reason
        self.unclosed = "end of data" in reason


def _rows(text: str, strict: bool) -> list[tuple[int, list[str]]]:
    """Each row with the line it starts on (a quoted field may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=strict)
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as error:
            raise _RowError(start, str(error)) from None
        rows.append((start, row))


def styles_text(styles: list[Style]) -> str:
    """A styles.csv that A1111 (and this module) reads back as `styles`."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for style in styles:
        writer.writerow((style.name, style.prompt, style.negative_prompt))
    return buffer.getvalue()


def _file_error(path: Path, line: int, problem: str) -> StylesFileError:
    return StylesFileError(
        f"The styles file {path} has a problem at line {line}: it {problem}. "
        f"Fix line {line} (or move the file away); until then no saved styles are offered."
    )


class StyleBook:
    """The styles file: read when it changes on disk, written atomically, one writer at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._styles: list[Style] = []
        self._problem: StylesFileError | None = None
        self._refresh()

    def styles(self) -> list[Style]:
        with self._lock:
            self._refresh()
            return list(self._styles)

    def problem(self) -> str | None:
        """Why the file gave no styles (a sentence naming the line), or None."""
        with self._lock:
            self._refresh()
            return self._problem.message if self._problem else None

    def chosen(self, names: list[str]) -> list[Style]:
        """The styles named, in that order; InvalidRequest for a name the file does not hold."""
        by_name = {style.name: style for style in self.styles()}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            problem = self.problem()
            known = ", ".join(sorted(by_name)[:20]) or "none"
            raise InvalidRequest(
                f"There is no saved style called '{unknown[0]}'. "
                + (problem if problem else f"Saved styles: {known}.")
            )
        return [by_name[name] for name in names]

    def save(self, style: Style) -> Style:
        """Add `style`, or replace the one of the same name; the others are kept as they are."""
        name = style.name.strip() if isinstance(style.name, str) else ""
        if not name or len(name) > MAX_NAME_CHARS:
            raise InvalidRequest(f"Give the style a name (at most {MAX_NAME_CHARS} characters) before saving it.")
        style = Style(name, text(style.prompt, "style's prompt"), text(style.negative_prompt, "style's negative prompt"))
        with self._lock:
            self._stamp = None  # read it again now: it may have been edited by hand since
            self._refresh()
            if self._problem is not None:
                raise InvalidRequest(f"The style was not saved, so that nothing in the file is lost. {self._problem.message}")
            kept = [existing for existing in self._styles if existing.name != name]
            at = next((i for i, existing in enumerate(self._styles) if existing.name == name), len(kept))
            styles = kept[:at] + [style] + kept[at:]
            self._write(styles)
            self._styles = styles
            return style

    def _write(self, styles: list[Style]) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(styles_text(styles), encoding="utf-8", newline="")
            os.replace(temporary, self.path)  # one step: a crash never leaves half a file
            self._stamp = _stamp(self.path)
        except OSError as error:
            raise EaselError(f"The styles file {self.path} could not be written ({error.strerror or error}). "
                             "Check that the folder is writable.") from error

    def _refresh(self) -> None:
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self._styles, self._problem = [], None
        if stamp is None:
            return
        try:
            self._styles = parsed_styles(_text_of(self.path), self.path)
        except StylesFileError as error:
            self._problem = error
            log.warning("%s", error.message)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def _text_of(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise StylesFileError(f"The styles file {path} could not be read ({error.strerror or error}). "
                              "Check its permissions.") from error
    try:
        return raw.decode("utf-8-sig")  # A1111 writes and reads it so; Excel adds the BOM
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise _file_error(path, line, "has characters that are not UTF-8 (save the file as UTF-8)") from None
