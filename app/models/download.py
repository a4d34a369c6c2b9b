"""Downloads the checkpoints the user picks from the catalog (app.models.catalog): resumable, checked
against known hashes.

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

from app.models.catalog import CatalogEntry, HelperEntry, offline_instructions
from app.models.download_errors import (
    CANCELLED_MESSAGE,
    DownloadCancelled,
    DownloadError,
    disk_full_error,
    host_of,
    http_error,
    interrupted_error,
    kept_text,
)

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
PROGRESS_INTERVAL_S = 0.1  # at most ~10 reports a second: each one may redraw a progress bar
HASH_CHUNK_BYTES = 4 << 20


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
        raise disk_full_error(entry, dest_dir, needed)


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
            raise disk_full_error(entry, dest_dir, needed) from error
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
    host = host_of(source)
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        with client.stream("GET", source, headers=headers) as response:
            if response.status_code == 416 and transfer.done:
                return  # nothing after what the .part holds: it is complete (verification decides)
            if response.status_code not in (200, 206):
                raise http_error(response.status_code, entry, dest_dir, host)
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
        raise interrupted_error(entry, dest_dir, transfer.done, transfer.total, "the connection closed before the end of the file")


def _fetch(source: str, transfer: _Transfer, entry: CatalogEntry, dest_dir: Path, cancel, timeout: float) -> None:
    """`_stream`, with network failures turned into messages. The `.part` is kept for a resume."""
    host = host_of(source)
    try:
        _stream(source, transfer, entry, dest_dir, cancel, timeout)
    except (httpx.ConnectError, httpx.TimeoutException) as error:
        log.info("could not reach %s: %r", host, error)
        raise DownloadError(
            f"Could not reach {host}. " + offline_instructions(entry, dest_dir) + kept_text(transfer.done)
        ) from error
    except httpx.TransportError as error:
        log.info("download of %s interrupted: %r", entry.filename, error)
        raise interrupted_error(entry, dest_dir, transfer.done, transfer.total, str(error) or type(error).__name__) from error


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


def download_helper(helper: HelperEntry, dest_dir: Path, cancel: threading.Event | None = None,
                    on_progress: Callable[[DownloadProgress], None] | None = None) -> Path:
    """Each file of a helper model (catalog `helpers`) into `dest_dir`, as `download_model` fetches one."""
    for entry in helper.file_entries():
        download_model(entry, dest_dir, on_progress=on_progress, cancel=cancel)
    return Path(dest_dir)
