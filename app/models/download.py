"""Downloads the checkpoints the user picks from configs/catalog.yaml: resumable, checked against known hashes.

Plain httpx, not huggingface_hub: Easel sets HF_HUB_OFFLINE=1 so the ML libraries never go online
on their own, and a download the user asked for must work whatever that switch says.

A download is written to `<file>.part`, a name the model scanner ignores (it lists .safetensors and
.ckpt only), so a half-downloaded file is never offered as a model. It is renamed to `<file>` only
once its size and sha256 match the catalog. A `.part` left by an interruption or a cancel is picked
up where it stopped by the next call.
"""

import errno
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from omegaconf import OmegaConf

from app.errors import EaselError
from app.models.families import Family
from app.settings import APP_DIR

log = logging.getLogger(__name__)

CATALOG_FILE = APP_DIR / "configs" / "catalog.yaml"
PART_SUFFIX = ".part"
PROGRESS_INTERVAL_S = 0.1  # at most ~10 reports a second: each one may redraw a progress bar
HASH_CHUNK_BYTES = 4 << 20
CANCELLED_MESSAGE = "Download cancelled; it resumes where it stopped next time."


class DownloadError(EaselError):
    """A model download failed or was cancelled. `message` says what to do next."""


class DownloadCancelled(DownloadError):
    """The user stopped the download: a UI may show this as a state rather than an error."""


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    title: str                # shown to users
    family: Family
    repository: str           # Hugging Face "owner/name"
    filename: str             # the file in the repository, and its name in the models folder
    size: int | None          # bytes; None where it could not be verified
    sha256: str | None        # lowercase hex; None where it could not be verified
    licence: str
    description: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repository}/resolve/main/{self.filename}"

    @property
    def page_url(self) -> str:
        return f"https://huggingface.co/{self.repository}"


@dataclass(frozen=True)
class DownloadProgress:
    done_bytes: int
    total_bytes: int | None   # None when neither the catalog nor the server says
    bytes_per_second: float   # over this session only: bytes resumed from disk are not counted

    @property
    def fraction(self) -> float | None:
        """How much is done, 0 to 1; None while the total is unknown."""
        if not self.total_bytes:
            return None
        return min(1.0, self.done_bytes / self.total_bytes)


# --- the catalog ---------------------------------------------------------------------------

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


def load_catalog(path: Path = CATALOG_FILE) -> list[CatalogEntry]:
    """The downloads Easel offers, in the catalog's order."""
    path = Path(path)
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as error:  # omegaconf/yaml raise many types; all mean "this file cannot be read"
        raise EaselError(f"The model catalog {path} could not be read ({error}). Restore the original file.") from error
    raw_entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(raw_entries, list) or not all(isinstance(raw, dict) for raw in raw_entries):
        raise EaselError(f"The model catalog {path} has no 'models' list. Restore the original file.")
    entries = [_catalog_entry(raw, path) for raw in raw_entries]
    ids = [entry.id for entry in entries]
    if len(set(ids)) != len(ids):
        raise EaselError(f"The model catalog {path} lists an id twice. Fix the file or restore the original.")
    return entries


# --- messages ------------------------------------------------------------------------------

def offline_instructions(entry: CatalogEntry, dest_dir: Path) -> str:
    """How to install the file without Easel's help: a browser, then the right folder."""
    return (
        f"To install {entry.title} by hand, open {entry.url} in a web browser (on any computer with "
        f"internet access), save the file {entry.filename} into the folder {dest_dir}, then press refresh."
    )


def _size_text(size: int | None) -> str:
    if size is None:
        return "an unknown amount"
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.1f} MB"


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host or url
    except httpx.InvalidURL:
        return url


def _interrupted_error(entry: CatalogEntry, dest_dir: Path, transfer: "_Transfer", reason: str) -> DownloadError:
    return DownloadError(
        f"The download of {entry.filename} was interrupted after {_size_text(transfer.done)} of "
        f"{_size_text(transfer.total)} ({reason}). Download it again: it resumes where it stopped. "
        + offline_instructions(entry, dest_dir)
    )


def _kept_text(done: int) -> str:
    if not done:
        return ""
    return f" The {_size_text(done)} already downloaded are kept: the next try resumes from there."


def _disk_full_error(entry: CatalogEntry, dest_dir: Path, needed: int | None) -> DownloadError:
    return DownloadError(
        f"There is not enough free space in {dest_dir}: {entry.filename} needs {_size_text(needed)} more. "
        f"Free some space on that disk and download it again; it resumes where it stopped."
    )


def _http_error(code: int, entry: CatalogEntry, dest_dir: Path, host: str) -> DownloadError:
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


# --- hashing -------------------------------------------------------------------------------

