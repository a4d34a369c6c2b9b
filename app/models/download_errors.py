"""What a failed download tells the user: what went wrong, what was kept, and what to do next
(including how to install the file by hand)."""

from pathlib import Path

import httpx

from app.errors import EaselError
from app.models.catalog import CatalogEntry, offline_instructions

CANCELLED_MESSAGE = "Download cancelled; it resumes where it stopped next time."


class DownloadError(EaselError):
    """A model download failed or was cancelled. `message` says what to do next."""


class DownloadCancelled(DownloadError):
    """The user stopped the download: a UI may show this as a state rather than an error."""


def size_text(size: int | None) -> str:
    if size is None:
        return "an unknown amount"
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.1f} MB"


def host_of(url: str) -> str:
    try:
        return httpx.URL(url).host or url
    except httpx.InvalidURL:
        return url


def interrupted_error(entry: CatalogEntry, dest_dir: Path, done: int, total: int | None, reason: str) -> DownloadError:
    return DownloadError(
        f"The download of {entry.filename} was interrupted after {size_text(done)} of "
        f"{size_text(total)} ({reason}). Download it again: it resumes where it stopped. "
        + offline_instructions(entry, dest_dir)
    )


def kept_text(done: int) -> str:
    if not done:
        return ""
    return f" The {size_text(done)} already downloaded are kept: the next try resumes from there."


def disk_full_error(entry: CatalogEntry, dest_dir: Path, needed: int | None) -> DownloadError:
    return DownloadError(
        f"There is not enough free space in {dest_dir}: {entry.filename} needs {size_text(needed)} more. "
        f"Free some space on that disk and download it again; it resumes where it stopped."
    )


def http_error(code: int, entry: CatalogEntry, dest_dir: Path, host: str) -> DownloadError:
    if code in (401, 403):
        # Hugging Face answers 401/403 for gated repositories. Easel never sends a login token,
        # so the user has to accept the licence and download the file in a browser.
        return DownloadError(
            f"{host} refused to send {entry.filename} (HTTP {code}): the repository {entry.repository} "
            f"asks you to accept its licence on huggingface.co while logged in. Open {entry.page_url}, "
            f"log in and accept the licence there. " + offline_instructions(entry, dest_dir)
        )
    if code == 404:
        return DownloadError(
            f"{host} has no file {entry.filename} in {entry.repository} (HTTP 404): it was moved, renamed "
            f"or removed, or the repository is now private. Check {entry.page_url} for the file."
        )
    if code == 429 or code >= 500:
        return DownloadError(
            f"{host} could not send {entry.filename} just now (HTTP {code}). Try again in a few minutes. "
            + offline_instructions(entry, dest_dir)
        )
    return DownloadError(f"{host} refused the download (HTTP {code}). " + offline_instructions(entry, dest_dir))
