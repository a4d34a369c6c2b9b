"""The launcher as a new user starts it with --listen: a password is made and printed once, the LAN
addresses are printed, and from a client's side nothing answers without that password."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(tmp_path: Path, models: Path, *flags: str):
    port = free_port()
    command = [
        sys.executable, str(REPO / "launch.py"), "--listen", "--no-browser", "--port", str(port),
        "--models-dir", str(models), "--outputs-dir", str(tmp_path / "outputs"), "--device", "cpu",
        "--set", f"cache_dir={tmp_path / 'cache'}", "--set", f"access_file={tmp_path / 'access-password.txt'}",
        "--set", f"preferences_file={tmp_path / 'prefs.json'}", *flags,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if "password:" in line or "Delete" in line or "--insecure" in line:
            break
    return process, port, lines


def stop(process) -> str:
    process.terminate()
    try:
        rest, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        rest, _ = process.communicate()
    return rest


@pytest.mark.slow
def test_listen_makes_a_password_and_nothing_answers_without_it(tmp_path, tiny_models_dir):
    process, port, lines = start(tmp_path, tiny_models_dir)
    try:
        output = "\n".join(lines)
        assert f"Easel is running at http://127.0.0.1:{port}/" in output, output
        match = re.search(r"Sign in as 'easel' with password: (\S+)", output)
        assert match, output
        password = match.group(1)
        for lan in re.findall(r"Other computers on your network: (\S+)", output):
            assert lan.endswith(f":{port}/") and not lan.startswith("http://127.")
        url = f"http://127.0.0.1:{port}/"
        assert httpx.get(url + "sdapi/v1/sd-models").status_code == 401
        assert httpx.get(url + "config").status_code == 401
        assert httpx.get(url + "sdapi/v1/sd-models", auth=("easel", "guess")).status_code == 401
        models = httpx.get(url + "sdapi/v1/sd-models", auth=("easel", password))
        assert models.status_code == 200 and models.json()
        assert httpx.post(url + "login", data={"username": "easel", "password": password}).status_code == 200
    finally:
        stop(process)
    stored = (tmp_path / "access-password.txt").read_text()
    assert password not in stored and "pbkdf2_sha256$" in stored

    again, port, lines = start(tmp_path, tiny_models_dir)
    try:
        assert "password:" not in "\n".join(lines) and "Delete" in "\n".join(lines)
        reply = httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", auth=("easel", password))
        assert reply.status_code == 200  # the same password on the next start
    finally:
        stop(again)


@pytest.mark.slow
def test_insecure_listen_is_open_and_says_so(tmp_path, tiny_models_dir):
    process, port, lines = start(tmp_path, tiny_models_dir, "--insecure")
    try:
        assert "anyone on your network can use Easel" in "\n".join(lines)
        assert httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models").status_code == 200
        assert not (tmp_path / "access-password.txt").exists()
    finally:
        stop(process)