def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled(CANCELLED_MESSAGE)


def _hash_of_file(path: Path, cancel: threading.Event | None):
    """A sha256 object fed with the file's bytes (so a resumed download can keep feeding it)."""
    hasher = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            _check_cancel(cancel)  # a 5 GB file takes seconds to hash
            hasher.update(chunk)
    return hasher


def _file_matches(path: Path, entry: CatalogEntry, cancel: threading.Event | None) -> bool:
    """Whether a file already in the models folder is the catalog's file."""
    if entry.size is not None and path.stat().st_size != entry.size:
        return False
    if entry.sha256 is None:
        log.warning("%s has no known sha256: keeping %s without checking it", entry.id, path)
        return True
    return _hash_of_file(path, cancel).hexdigest() == entry.sha256


def partial_path(entry: CatalogEntry, dest_dir: Path) -> Path:
    """Where an unfinished download of `entry` is kept."""
    return Path(dest_dir) / (entry.filename + PART_SUFFIX)


# --- the transfer --------------------------------------------------------------------------

@dataclass
class _Transfer:
    """One download's running state: the bytes in the `.part` so far, their hash, progress reports."""

    part: Path
    total: int | None
    on_progress: Callable[[DownloadProgress], None] | None
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    done: int = 0
    received: int = 0  # this session only, for the rate
    started: float = field(default_factory=time.monotonic)
    last_report: float = float("-inf")

    def restart(self) -> None:
        self.hasher = hashlib.sha256()
        self.done = 0

    def add(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.done += len(chunk)
        self.received += len(chunk)
        if time.monotonic() - self.last_report >= PROGRESS_INTERVAL_S:
            self.report()

    def report(self) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        self.last_report = now
        elapsed = now - self.started
        rate = self.received / elapsed if elapsed > 0 else 0.0
        self.on_progress(DownloadProgress(self.done, self.total, rate))


def _resumed_transfer(entry: CatalogEntry, dest_dir: Path, on_progress, cancel) -> _Transfer:
    transfer = _Transfer(part=partial_path(entry, dest_dir), total=entry.size, on_progress=on_progress)
    if not transfer.part.is_file():
        return transfer
    on_disk = transfer.part.stat().st_size
    if entry.size is not None and on_disk > entry.size:
        # Longer than the file can be: not a prefix of it. Start clean rather than fail at the end.
        log.warning("%s is longer than %s should be; starting over", transfer.part, entry.filename)
        transfer.part.unlink()
        return transfer
    transfer.hasher = _hash_of_file(transfer.part, cancel)
    transfer.done = on_disk
    log.info("resuming %s at %d bytes", entry.filename, on_disk)
    return transfer


def _content_range(response: httpx.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) of a 206 answer's Content-Range: "bytes 100-199/1000"."""
    value = response.headers.get("content-range", "")
    try:
        span, _, total = value.removeprefix("bytes ").partition("/")
        start = int(span.split("-")[0])
        return start, (None if total == "*" else int(total))
    except ValueError:
        return None, None


def _server_total(response: httpx.Response) -> int | None:
    """The file's whole size as the server tells it, if it does."""
    if response.status_code == 206:
        return _content_range(response)[1]
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def _check_free_space(entry: CatalogEntry, dest_dir: Path, transfer: _Transfer) -> None:
    if transfer.total is None:
        return
    needed = transfer.total - transfer.done
    if shutil.disk_usage(dest_dir).free < needed:
        raise _disk_full_error(entry, dest_dir, needed)


def _write_body(response: httpx.Response, transfer: _Transfer, entry: CatalogEntry, dest_dir: Path, cancel) -> None:
    mode = "ab" if transfer.done else "wb"
    try:
        with transfer.part.open(mode) as file:
            # iter_bytes() without a size yields what the network delivers, so a cancel is seen
            # as soon as the next piece arrives instead of after a fixed-size buffer fills.
            for chunk in response.iter_bytes():
                _check_cancel(cancel)
                file.write(chunk)
                transfer.add(chunk)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            needed = None if transfer.total is None else transfer.total - transfer.done
            raise _disk_full_error(entry, dest_dir, needed) from error
        raise DownloadError(
            f"Could not write {transfer.part.name} in {dest_dir} ({error.strerror or error}). "
            f"Check that the folder exists and that you may write to it."
        ) from error


def _stream(source: str, transfer: _Transfer, entry: CatalogEntry, dest_dir: Path, cancel, timeout: float) -> None:
    """Appends the rest of the file to the `.part`, from byte `transfer.done`."""
    # identity: a compressed answer would make Range offsets and sizes count the wrong bytes.
    headers = {"Accept-Encoding": "identity"}
    if transfer.done:
        headers["Range"] = f"bytes={transfer.done}-"
    host = _host(source)
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        with client.stream("GET", source, headers=headers) as response:
            if response.status_code == 416 and transfer.done:
                return  # nothing after what the .part holds: it is complete (verification decides)
            if response.status_code not in (200, 206):
                raise _http_error(response.status_code, entry, dest_dir, host)
            if response.status_code == 200 and transfer.done:
                log.info("%s ignored the range request; downloading %s from the start", host, entry.filename)
                transfer.restart()
            if response.status_code == 206 and _content_range(response)[0] not in (None, transfer.done):
                raise DownloadError(f"{host} sent the wrong part of {entry.filename}. Try the download again.")
            server_total = _server_total(response)
            if entry.size is not None and server_total is not None and server_total != entry.size:
                raise DownloadError(
                    f"{host} sent a file of {server_total} bytes where {entry.filename} has {entry.size}: "
                    f"the file may have changed there, or something on the way (a Wi-Fi login page, a "
                    f"proxy) answered instead. Nothing was saved. " + offline_instructions(entry, dest_dir)
                )
            if transfer.total is None:
                transfer.total = server_total
            _check_free_space(entry, dest_dir, transfer)
            _write_body(response, transfer, entry, dest_dir, cancel)
    if transfer.total is not None and transfer.done < transfer.total:
        # The body ended early without a protocol error (an answer without Content-Length).
        raise _interrupted_error(entry, dest_dir, transfer, "the connection closed before the end of the file")


def _fetch(source: str, transfer: _Transfer, entry: CatalogEntry, dest_dir: Path, cancel, timeout: float) -> None:
    """`_stream`, with network failures turned into messages. The `.part` is kept for a resume."""
    host = _host(source)
    try:
        _stream(source, transfer, entry, dest_dir, cancel, timeout)
    except (httpx.ConnectError, httpx.TimeoutException) as error:
        log.info("could not reach %s: %r", host, error)
        raise DownloadError(
            f"Could not reach {host}. " + offline_instructions(entry, dest_dir) + _kept_text(transfer.done)
        ) from error
    except httpx.TransportError as error:
        log.info("download of %s interrupted: %r", entry.filename, error)
        raise _interrupted_error(entry, dest_dir, transfer, str(error) or type(error).__name__) from error


def _verify(transfer: _Transfer, entry: CatalogEntry) -> None:
    """Deletes the `.part` and raises if it is not the catalog's file."""
    wrong_size = entry.size is not None and transfer.done != entry.size
    wrong_hash = entry.sha256 is not None and transfer.hasher.hexdigest() != entry.sha256
    if wrong_size or wrong_hash:
        log.warning("%s failed verification (size %d, sha256 %s)", entry.filename, transfer.done, transfer.hasher.hexdigest())
        transfer.part.unlink(missing_ok=True)
        raise DownloadError(
            f"{entry.filename} was corrupted in transit: it does not match its known "
            f"{'size' if wrong_size else 'checksum'}, so it was deleted. Try the download again."
        )
    if entry.sha256 is None:
        log.warning("%s has no known sha256 in the catalog: kept without checking it", entry.filename)


def download_model(
    entry: CatalogEntry,
    dest_dir: Path,
    on_progress: Callable[[DownloadProgress], None] | None = None,
    url: str | None = None,
    cancel: threading.Event | None = None,
    timeout: float = 30.0,
) -> Path:
    """Downloads `entry` into `dest_dir` (resuming a `.part` left there) and returns the verified file.

    `url` replaces `entry.url` (a mirror, or a test server). `on_progress` is called at most about
    ten times a second and once at the end. Setting `cancel` stops the download soon after and
    keeps the `.part`. A file already there that matches the catalog is returned as it is; one
    that does not is replaced, but only once its verified replacement is complete.
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / entry.filename
    if final.is_file():
        if _file_matches(final, entry, cancel):
            log.info("%s is already in %s", entry.filename, dest_dir)
            return final
        log.warning("%s does not match the catalog; downloading it again", final)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"Could not create the folder {dest_dir} ({error.strerror or error}).") from error
    _check_cancel(cancel)
    transfer = _resumed_transfer(entry, dest_dir, on_progress, cancel)
    if entry.size is None or transfer.done < entry.size:  # a complete .part needs no request
        _fetch(url or entry.url, transfer, entry, dest_dir, cancel, timeout)
    if transfer.total is None:
        transfer.total = transfer.done
    transfer.report()
    _verify(transfer, entry)
    os.replace(transfer.part, final)  # atomic: the scanner sees the whole file or none
    log.info("downloaded %s to %s", entry.filename, final)
    return final
