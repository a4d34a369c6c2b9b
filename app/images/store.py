"""The outputs folder: the only code that writes generated images to disk.

Layout and names are A1111's, which users and their tools know:
`<root>/<category>/<YYYY-MM-DD>/<NNNNN>-<seed>.png`, NNNNN counting up from 00000 per folder.
An existing file is never overwritten, even by another thread or process saving at the same time.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from PIL import Image

from app.errors import OutputError
from app.images.metadata import png_pnginfo

CATEGORIES = ("txt2img-images", "img2img-images", "extras-images")
DATE_FORMAT = "%Y-%m-%d"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_TEMP_PREFIX = ".easel-"
_TEMP_SUFFIX = ".tmp"
# A1111 names start with the sequence number; anything after it (seed, prompt words) varies.
_SEQUENCE_PATTERN = re.compile(r"^(\d{5,})[-.]")
# Errors of os.link that mean "this filesystem has no hard links", not "this save failed".
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV}


class OutputStore:
    """Saves images with their infotext under `root`, and lists the latest ones."""

    def __init__(self, root: Path, clock: Callable[[], datetime] = datetime.now):
        self.root = Path(root)
        self._clock = clock
        # The filesystem alone already prevents overwrites; the lock only keeps this process's
        # savers from racing for the same number and retrying.
        self._naming_lock = threading.Lock()

    def save(self, image: Image.Image, parameters: str, category: str, seed: int | None) -> Path:
        """Write `image` as PNG with `parameters` as its A1111 infotext; the new file's path.

        Raises OutputError when the folder cannot be written (permissions, disk full).
        """
        folder = self.folder(category)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Encode into a hidden temp file first, so a final name only ever appears complete.
            fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=folder)
        except OSError as error:
            raise output_error(folder, error) from error
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as file:
                image.save(file, format="PNG", pnginfo=png_pnginfo(parameters))
                file.flush()
                os.fsync(file.fileno())
            with self._naming_lock:
                path = publish(temp, folder, seed)
        except OSError as error:
            raise output_error(folder, error) from error
        finally:
            temp.unlink(missing_ok=True)
        sync_folder(folder)
        return path

    def recent(self, category: str | None = None, limit: int = 50) -> list[Path]:
        """The latest saved images, newest first, from one category or all of them."""
        categories = CATEGORIES if category is None else (check_category(category),)
        images = [
            path
            for name in categories
            for day in subfolders(self.root / name)
            for path in day.iterdir()
            if is_output_image(path)
        ]
        images.sort(key=newness, reverse=True)
        return images[: max(limit, 0)]

    def folder(self, category: str) -> Path:
        """Today's folder (by the store's clock) for `category`."""
        return self.root / check_category(category) / self._clock().strftime(DATE_FORMAT)


def check_category(category: str) -> str:
    if category not in CATEGORIES:
        raise ValueError(f"unknown output category {category!r}; expected one of {CATEGORIES}")
    return category


def publish(temp: Path, folder: Path, seed: int | None) -> Path:
    """Give the finished `temp` file the next free `NNNNN-<seed>.png` name in `folder`
    (`NNNNN.png` without a seed, as A1111 names its extras).

    A hard link is created only if the name is free, atomically: two savers (threads or
    processes) can never end up with the same file. On a collision the next number is tried.
    """
    number = next_sequence_number(folder)
    while True:
        path = folder / (f"{number:05}-{seed}.png" if seed is not None else f"{number:05}.png")
        try:
            link_if_absent(temp, path)
            return path
        except FileExistsError:
            number += 1


def link_if_absent(source: Path, target: Path) -> None:
    """Make `target` the content of `source`; FileExistsError if `target` exists."""
    try:
        os.link(source, target)
        return
    except OSError as error:
        if isinstance(error, FileExistsError) or error.errno not in _NO_HARD_LINKS:
            raise
    # No hard links here (some network or FAT filesystems): claim the name with O_EXCL, then
    # move the finished file onto the claimed, still empty, name.
    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    try:
        os.replace(source, target)
    except OSError:
        target.unlink(missing_ok=True)
        raise


def next_sequence_number(folder: Path) -> int:
    """1 + the highest sequence number among `folder`'s files; 0 for an empty folder."""
    numbers = (sequence_number(path.name) for path in folder.iterdir())
    return max(numbers, default=-1) + 1


def sequence_number(name: str) -> int:
    """The leading sequence number of an A1111 output name, or -1 if it has none."""
    match = _SEQUENCE_PATTERN.match(name)
    return int(match.group(1)) if match else -1


def subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [path for path in folder.iterdir() if path.is_dir()]


def is_output_image(path: Path) -> bool:
    return (
        not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
    )


def newness(path: Path) -> tuple[str, int, int]:
    """Sort key, larger is newer: the date folder, then modification time, then the number.

    The date folder comes first because it survives copying files around; within one folder
    the numbers break ties between files written in the same clock tick.
    """
    try:
        modified = path.stat().st_mtime_ns
    except OSError:  # deleted since it was listed
        modified = 0
    return (path.parent.name, modified, sequence_number(path.name))


def sync_folder(folder: Path) -> None:
    """Persist the new directory entry; best effort, as not every platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def output_error(folder: Path, error: OSError) -> OutputError:
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "Free some disk space, then generate again."
    else:
        advice = (
            "Check that the folder exists and that Easel may write there, or point Easel at "
            "another outputs folder, then generate again."
        )
    return OutputError(f"Could not save the image in {folder}: {reason}. {advice}")
