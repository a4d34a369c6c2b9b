"""Model downloads against a real HTTP server on 127.0.0.1: resume, verification, failures, cancel, the catalog.

The server serves a generated payload, honours Range (206), and can be told to misbehave: ignore
Range, drop the connection half-way, corrupt a byte, answer 404/403, send the wrong length, or
trickle slowly. No test touches the internet.
"""

import errno
import hashlib
import http.server
import random
import re
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from app.errors import EaselError
from app.models import download
from app.models.catalog import CatalogEntry, load_catalog, offline_instructions
from app.models.download import DownloadProgress, download_model, partial_path
from app.models.download_errors import CANCELLED_MESSAGE, DownloadCancelled, DownloadError
from app.models.families import Family

PAYLOAD = random.Random(0).randbytes(2_000_000)
SLOW_PIECE = 64 * 1024
SLOW_PAUSE_S = 0.02  # ~31 pieces: about 0.6 s for the whole payload
TIMEOUT_S = 5.0

ENTRY = CatalogEntry(
    id="test",
    title="Test model",
    family=Family.SD1,
    repository="easel-tests/tiny-model",
    filename="tiny.safetensors",
    size=len(PAYLOAD),
    sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    licence="MIT",
    description="Random bytes served by the test server.",
)


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5  # socket timeout: a stuck client cannot hold a handler thread for long

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server: "FileServer" = self.server.owner
        range_header = self.headers.get("Range")
        server.requests.append(range_header)
        mode = server.mode
        if mode in ("404", "403"):
            self.send_error(int(mode))
            return
        body = server.payload
        if mode == "corrupt":
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
        if mode == "short":
            body = body[:-10]
        start = 0
        if range_header and mode != "ignore_range":
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        try:
            self._send(body[start:], mode)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away (cancel, or a test that expects an error)

    def _send(self, body: bytes, mode: str) -> None:
        if mode == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True  # closes with half the promised bytes sent
            return
        if mode == "slow":
            for offset in range(0, len(body), SLOW_PIECE):
                self.wfile.write(body[offset: offset + SLOW_PIECE])
                self.wfile.flush()
                time.sleep(SLOW_PAUSE_S)
            return
        self.wfile.write(body)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() then joins every handler thread


class FileServer:
    """Serves PAYLOAD at /file on 127.0.0.1 (a free port) in a thread; records each Range header."""

    def __init__(self, payload: bytes = PAYLOAD):
        self.payload = payload
        self.mode = "normal"
        self.requests: list[str | None] = []
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/file"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def server():
    server = FileServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: the port was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/file"


def fetch(server: FileServer, dest: Path, entry: CatalogEntry = ENTRY, **kwargs) -> Path:
    return download_model(entry, dest, url=server.url, timeout=TIMEOUT_S, **kwargs)


# --- downloads that work -------------------------------------------------------------------

def test_full_download_is_identical_verified_and_leaves_no_part(server, tmp_path):
    path = fetch(server, tmp_path)

    assert path == tmp_path / ENTRY.filename
    assert path.read_bytes() == PAYLOAD
    assert not partial_path(ENTRY, tmp_path).exists()
    assert server.requests == [None]  # a fresh download asks for the whole file


def test_creates_the_destination_folder(server, tmp_path):
    path = fetch(server, tmp_path / "models" / "Stable-diffusion")
    assert path.read_bytes() == PAYLOAD


def test_progress_is_monotonic_throttled_and_ends_at_the_total(server, tmp_path):
    server.mode = "slow"
    reports: list[DownloadProgress] = []
    started = time.monotonic()
    fetch(server, tmp_path, on_progress=reports.append)
    elapsed = time.monotonic() - started

    done = [report.done_bytes for report in reports]
    assert done == sorted(done)
    assert reports[-1].done_bytes == reports[-1].total_bytes == len(PAYLOAD)
    assert reports[-1].fraction == 1.0
    assert all(report.total_bytes == len(PAYLOAD) for report in reports)
    assert any(report.bytes_per_second > 0 for report in reports)
    assert 2 <= len(reports) <= elapsed / download.PROGRESS_INTERVAL_S + 2  # ~10 a second, plus the last


