"""Eight HTTP clients at once against the A1111 API: latency, throughput, errors, and the cost of
the HTTP + queue path next to calling the engine directly, measured side by side in one run.

Tiny random SD 1.x model (the --demo architecture) on the CPU, so the figures show Easel's own
overhead (HTTP, auth, JSON, base64 PNG, the fair queue), not diffusion speed.

    .venv/bin/python bench/api_load.py [--clients 8] [--requests 4] [--steps 4] [--size 64]
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402,F401  (offline switches before torch/gradio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="per client")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    import httpx
    import torch

    torch.set_num_threads(1)
    from app.auth import Access, Credentials, LoginLimiter, hash_password
    from app.engine import create_engine
    from app.generation.requests import GenerationRequest
    from app.hardware import HardwareFacts
    from app.settings import load_settings
    from server.compose import serve
    from ui.app import build_ui

    work = Path(tempfile.mkdtemp(prefix="easel-api-bench-"))
    settings = load_settings({"demo": True, "device": "cpu", "open_browser": False, "port": 0,
                              "models_dir": str(work / "models"), "outputs_dir": str(work / "outputs"),
                              "cache_dir": str(work / "cache"), "queue_size": 1000, "queue_per_user": 100})
    engine = create_engine(settings, HardwareFacts(cpu_threads=1))
    engine.select_checkpoint()
    users = {f"user{i}": f"pw{i}" for i in range(args.clients)}
    credentials = Credentials({name: hash_password(password) for name, password in users.items()})
    server = serve(build_ui(engine), engine, settings, Access(credentials, credentials), LoginLimiter())
    body = {"prompt": "a lighthouse", "steps": args.steps, "width": args.size, "height": args.size,
            "sampler_name": "Euler a"}
    total = args.clients * args.requests

    # Direct engine calls, one after another: the diffusion work alone.
    engine.generate(GenerationRequest(prompt="warm up", steps=args.steps, width=args.size, height=args.size))
    started = time.perf_counter()
    for index in range(total):
        engine.generate(GenerationRequest(prompt="a lighthouse", steps=args.steps, width=args.size,
                                          height=args.size, sampler="Euler a", seed=index, save=False))
    direct = time.perf_counter() - started

    latencies: dict[str, list[float]] = {}
    finished: list[tuple[float, str]] = []
    errors: list[str] = []
    lock = threading.Lock()

    # The first request of each login checks its password hash (PBKDF2, ~0.3 s of CPU); later ones
    # hit the cache of good logins. Timed apart, so the table shows the steady state.
    started = time.perf_counter()
    for user in users:
        httpx.get(server.url + "sdapi/v1/options", auth=(user, users[user])).raise_for_status()
    first_sign_in = (time.perf_counter() - started) / len(users)
    ready = threading.Barrier(len(users) + 1)

    def client(user: str) -> None:
        with httpx.Client(base_url=server.url, auth=(user, users[user]), timeout=600) as http:
            http.get("/sdapi/v1/options").raise_for_status()
            ready.wait()
            for index in range(args.requests):
                sent = time.perf_counter()
                response = http.post("/sdapi/v1/txt2img", json={**body, "seed": index})
                with lock:
                    latencies.setdefault(user, []).append(time.perf_counter() - sent)
                    finished.append((time.perf_counter(), user))
                    if response.status_code != 200:
                        errors.append(f"{user}: {response.status_code} {response.text[:100]}")

    threads = [threading.Thread(target=client, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    http_wall = time.perf_counter() - started
    server.close()
    engine.close()

    every = sorted(value for values in latencies.values() for value in values)
    first_done = {user: min(t for t, u in finished if u == user) - started for user in users}
    quantile = lambda q: every[min(len(every) - 1, int(q * len(every)))]  # noqa: E731
    print(f"`.venv/bin/python bench/api_load.py --clients {args.clients} --requests {args.requests} "
          f"--steps {args.steps} --size {args.size}`\n")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, 1 thread, tiny SD 1.x, "
          f"{args.size}x{args.size}, {args.steps} steps, {total} requests\n")
    print("| path | wall s | requests/s | latency p50 / p95 / max s | errors |")
    print("|---|---|---|---|---|")
    print(f"| engine.generate, one after another | {direct:.2f} | {total / direct:.1f} | - | - |")
    print(f"| HTTP, {args.clients} clients at once | {http_wall:.2f} | {total / http_wall:.1f} | "
          f"{statistics.median(every):.2f} / {quantile(0.95):.2f} / {every[-1]:.2f} | {len(errors)} |")
    print(f"\n- HTTP + auth + JSON + base64 PNG + queue / direct: **{http_wall / direct:.2f}x** wall time")
    print(f"- first answer per client (s after start): {', '.join(f'{v:.2f}' for v in sorted(first_done.values()))}")
    print(f"- a login's first request (password hash check), one at a time: {first_sign_in:.2f} s")
    for error in errors[:5]:
        print("- error:", error)


if __name__ == "__main__":
    main()
