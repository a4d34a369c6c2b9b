"""How long a launch takes when nothing needs installing: `./launch.sh --demo --no-browser`, as a user
starts Easel the second time, until the page answers and until the demo checkpoint is loaded.

Issue 13's target: the page in under 10 s. Each start is its own process, one after another, with
the files already in the OS cache after the first (the first, cold, is reported apart).

    .venv/bin/python bench/startup.py              # 5 starts
    .venv/bin/python bench/startup.py --repeats 2  # quicker
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bootstrap  # noqa: E402
from bench.results import publish  # noqa: E402
from bench.speed import cpu_facts  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
HEADING = "## Startup: a launch with nothing to install (bench/startup.py)"
LIMIT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def page_answers(url: str) -> bool:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(url, timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def one_start() -> dict:
    """Seconds from starting launch.sh to the page answering, and to the checkpoint being loaded."""
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(["./launch.sh", "--demo", "--no-browser", "--port", str(port)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    marks: dict[str, float] = {}
    lines: list[str] = []

    def watch() -> None:
        for line in process.stdout:
            lines.append(line)
            if "Loaded checkpoint" in line:
                marks["loaded"] = time.monotonic() - started

    threading.Thread(target=watch, daemon=True).start()
    try:
        while "loaded" not in marks or "page" not in marks:
            if process.poll() is not None or time.monotonic() - started > LIMIT_S:
                raise SystemExit("The launch failed or took too long:\n" + "".join(lines))
            if "page" not in marks and any("running at" in line for line in lines) and \
                    page_answers(f"http://127.0.0.1:{port}/"):
                marks["page"] = time.monotonic() - started
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    if any(re.search(r"installing", line, re.I) for line in lines):
        raise SystemExit("launch.sh installed something: run ./launch.sh --setup-only first, then bench.")
    return marks


def report(cold: dict, warm: list[dict], command: str) -> str:
    def spread(key: str) -> str:
        values = [run[key] for run in warm]
        return (f"{statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f})"
                if values else "-")

    return "\n".join([
        HEADING,
        "",
        f"- Measured {time.strftime('%Y-%m-%d')} with `{command}`; CPU: {cpu_facts()}",
        "- What: `./launch.sh --demo --no-browser` in the repo (bootstrap.py finds nothing to install), to "
        "`GET /` answering 200, and to the line `Loaded checkpoint` (the demo model loads after the page, "
        "in the background). Target (issue 13): the page in under 10 s.",
        "",
        "| start | page answers | checkpoint loaded |",
        "| --- | --- | --- |",
        f"| first of the run (files maybe not cached) | {cold['page']:.1f} s | {cold['loaded']:.1f} s |",
        f"| the next {len(warm)}, median | {spread('page')} | {spread('loaded')} |",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="starts after the first (default 5)")
    args = parser.parse_args()
    if bootstrap.install_reason(bootstrap.Options(), bootstrap.read_stamp()):
        raise SystemExit("Nothing may need installing: run ./launch.sh --setup-only first.")
    cold = one_start()
    warm = [one_start() for _ in range(args.repeats)]
    publish(report(cold, warm, " ".join(["bench/startup.py", *sys.argv[1:]])), RESULTS)


if __name__ == "__main__":
    main()