def test_already_verified_file_is_returned_without_a_request(server, tmp_path):
    (tmp_path / ENTRY.filename).write_bytes(PAYLOAD)

    path = fetch(server, tmp_path)

    assert path.read_bytes() == PAYLOAD
    assert server.requests == []


def test_a_wrong_file_under_the_name_is_replaced(server, tmp_path):
    (tmp_path / ENTRY.filename).write_bytes(b"not the model")

    path = fetch(server, tmp_path)

    assert path.read_bytes() == PAYLOAD
    assert server.requests == [None]


def test_unknown_size_and_hash_are_taken_from_the_server_and_kept_unverified(server, tmp_path):
    entry = replace(ENTRY, size=None, sha256=None)
    reports: list[DownloadProgress] = []

    path = fetch(server, tmp_path, entry=entry, on_progress=reports.append)

    assert path.read_bytes() == PAYLOAD
    assert reports[-1].total_bytes == len(PAYLOAD)


# --- resume --------------------------------------------------------------------------------

def test_interrupted_download_keeps_the_part_then_resumes_with_a_range(server, tmp_path):
    server.mode = "drop"
    with pytest.raises(DownloadError) as caught:
        fetch(server, tmp_path)
    assert "interrupted" in caught.value.message
    assert "resumes" in caught.value.message
    part = partial_path(ENTRY, tmp_path)
    kept = part.read_bytes()
    assert 0 < len(kept) < len(PAYLOAD)
    assert kept == PAYLOAD[: len(kept)]
    assert not (tmp_path / ENTRY.filename).exists()

    server.mode = "normal"
    path = fetch(server, tmp_path)

    assert server.requests[-1] == f"bytes={len(kept)}-"
    assert path.read_bytes() == PAYLOAD
    assert not part.exists()


def test_server_ignoring_range_still_gives_the_right_file(server, tmp_path):
    # Bytes that are not the file's: only a full restart (hash reset too) can end in the right file.
    partial_path(ENTRY, tmp_path).write_bytes(b"\0" * 1000)
    server.mode = "ignore_range"

    path = fetch(server, tmp_path)

    assert server.requests == ["bytes=1000-"]
    assert path.read_bytes() == PAYLOAD
    assert not partial_path(ENTRY, tmp_path).exists()


def test_complete_part_is_verified_without_a_request(server, tmp_path):
    partial_path(ENTRY, tmp_path).write_bytes(PAYLOAD)

    path = fetch(server, tmp_path)

    assert path.read_bytes() == PAYLOAD
    assert server.requests == []


def test_range_past_the_end_416_counts_the_part_as_complete(server, tmp_path):
    partial_path(ENTRY, tmp_path).write_bytes(PAYLOAD)
    entry = replace(ENTRY, size=None)  # size unknown: Easel has to ask

    path = fetch(server, tmp_path, entry=entry)

    assert server.requests == [f"bytes={len(PAYLOAD)}-"]
    assert path.read_bytes() == PAYLOAD


# --- failures ------------------------------------------------------------------------------

def test_corrupted_payload_is_deleted_and_reported(server, tmp_path):
    server.mode = "corrupt"
    with pytest.raises(DownloadError) as caught:
        fetch(server, tmp_path)

    assert "corrupted in transit" in caught.value.message
    assert "try the download again" in caught.value.message.lower()
    assert not partial_path(ENTRY, tmp_path).exists()
    assert not (tmp_path / ENTRY.filename).exists()


def test_404_says_the_file_is_missing(server, tmp_path):
    server.mode = "404"
    with pytest.raises(DownloadError) as caught:
        fetch(server, tmp_path)

    assert "404" in caught.value.message
    assert ENTRY.repository in caught.value.message
    assert list(tmp_path.iterdir()) == []


def test_403_explains_the_licence_and_the_browser_route(server, tmp_path):
    server.mode = "403"
    with pytest.raises(DownloadError) as caught:
        fetch(server, tmp_path)

    message = caught.value.message
    assert "licence" in message and "logged in" in message
    assert ENTRY.page_url in message and ENTRY.url in message and str(tmp_path) in message


def test_a_file_of_the_wrong_length_is_refused_before_writing(server, tmp_path):
    server.mode = "short"
    with pytest.raises(DownloadError) as caught:
        fetch(server, tmp_path)

    assert f"{len(PAYLOAD) - 10} bytes" in caught.value.message
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_gives_browser_instructions_and_keeps_the_part(closed_port_url, tmp_path):
    part = partial_path(ENTRY, tmp_path)
    part.write_bytes(PAYLOAD[:1000])

    with pytest.raises(DownloadError) as caught:
        download_model(ENTRY, tmp_path, url=closed_port_url, timeout=TIMEOUT_S)

    message = caught.value.message
    assert message.startswith("Could not reach 127.0.0.1.")
    assert ENTRY.url in message  # the huggingface.co address, to open in a browser
    assert str(tmp_path) in message
    assert part.read_bytes() == PAYLOAD[:1000]


def test_offline_instructions_name_the_url_and_the_folder(tmp_path):
    text = offline_instructions(ENTRY, tmp_path)
    assert ENTRY.url.startswith("https://huggingface.co/easel-tests/tiny-model/resolve/main/")
    assert ENTRY.url in text and str(tmp_path) in text and ENTRY.filename in text


def test_not_enough_free_space_is_reported_before_downloading(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=10**12, free=1000))
    with pytest.raises(DownloadError) as caught:
        fetch(server, tmp_path)

    assert str(tmp_path) in caught.value.message
    assert "2.0 MB" in caught.value.message  # the space needed
    assert not partial_path(ENTRY, tmp_path).exists()


def test_disk_full_while_writing_names_the_folder(server, tmp_path, monkeypatch):
    def full(self, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download._Transfer, "add", full)
    with pytest.raises(DownloadError) as caught:
        fetch(server, tmp_path)

    assert "not enough free space" in caught.value.message
    assert str(tmp_path) in caught.value.message


# --- cancel --------------------------------------------------------------------------------

def test_cancel_stops_keeps_the_part_and_the_next_call_resumes(server, tmp_path):
    server.mode = "slow"
    cancel = threading.Event()
    started = time.monotonic()
    with pytest.raises(DownloadCancelled) as caught:
        fetch(server, tmp_path, cancel=cancel, on_progress=lambda progress: cancel.set())

    assert time.monotonic() - started < 0.5  # well before the ~0.6 s the whole payload takes
    assert isinstance(caught.value, DownloadError)
    assert caught.value.message == CANCELLED_MESSAGE
    kept = partial_path(ENTRY, tmp_path).read_bytes()
    assert 0 < len(kept) < len(PAYLOAD) and kept == PAYLOAD[: len(kept)]
    assert not (tmp_path / ENTRY.filename).exists()

    server.mode = "normal"
    path = fetch(server, tmp_path)
    assert server.requests[-1] == f"bytes={len(kept)}-"
    assert path.read_bytes() == PAYLOAD


def test_cancel_before_start_makes_no_request(server, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelled):
        fetch(server, tmp_path, cancel=cancel)
    assert server.requests == []


# --- the catalog ---------------------------------------------------------------------------

def test_real_catalog_has_the_four_defaults_with_valid_values():
    entries = load_catalog()

    assert [entry.id for entry in entries] == ["sd15", "sd21", "sd21-base", "x4-upscaler"]
    assert [entry.family for entry in entries] == [Family.SD1, Family.SD2_V, Family.SD2, Family.X4_UPSCALER]
    for entry in entries:
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.size is None or entry.size > 0
        assert re.fullmatch(r"https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/main/[\w.-]+\.safetensors", entry.url)
        assert entry.url.endswith("/" + entry.filename)
        assert entry.title and entry.licence and entry.description


def test_catalog_with_a_bad_entry_is_refused(tmp_path):
    good = {
        "id": "x", "title": "X", "family": "sd1", "repository": "a/b", "file": "x.safetensors",
        "size": 1, "sha256": None, "licence": "MIT", "description": "d",
    }
    for change in ({"family": "sdxl"}, {"file": "../x.safetensors"}, {"sha256": "abc"}, {"size": -1}):
        path = tmp_path / "catalog.yaml"
        OmegaConf.save(OmegaConf.create({"models": [{**good, **change}]}), path)
        with pytest.raises(EaselError):
            load_catalog(path)
